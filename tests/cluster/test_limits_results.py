"""``results=`` and ``memory=`` limits (choke-holds) on in-process clusters.

A scheduler plugin (:class:`GroupProbe`) watches the producers' task group after every
transition and records the most results (and bytes) alive at once: the checks are over the whole
run, not a sample. Process clusters and memory sampled from the workers are in
``test_backpressure_proofs.py``.
"""

from __future__ import annotations

import logging
import operator
import time

import dask
import pytest
from dask import delayed
from distributed import Event, Scheduler, SchedulerPlugin, wait
from distributed.utils_test import captured_logger, gen_cluster

from hafen.cluster import install_scheduler_extensions
from hafen.cluster.limits import EXTENSION_NAME, LimitsExtension
from hafen.errors import LimitError
from hafen.testing import async_poll_for

MB = 1_000_000


def produce(i: int, size: int = 1000) -> bytes:
    return bytes([i % 256]) * size


def consume(data: bytes, delay: float = 0.0) -> int:
    time.sleep(delay)
    return data[0] + len(data)


def total(*parts: bytes) -> int:
    return sum(p[0] for p in parts)


class GroupProbe(SchedulerPlugin):
    """The most results of one task group in memory (and their bytes) at once, and running."""

    def __init__(self, scheduler: Scheduler, prefix: str) -> None:
        self.scheduler = scheduler
        self.prefix = prefix
        self.in_memory = 0
        self.most_in_memory = 0
        self.bytes = 0
        self.most_bytes = 0
        self.sizes: dict = {}

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        ts = self.scheduler.tasks.get(key)
        if ts is None or ts.prefix.name != self.prefix:
            return
        if finish == "memory" and start != "memory":
            self.in_memory += 1
            self.sizes[key] = max(ts.nbytes, 0)
            self.bytes += self.sizes[key]
        elif start == "memory":
            self.in_memory -= 1
            self.bytes -= self.sizes.pop(key, 0)
        self.most_in_memory = max(self.most_in_memory, self.in_memory)
        self.most_bytes = max(self.most_bytes, self.bytes)


def _setup(s: Scheduler, prefix: str = "produce", **limit) -> tuple[LimitsExtension, GroupProbe]:
    install_scheduler_extensions(s)
    ext = s.extensions[EXTENSION_NAME]
    ext.set_limit(name="prod", **limit)
    ext.set_limit(name="cons", concurrency=1)
    probe = GroupProbe(s, prefix)
    s.add_plugin(probe, name=f"probe-{prefix}")
    return ext, probe


def fan_out(n: int, *, size: int = 1000, delay: float = 0.0) -> list:
    """``n`` producers, each consumed by its own slower consumer, one at a time ("cons": 1)."""
    with dask.annotate(limits="prod"):
        parts = [delayed(produce)(i, size) for i in range(n)]
    with dask.annotate(limits="cons"):
        return [delayed(consume)(p, delay) for p in parts]


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_results_cap_the_producers_alive(c, s, a, b):
    ext, probe = _setup(s, concurrency=2, results=8)
    out = await c.gather(c.compute(fan_out(60, delay=0.02)))
    assert out == [i % 256 + 1000 for i in range(60)]
    assert 0 < probe.most_in_memory <= 8
    info = ext.info()["prod"]
    assert (info["alive"], info["in_use"], info["waiting"]) == (0, 0, 0)
    assert info["granted"] == 60 and info["overrides"] == 0


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_without_results_the_pile_up_shows(c, s, a, b):
    """The control: the same graph under concurrency alone piles producers up."""
    _, probe = _setup(s, concurrency=2)
    await c.gather(c.compute(fan_out(60, delay=0.02)))
    assert probe.most_in_memory > 8


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_memory_caps_the_bytes_alive_within_one_result(c, s, a, b):
    size = MB
    ext, probe = _setup(s, concurrency=4, memory=6 * size)
    await c.gather(c.compute(fan_out(40, size=size, delay=0.02)))
    one = max(probe.sizes.values(), default=0) or size + 100
    assert probe.most_bytes <= 6 * size + one
    info = ext.info()["prod"]
    assert info["memory"] == 6 * size and info["alive_bytes"] == 0


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_a_sum_over_more_results_than_allowed_completes_with_overrides(c, s, a, b):
    ext, _ = _setup(s, concurrency=2, results=8)
    with dask.annotate(limits="prod"):
        parts = [delayed(produce)(i) for i in range(100)]
    with captured_logger("hafen.cluster.limits._plugin", level=logging.WARNING) as log:
        assert await c.compute(delayed(total)(*parts)) == sum(i % 256 for i in range(100))
    info = ext.info()["prod"]
    assert info["overrides"] == 100 - 8
    assert (info["alive"], info["in_use"], info["waiting"]) == (0, 0, 0)
    warnings = [line for line in log.getvalue().splitlines() if "over the limit" in line]
    assert len(warnings) == 1  # once per limit
    assert any(e[1].get("action") == "override" for e in s.get_events("hafen-limits"))


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_a_tree_reduction_completes_without_overrides(c, s, a, b):
    """Grants follow Dask's priorities: siblings of one combine are produced together."""
    ext, probe = _setup(s, concurrency=2, results=8)
    with dask.annotate(limits="prod"):
        level = [delayed(produce)(i) for i in range(64)]
    level = [delayed(total)(x, y) for x, y in zip(level[::2], level[1::2], strict=True)]
    while len(level) > 1:
        level = [delayed(operator.add)(x, y) for x, y in zip(level[::2], level[1::2], strict=True)]
    assert await c.compute(level[0]) == sum(i % 256 for i in range(64))
    assert probe.most_in_memory <= 8
    info = ext.info()["prod"]
    assert info["overrides"] == 0 and info["alive"] == 0


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_cancelling_returns_every_slot(c, s, a, b):
    ext, _ = _setup(s, concurrency=2, results=4)
    gate = Event("consume-gate", client=c)
    with dask.annotate(limits="prod"):
        parts = [delayed(produce)(i) for i in range(30)]
    blocked = [delayed(_wait_then_consume)(p, gate.name) for p in parts]
    futures = c.compute(blocked)
    await async_poll_for(lambda: ext.info()["prod"]["alive"] == 4, what="4 results held")
    assert ext.info()["prod"]["waiting"] == 26
    await c.cancel(futures)
    await async_poll_for(lambda: not s.tasks, what="all released")
    info = ext.info()["prod"]
    assert (info["alive"], info["alive_bytes"], info["in_use"], info["waiting"]) == (0, 0, 0, 0)


