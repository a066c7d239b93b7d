"""Limits on a process-based LocalCluster of one worker with one thread, with
``distributed.scheduler.no-workers-timeout`` set to 1 second.

One thread makes a blocked thread visible; the short timeout shows that tasks held for longer
than it are not failed, while a task with truly unsatisfiable restrictions still is.
"""

from __future__ import annotations

from collections.abc import Iterator

import dask
import pytest
from distributed import Client, wait
from distributed.scheduler import NoValidWorkerError

import hafen
from hafen.testing import poll_for, process_cluster, sleepy

NO_WORKERS_TIMEOUT = "1s"


@pytest.fixture(scope="module")
def client_1x1() -> Iterator[Client]:
    with (
        dask.config.set({"distributed.scheduler.no-workers-timeout": NO_WORKERS_TIMEOUT}),
        process_cluster(1, threads_per_worker=1) as client,
    ):
        yield client


def test_an_unlimited_task_runs_while_50_limited_ones_wait(client_1x1):
    hafen.set_limit("single", concurrency=1, client=client_1x1)
    with dask.annotate(limits="single"):
        limited = client_1x1.map(sleepy, range(50), duration=0.1)
    free = client_1x1.submit(sleepy, -1, 0.0, pure=False)  # submitted after them
    assert free.result(timeout=30) == -1
    done = sum(f.done() for f in limited)
    info = hafen.limits(client=client_1x1)["single"]
    assert done <= 3, done
    assert info["waiting"] >= 45, info
    client_1x1.cancel(limited)


def test_held_tasks_outlive_no_workers_timeout(client_1x1):
    hafen.set_limit("slow", concurrency=1, client=client_1x1)
    with dask.annotate(limits="slow"):
        futures = client_1x1.map(sleepy, range(6), duration=0.5)  # ~3 s > 1 s timeout
    assert client_1x1.gather(futures) == list(range(6))

    # the timeout is in force: a task no worker can ever run still fails
    impossible = client_1x1.submit(sleepy, 0, 0.0, resources={"GPU": 1}, pure=False)
    wait([impossible], timeout=30)
    assert isinstance(impossible.exception(), NoValidWorkerError)


def test_held_tasks_count_as_demand_for_adaptive_scaling(client_1x1):
    hafen.set_limit("demand", concurrency=1, client=client_1x1)
    with dask.annotate(limits="demand"):
        futures = client_1x1.map(sleepy, range(40), duration=1.0)
    keys = {f.key for f in futures}

    def demand(dask_scheduler):
        held = sum(1 for ts in dask_scheduler.unrunnable if ts.key in keys)
        return held, dask_scheduler.adaptive_target(), len(dask_scheduler.workers)

    poll_for(lambda: client_1x1.run_on_scheduler(demand)[0] >= 38, what="38 tasks held")
    held, target, workers = client_1x1.run_on_scheduler(demand)
    assert held >= 38
    # 40 tasks of the default 0.5 s estimate against a 5 s target duration ask for 4 workers;
    # without counting held tasks it would be the one running task, i.e. 1 worker.
    assert target > workers == 1
    client_1x1.cancel(futures)
