"""Clusters for tests and benchmarks, with hafen's extensions installed.

Faults that need processes (SIGKILL, SIGTERM, a stand-alone ``dask worker``) need a process-based
``LocalCluster`` (:func:`process_cluster`) or the ``dask`` command line (:func:`preloaded_cluster`);
other tests take an in-process one, :func:`thread_cluster`, or distributed's ``gen_cluster``.
Everything here waits for what it starts with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hafen.testing._poll import DEADLINE, poll_for

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "DASK",
    "dask_cli",
    "nanny_of",
    "pid_exited",
    "preloaded_cluster",
    "process_cluster",
    "stop_process",
    "thread_cluster",
    "worker_pids",
]

#: The ``dask`` command line of this environment.
DASK = str(Path(sys.executable).with_name("dask"))


@contextlib.contextmanager
def process_cluster(n_workers: int = 4, **kwargs: Any) -> Iterator[Client]:
    """A process-based LocalCluster through ``hafen.connect``, its workers up.

    Defaults: 1 thread and 1 GiB per worker, a dashboard on a free port; ``kwargs`` go to
    ``LocalCluster``. Closing the client closes the cluster.
    """
    from hafen.cluster import connect

    kwargs.setdefault("threads_per_worker", 1)
    kwargs.setdefault("memory_limit", "1GiB")
    kwargs.setdefault("dashboard_address", ":0")
    client = connect(n_workers=n_workers, **kwargs)
    try:
        client.wait_for_workers(n_workers, timeout=DEADLINE)
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def thread_cluster(
    n_workers: int = 1, threads_per_worker: int = 2, **kwargs: Any
) -> Iterator[Client]:
    """An in-process LocalCluster (workers are threads) through ``hafen.connect``.

    It starts in a fraction of the time of worker processes; use it where no task needs a process
    of its own (no SIGKILL, no SIGTERM). A dashboard on a free port unless ``kwargs`` say
    otherwise; closing the client closes the cluster.
    """
    from hafen.cluster import connect

    kwargs.setdefault("dashboard_address", ":0")
    client = connect(
        processes=False, n_workers=n_workers, threads_per_worker=threads_per_worker, **kwargs
    )
    try:
        yield client
    finally:
        client.close()


def worker_pids(client: Client) -> dict[str, int]:
    """Process id of each worker, by address."""
    return client.run(os.getpid)


def nanny_of(client: Client, worker: str) -> Any:
    """The nanny (in this process) of ``worker`` of the client's LocalCluster, or None.

    Look it up while the worker runs: a nanny forgets its worker's address when it closes.
    """
    cluster = client.cluster
    if cluster is None:
        return None
    for nanny in cluster.workers.values():
        if getattr(nanny, "worker_address", None) == worker:
            return nanny
    return None


def pid_exited(pid: int) -> bool:
    """Whether no process ``pid`` exists (any more)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def dask_cli(*args: str, log: Path | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``dask ARGS`` (stdout discarded, stderr to ``log`` or discarded).

    The process inherits this one's environment, ``PYTHONPATH`` included, so it imports the same
    hafen (and :mod:`hafen.testing`'s task functions) as the caller.
    """
    stderr: Any = subprocess.DEVNULL if log is None else log.open("w")
    try:
        return subprocess.Popen([DASK, *args], stdout=subprocess.DEVNULL, stderr=stderr, **popen)
    finally:
        if log is not None:
            stderr.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it does not exit within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def preloaded_cluster(
    directory: Path, *, nthreads: int = 2, preload: str = "hafen.cluster"
) -> Iterator[str]:
    """``dask scheduler --preload PRELOAD`` and one ``dask worker``, as in production.

    Logs go to ``directory``. Yields the scheduler address once the scheduler is up (the worker
    may still be connecting: ``client.wait_for_workers(1)``).
    """
    scheduler_file = directory / "scheduler.json"
    scheduler_log = directory / "scheduler.log"
    scheduler = dask_cli(
        "scheduler", "--preload", preload, "--scheduler-file", str(scheduler_file),
        "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0", "--no-show",
        log=scheduler_log,
    )  # fmt: skip
    worker = None
    try:

        def started() -> bool:
            assert scheduler.poll() is None, scheduler_log.read_text()
            return scheduler_file.exists()

        poll_for(started, 60, period=0.1, what="the scheduler wrote its file")
        address = str(json.loads(scheduler_file.read_text())["address"])
        worker = dask_cli(
            "worker", address, "--nthreads", str(nthreads), "--nworkers", "1", "--no-dashboard",
            "--memory-limit", "1GiB",
            log=directory / "worker.log",
        )  # fmt: skip
        yield address
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(scheduler)
