"""The guard on loaders Dask does not queue: reads of per-file handles (``gen_cluster``, validated).

A read depends on its file's open, so its group depends on as many tasks as there are files (8
here): Dask does not call it root-ish and sends every read to the workers as soon as its file is
open. The guard queues them instead (held, then let go while fewer than ``window`` tasks per thread
are processing) and holds them above its watermark. A scheduler plugin counts, after every
transition, the reads' results alive and the bytes of all results in memory.
"""

from __future__ import annotations

import dask
from dask import delayed
from distributed import Scheduler, SchedulerPlugin
from distributed.utils_test import gen_cluster

from hafen.cluster import install_scheduler_extensions
from hafen.cluster.limits import EXTENSION_NAME, HOLD_RESOURCE, LimitsExtension
from hafen.cluster.limits._guard import GUARD_NAME

MB = 1_000_000
FILES, READS = 8, 80
GUARD = {
    "hafen.backpressure.high": "8MB",
    "hafen.backpressure.low": "4MB",
    "distributed.scheduler.work-stealing": False,
}


def open_file(number: int) -> dict[str, int]:
    return {"file": number}


def read(handle: dict[str, int], index: int) -> bytes:
    return bytes([(handle["file"] + index) % 256]) * MB


def consume(data: bytes) -> int:
    return data[0]


class Watch(SchedulerPlugin):
    """Reads alive, bytes in memory, prefixes hafen held, and held tasks processing at once."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.nbytes: dict = {}
        self.bytes = self.most_bytes = 0
        self.reads = self.most_reads = 0
        self.held: set[str] = set()
        self.held_keys: set = set()
        self.out = self.most_out = 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        ts = self.scheduler.tasks.get(key)
        if ts is None:
            return
        is_read = ts.prefix.name == "read"
        if finish == "memory" and start != "memory":
            self.nbytes[key] = max(ts.nbytes, 0)
            self.bytes += self.nbytes[key]
            self.reads += is_read
        elif start == "memory":
            self.bytes -= self.nbytes.pop(key, 0)
            self.reads -= is_read
        self.most_bytes = max(self.most_bytes, self.bytes)
        self.most_reads = max(self.most_reads, self.reads)
        if finish == "no-worker" and HOLD_RESOURCE in (ts.resource_restrictions or {}):
            self.held.add(ts.prefix.name)
            self.held_keys.add(key)
        was_out = key in self.held_keys and start == "processing"
        is_out = key in self.held_keys and finish == "processing"
        self.out += int(is_out) - int(was_out)
        self.most_out = max(self.most_out, self.out)


def _install(s: Scheduler) -> tuple[LimitsExtension, Watch]:
    install_scheduler_extensions(s)
    watch = Watch(s)
    s.add_plugin(watch, name="watch")
    return s.extensions[EXTENSION_NAME], watch


def _graph() -> list:
    """``READS`` reads of 1 MB over ``FILES`` opens, each consumed (one at a time) to an int."""
    handles = [delayed(open_file)(f) for f in range(FILES)]
    data = [delayed(read)(handles[i % FILES], i) for i in range(READS)]
    with dask.annotate(limits="cons"):
        return [delayed(consume)(d) for d in data]


def _expected() -> list[int]:
    return [(i % FILES + i) % 256 for i in range(READS)]


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)], config=GUARD)
async def test_reads_of_per_file_handles_are_held_above_the_watermark(c, s, a, b):
    ext, watch = _install(s)
    ext.set_limit(name="cons", concurrency=1)
    assert await c.gather(c.compute(_graph())) == _expected()
    row = ext.info()[GUARD_NAME]
    assert row["loaders"] >= 1 and row["engagements"] >= 1
    assert watch.held == {"read", "consume"}  # consumers wait for their limit, not the guard
    assert not any(s.tasks[k].prefix.name == "consume" for k in ext._guarded if k in s.tasks)
    # above 8 MB it holds the reads; what is out when it engages lands on top (2 per thread)
    assert watch.most_reads <= 8 + 2 * 4 + 1
    assert row["waiting"] == 0 and row["in_use"] == 0


@gen_cluster(client=True, nthreads=[("", 2), ("", 2)])
async def test_without_the_guard_every_read_runs_at_once(c, s, a, b):
    """The control: Dask sends all reads to the workers; their results pile up."""
    with dask.config.set({"hafen.backpressure.enabled": False}):
        ext, watch = _install(s)
    ext.set_limit(name="cons", concurrency=1)
    assert await c.gather(c.compute(_graph())) == _expected()
    assert watch.most_reads > READS // 2


@gen_cluster(
    client=True,
    nthreads=[("", 2), ("", 2)],
    config={"hafen.backpressure.high": "1GB", "hafen.backpressure.low": "1GB"},
)
async def test_below_the_watermark_reads_are_queued_two_per_thread(c, s, a, b):
    """Never engaged: the reads go out while fewer than 2 tasks per thread are processing;
    their consumers (a large input, a small output) are never held."""
    ext, watch = _install(s)
    handles = [delayed(open_file)(f) for f in range(FILES)]
    parts = [delayed(consume)(delayed(read)(handles[i % FILES], i)) for i in range(READS)]
    assert await c.gather(c.compute(parts)) == _expected()
    row = ext.info()[GUARD_NAME]
    assert row["engagements"] == 0 and row["loaders"] == READS
    assert watch.held == {"read"}
    assert watch.most_out <= 2 * 4
