"""Test support for hafen's Dask extensions, shared by the test suite and the benchmarks.

- :mod:`._poll`: :func:`poll_for` / :func:`async_poll_for`, waiting for a condition with a
  deadline (as distributed's ``utils_test`` helpers, without importing pytest);
- :mod:`._clusters`: clusters with hafen's extensions (in-process, process-based, and ``dask``
  processes as in production);
- :mod:`._tasklog`: tasks that log when they ran, and readers of those logs;
- :mod:`._tasks`: task functions that worker processes import by name;
- :mod:`._memory`: graphs whose producers pile results up, and a scheduler plugin that watches
  them (the back-pressure tests and ``benchmarks/memory.py``; loaded on first use, as it imports
  distributed);
- services the tests start for real: :mod:`._postgres` (a PostgreSQL server), :mod:`._azurite`
  (Azure Blob Storage's emulator), :mod:`._moto` (S3 on moto's server), on ports from
  :mod:`._net`; ``python -m hafen.testing azurite`` runs one Azurite by hand.

Importing this package never imports pytest (nor the services' client libraries); the
``conftest.py`` files wrap these helpers in fixtures. Benchmarks import it like any module.
"""

from __future__ import annotations

from hafen.testing._azurite import Azurite, install_azurite, running_azurite
from hafen.testing._clusters import (
    DASK,
    dask_cli,
    nanny_of,
    pid_exited,
    preloaded_cluster,
    process_cluster,
    stop_process,
    thread_cluster,
    worker_pids,
)
from hafen.testing._moto import MotoS3, running_moto_s3
from hafen.testing._net import free_port, wait_listening
from hafen.testing._poll import DEADLINE, async_poll_for, poll_for
from hafen.testing._postgres import PostgresServer, running_postgres
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
    digest,
    double,
    flaky,
    gated_sum,
    holder,
    holder_semaphore,
    log_entry,
    random_block,
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
    "Azurite",
    "ExecLog",
    "GroupProbe",
    "MotoS3",
    "PostgresServer",
    "TaskLog",
    "async_poll_for",
    "consume",
    "dask_cli",
    "digest",
    "double",
    "fan_in",
    "flaky",
    "free_port",
    "gated_sum",
    "holder",
    "holder_semaphore",
    "install_azurite",
    "install_probe",
    "leased",
    "log_entry",
    "log_event",
    "logged_task",
    "max_overlap",
    "nanny_of",
    "pid_exited",
    "poll_for",
    "preloaded_cluster",
    "probe_report",
    "process_cluster",
    "produce",
    "random_block",
    "read_log",
    "running_azurite",
    "running_moto_s3",
    "running_postgres",
    "sleepy",
    "sleepy_semaphore",
    "sleepy_serial",
    "stop_process",
    "thread_cluster",
    "timed_task",
    "tiny",
    "tiny_semaphore",
    "total",
    "wait_event",
    "wait_listening",
    "worker_pids",
]

#: Names of :mod:`._memory`, imported on first use (it imports distributed, which importing this
#: package does not).
_MEMORY = {"GroupProbe", "consume", "fan_in", "install_probe", "probe_report", "produce", "total"}


def __getattr__(name: str) -> object:
    if name in _MEMORY:
        from hafen.testing import _memory

        return getattr(_memory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
