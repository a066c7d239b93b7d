"""Fixtures for the cluster tests: process-based LocalClusters and a task-timing log.

Tasks record when they start and end in a log file (one ``O_APPEND`` write per line, so lines
from worker processes never interleave); :func:`max_overlap` turns the log into the largest number
of tasks that ran at once. A task's recorded interval lies inside the time it held its slot, so
the overlap found is a lower bound of what the scheduler granted, never an over-count.

Task functions live in the test modules and here; worker processes of a LocalCluster import them
by name (spawned processes inherit ``sys.path``), stand-alone ``dask`` processes get this folder
on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hafen


def log_event(path: str, kind: str, key: object) -> None:
    """Append ``<kind> <time> <key>`` to the log at ``path``, atomically."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {time.time():.6f} {key}\n".encode())
    finally:
        os.close(fd)


def timed_task(i: int, path: str, duration: float) -> int:
    """A task that sleeps ``duration`` seconds and logs its start and end."""
    log_event(path, "start", i)
    time.sleep(duration)
    log_event(path, "end", i)
    return 2 * i


def read_log(path: str | Path) -> list[tuple[str, float, str]]:
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        kind, at, key = line.split(" ", 2)
        rows.append((kind, float(at), key))
    return rows


def max_overlap(path: str | Path, *, killed_at: float | None = None) -> int:
    """Largest number of tasks running at once according to the log.

    A start without an end (a task killed with its worker) counts as running until
    ``killed_at`` (or forever when not given).
    """
    rows = read_log(path)
    events: list[tuple[float, int]] = []
    open_starts: dict[str, list[float]] = {}
    for kind, at, key in rows:
        if kind == "start":
            open_starts.setdefault(key, []).append(at)
            events.append((at, +1))
        elif kind == "end":
            open_starts[key].pop(0)
            events.append((at, -1))
    for starts in open_starts.values():
        for _ in starts:
            events.append((killed_at if killed_at is not None else float("inf"), -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end at the same instant comes first
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def wait_for(predicate, timeout: float, interval: float = 0.02, message: str = "") -> float:
    """Poll ``predicate`` until it is true; return the seconds it took, fail after ``timeout``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout}s: {message or predicate}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def client_2x4() -> Iterator[object]:
    """A process-based LocalCluster, 2 workers x 4 threads, with hafen's extensions."""
    client = hafen.connect(
        n_workers=2, threads_per_worker=4, dashboard_address=":0", memory_limit="1GiB"
    )
    try:
        yield client
    finally:
        client.close()


class TaskLog:
    """A task-timing log in a temporary directory; ``timed_task`` writes to it from workers."""

    def __init__(self, path: Path):
        self.path = str(path)

    task = staticmethod(timed_task)

    def rows(self) -> list[tuple[str, float, str]]:
        return read_log(self.path)

    def starts(self) -> list[str]:
        return [key for kind, _, key in self.rows() if kind == "start"]

    def max_overlap(self, *, killed_at: float | None = None) -> int:
        return max_overlap(self.path, killed_at=killed_at)


@pytest.fixture
def task_log(tmp_path: Path) -> TaskLog:
    """A fresh :class:`TaskLog`."""
    return TaskLog(tmp_path / "tasks.log")


@pytest.fixture(name="wait_for")
def wait_for_fixture():
    """:func:`wait_for`, for tests to poll a condition with a deadline."""
    return wait_for
