"""Cluster-wide limits on a process-based LocalCluster (2 workers x 4 threads, real processes).

Each test uses its own limit names, so they share one cluster. Nothing here waits a fixed time:
tests wait for conditions (``poll_for``), hold tasks on a distributed ``Event`` to decide when
they finish, and prove that a slot was freed "at once" by the order of events on the scheduler,
not by a stopwatch. Rates are tested with an injected clock in ``test_limits_rate.py``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import dask
import pytest
from click.testing import CliRunner
from distributed import Client, Event, SchedulerPlugin, wait

import hafen
from hafen.cli import main
from hafen.errors import LeaseTimeoutError, LimitError
from hafen.testing import flaky, leased, max_overlap, poll_for, read_log


def _info(client: Client, name: str) -> dict:
    return hafen.limits(client=client)[name]


class RemovalProbe(SchedulerPlugin):
    """Records a limit's state in the scheduler's ``remove_worker`` hook.

    Plugins run in the order they were added, so this runs after hafen's own hooks and after the
    scheduler released the dead worker's tasks, and before anything else happens: what it sees
    is what the removal itself did.
    """

    def __init__(self, limit: str) -> None:
        self.limit = limit
        self.seen: list[dict[str, Any]] = []

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        info = scheduler.extensions["hafen_limits"].info()[self.limit]
        self.seen.append({"worker": worker, **info})


def _add_probe(dask_scheduler: Any, limit: str) -> None:
    dask_scheduler.add_plugin(RemovalProbe(limit), name=f"probe-{limit}")


def _probe_seen(dask_scheduler: Any, limit: str) -> list[dict[str, Any]]:
    return list(dask_scheduler.plugins[f"probe-{limit}"].seen)


def _remove_probe(dask_scheduler: Any, limit: str) -> None:
    dask_scheduler.remove_plugin(name=f"probe-{limit}")


def test_never_more_than_the_limit_run_at_once(client_2x4, task_log):
    hafen.set_limit("overlap3", concurrency=3, client=client_2x4)
    with dask.annotate(limits=["overlap3"]):
        futures = client_2x4.map(task_log.task, range(200), path=task_log.path, duration=0.03)
    assert client_2x4.gather(futures) == [2 * i for i in range(200)]
    assert len(task_log.starts()) == 200
    assert task_log.max_overlap() == 3
    info = _info(client_2x4, "overlap3")
    assert info["granted"] == 200
    assert info["in_use"] == 0 and info["waiting"] == 0


def test_delayed_tasks_annotated_as_in_the_design(client_2x4, task_log):
    hafen.set_limit("delayed2", concurrency=2, client=client_2x4)
    with dask.annotate(limits=["delayed2"]):
        parts = [dask.delayed(task_log.task)(i, task_log.path, 0.05) for i in range(20)]
    total = dask.delayed(sum)(parts)  # not limited: takes no slot
    assert client_2x4.compute(total).result(timeout=60) == 2 * sum(range(20))
    assert task_log.max_overlap() == 2
    assert _info(client_2x4, "delayed2")["granted"] == 20


def test_unknown_limit_and_bad_annotations_are_rejected_at_submission(client_2x4, task_log):
    hafen.set_limit("known", concurrency=1, client=client_2x4)
    with dask.annotate(limits=["known", "no-such-limit"]):
        unknown = client_2x4.submit(task_log.task, 1, task_log.path, 0.0, pure=False)
    with dask.annotate(limits=42):
        malformed = client_2x4.submit(task_log.task, 2, task_log.path, 0.0, pure=False)
    with pytest.raises(LimitError, match=r"unknown limit.*'no-such-limit'.*known:.*known"):
        unknown.result(timeout=30)
    with pytest.raises(LimitError, match="must be a limit name or a list"):
        malformed.result(timeout=30)
    assert task_log.starts() == []  # neither ever reached a worker
    assert _info(client_2x4, "known")["in_use"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": -1}, "concurrency must be >= 0, got -1"),
        ({"concurrency": 2.5}, "concurrency must be an integer"),
        ({"rate": "20 per second"}, "invalid rate '20 per second'"),
        ({"rate": "0/s"}, "must be positive"),
        ({"rate": -3}, "must be positive"),
        ({"concurrency": 1, "burst": 0}, "burst must be >= 1"),
        ({}, "give concurrency=, rate= or both"),
    ],
)
def test_bad_settings_are_rejected(client_2x4, kwargs, message):
    with pytest.raises(LimitError, match=message):
        hafen.set_limit("bad", client=client_2x4, **kwargs)


def test_bad_settings_are_rejected_by_the_scheduler_too(client_2x4):
    """A client that skips validation still gets a clear LimitError from the scheduler."""

    async def raw():
        return await client_2x4.scheduler.hafen_limits_set(name="x", concurrency=-2)

    with pytest.raises(LimitError, match="concurrency must be >= 0"):
        client_2x4.sync(raw)
    with pytest.raises(LimitError, match="invalid limit name"):
        hafen.set_limit("has space", concurrency=1, client=client_2x4)


def test_resizing_from_2_to_6_takes_effect_at_once(client_2x4, task_log):
    gate = Event(f"resize-{uuid.uuid4().hex}", client=client_2x4)
    hafen.set_limit("resize", concurrency=2, client=client_2x4)
    with dask.annotate(limits="resize"):
        futures = client_2x4.map(
            task_log.task, range(14), path=task_log.path, duration=0.0, gate=gate.name
        )
    poll_for(lambda: _info(client_2x4, "resize")["in_use"] == 2, what="2 running")
    assert _info(client_2x4, "resize")["waiting"] == 12
    hafen.set_limit("resize", concurrency=6, client=client_2x4)
    poll_for(lambda: _info(client_2x4, "resize")["in_use"] == 6, what="6 running")
    # At once: no running task has finished (all wait for the gate), so no slot was freed; the
    # four new grants came from the resize alone.
    assert task_log.ends() == []
    poll_for(lambda: len(task_log.starts()) == 6, what="6 started on their workers")
    gate.set()
    client_2x4.gather(futures)
    assert task_log.max_overlap() == 6


def test_a_failed_task_frees_its_slot_and_takes_one_again_on_retry(client_2x4, tmp_path):
    hafen.set_limit("retry", concurrency=1, client=client_2x4)
    with dask.annotate(limits="retry"):
        retried = client_2x4.submit(flaky, str(tmp_path / "a"), retries=1, pure=False)
    assert retried.result(timeout=30) == "ok"
    info = _info(client_2x4, "retry")
    assert (info["granted"], info["in_use"]) == (2, 0)

    with dask.annotate(limits="retry"):
        failing = client_2x4.submit(flaky, str(tmp_path / "b"), pure=False)
    wait([failing], timeout=30)
    assert failing.status == "error"
    info = _info(client_2x4, "retry")
    assert (info["granted"], info["in_use"]) == (3, 0)
    failing.retry()
    assert failing.result(timeout=30) == "ok"
    info = _info(client_2x4, "retry")
    assert (info["granted"], info["in_use"]) == (4, 0)

    # a task admitted once keeps running after its limit is removed: the retry is not rejected
    hafen.set_limit("retry-gone", concurrency=1, client=client_2x4)
    with dask.annotate(limits="retry-gone"):
        orphan = client_2x4.submit(flaky, str(tmp_path / "c"), pure=False)
    wait([orphan], timeout=30)
    hafen.remove_limit("retry-gone", client=client_2x4)
    orphan.retry()
    assert orphan.result(timeout=30) == "ok"


def test_waiters_are_released_highest_priority_then_oldest_first(client_2x4, task_log):
    hafen.set_limit("order", concurrency=1, client=client_2x4)
    with hafen.lease("order", client=client_2x4):  # hold the only slot while tasks queue up
        futures = []
        for i, priority in enumerate([0, 0, 5, 0, 5, 9]):
            with dask.annotate(limits="order", priority=priority):
                futures.append(client_2x4.submit(task_log.task, i, task_log.path, 0.0, pure=False))
            # queued before the next is submitted: seniority follows submission order
            poll_for(lambda n=i + 1: _info(client_2x4, "order")["waiting"] == n, what="queued")
        assert task_log.starts() == []
    client_2x4.gather(futures)
    assert task_log.starts() == ["5", "2", "4", "0", "1", "3"]


def test_several_limits_on_one_task_and_limits_removed_while_tasks_wait(client_2x4, task_log):
    gate = Event(f"ab-{uuid.uuid4().hex}", client=client_2x4)
    hafen.set_limit("a", concurrency=2, client=client_2x4)
    hafen.set_limit("b", concurrency=1, client=client_2x4)
    with dask.annotate(limits=["a", "b"]):
        futures = client_2x4.map(
            task_log.task, range(6), path=task_log.path, duration=0.0, gate=gate.name
        )
    poll_for(
        lambda: len(task_log.starts()) == 1 and _info(client_2x4, "b")["waiting"] == 5,
        what="1 running, 5 waiting",
    )
    assert _info(client_2x4, "b")["in_use"] <= 1
    assert hafen.remove_limit("b", client=client_2x4) is True
    assert hafen.remove_limit("b", client=client_2x4) is False  # idempotent
    # the waiters no longer wait for "b": a second one starts, in the other slot of "a"
    poll_for(lambda: len(task_log.starts()) == 2, what="a second task running")
    gate.set()
    client_2x4.gather(futures)
    assert task_log.max_overlap() == 2  # "a" still holds
    with dask.annotate(limits="b"), pytest.raises(LimitError, match="unknown limit"):
        client_2x4.submit(task_log.task, 9, task_log.path, 0.0, pure=False).result(timeout=30)


def test_a_lease_inside_a_task_and_from_the_client(client_2x4, tmp_path):
    hafen.set_limit("lease1", concurrency=1, client=client_2x4)
    log = str(tmp_path / "leases.log")
    futures = [client_2x4.submit(leased, log, "lease1", 0.2, pure=False) for _ in range(4)]
    lease_ids = client_2x4.gather(futures)
    assert len(set(lease_ids)) == 4
    info = _info(client_2x4, "lease1")
    assert (info["granted"], info["in_use"]) == (4, 0)
    # one lease at a time: each was held from its start to its end, and none overlapped
    assert sorted(key for kind, _, key in read_log(log) if kind == "start") == sorted(lease_ids)
    assert max_overlap(log) == 1

    with hafen.lease("lease1", client=client_2x4):
        assert _info(client_2x4, "lease1")["in_use"] == 1
        with (
            pytest.raises(LeaseTimeoutError, match=r"not granted within 0\.3s"),
            hafen.lease("lease1", timeout=0.3, client=client_2x4),
        ):
            pass
        assert _info(client_2x4, "lease1")["waiting"] == 0
    assert _info(client_2x4, "lease1")["in_use"] == 0
    with (
        pytest.raises(LimitError, match="unknown limit"),
        hafen.lease("no-such-lease-limit", client=client_2x4),
    ):
        pass


def test_lease_requests_are_idempotent(client_2x4):
    hafen.set_limit("idem", concurrency=2, client=client_2x4)

    async def acquire_twice_release_twice():
        scheduler = client_2x4.scheduler
        first = await scheduler.hafen_limits_acquire(name=["idem"], lease_id="L1", owner="t")
        second = await scheduler.hafen_limits_acquire(name=["idem"], lease_id="L1", owner="t")
        info = (await scheduler.hafen_limits_info())["idem"]
        released = [await scheduler.hafen_limits_release(lease_id="L1") for _ in range(2)]
        return first, second, info, released

    first, second, info, released = client_2x4.sync(acquire_twice_release_twice)
    assert (first, second) == (True, True)
    assert (info["in_use"], info["granted"]) == (1, 1)
    assert released == [True, False]
    assert _info(client_2x4, "idem")["in_use"] == 0


def test_installing_twice_is_harmless(client_2x4):
    hafen.set_limit("survives", concurrency=5, client=client_2x4)

    def install_and_count(dask_scheduler):
        from hafen.cluster import install_scheduler_extensions

        before = dask_scheduler.extensions["hafen_limits"]
        install_scheduler_extensions(dask_scheduler)
        install_scheduler_extensions(dask_scheduler)
        limit_plugins = [p for p in dask_scheduler.plugins if p.startswith("hafen-limits")]
        return before is dask_scheduler.extensions["hafen_limits"], limit_plugins

    same, plugins = client_2x4.run_on_scheduler(install_and_count)
    assert same and plugins == ["hafen-limits"]
    assert _info(client_2x4, "survives")["concurrency"] == 5


def test_limits_are_served_as_prometheus_metrics(client_2x4, task_log):
    gate = Event(f"metrics-{uuid.uuid4().hex}", client=client_2x4)
    # one token an hour: the second task waits for as long as the test looks
    hafen.set_limit("metrics", concurrency=2, rate="1/h", client=client_2x4)
    with dask.annotate(limits="metrics"):
        futures = client_2x4.map(
            task_log.task, range(3), path=task_log.path, duration=0.0, gate=gate.name
        )
    poll_for(lambda: _info(client_2x4, "metrics")["in_use"] == 1, what="1 running")
    url = client_2x4.dashboard_link.replace("/status", "/metrics")
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    assert 'dask_hafen_limits_concurrency{name="metrics"} 2.0' in text
    assert 'dask_hafen_limits_rate_per_second{name="metrics"}' in text
    assert 'dask_hafen_limits_in_use{name="metrics"} 1.0' in text
    assert 'dask_hafen_limits_waiting{name="metrics"} 2.0' in text
    assert 'dask_hafen_limits_granted_total{name="metrics"} 1.0' in text
    assert 'dask_hafen_limits_longest_wait_seconds{name="metrics"}' in text
    gate.set()
    client_2x4.cancel(futures)


def test_the_limits_command_prints_the_table(client_2x4):
    hafen.set_limit("cli-db", concurrency=4, rate="20/s", client=client_2x4)
    result = CliRunner().invoke(main, ["limits", "--scheduler", client_2x4.scheduler.address])
    assert result.exit_code == 0, result.output
    for text in ("cli-db", "20/s", "concurrency", "in use", "waiting", "granted", "longest"):
        assert text in result.output


def test_the_limits_command_without_a_scheduler_says_so(monkeypatch):
    monkeypatch.delenv("HAFEN_SCHEDULER", raising=False)
    monkeypatch.chdir(Path(__file__).parent)
    result = CliRunner().invoke(main, ["limits"])
    assert result.exit_code == 1
    assert "no scheduler" in result.output


@pytest.mark.slow
def test_sigkill_frees_the_dead_workers_slots_at_once(client_2x4, task_log):
    client = client_2x4
    client.wait_for_workers(2, timeout=60)
    workers = sorted(client.scheduler_info()["workers"])
    doomed = workers[0]
    hafen.set_limit("kill", concurrency=3, client=client)
    client.run_on_scheduler(_add_probe, limit="kill")
    with dask.annotate(limits="kill"):
        futures = client.map(
            task_log.task,
            range(12),
            path=task_log.path,
            duration=1.0,
            workers=[doomed],
            allow_other_workers=True,  # the reruns may go elsewhere once it is dead
        )
    poll_for(lambda: len(task_log.starts()) == 3, what="3 tasks running")
    assert {w for w, keys in client.processing().items() if keys} == {doomed}
    pid = client.run(os.getpid, workers=[doomed])[doomed]
    granted_before = _info(client, "kill")["granted"]
    assert granted_before == 3
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    # the three slots are granted again (to the lost tasks' reruns) once the worker is removed
    poll_for(lambda: _info(client, "kill")["granted"] >= granted_before + 3, what="regranted")
    # ...and were free at the moment the scheduler removed it: in the same step, not later
    seen = client.run_on_scheduler(_probe_seen, limit="kill")
    client.run_on_scheduler(_remove_probe, limit="kill")
    assert [(s["worker"], s["in_use"]) for s in seen] == [(doomed, 0)], seen
    assert client.gather(futures) == [2 * i for i in range(12)]
    assert task_log.max_overlap(killed_at=killed_at) <= 3
    info = _info(client, "kill")
    assert info["in_use"] == 0 and info["granted"] == 15  # 12 tasks + 3 reruns


@pytest.mark.slow
def test_sigkill_frees_a_dead_workers_lease(client_2x4, tmp_path):
    client = client_2x4
    client.wait_for_workers(2, timeout=60)
    hafen.set_limit("kill-lease", concurrency=1, client=client)
    client.run_on_scheduler(_add_probe, limit="kill-lease")
    log = str(tmp_path / "leases.log")
    future = client.submit(leased, log, "kill-lease", 3.0, pure=False)
    poll_for(lambda: Path(log).exists(), what="lease taken")
    granted = threading.Event()

    def wait_from_the_client() -> None:
        with hafen.lease("kill-lease", client=client):
            granted.set()

    waiter = threading.Thread(target=wait_from_the_client)
    waiter.start()
    poll_for(lambda: _info(client, "kill-lease")["waiting"] == 1, what="client waits")
    holder = next(w for w, keys in client.processing().items() if keys)
    pid = client.run(os.getpid, workers=[holder])[holder]
    os.kill(pid, signal.SIGKILL)
    waiter.join(timeout=30)
    assert granted.is_set(), "the dead worker's lease was never freed"
    # freed in the step that removed the worker (no lease timeout, unlike distributed.Semaphore)
    seen = client.run_on_scheduler(_probe_seen, limit="kill-lease")
    client.run_on_scheduler(_remove_probe, limit="kill-lease")
    assert [(s["worker"], s["in_use"]) for s in seen] == [(holder, 0)], seen
    assert isinstance(future.result(timeout=60), str)  # the rerun took the lease again
    info = _info(client, "kill-lease")
    assert (info["in_use"], info["granted"]) == (0, 3)
