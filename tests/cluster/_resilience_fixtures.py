"""Helpers for the replication, drain and chaos tests.

Recomputations are counted twice, independently: by the resilience scheduler plugin (a key that
reaches memory a second time) and by side effects: :func:`logged_task` appends ``start``/``end``
lines with the worker's pid to a log file (one ``O_APPEND`` write per line, so lines from worker
processes never interleave); a key with two ``end`` lines was computed twice.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle

import hafen
from hafen.cluster._chaos import resilience_counts

# Task functions travel by value, so worker processes need not import the tests.
if __name__ in sys.modules:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Generous deadlines: the machine has 2 cores shared with other test runs.
DEADLINE = 30.0


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def logged_task(i: int, path: str, duration: float = 0.0, *deps: Any) -> int:
    """Sleep ``duration``, log ``start``/``end`` with time and pid; return a value of ``i``."""
    _append(path, f"start {time.time():.6f} {i} {os.getpid()}")
    time.sleep(duration)
    _append(path, f"end {time.time():.6f} {i} {os.getpid()}")
    return (i * 2654435761) % 2**32


def gated_sum(parts: list[int], gate: Any = None) -> int:
    """A reduction; ``gate`` is only there to make it wait for another task."""
    return sum(parts) % 2**61


def wait_event(name: str, timeout: float = DEADLINE) -> bool:
    """A task that blocks until the distributed Event ``name`` is set."""
    from distributed import Event

    return Event(name).wait(timeout)


class ExecLog:
    """The side-effect log of :func:`logged_task`."""

    def __init__(self, path: Path) -> None:
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
        events.sort(key=lambda e: (e[0], e[1]))
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        return peak


def wait_until(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what or predicate}")
        time.sleep(0.02)


@contextlib.contextmanager
def process_cluster(n_workers: int = 4, **kwargs: Any) -> Iterator[Any]:
    """A process-based LocalCluster (nannies, 1 thread per worker) through ``hafen.connect``."""
    kwargs.setdefault("threads_per_worker", 1)
    kwargs.setdefault("memory_limit", "1GiB")
    client = hafen.connect(n_workers=n_workers, dashboard_address=":0", **kwargs)
    try:
        client.wait_for_workers(n_workers, timeout=DEADLINE)
        yield client
    finally:
        client.close()


def counts(client: Any, *, reset: bool = False) -> dict[str, Any]:
    """Recomputation counts of the resilience scheduler plugin."""
    return resilience_counts(client, reset=reset)


def copies(client: Any, futures: list[Any]) -> dict[Any, int]:
    """Number of workers holding each future's result."""
    who_has = client.who_has(futures)
    return {f.key: len(who_has[f.key]) for f in futures}


def worker_pids(client: Any) -> dict[str, int]:
    return client.run(os.getpid)


def holders(client: Any, futures: list[Any]) -> Counter[str]:
    """How many of ``futures`` each worker holds."""
    who_has = client.who_has(futures)
    return Counter(w for f in futures for w in who_has[f.key])
