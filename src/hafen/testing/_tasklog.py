"""Task logs: tasks that record when (and in which process) they ran, and readers of the logs.

Tasks append one line per event with a single ``O_APPEND`` write, so lines from worker processes
never interleave. Two formats:

- :class:`TaskLog` (:func:`timed_task`): ``<kind> <time> <key>``; :meth:`TaskLog.max_overlap`
  is the largest number of tasks that ran at once. A task's recorded interval lies inside the
  time it held its slot, so the overlap found is a lower bound of what a limit granted, never an
  over-count.
- :class:`ExecLog` (:func:`logged_task`): ``<kind> <time> <key> <pid>``; a key with two ``end``
  lines was computed twice, which counts recomputations independently of the scheduler.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

#: How long a task waits for a distributed Event at most.
EVENT_TIMEOUT = 30.0

__all__ = [
    "EVENT_TIMEOUT",
    "ExecLog",
    "TaskLog",
    "leased",
    "log_event",
    "logged_task",
    "max_overlap",
    "read_log",
    "timed_task",
]


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def log_event(path: str, kind: str, key: object) -> None:
    """Append ``<kind> <time> <key>`` to the log at ``path``, atomically."""
    _append(path, f"{kind} {time.time():.6f} {key}")


def timed_task(i: int, path: str, duration: float, gate: str | None = None) -> int:
    """A task that logs its start, sleeps ``duration`` seconds, logs its end; returns ``2 * i``.

    With ``gate``, it also waits for the distributed Event of that name before it ends, so a
    test decides when running tasks finish instead of guessing how long they take.
    """
    log_event(path, "start", i)
    time.sleep(duration)
    if gate is not None:
        from distributed import Event

        Event(gate).wait(EVENT_TIMEOUT)
    log_event(path, "end", i)
    return 2 * i


def read_log(path: str | Path) -> list[tuple[str, float, str]]:
    """The rows ``(kind, time, key)`` of a :func:`timed_task` log (none if it does not exist)."""
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        kind, at, key = line.split(" ", 2)
        rows.append((kind, float(at), key))
    return rows


def _peak(events: list[tuple[float, int]]) -> int:
    events.sort(key=lambda e: (e[0], e[1]))  # an end at the same instant comes first
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def max_overlap(path: str | Path, *, killed_at: float | None = None) -> int:
    """Largest number of tasks running at once according to a :func:`timed_task` log.

    A start without an end (a task killed with its worker) counts as running until
    ``killed_at`` (or forever when not given).
    """
    events: list[tuple[float, int]] = []
    open_starts: dict[str, list[float]] = {}
    for kind, at, key in read_log(path):
        if kind == "start":
            open_starts.setdefault(key, []).append(at)
            events.append((at, +1))
        elif kind == "end":
            open_starts[key].pop(0)
            events.append((at, -1))
    for starts in open_starts.values():
        for _ in starts:
            events.append((killed_at if killed_at is not None else float("inf"), -1))
    return _peak(events)


class TaskLog:
    """A :func:`timed_task` log at ``path``; ``task`` is the function that writes it."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    task = staticmethod(timed_task)

    def rows(self) -> list[tuple[str, float, str]]:
        return read_log(self.path)

    def starts(self) -> list[str]:
        return [key for kind, _, key in self.rows() if kind == "start"]

    def ends(self) -> list[str]:
        return [key for kind, _, key in self.rows() if kind == "end"]

    def max_overlap(self, *, killed_at: float | None = None) -> int:
        return max_overlap(self.path, killed_at=killed_at)


def logged_task(i: int, path: str, duration: float = 0.0, *deps: Any) -> int:
    """Sleep ``duration``, log ``start``/``end`` with time and pid; return a value of ``i``.

    ``deps`` are ignored: they only make the task wait for other tasks.
    """
    _append(path, f"start {time.time():.6f} {i} {os.getpid()}")
    time.sleep(duration)
    _append(path, f"end {time.time():.6f} {i} {os.getpid()}")
    return (i * 2654435761) % 2**32


class ExecLog:
    """The log of :func:`logged_task` at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def rows(self) -> list[tuple[str, float, str, int]]:
        if not Path(self.path).exists():
            return []
        rows = []
        for line in Path(self.path).read_text().splitlines():
            kind, at, key, pid = line.split(" ")
            rows.append((kind, float(at), key, int(pid)))
        return rows

    def completions(self) -> Counter[str]:
        return Counter(key for kind, _, key, _ in self.rows() if kind == "end")

    def computed_more_than_once(self) -> dict[str, int]:
        return {k: n for k, n in self.completions().items() if n > 1}

    def max_overlap(self, killed: dict[int, float]) -> int:
        """Most tasks running at once; a start with no end ran until its pid was killed."""
        events: list[tuple[float, int]] = []
        open_starts: dict[tuple[str, int], list[float]] = {}
        for kind, at, key, pid in self.rows():
            if kind == "start":
                open_starts.setdefault((key, pid), []).append(at)
                events.append((at, +1))
            else:
                open_starts[(key, pid)].pop(0)
                events.append((at, -1))
        for (_, pid), starts in open_starts.items():
            for _ in starts:
                events.append((killed.get(pid, float("inf")), -1))
        return _peak(events)


def leased(path: str, name: str, duration: float) -> str:
    """Hold a lease on limit ``name`` for ``duration`` seconds, logging its start and end.

    The log is a :func:`timed_task` log keyed by lease id: :func:`max_overlap` is the most leases
    held at once.
    """
    from hafen.cluster import lease

    with lease(name) as lease_id:
        log_event(path, "start", lease_id)
        time.sleep(duration)
        log_event(path, "end", lease_id)
    return lease_id
