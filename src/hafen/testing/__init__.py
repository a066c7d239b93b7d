"""Test support for hafen's Dask extensions, shared by the test suite and the benchmarks.

- :mod:`._poll`: :func:`poll_for` / :func:`async_poll_for`, waiting for a condition with a
  deadline (as distributed's ``utils_test`` helpers, without importing pytest);
- :mod:`._clusters`: process-based clusters with hafen's extensions, and ``dask`` processes;
- :mod:`._tasklog`: tasks that log when they ran, and readers of those logs;
- :mod:`._tasks`: task functions that worker processes import by name.

Importing this package never imports pytest; ``tests/cluster/conftest.py`` wraps these helpers
in fixtures. Benchmarks import it like any module.
"""

from __future__ import annotations

from hafen.testing._clusters import (
    DASK,
    dask_cli,
    nanny_of,
    pid_exited,
    preloaded_cluster,
    process_cluster,
    stop_process,
    worker_pids,
)
from hafen.testing._poll import DEADLINE, async_poll_for, poll_for
from hafen.testing._tasklog import (
    ExecLog,
    TaskLog,
    leased,
    log_event,
    logged_task,
    max_overlap,
    read_log,
    timed_task,
)
from hafen.testing._tasks import (
    double,
    flaky,
    gated_sum,
    holder,
    holder_semaphore,
    log_entry,
    sleepy,
    sleepy_semaphore,
    sleepy_serial,
    tiny,
    tiny_semaphore,
    wait_event,
)

__all__ = [
    "DASK",
    "DEADLINE",
    "ExecLog",
    "TaskLog",
    "async_poll_for",
    "dask_cli",
    "double",
    "flaky",
    "gated_sum",
    "holder",
    "holder_semaphore",
    "leased",
    "log_entry",
    "log_event",
    "logged_task",
    "max_overlap",
    "nanny_of",
    "pid_exited",
    "poll_for",
    "preloaded_cluster",
    "process_cluster",
    "read_log",
    "sleepy",
    "sleepy_semaphore",
    "sleepy_serial",
    "stop_process",
    "timed_task",
    "tiny",
    "tiny_semaphore",
    "wait_event",
    "worker_pids",
]
