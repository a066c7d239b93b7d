"""Progress of the stages, read from the scheduler, and the peaks the summary reports.

A stage may run its tasks through functions the pipeline does not control (``hafen.extract``,
``hafen.reshuffle``), so progress is read where every task shows: on the scheduler. A sampler
thread asks it, every :data:`INTERVAL` seconds, how many tasks wait or run, and, during the
extraction, how many slots of the database limit are held.
"""

from __future__ import annotations

import collections
import contextlib
import resource
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["INTERVAL", "StageProgress", "peak_rss"]

INTERVAL = 0.05
_PENDING = ("released", "waiting", "no-worker", "queued", "processing")


def _task_states(dask_scheduler: Any) -> dict[str, int]:
    return dict(collections.Counter(ts.state for ts in dask_scheduler.tasks.values()))


def _maxrss() -> int:
    """Peak resident memory of this process, in bytes.

    Linux: ``VmHWM`` (``ru_maxrss`` can carry a parent's peak over into a spawned process);
    elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def peak_rss(client: Any) -> dict[str, int]:
    """Peak resident memory of the client process and of each worker, in bytes."""
    peaks = {"client": _maxrss()}
    with contextlib.suppress(Exception):
        peaks.update(client.run(_maxrss))
    return peaks


class StageProgress:
    """One progress row per stage (with ``rich``), fed by a sampler of the scheduler."""

    def __init__(self, client: Any, progress: Any | None, *, limit: str | None = None) -> None:
        self.client = client
        self.progress = progress
        self.limit = limit
        self.slots_max = 0

    @contextlib.contextmanager
    def stage(self, description: str, *, watch_limit: bool = False) -> Iterator[None]:
        task_id = None
        if self.progress is not None:
            task_id = self.progress.add_task(description, total=None)
        stop = threading.Event()
        sampler = threading.Thread(
            target=self._sample, args=(stop, task_id, watch_limit), daemon=True
        )
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()
            if self.progress is not None and task_id is not None:
                task = self.progress.tasks[task_id]
                total = task.total or max(task.completed, 1)
                self.progress.update(task_id, total=total, completed=total)
                self.progress.stop_task(task_id)

    def _sample(self, stop: threading.Event, task_id: Any, watch_limit: bool) -> None:
        from hafen.cluster import limits

        seen = 0
        while True:
            if watch_limit and self.limit is not None:
                with contextlib.suppress(Exception):
                    info = limits(client=self.client).get(self.limit)
                    if info is not None:
                        self.slots_max = max(self.slots_max, int(info["in_use"]))
            if self.progress is not None and task_id is not None:
                with contextlib.suppress(Exception):
                    states = self.client.run_on_scheduler(_task_states)
                    pending = sum(states.get(s, 0) for s in _PENDING)
                    done = states.get("memory", 0) + states.get("erred", 0)
                    seen = max(seen, pending + done)
                    self.progress.update(task_id, total=max(seen, 1), completed=seen - pending)
            if stop.wait(INTERVAL if watch_limit else 0.25):
                return
