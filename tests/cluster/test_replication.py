"""Replication: extra copies of costly results, kept against ReduceReplicas, let go when unneeded.

In-process clusters (``gen_cluster``) test the policy's decisions; the proof that a SIGKILLed
worker costs no recomputation runs on a process-based LocalCluster with real signals.

No test waits a fixed time. Dropping a copy is immediate on the scheduler (``who_has`` changes
when the AMM enacts the drop), so "no copy was dropped" is asserted right after synchronous AMM
passes (``run_once``). "No copy was made" is asserted on every copy ever requested: all of them
go through ``Scheduler.request_acquire_replicas``, which :func:`spy_on_copies` records.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import signal
import time
import uuid
from collections import Counter
from types import SimpleNamespace

import dask
import pytest
from dask.sizeof import sizeof
from distributed import Event
from distributed.active_memory_manager import ActiveMemoryManagerExtension, ReduceReplicas
from distributed.scheduler import Scheduler, TaskPrefix, TaskState, WorkerState
from distributed.utils_test import gen_cluster

import hafen.cluster
from hafen.cluster.resilience import (
    PLUGIN_NAME,
    Replication,
    ResiliencePlugin,
    find_replication,
    install_resilience,
    resilience_counts,
    wanted_replicas,
)
from hafen.errors import ConfigError
from hafen.testing import (
    DEADLINE,
    ExecLog,
    async_poll_for,
    gated_sum,
    logged_task,
    poll_for,
    process_cluster,
    wait_event,
    worker_pids,
)


def inc(x: int) -> int:
    return x + 1


def slow_value(x: int, seconds: float, size: int = 0) -> bytes | int:
    time.sleep(seconds)
    return b"x" * size if size else x


def blocked_on(x: int, event_name: str) -> int:
    Event(event_name).wait(DEADLINE)
    return x * 10


def ncopies(s: Scheduler, key) -> int:
    ts = s.tasks.get(key)
    return len(ts.who_has or ()) if ts is not None else 0


def spy_on_copies(s: Scheduler) -> Counter:
    """Count, per key, the copies the scheduler is asked to make from now on (by any AMM)."""
    requested: Counter = Counter()
    acquire = s.request_acquire_replicas

    def recording(addr, keys, *, stimulus_id):
        keys = list(keys)
        requested.update(keys)
        return acquire(addr, keys, stimulus_id=stimulus_id)

    s.request_acquire_replicas = recording
    return requested


# --- the policy on in-process clusters ---------------------------------------------------------


@gen_cluster(client=True, nthreads=[("", 1)] * 3)
async def test_annotated_results_keep_their_copies_and_reduce_replicas_is_replaced(c, s, *workers):
    install_resilience(s)
    amm = s.extensions["amm"]
    assert not [p for p in amm.policies if type(p) is ReduceReplicas]
    assert isinstance(find_replication(amm), Replication)

    with dask.annotate(replicate=2):
        two = c.map(inc, range(10))
    with dask.annotate(replicate=3):
        three = c.map(inc, range(100, 104))
    plain = c.map(inc, range(200, 210))
    await c.gather(two + three + plain)
    await async_poll_for(lambda: all(ncopies(s, f.key) == 2 for f in two), what="2 copies")
    await async_poll_for(lambda: all(ncopies(s, f.key) == 3 for f in three), what="3 copies")
    assert all(ncopies(s, f.key) == 1 for f in plain)

    # Many AMM passes later the copies are still there: nothing drops them (a drop would show
    # in who_has as soon as a pass enacts it).
    for _ in range(5):
        amm.run_once()
    assert all(ncopies(s, f.key) == 2 for f in two)
    assert all(ncopies(s, f.key) == 3 for f in three)

    # ReduceReplicas's own job is still done for results that are not protected.
    await c.replicate(plain, n=3)
    assert all(ncopies(s, f.key) == 3 for f in plain)
    amm.run_once()
    await async_poll_for(
        lambda: all(ncopies(s, f.key) == 1 for f in plain), what="extra copies dropped"
    )


@gen_cluster(client=True, nthreads=[("", 1)] * 3)
async def test_fresh_results_are_copied_without_waiting_for_a_full_pass(c, s, *workers):
    install_resilience(s)
    amm = s.extensions["amm"]
    amm.stop()  # no periodic full pass: only the per-result fast path can copy
    policy = find_replication(amm)
    full_passes = 0
    run = policy.run

    def counting_run():
        nonlocal full_passes
        full_passes += 1
        return run()

    policy.run = counting_run
    with dask.annotate(replicate=2):
        futs = c.map(inc, range(20))
    await c.gather(futs)
    await async_poll_for(lambda: all(ncopies(s, f.key) == 2 for f in futs), what="fresh copies")
    assert full_passes == 0


@gen_cluster(client=True, nthreads=[("", 1)] * 3)
async def test_copies_go_once_no_dependent_needs_them(c, s, *workers):
    install_resilience(s)
    name = f"gate-{uuid.uuid4().hex}"
    with dask.annotate(replicate=2):
        x = c.submit(inc, 1, key="x")
    y = c.submit(blocked_on, x, name, key="y")
    await async_poll_for(lambda: ncopies(s, "x") == 2, what="x copied")

    # The client lets go of x, but y still needs it: it stays protected.
    x.release()
    await async_poll_for(lambda: not s.tasks["x"].who_wants, what="x released by the client")
    s.extensions["amm"].run_once()
    assert ncopies(s, "x") == 2

    # Once y has run nothing needs x: every copy goes.
    await Event(name, client=c).set()
    assert await y == 20
    await async_poll_for(lambda: ncopies(s, "x") == 0, what="x released")
    await async_poll_for(lambda: all("x" not in w.data for w in workers), what="copies freed")


@gen_cluster(client=True, nthreads=[("", 1)] * 3)
async def test_thresholds_protect_slow_small_results(c, s, *workers):
    install_resilience(s, min_duration=0.2, max_nbytes=10_000)
    requested = spy_on_copies(s)
    slow_small = c.submit(slow_value, 1, 0.3, key="slow-small")
    fast_small = c.submit(slow_value, 2, 0.0, key="fast-small")
    slow_big = c.submit(slow_value, 3, 0.3, 100_000, key="slow-big")
    with dask.annotate(replicate=False):
        opted_out = c.submit(slow_value, 4, 0.3, key="opted-out")
    await c.gather([slow_small, fast_small, slow_big, opted_out])
    await async_poll_for(lambda: ncopies(s, "slow-small") == 2, what="slow small result copied")
    for _ in range(3):
        s.extensions["amm"].run_once()
    # Every pass so far, fast and full, asked to copy the slow small result and nothing else.
    assert set(requested) == {"slow-small"}
    assert ncopies(s, "fast-small") == 1
    assert ncopies(s, "slow-big") == 1
    assert ncopies(s, "opted-out") == 1


@gen_cluster(client=True, nthreads=[("", 1)] * 3)
async def test_memory_budget_protects_the_costliest_first(c, s, *workers):
    size = 1000
    nbytes = sizeof(b"x" * size)
    # Room for exactly two extra copies.
    plugin = install_resilience(s, memory_budget=2 * nbytes + nbytes // 2)
    with dask.annotate(replicate=2):
        cheap = c.submit(slow_value, 1, 0.0, size, key="cheap")
        dear = c.submit(slow_value, 2, 0.6, size, key="dear")
        middle = c.submit(slow_value, 3, 0.3, size, key="middle")
    await c.gather([cheap, dear, middle])
    amm = s.extensions["amm"]

    def settled() -> bool:
        """After a full pass: the budget went to the two costliest, and copies match it."""
        amm.run_once()  # drops take effect at once; copies it asks for land later
        return ncopies(s, "dear") == 2 and ncopies(s, "middle") == 2 and ncopies(s, "cheap") == 1

    # The cheap result may have been copied while it was the only candidate; passes after the
    # costlier ones landed drop that copy.
    await async_poll_for(settled, what="copies of the two costliest results only")
    assert plugin.policy.last_targets == {"dear": 2, "middle": 2}
    assert ncopies(s, "cheap") == 1
    assert ncopies(s, "dear") == 2 and ncopies(s, "middle") == 2


@gen_cluster(client=True, nthreads=[("", 1)] * 2)
async def test_install_is_idempotent_and_preload_installs_it(c, s, a, b):
    first = install_resilience(s)
    assert install_resilience(s) is first
    hafen.cluster.dask_setup(s)  # the preload path, after connect() already installed it
    amm = s.extensions["amm"]
    assert sum(isinstance(p, Replication) for p in amm.policies) == 1
    assert s.plugins[PLUGIN_NAME] is first
    assert "hafen_drain" in s.handlers and "hafen_resilience_counts" in s.handlers
    # Registering from a client (what drain() does when needed) is a no-op now.
    await c.register_plugin(ResiliencePlugin())
    assert s.plugins[PLUGIN_NAME] is first


@gen_cluster(
    client=True,
    nthreads=[("", 1)] * 3,
    config={
        "distributed.scheduler.active-memory-manager.policies": [
            {"class": "hafen.cluster.resilience.Replication", "replicas": 3}
        ]
    },
)
async def test_policy_can_be_configured_in_place_of_reduce_replicas(c, s, *workers):
    amm = s.extensions["amm"]
    policy = find_replication(amm)
    assert policy is not None and policy.replicas == 3
    assert not [p for p in amm.policies if type(p) is ReduceReplicas]
    # The plugin then adopts the configured policy instead of adding a second one.
    install_resilience(s)
    assert find_replication(amm) is policy
    with dask.annotate(replicate=True):
        futs = c.map(inc, range(4))
    await c.gather(futs)
    await async_poll_for(lambda: all(ncopies(s, f.key) == 3 for f in futs), what="3 copies")


# --- options -----------------------------------------------------------------------------------


def test_options_default_to_dask_config_and_are_validated():
    policy = Replication()
    assert (policy.replicas, policy.min_duration, policy.max_nbytes) == (2, None, None)
    with dask.config.set(
        {
            "hafen.replication.replicas": 3,
            "hafen.replication.min-duration": "10s",
            "hafen.replication.max-nbytes": "1MiB",
            "hafen.replication.memory-budget": "1GiB",
        }
    ):
        policy = Replication()
    assert policy.replicas == 3
    assert policy.min_duration == 10.0
    assert policy.max_nbytes == 2**20
    assert policy.memory_budget == 2**30
    assert Replication(replicas=4, min_duration=0.5).replicas == 4

    for bad in (
        {"replicas": 0},
        {"replicas": "2"},
        {"replicas": True},
        {"min_duration": "soon"},
        {"min_duration": -1},
        {"max_nbytes": "1MiB"},  # without min_duration it would never apply
        {"min_duration": 1, "max_nbytes": "big"},
        {"memory_budget": 1.5},
        {"max_cost_depth": -1},
    ):
        with pytest.raises(ConfigError):
            Replication(**bad)
    with (
        dask.config.set({"hafen.replication.replicas": 0}),
        pytest.raises(ConfigError, match=r"hafen\.replication\.replicas"),
    ):
        Replication()


def test_annotation_values():
    def task(annotations):
        return SimpleNamespace(annotations=annotations)  # all wanted_replicas reads

    assert wanted_replicas(task({}), 2) is None
    assert wanted_replicas(task({"replicate": True}), 2) == 2
    assert wanted_replicas(task({"replicate": 3}), 2) == 3
    assert wanted_replicas(task({"replicate": False}), 2) == 1
    assert wanted_replicas(task({"replicate": 0}), 2) == 1
    assert wanted_replicas(task({"replicate": "two"}), 2) is None


# --- the scheduler internals this relies on ----------------------------------------------------

#: sha256 of ``inspect.getsource(ReduceReplicas.run)`` in distributed 2026.8.0. Replication._reduce
#: mirrors it; if Dask changes it, review _reduce and update the hash.
REDUCE_REPLICAS_RUN_SHA256 = "6868a9c99d2c92489f71f69f47f008daef0f13626154e1006d65081428db9732"


def test_scheduler_internals_relied_on_are_unchanged():
    source = inspect.getsource(ReduceReplicas.run)
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == REDUCE_REPLICAS_RUN_SHA256, (
        "distributed changed ReduceReplicas.run: review Replication._reduce, which mirrors it, "
        f"then pin {digest}"
    )
    for name in (
        "annotations",
        "nbytes",
        "who_has",
        "waiters",
        "who_wants",
        "dependencies",
        "state",
        "prefix",
        "processing_on",
        "actor",
    ):
        assert name in TaskState.__slots__ or hasattr(TaskState, name), name
    assert "duration_average" in TaskPrefix.__annotations__
    for name in ("has_what", "processing", "executing", "last_seen", "status", "address"):
        assert name in WorkerState.__slots__ or hasattr(WorkerState, name), name
    for name in (
        "replicated_tasks",
        "running",
        "handle_worker_status_change",
        "remove_worker",
        "stream_comms",
    ):
        assert name in Scheduler.__annotations__ or hasattr(Scheduler, name), name
    amm_params = inspect.signature(ActiveMemoryManagerExtension.__init__).parameters
    assert {"policies", "register", "start"} <= set(amm_params)
    assert set(ActiveMemoryManagerExtension.__dict__) >= {"run_once", "add_policy", "running"}
    # Transitions into memory carry the compute time; the plugin reads it.
    transition_params = inspect.signature(Scheduler._transition_processing_memory).parameters
    assert "startstops" in transition_params


# --- the proof on a process-based cluster ------------------------------------------------------


@pytest.fixture(scope="module", params=["hafen", "tcp"])
def killable_client(request):
    """4 workers x 1 thread in processes; a SIGKILLed worker is replaced by its nanny. Over
    hafen:// (what ``hafen.connect()`` starts) and over Dask's TCP."""
    with process_cluster(4, protocol=request.param) as client:
        assert client.scheduler.address.startswith(f"{request.param}://")
        yield client


