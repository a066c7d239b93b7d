"""Limited tasks keep Dask's placement, and hafen's extensions leave Dask's behaviour alone.

Dask-style tests (``gen_cluster``, which validates the scheduler's state at every transition):
a granted task is placed as Dask places it without the limit -- root-ish tasks are queued or
co-assigned, tasks with dependencies and restrictions go where Dask sends them, and work stealing
still rebalances them. Assertions are on placement and balance, never on durations.
"""

from __future__ import annotations

import itertools

import dask
import pytest
from distributed import Scheduler, SchedulerPlugin, wait
from distributed.utils_test import NO_AMM, gen_cluster, inc, slowadd, slowinc

import hafen
from hafen.cluster import install_scheduler_extensions
from hafen.cluster.limits import EXTENSION_NAME, LimitsExtension
from hafen.cluster.resilience import PLUGIN_NAME, find_replication
from hafen.errors import LimitError
from hafen.testing import async_poll_for


def _limits(s: Scheduler, **limits: int) -> LimitsExtension:
    install_scheduler_extensions(s)
    ext = s.extensions[EXTENSION_NAME]
    for name, concurrency in limits.items():
        ext.set_limit(name=name, concurrency=concurrency)
    return ext


class ProcessingPeak(SchedulerPlugin):
    """The most tasks each worker was ever processing at once, seen after every transition."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.peak: dict[str, int] = {}
        self.ever_queued = 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        for ws in self.scheduler.workers.values():
            self.peak[ws.address] = max(self.peak.get(ws.address, 0), len(ws.processing))
        self.ever_queued = max(self.ever_queued, len(self.scheduler.queued))


# --- placement -------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [4, 1000])
def test_work_stealing_with_a_limit(concurrency):
    """Dask's ``test_work_stealing`` with its tasks under a limit: both workers do the work."""

    @gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
    async def run(c, s, a, b):
        _limits(s, steal=concurrency)
        [x] = await c.scatter([1], workers=a.address)
        with dask.annotate(limits="steal"):
            futures = c.map(slowadd, range(50), [x] * 50)
        await wait(futures)
        assert len(a.data) > 10
        assert len(b.data) > 10

    run()


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_granted_root_tasks_are_queued_like_dasks(c, s, a, b):
    """40 root tasks under a generous limit: queued on the scheduler, both workers busy."""
    _limits(s, roots=1000)
    probe = ProcessingPeak(s)
    s.add_plugin(probe, name="peak")
    with dask.annotate(limits="roots"):
        futures = c.map(slowinc, range(40), delay=0.05)
    await wait(futures)
    assert probe.ever_queued > 0  # root-ish: Dask's queue, as without the limit
    # worker-saturation 1.1 on 2 threads: at most 3 at once per worker, as Dask sends them
    assert set(probe.peak) == {a.address, b.address}
    assert max(probe.peak.values()) <= 3
    assert len(a.data) >= 10 and len(b.data) >= 10


@gen_cluster(
    client=True,
    nthreads=[("", 2), ("", 2)],
    config={"distributed.scheduler.worker-saturation": float("inf")},
)
async def test_granted_root_tasks_are_co_assigned_like_dasks(c, s, a, b):
    """Without queuing, Dask co-assigns root tasks by group: same placement with a limit."""
    _limits(s, coassign=1000)

    async def placement(prefix: str, annotate: bool) -> list[str]:
        keys = [f"{prefix}-{i}" for i in range(32)]
        with dask.annotate(**({"limits": "coassign"} if annotate else {})):
            futures = c.map(slowinc, range(32), delay=0.01, key=keys)
        await wait(futures)
        return [next(iter(s.tasks[k].who_has)).address for k in keys]

    vanilla = await placement("vanilla", annotate=False)
    limited = await placement("limited", annotate=True)
    switches = [sum(p != q for p, q in itertools.pairwise(run)) for run in (vanilla, limited)]
    assert set(limited) == {a.address, b.address}
    # siblings land together in runs, not one by one round the cluster
    assert switches[1] <= switches[0] + 1, (vanilla, limited)


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)] * 2,
    config={"distributed.scheduler.work-stealing-interval": "10ms"},
)
async def test_limited_tasks_with_loose_restrictions_are_stolen(c, s, a, b):
    """Dask's ``test_eventually_steal_unknown_functions`` under a limit."""
    _limits(s, loose=1000)
    with dask.annotate(limits="loose"):
        futures = c.map(slowinc, range(10), delay=0.1, workers=a.address, allow_other_workers=True)
    await wait(futures)
    assert len(a.data) >= 3, [len(a.data), len(b.data)]
    assert len(b.data) >= 3, [len(a.data), len(b.data)]


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1, {"resources": {"GPU": 1}}), ("127.0.0.1", 1)],
)
async def test_limited_tasks_keep_their_resources_and_restrictions(c, s, gpu, cpu):
    _limits(s, gpu_limit=2)
    with dask.annotate(limits="gpu_limit", resources={"GPU": 1}):
        on_gpu = c.map(slowinc, range(8), delay=0.01)
    with dask.annotate(limits="gpu_limit"):
        pinned = c.map(inc, range(100, 104), workers=[cpu.address])
    await wait(on_gpu + pinned)
    assert all(s.tasks[f.key].who_has == {s.workers[gpu.address]} for f in on_gpu)
    assert all(s.tasks[f.key].who_has == {s.workers[cpu.address]} for f in pinned)
    assert s.extensions[EXTENSION_NAME].info()["gpu_limit"]["granted"] == 12


