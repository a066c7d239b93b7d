"""Graphs that pile results up, and a scheduler plugin that watches them, for tests and benchmarks.

The shape of issue 16's measurement: producers of data (optionally under a hafen limit) feeding
slower consumers, each consuming one producer's result, one at a time under their own limit. The
producers' task functions live here so worker processes import them by name.

:class:`GroupProbe` is a scheduler plugin that follows the results of one task prefix after every
transition -- how many are alive (in memory) and their bytes -- and keeps the most of each over
the whole run: a check that no sample can miss.
"""

from __future__ import annotations

import time
from typing import Any

import dask
from dask import delayed
from distributed import Client, SchedulerPlugin

__all__ = [
    "PROBE_NAME",
    "GroupProbe",
    "add",
    "consume",
    "fan_in",
    "install_probe",
    "probe_report",
    "produce",
    "total",
]

PROBE_NAME = "hafen-group-probe"


def produce(i: int, size: int, delay: float = 0.0) -> bytes:
    """``size`` bytes of data (its first byte ``i % 256``) after ``delay`` seconds."""
    if delay:
        time.sleep(delay)
    return bytes([i % 256]) * size


def consume(data: bytes, delay: float = 0.0) -> int:
    """Consume ``data`` (write it somewhere, say) in ``delay`` seconds; a small result."""
    if delay:
        time.sleep(delay)
    return data[0]


def total(*parts: bytes) -> int:
    """A reduction over every part."""
    return sum(p[0] for p in parts)


def add(a: int, b: int) -> int:
    return a + b


def fan_in(
    n: int,
    *,
    size: int,
    produce_delay: float = 0.0,
    consume_delay: float = 0.0,
    producer_limit: str | None = None,
    consumer_limit: str | None = None,
    producer_resources: dict[str, float] | None = None,
    consumer_resources: dict[str, float] | None = None,
) -> list[Any]:
    """``n`` producers of ``size`` bytes, each consumed by its own consumer: delayed consumers.

    ``producer_limit``/``consumer_limit`` annotate each side with a hafen limit;
    ``producer_resources``/``consumer_resources`` restrict them with Dask resources instead
    (Dask's own way of restricting them).
    """
    annotations: dict[str, Any] = {}
    if producer_limit:
        annotations["limits"] = [producer_limit]
    if producer_resources:
        annotations["resources"] = producer_resources
    with dask.annotate(**annotations):
        parts = [delayed(produce)(i, size, produce_delay) for i in range(n)]
    consumer: dict[str, Any] = {}
    if consumer_limit:
        consumer["limits"] = [consumer_limit]
    if consumer_resources:
        consumer["resources"] = consumer_resources
    with dask.annotate(**consumer):
        return [delayed(consume)(p, consume_delay) for p in parts]


class GroupProbe(SchedulerPlugin):
    """Results of one task prefix alive at once (and their bytes): now and the most so far."""

    name = PROBE_NAME

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.scheduler: Any = None
        self.reset()

    def reset(self) -> None:
        self.sizes: dict[Any, int] = {}
        self.alive = 0
        self.bytes = 0
        self.most_alive = 0
        self.most_bytes = 0
        self.largest = 0

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if self.scheduler is None:
            return
        ts = self.scheduler.tasks.get(key)
        if ts is None or ts.prefix.name != self.prefix:
            return
        if finish == "memory" and start != "memory":
            nbytes = max(ts.nbytes, 0)
            self.sizes[key] = nbytes
            self.alive += 1
            self.bytes += nbytes
            self.largest = max(self.largest, nbytes)
        elif start == "memory" and key in self.sizes:
            self.alive -= 1
            self.bytes -= self.sizes.pop(key)
        self.most_alive = max(self.most_alive, self.alive)
        self.most_bytes = max(self.most_bytes, self.bytes)

    def report(self) -> dict[str, int]:
        return {
            "alive": self.alive,
            "bytes": self.bytes,
            "most_alive": self.most_alive,
            "most_bytes": self.most_bytes,
            "largest": self.largest,
        }


def _install(dask_scheduler: Any, prefix: str) -> None:
    if PROBE_NAME in dask_scheduler.plugins:
        dask_scheduler.remove_plugin(name=PROBE_NAME)
    probe = GroupProbe(prefix)
    probe.scheduler = dask_scheduler
    dask_scheduler.add_plugin(probe, name=PROBE_NAME)


def _report(dask_scheduler: Any) -> dict[str, int]:
    report: dict[str, int] = dask_scheduler.plugins[PROBE_NAME].report()
    return report


def install_probe(client: Client, prefix: str = "produce") -> None:
    """Watch the results of ``prefix`` on the client's scheduler (replacing an earlier probe)."""
    client.run_on_scheduler(_install, prefix=prefix)


def probe_report(client: Client) -> dict[str, int]:
    """What the probe saw: ``alive``, ``bytes``, ``most_alive``, ``most_bytes``, ``largest``."""
    return dict(client.run_on_scheduler(_report))