@pytest.mark.slow
@pytest.mark.parametrize("replicate", [2, None], ids=["replicate=2", "no-replication"])
def test_sigkill_after_costly_tasks_finish_recomputes_none_of_them(
    tmp_path, replicate, killable_client
):
    log = ExecLog(tmp_path / "exec.log")
    n = 16
    tag = uuid.uuid4().hex[:8]
    gate = f"gate-{tag}"
    annotations = {"replicate": replicate} if replicate else {}
    with dask.annotate(**annotations):
        parts = [
            dask.delayed(logged_task)(i, log.path, 0.3, dask_key_name=f"costly-{tag}-{i}")
            for i in range(n)
        ]
    opened = dask.delayed(wait_event)(gate, dask_key_name=gate)
    total = dask.delayed(gated_sum)(parts, opened, dask_key_name=f"total-{tag}")
    expected = gated_sum([logged_task(i, str(tmp_path / "local.log")) for i in range(n)])
    keys = [f"costly-{tag}-{i}" for i in range(n)]

    def state(dask_scheduler, keys, gate):
        tasks = [dask_scheduler.tasks.get(k) for k in keys]
        gate_ts = dask_scheduler.tasks.get(gate)
        return {
            "copies": [len(ts.who_has or ()) if ts is not None else 0 for ts in tasks],
            "holders": [[ws.address for ws in ts.who_has or ()] for ts in tasks if ts],
            "gate_on": gate_ts.processing_on.address
            if gate_ts is not None and gate_ts.processing_on
            else None,
        }

    client = killable_client
    # The nanny replaces an earlier victim, but on a loaded machine it may give up; 3 suffice.
    client.wait_for_workers(3, timeout=DEADLINE)
    future = client.compute(total)
    want = replicate or 1
    poll_for(
        lambda: all(
            c >= want for c in client.run_on_scheduler(state, keys=keys, gate=gate)["copies"]
        ),
        what=f"all costly results in memory with {want} copies",
    )
    info = client.run_on_scheduler(state, keys=keys, gate=gate)
    assert info["gate_on"] is not None
    held: dict[str, int] = {}
    unique: dict[str, int] = {}
    for addrs in info["holders"]:
        for a in addrs:
            held[a] = held.get(a, 0) + 1
            if len(addrs) == 1:
                unique[a] = unique.get(a, 0) + 1
    victim = max((a for a in held if a != info["gate_on"]), key=held.__getitem__)
    assert held[victim] > 0
    resilience_counts(client, reset=True)

    os.kill(worker_pids(client)[victim], signal.SIGKILL)
    poll_for(lambda: victim not in client.scheduler_info()["workers"], what="victim gone")
    Event(gate, client=client).set()
    assert future.result(timeout=DEADLINE) == expected
    after = resilience_counts(client)
    future.release()

    if replicate:
        assert after["recomputed"] == 0, after
        assert after["lost"] == 0, after
        assert log.computed_more_than_once() == {}
    else:
        # The control: without copies, the victim's results are lost and computed again.
        assert unique.get(victim, 0) > 0
        assert after["lost"] >= unique[victim]
        assert after["recomputed"] >= unique[victim]
        assert len(log.computed_more_than_once()) >= unique[victim]
