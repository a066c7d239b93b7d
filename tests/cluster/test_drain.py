"""Drain: retire workers without recomputation; SIGTERM makes a worker drain itself.

Policy decisions (order, timeout, no recipients, idempotent requests) run on in-process clusters;
the proofs (100 unique results mid-graph, a real SIGTERM) on process-based LocalClusters.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
from distributed import Event
from distributed.active_memory_manager import ActiveMemoryManagerExtension
from distributed.core import Status
from distributed.utils_test import gen_cluster

import hafen
from hafen.cluster import DrainReport
from hafen.cluster.resilience import (
    PLUGIN_NAME,
    DrainOnSigterm,
    DrainWorkers,
    install_resilience,
    resilience_counts,
)
from hafen.errors import ConfigError
from hafen.testing import (
    DEADLINE,
    ExecLog,
    async_poll_for,
    dask_cli,
    gated_sum,
    logged_task,
    nanny_of,
    pid_exited,
    poll_for,
    process_cluster,
    sleepy,
    wait_event,
    worker_pids,
)


def inc(x: int) -> int:
    return x + 1


def closed(nanny) -> bool:
    """Whether a (LocalCluster) nanny has closed: it will start no new worker."""
    return nanny.status == Status.closed


# --- decisions, on in-process clusters ---------------------------------------------------------


@gen_cluster(client=True, nthreads=[("", 1)] * 2)
async def test_costliest_results_are_asked_for_first(c, s, a, b):
    plugin = install_resilience(s)
    seconds = {"k0": 0.0, "k1": 0.25, "k2": 0.05, "k3": 0.5, "k4": 0.1}
    futs = [
        c.submit(sleepy, i, sec, key=key, workers=[a.address])
        for i, (key, sec) in enumerate(seconds.items())
    ]
    await c.gather(futs)
    assert all(s.tasks[k].who_has == {s.workers[a.address]} for k in seconds)

    policy = DrainWorkers([a.address], plugin.policy.cost, batch_keys=2)
    amm = ActiveMemoryManagerExtension(s, policies={policy}, register=False, start=False)
    amm.run_once()
    assert {ts.key for ts in policy.requested} == {"k3", "k1"}
    amm.run_once()  # the next pass asks for the next ones; the first two are on their way
    assert {ts.key for ts in policy.requested} >= {"k3", "k1", "k4"}


@gen_cluster(client=True, nthreads=[("", 1)] * 2)
async def test_drain_at_timeout_reports_what_will_be_recomputed_then_closes(c, s, a, b):
    install_resilience(s)
    futs = c.map(inc, range(20), workers=[a.address], allow_other_workers=True)
    await c.gather(futs)
    on_a = {f.key for f in futs if s.tasks[f.key].who_has == {s.workers[a.address]}}
    assert on_a
    s.plugins[PLUGIN_NAME].counts(reset=True)

    report = await hafen.drain(c, [a.address], timeout=0)
    assert isinstance(report, DrainReport)
    assert report.timed_out and not report.complete
    assert set(report.recompute) == on_a
    assert report.closed and report.workers == (a.address,)
    await async_poll_for(lambda: a.address not in s.workers, what="drained worker removed")
    assert await c.gather(futs) == list(range(1, 21))
    assert s.plugins[PLUGIN_NAME].counts()["recomputed"] == len(on_a)
    assert "will be recomputed (timed out)" in str(report)


@gen_cluster(client=True, nthreads=[("", 1)] * 2)
async def test_drain_moves_unique_results_and_is_idempotent(c, s, a, b):
    install_resilience(s)
    futs = c.map(inc, range(30), workers=[a.address], allow_other_workers=True)
    await c.gather(futs)
    on_a = {f.key for f in futs if s.tasks[f.key].who_has == {s.workers[a.address]}}
    drain_id = uuid.uuid4().hex
    handler = s.handlers["hafen_drain"]
    first, second = await asyncio.gather(
        handler(workers=[a.address], timeout=DEADLINE, drain_id=drain_id),
        handler(workers=[a.address], timeout=DEADLINE, drain_id=drain_id),
    )
    assert first == second  # the retried request joined the first drain
    assert first["moved"] == len(on_a) and first["recompute"] == [] and not first["timed_out"]
    assert a.address not in s.workers
    assert all(s.tasks[f.key].who_has == {s.workers[b.address]} for f in futs)
    assert await c.gather(futs) == list(range(1, 31))
    assert s.plugins[PLUGIN_NAME].counts()["recomputed"] == 0


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_drain_without_recipients_gives_up_at_once(c, s, a):
    install_resilience(s)
    futs = c.map(inc, range(5))
    await c.gather(futs)
    report = await hafen.drain(c, a.address, timeout=DEADLINE, close=False)
    assert report.no_recipients and not report.timed_out
    assert set(report.recompute) == {f.key for f in futs}
    assert not report.closed and a.address in s.workers


@gen_cluster(client=True, nthreads=[("", 1)] * 2)
async def test_drain_by_name_installs_the_plugin_when_missing(c, s, a, b):
    assert PLUGIN_NAME not in s.plugins  # a plain Dask cluster
    fut = c.submit(inc, 1, workers=[a.address], allow_other_workers=True)
    await fut
    report = await hafen.drain(c, [str(a.name)], timeout=DEADLINE)
    assert report.workers == (a.address,) and report.moved == 1 and report.complete
    assert PLUGIN_NAME in s.plugins
    unknown = await hafen.drain(c, ["tcp://127.0.0.1:1"], timeout=1)
    assert unknown.workers == () and unknown.complete
    with pytest.raises(ConfigError):
        hafen.drain(c, [b.address], timeout="soon")


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_sigterm_plugin_restores_the_previous_handler(c, s, a):
    # gen_cluster runs workers on the main thread: the plugin installs a real handler here.
    before = signal.getsignal(signal.SIGTERM)
    await c.register_plugin(DrainOnSigterm(timeout=5))
    assert signal.getsignal(signal.SIGTERM) is not before
    await c.unregister_worker_plugin("hafen-drain-on-sigterm")
    assert signal.getsignal(signal.SIGTERM) is before


# --- proofs, on process-based clusters ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["hafen", "tcp"])  # hafen.connect()'s default, and Dask's
def test_drain_of_a_worker_holding_100_unique_results_mid_graph_recomputes_nothing(
    tmp_path, protocol
):
    log = ExecLog(tmp_path / "exec.log")
    gate = f"gate-{uuid.uuid4().hex}"
    expected_parts = [logged_task(i, str(tmp_path / "local.log")) for i in range(100)]
    with process_cluster(3, protocol=protocol) as client:
        assert client.scheduler.address.startswith(f"{protocol}://")
        victim = sorted(client.scheduler_info()["workers"])[0]
        nanny = nanny_of(client, victim)
        parts = [
            client.submit(
                logged_task,
                i,
                log.path,
                0.0,
                workers=[victim],
                pure=False,
            )
            for i in range(100)
        ]
        client.gather(parts)
        # Mid-graph: a reduction waits on a gate while other tasks keep workers busy.
        opened = client.submit(wait_event, gate, pure=False)
        busy = [client.submit(logged_task, 1000 + i, log.path, 1.0, pure=False) for i in range(4)]
        total = client.submit(gated_sum, parts + busy, opened, pure=False)
        who_has = client.who_has(parts)
        assert all(who_has[p.key] == (victim,) for p in parts)  # 100 unique results
        resilience_counts(client, reset=True)

        report = hafen.drain(client, [victim], timeout="2m")

        assert report.complete and not report.timed_out, report
        assert report.moved >= 100
        assert victim not in client.scheduler_info()["workers"]
        Event(gate, client=client).set()
        expected = gated_sum(expected_parts + [logged_task(1000 + i, os.devnull) for i in range(4)])
        assert total.result(timeout=DEADLINE) == expected
        after = resilience_counts(client)
        assert after["recomputed"] == 0 and after["lost"] == 0, after
        assert log.computed_more_than_once() == {}
        # The drained worker's nanny closed too: it was not replaced.
        poll_for(lambda: closed(nanny), what="the victim's nanny closed")
        assert len(client.scheduler_info()["workers"]) == 2


@pytest.mark.slow
def test_sigterm_moves_a_workers_results_before_it_exits(tmp_path):
    log = ExecLog(tmp_path / "exec.log")
    with process_cluster(3) as client:
        victim = sorted(client.scheduler_info()["workers"])[0]
        nanny = nanny_of(client, victim)
        parts = [
            client.submit(
                logged_task,
                i,
                log.path,
                0.0,
                workers=[victim],
                allow_other_workers=True,
                pure=False,
            )
            for i in range(40)
        ]
        others = client.map(logged_task, range(100, 120), path=log.path, pure=False)
        client.gather(parts + others)
        pid = worker_pids(client)[victim]
        resilience_counts(client, reset=True)

        os.kill(pid, signal.SIGTERM)

        poll_for(lambda: victim not in client.scheduler_info()["workers"], what="victim gone")
        poll_for(lambda: pid_exited(pid), what="worker process exited")
        who_has = client.who_has(parts)
        assert all(who_has[p.key] and victim not in who_has[p.key] for p in parts)
        values = client.gather(parts + others)
        assert values == [logged_task(i, os.devnull) for i in [*range(40), *range(100, 120)]]
        after = resilience_counts(client)
        assert after["recomputed"] == 0 and after["lost"] == 0, after
        assert log.computed_more_than_once() == {}
        poll_for(lambda: closed(nanny), what="the victim's nanny closed")
        assert len(client.scheduler_info()["workers"]) == 2  # not restarted: it was preempted


@gen_cluster(
    client=True,
    nthreads=[("", 1)],
    scheduler_kwargs={"preload": ["hafen.cluster"]},
    worker_kwargs={"preload": ["hafen.cluster"]},
)
async def test_preload_installs_scheduler_and_worker_sides(c, s, a):
    assert PLUGIN_NAME in s.plugins and "hafen_drain" in s.handlers
    assert "hafen-drain-on-sigterm" in a.plugins


@pytest.mark.slow
def test_sigterm_to_a_dask_worker_cli_process_drains_it(tmp_path):
    """The real deployment: ``dask worker`` with a nanny; the orchestrator signals the nanny."""
    log = ExecLog(tmp_path / "exec.log")
    with process_cluster(1) as client:
        address = client.scheduler.address
        proc = dask_cli(
            "worker", address, "--nthreads", "1", "--name", "cli-worker", "--no-dashboard",
            "--preload", "hafen.cluster", "--preload-nanny", "hafen.cluster",
        )  # fmt: skip
        try:
            client.wait_for_workers(2, timeout=120)
            victim = next(
                addr
                for addr, info in client.scheduler_info()["workers"].items()
                if info["name"] == "cli-worker"
            )
            parts = [
                client.submit(logged_task, i, log.path, 0.0, workers=[victim], pure=False)
                for i in range(20)
            ]
            client.gather(parts)
            resilience_counts(client, reset=True)

            proc.send_signal(signal.SIGTERM)  # to the nanny, as Kubernetes would

            assert proc.wait(timeout=120) == 0
            assert victim not in client.scheduler_info()["workers"]
            assert client.gather(parts) == [logged_task(i, os.devnull) for i in range(20)]
            after = resilience_counts(client)
            assert after["recomputed"] == 0 and after["lost"] == 0, after
            assert log.computed_more_than_once() == {}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
