"""The automatic back-pressure guard on in-process clusters (``gen_cluster``, validated).

Watermarks are set as sizes, small enough for these graphs to cross them. A scheduler plugin
watches every transition: the bytes of results in memory, which tasks were ever held (parked in
``no-worker`` by hafen), and how many held tasks were out at once. Process clusters, memory
sampled from the workers and the comparison with Dask are in ``test_backpressure_proofs.py``
and ``benchmarks/memory.py``.
"""

from __future__ import annotations

import time

import dask
import pytest
from dask import delayed
from distributed import Event, Scheduler, SchedulerPlugin, wait
from distributed.utils_test import gen_cluster

from hafen.cluster import install_scheduler_extensions
from hafen.cluster.limits import EXTENSION_NAME, HOLD_RESOURCE, LimitsExtension
from hafen.cluster.limits._guard import GUARD_NAME, Guard
from hafen.errors import ConfigError
from hafen.testing import async_poll_for

MB = 1_000_000
GUARD = {
    "hafen.backpressure.high": "8MB",
    "hafen.backpressure.low": "4MB",
    "distributed.scheduler.work-stealing": False,
}


def produce(i: int, size: int = MB) -> bytes:
    return bytes([i % 256]) * size


def consume(data: bytes, delay: float = 0.01) -> int:
    time.sleep(delay)
    return data[0]


def total(*parts: bytes) -> int:
    return sum(p[0] for p in parts)


class Watch(SchedulerPlugin):
    """Bytes in memory (one copy per result), tasks hafen held, and held tasks out at once."""

    def __init__(self, scheduler: Scheduler, ext: LimitsExtension) -> None:
        self.scheduler = scheduler
        self.ext = ext
        self.by_guard: set[str] = set()  # prefixes of tasks the guard held (as producers)
        self.nbytes: dict = {}
        self.bytes = 0
        self.most_bytes = 0
        self.held: set[str] = set()  # prefixes of tasks parked by hafen
        self.held_keys: set = set()
        self.out = 0
        self.most_out = 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        ts = self.scheduler.tasks.get(key)
        if ts is None:
            return
        if finish == "memory" and start != "memory":
            self.nbytes[key] = max(ts.nbytes, 0)
            self.bytes += self.nbytes[key]
        elif start == "memory":
            self.bytes -= self.nbytes.pop(key, 0)
        self.most_bytes = max(self.most_bytes, self.bytes)
        if finish == "no-worker" and HOLD_RESOURCE in (ts.resource_restrictions or {}):
            self.held.add(ts.prefix.name)
            self.held_keys.add(key)
            # hafen's hook ran first (its plugin was added first): the waiter is queued
            waiter = self.ext.ledger.waiters.get(("task", key))
            if key in self.ext._guarded or (waiter is not None and waiter.producer):
                self.by_guard.add(ts.prefix.name)
        was_out = key in self.held_keys and start in ("processing", "queued")
        is_out = key in self.held_keys and finish in ("processing", "queued")
        self.out += int(is_out) - int(was_out)
        self.most_out = max(self.most_out, self.out)


def _install(s: Scheduler) -> tuple[LimitsExtension, Watch]:
    install_scheduler_extensions(s)
    ext = s.extensions[EXTENSION_NAME]
    watch = Watch(s, ext)
    s.add_plugin(watch, name="watch")
    return ext, watch