@gen_cluster(client=True, nthreads=[("", 1), ("", 1)])
async def test_dependents_follow_their_inputs_under_a_limit(c, s, a, b):
    """Non-root tasks: Dask's decide_worker puts them where their (large) inputs are."""
    _limits(s, deps=1000)
    x = c.submit(lambda: b"x" * 10_000_000, workers=[a.address], key="big-x")
    y = c.submit(lambda: b"y" * 10_000_000, workers=[b.address], key="big-y")
    with dask.annotate(limits="deps"):  # 4 tasks on 2 threads: not root-ish
        on_x = c.map(len, [x] * 2, pure=False)
        on_y = c.map(len, [y] * 2, pure=False)
    await wait(on_x + on_y)
    assert {next(iter(s.tasks[f.key].who_has)).address for f in on_x} == {a.address}
    assert {next(iter(s.tasks[f.key].who_has)).address for f in on_y} == {b.address}


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def increment(self) -> int:
        self.n += 1
        return self.n


@gen_cluster(client=True, nthreads=[("", 1), ("", 1)])
async def test_an_actor_under_a_limit_starts(c, s, a, b):
    """gen_cluster validates every transition: the grant must be one Dask allows for actors."""
    ext = _limits(s, actors=1)
    with dask.annotate(limits="actors"):
        counter = await c.submit(Counter, actor=True)
    assert await counter.increment() == 1
    assert await counter.increment() == 2
    assert ext.info()["actors"]["granted"] == 1


# --- Dask's own settings ---------------------------------------------------------------------


@gen_cluster(client=True, config=NO_AMM)
async def test_installing_leaves_a_stopped_amm_stopped(c, s, a, b):
    amm = s.extensions["amm"]
    assert not amm.running
    install_scheduler_extensions(s)
    assert not amm.running
    assert find_replication(amm) is not None  # in place of ReduceReplicas, for when it starts


@gen_cluster(client=True, nthreads=[("", 1)] * 4, config=NO_AMM)
async def test_client_replicate_keeps_its_copies_while_the_amm_is_stopped(c, s, *workers):
    install_scheduler_extensions(s)
    plugin = s.plugins[PLUGIN_NAME]
    x = c.submit(inc, 1, key="x")
    with dask.annotate(replicate=2):
        y = c.submit(inc, 2, key="y")  # a protected result: hafen's passes run for it
    await wait([x, y])
    await c.replicate([x], n=3)
    assert len(s.tasks["x"].who_has) == 3
    await async_poll_for(lambda: len(s.tasks["y"].who_has) == 2, what="y copied")
    # hafen's own passes (after a result lands, after a worker leaves) copy, never drop
    plugin._schedule_kick(full=True)
    await async_poll_for(lambda: plugin._kick is None, what="a full pass")
    plugin._run_amm()
    assert len(s.tasks["x"].who_has) == 3


@gen_cluster(client=True, nthreads=[("", 1)] * 3)
async def test_with_the_amm_running_replicate_copies_go_as_dasks_do(c, s, *workers):
    """ReduceReplicas's decisions are unchanged: Dask drops replicate() copies, and so do we."""
    install_scheduler_extensions(s)
    x = c.submit(inc, 1, key="x")
    await wait(x)
    await c.replicate([x], n=3)
    s.extensions["amm"].run_once()
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 1, what="copies dropped")


@gen_cluster(
    client=True,
    config={"distributed.scheduler.active-memory-manager.policies": []},
)
async def test_an_amm_without_reduce_replicas_keeps_exactly_its_policies(c, s, a, b):
    amm = s.extensions["amm"]
    assert amm.policies == set()
    install_scheduler_extensions(s)
    assert amm.policies == set()
    with dask.annotate(replicate=2):
        y = c.submit(inc, 2, key="y")
    await wait(y)
    await async_poll_for(lambda: len(s.tasks["y"].who_has) == 2, what="still protected")


# --- the client API with an asynchronous client ------------------------------------------------


@gen_cluster(client=True)
async def test_the_limits_api_with_an_asynchronous_client(c, s, a, b):
    install_scheduler_extensions(s)
    assert await hafen.set_limit("async-db", concurrency=2, client=c) is None
    info = await hafen.limits(client=c)
    assert info["async-db"]["concurrency"] == 2
    with dask.annotate(limits="async-db"):
        assert await c.submit(inc, 1) == 2
    assert (await hafen.limits(client=c))["async-db"]["granted"] == 1
    assert await hafen.remove_limit("async-db", client=c) is True
    assert await hafen.remove_limit("async-db", client=c) is False
    with pytest.raises(LimitError, match="synchronous client"), hafen.lease("x", client=c):
        pass


@gen_cluster(client=True)
async def test_an_asynchronous_client_without_the_extension_gets_a_clear_error(c, s, a, b):
    with pytest.raises(LimitError, match="no hafen limits extension"):
        await hafen.set_limit("nowhere", concurrency=1, client=c)