def _wait_then_consume(data: bytes, name: str) -> int:
    Event(name).wait(30)
    return len(data)


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_a_client_holding_the_results_keeps_their_slots(c, s, a, b):
    """Results a client holds stay alive: slots return when the client lets go."""
    ext, _ = _setup(s, results=3)
    with dask.annotate(limits="prod"):
        futures = c.map(produce, range(3))
    await wait(futures)
    assert ext.info()["prod"]["alive"] == 3
    with dask.annotate(limits="prod"):
        more = c.submit(produce, 99)
    # nothing running could free a slot (the client holds them all): granted over the limit
    assert len(await more) == 1000
    assert ext.info()["prod"]["overrides"] == 1
    del futures, more
    await async_poll_for(lambda: ext.info()["prod"]["alive"] == 0, what="slots returned")


def test_results_and_memory_settings_are_validated():
    from hafen.cluster.limits import make_spec

    spec = make_spec("x", results=8, memory="2GiB")
    assert (spec.results, spec.memory) == (8, 2 * 2**30)
    assert spec.settings()["memory_text"] == "2.00 GiB"
    for kwargs, message in [
        ({"results": 0}, "results must be >= 1"),
        ({"results": 2.5}, "results must be an integer"),
        ({"memory": "lots"}, "invalid size 'lots'"),
        ({"memory": -5}, "memory must be positive"),
    ]:
        with pytest.raises(LimitError, match=message):
            make_spec("x", **kwargs)
    with pytest.raises(LimitError, match="are hafen's"):
        make_spec("hafen.mine", concurrency=1)


def _row(**over) -> dict:
    row = {
        "concurrency": 2,
        "rate": None,
        "rate_per_second": None,
        "burst": 1,
        "results": 8,
        "memory": 2 * 2**30,
        "memory_text": "2.00 GiB",
        "in_use": 2,
        "alive": 5,
        "alive_bytes": 3 * 2**20,
        "waiting": 10,
        "granted": 40,
        "overrides": 3,
        "longest_wait": 1.5,
    }
    row.update(over)
    return row


def test_the_table_and_the_metrics_show_results_memory_and_overrides():
    from prometheus_client.core import CollectorRegistry
    from rich.console import Console

    from hafen.cli._cluster import render_limits
    from hafen.cluster.limits._metrics import _LimitsCollector

    console = Console(width=200, record=True)
    console.print(render_limits({"loads": _row()}))
    text = console.export_text()
    for cell in ("results", "memory", "overrides", "5/8", "3.00 MiB/2.00 GiB"):
        assert cell in text

    collector = _LimitsCollector()
    collector.info = lambda: lambda: {"loads": _row()}
    registry = CollectorRegistry()
    registry.register(collector)
    value = registry.get_sample_value
    assert value("dask_hafen_limits_results", {"name": "loads"}) == 8
    assert value("dask_hafen_limits_memory_bytes", {"name": "loads"}) == 2 * 2**30
    assert value("dask_hafen_limits_alive", {"name": "loads"}) == 5
    assert value("dask_hafen_limits_alive_bytes", {"name": "loads"}) == 3 * 2**20
    assert value("dask_hafen_limits_overrides_total", {"name": "loads"}) == 3
