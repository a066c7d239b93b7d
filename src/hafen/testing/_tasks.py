"""Task functions for tests and benchmarks that run on worker processes.

Dask pickles a function by reference, so a worker process must be able to import it: these live
in an installed module rather than in test files or benchmark scripts, which worker processes
(and stand-alone ``dask worker`` processes) would not find without ``sys.path`` edits.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hafen.testing._tasklog import EVENT_TIMEOUT

if TYPE_CHECKING:
    from distributed import Semaphore

__all__ = [
    "digest",
    "double",
    "flaky",
    "gated_sum",
    "holder",
    "holder_semaphore",
    "log_entry",
    "random_block",
    "sleepy",
    "sleepy_semaphore",
    "sleepy_serial",
    "tiny",
    "tiny_semaphore",
    "wait_event",
]


def sleepy(i: int, duration: float) -> int:
    """Sleep ``duration`` seconds; return ``i``."""
    time.sleep(duration)
    return i


def double(i: int) -> int:
    """Sleep 50 ms; return ``2 * i``."""
    time.sleep(0.05)
    return 2 * i


def flaky(path: str) -> str:
    """Fail the first time it runs (per marker file ``path``), succeed after."""
    marker = Path(path)
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "ok"


def gated_sum(parts: list[int], gate: Any = None) -> int:
    """A reduction; ``gate`` is only there to make it wait for another task."""
    return sum(parts) % 2**61


def wait_event(name: str, timeout: float = EVENT_TIMEOUT) -> bool:
    """Block until the distributed Event ``name`` is set (or ``timeout``)."""
    from distributed import Event

    return Event(name).wait(timeout)


def log_entry(path: str, what: str = "") -> None:
    """Append ``<time> [what]`` to the file at ``path`` (one atomic write)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f}{' ' + what if what else ''}\n".encode())
    finally:
        os.close(fd)


# --- benchmarks/limits.py ----------------------------------------------------------------------


def tiny(i: int) -> int:
    """As little work as a task can do."""
    return i


def tiny_semaphore(i: int, sem: Semaphore) -> int:
    """:func:`tiny` holding a lease of ``sem``."""
    with sem:
        return i


def sleepy_serial(n: int, duration: float) -> int:
    """What one slot of a perfect limiter does: ``n`` tasks of ``duration`` back to back."""
    for _ in range(n):
        time.sleep(duration)
    return n


def sleepy_semaphore(i: int, duration: float, sem: Semaphore) -> int:
    """:func:`sleepy` holding a lease of ``sem``."""
    with sem:
        time.sleep(duration)
    return i


def holder(path: str, duration: float) -> int:
    """Log the time to ``path``, then hold the thread (and any slot) for ``duration``."""
    log_entry(path)
    time.sleep(duration)
    return 1


def holder_semaphore(path: str, duration: float, sem: Semaphore) -> int:
    """:func:`holder` inside a lease of ``sem``."""
    with sem:
        log_entry(path)
        time.sleep(duration)
    return 1


def random_block(nbytes: int, seed: int = 0) -> Any:
    """A numpy array of ``nbytes`` pseudo-random bytes (as int64), the same for the same seed."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 2**63, size=nbytes // 8, dtype=np.int64)


def digest(block: Any) -> str:
    """SHA-256 of a numpy array's bytes: proves a large result arrived whole and unchanged."""
    import hashlib

    return hashlib.sha256(memoryview(block).cast("B")).hexdigest()