def _pipeline(n: int) -> list:
    """``n`` producers of 1 MB, each consumed -- one at a time ("cons": 1) -- into a small int."""
    parts = [delayed(produce)(i) for i in range(n)]
    with dask.annotate(limits="cons"):
        return [delayed(consume)(p) for p in parts]


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)], config=GUARD)
async def test_the_guard_holds_producers_above_the_watermark_and_never_consumers(c, s, a, b):
    ext, watch = _install(s)
    ext.set_limit(name="cons", concurrency=1)
    out = await c.gather(c.compute(_pipeline(80)))
    assert out == [i % 256 for i in range(80)]
    row = ext.info()[GUARD_NAME]
    assert row["engagements"] >= 1 and row["granted"] > 0
    assert row["suspensions"] == 0  # a consumer always ran: holding was never futile
    assert watch.by_guard == {"produce"}  # the guard held producers, never consumers
    # Above 8 MB it holds. What lands on top: what Dask had sent already (worker-saturation
    # 1.1 on 2 threads: 3 per worker), and what it sends as a slot frees before the guard's
    # next turn of the event loop takes the rest out of its queue. Without the guard: ~70 MB.
    assert watch.most_bytes <= 8 * MB + 8 * MB + 100_000
    assert row["waiting"] == 0 and row["in_use"] == 0


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_without_the_guard_the_pile_up_shows(c, s, a, b):
    """The control: the same graph with the guard switched off."""
    with dask.config.set({"hafen.backpressure.enabled": False}):
        ext, watch = _install(s)
    ext.set_limit(name="cons", concurrency=1)
    await c.gather(c.compute(_pipeline(80)))
    assert watch.most_bytes > 40 * MB, watch.most_bytes  # about 70 MB
    assert GUARD_NAME not in ext.info()


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)], config=GUARD)
async def test_a_reduction_over_everything_finishes_through_overrides(c, s, a, b):
    """The reduction needs every producer: when the cluster idles, the guard lets them go."""
    ext, _ = _install(s)
    parts = [delayed(produce)(i) for i in range(40)]
    assert await c.compute(delayed(total)(*parts)) == sum(i % 256 for i in range(40))
    row = ext.info()[GUARD_NAME]
    assert row["overrides"] > 0 and row["suspensions"] >= 1  # futile: it stood aside
    assert row["waiting"] == 0


@gen_cluster(
    client=True,
    nthreads=[("", 1), ("", 1)],
    config={**GUARD, "hafen.backpressure.window": 1},
)
async def test_restricted_producers_that_come_while_it_holds_are_let_go_in_a_window(c, s, a, b):
    """The queuing Dask gives no restricted root task: held, then out one per thread at a time."""
    ext, watch = _install(s)
    gate = Event("busy", client=c)
    busy = c.submit(_wait, gate.name, key="busy")  # keeps the cluster from idling
    ballast = c.submit(produce, 0, 10 * MB, key="ballast")  # above the watermark
    await wait(ballast)
    await async_poll_for(lambda: ext.guard.engaged, what="guard engaged")
    futures = c.map(consume, c.map(produce, range(24), size=1000, workers=[a.address]), delay=0)
    await async_poll_for(
        lambda: ext.info()[GUARD_NAME]["waiting"] == 24 and all(f.key in s.tasks for f in futures),
        what="all held",
    )
    assert not any(s.tasks[f.key].state == "memory" for f in futures)
    del ballast
    await gate.set()
    await busy
    assert await c.gather(futures) == [i % 256 for i in range(24)]
    assert watch.most_out <= 2  # window 1 x 2 threads
    assert ext.info()[GUARD_NAME]["overrides"] == 0


def _wait(name: str) -> bool:
    return Event(name).wait(30)


def test_watermarks_are_validated():
    bad = [
        ({"hafen.backpressure.low": 0.5, "hafen.backpressure.high": 0.4}, "not be above high"),
        ({"hafen.backpressure.low": "1GiB", "hafen.backpressure.high": 0.4}, "both be shares"),
    ]
    for config, message in bad:
        with dask.config.set(config), pytest.raises(ConfigError, match=message):
            Guard(None)  # type: ignore[arg-type]


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)], config=GUARD, timeout=120)
async def test_anom_mean_under_the_guard_keeps_dasks_queue_valid(c, s, a, b):
    """Producers with an input (getitem of a climatology) become ready while the guard holds:
    Dask queues them (a waiting -> waiting transition), the guard takes them back out; every
    transition is validated (gen_cluster), and the result is right."""
    import dask.array as da
    import numpy as np

    ext, _ = _install(s)
    rows, ngroups, width = 120, 3, MB // 8
    data = da.random.RandomState(0).random_sample((rows, width), chunks=(1, width))
    day = np.arange(rows) % ngroups
    clim = da.stack([data[day == g].mean(axis=0) for g in range(ngroups)])
    result = await c.compute((data - clim[day]).mean(axis=0))
    expected = (data - clim[day]).mean(axis=0).compute(scheduler="sync")
    assert np.allclose(result, expected)
    assert ext.info()[GUARD_NAME]["engagements"] >= 1
