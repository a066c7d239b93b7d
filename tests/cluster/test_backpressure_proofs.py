"""Back-pressure proven on process clusters, with memory sampled from the workers.

The graph is issue 16's: producers of 16 MiB under a concurrency limit, each feeding a consumer
ten times slower, the consumers one at a time under their own limit, on 2 workers. A scheduler
plugin (:class:`hafen.testing.GroupProbe`) follows the producers' results after every transition,
so "never more than 8 alive" holds over the whole run, not at sampled instants; the workers'
process memory is sampled with ``distributed.diagnostics.MemorySampler`` beside it.

The controls run the same graphs without the setting under test (and without the automatic guard,
which would otherwise cap the pile-up they exist to show).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Iterator

import dask
import pytest
from dask import delayed
from distributed import Client
from distributed.diagnostics import MemorySampler

import hafen
from hafen.testing import (
    fan_in,
    install_probe,
    poll_for,
    probe_report,
    process_cluster,
    produce,
    total,
    worker_pids,
)

pytestmark = pytest.mark.slow

MiB = 2**20
SIZE = 16 * MiB
N = 200
PRODUCE_DELAY = 0.005
CONSUME_DELAY = 0.05  # ten times the producers
NO_GUARD = {"hafen.backpressure.enabled": False}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    """2 workers x 2 threads, 4 GiB each (room for the controls' pile-up without spilling).

    The guard is off on this cluster (read when its scheduler extension is built, so the
    setting is undone once the cluster is up).
    """
    with contextlib.ExitStack() as stack:
        with dask.config.set(NO_GUARD):
            client = stack.enter_context(
                process_cluster(2, threads_per_worker=2, memory_limit="4GiB")
            )
        yield client


def _run(client: Client, name: str, **limit) -> tuple[list[int], dict, float]:
    """The graph with producers under limit ``name`` (set from ``limit``); probe and peak RSS."""
    hafen.set_limit(name, concurrency=2, client=client, **limit)
    hafen.set_limit(f"{name}-consumers", concurrency=1, client=client)
    install_probe(client, "produce")
    sampler = MemorySampler()
    graph = fan_in(
        N,
        size=SIZE,
        produce_delay=PRODUCE_DELAY,
        consume_delay=CONSUME_DELAY,
        producer_limit=name,
        consumer_limit=f"{name}-consumers",
    )
    with sampler.sample(name, client=client, measure="process", interval=0.05):
        out = client.gather(client.compute(graph))
    peak = float(sampler.to_pandas()[name].max())
    return out, probe_report(client), peak


def test_results_8_never_has_more_than_8_producer_results_alive(cluster):
    out, seen, peak = _run(cluster, "choke", results=8)
    assert out == [i % 256 for i in range(N)]
    assert seen["most_alive"] <= 8
    info = hafen.limits(client=cluster)["choke"]
    assert (info["alive"], info["in_use"], info["waiting"], info["overrides"]) == (0, 0, 0, 0)

    _, control, control_peak = _run(cluster, "no-choke")
    assert control["most_alive"] > 3 * 8  # the pile-up the choke-hold prevents
    assert peak < control_peak  # and the workers' memory shows it


def test_memory_256mib_holds_the_bytes_within_budget_plus_one_result(cluster):
    out, seen, _ = _run(cluster, "bytes", memory="256MiB")
    assert out == [i % 256 for i in range(N)]
    assert seen["most_bytes"] <= 256 * MiB + seen["largest"]
    assert hafen.limits(client=cluster)["bytes"]["alive_bytes"] == 0


def test_a_sum_over_100_results_with_results_8_completes_and_reports_overrides(cluster):
    hafen.set_limit("sum", concurrency=2, results=8, client=cluster)
    with dask.annotate(limits="sum"):
        parts = [delayed(produce)(i, MiB) for i in range(100)]
    assert cluster.compute(delayed(total)(*parts)).result() == sum(i % 256 for i in range(100))
    info = hafen.limits(client=cluster)["sum"]
    assert info["overrides"] == 100 - 8
    assert (info["alive"], info["in_use"], info["waiting"]) == (0, 0, 0)


def test_a_tree_reduction_with_results_8_completes_without_overrides(cluster):
    hafen.set_limit("tree", concurrency=2, results=8, client=cluster)
    with dask.annotate(limits="tree"):
        level = [delayed(produce)(i, MiB) for i in range(64)]
    level = [delayed(total)(a, b) for a, b in zip(level[::2], level[1::2], strict=True)]
    while len(level) > 1:
        level = [delayed(sum)([a, b]) for a, b in zip(level[::2], level[1::2], strict=True)]
    assert cluster.compute(level[0]).result() == sum(i % 256 for i in range(64))
    info = hafen.limits(client=cluster)["tree"]
    assert info["overrides"] == 0 and info["alive"] == 0


def test_worker_kills_and_a_cancel_leave_no_slot_leaked():
    """Random SIGKILLs during a run with choke-holds: the counters return to zero."""
    rng = random.Random(16)
    with contextlib.ExitStack() as stack:
        # a task that happens to be on the killed worker every time must not fail for it
        with dask.config.set({**NO_GUARD, "distributed.scheduler.allowed-failures": 10}):
            client = stack.enter_context(process_cluster(3, threads_per_worker=1))
        hafen.set_limit("kills", concurrency=2, results=6, client=client)
        hafen.set_limit("kills-consumers", concurrency=1, client=client)
        graph = fan_in(
            60,
            size=MiB,
            produce_delay=0.01,
            consume_delay=0.05,
            producer_limit="kills",
            consumer_limit="kills-consumers",
        )
        futures = client.compute(graph)
        stop = threading.Event()

        def killer() -> None:
            for _ in range(3):
                if stop.wait(rng.uniform(0.3, 0.8)):
                    return
                pids = worker_pids(client)
                if pids:
                    os.kill(rng.choice(sorted(pids.values())), signal.SIGKILL)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            assert client.gather(futures) == [i % 256 for i in range(60)]
        finally:
            stop.set()
            thread.join()
        info = hafen.limits(client=client)["kills"]
        assert (info["alive"], info["in_use"], info["waiting"]) == (0, 0, 0)

        # cancelled half way: the same
        futures = client.compute(
            fan_in(
                60,
                size=MiB,
                consume_delay=0.05,
                producer_limit="kills",
                consumer_limit="kills-consumers",
            )
        )
        poll_for(lambda: hafen.limits(client=client)["kills"]["alive"] == 6, what="held")
        client.cancel(futures)
        poll_for(
            lambda: all(
                hafen.limits(client=client)["kills"][k] == 0 for k in ("alive", "in_use", "waiting")
            ),
            what="counters back to zero",
        )


def test_the_guard_holds_producers_above_its_watermark_and_never_the_consumers():
    """Without any limit on the producers: the automatic guard alone."""
    guard = {"hafen.backpressure.high": "256MiB", "hafen.backpressure.low": "128MiB"}
    with dask.config.set(guard), process_cluster(2, threads_per_worker=2, memory_limit="4GiB") as c:
        hafen.set_limit("slow", concurrency=1, client=c)
        install_probe(c, "produce")
        graph = fan_in(
            N,
            size=SIZE,
            produce_delay=PRODUCE_DELAY,
            consume_delay=CONSUME_DELAY,
            consumer_limit="slow",
        )
        assert c.gather(c.compute(graph)) == [i % 256 for i in range(N)]
        seen = probe_report(c)
        held = c.run_on_scheduler(_held_by_guard)
        row = hafen.limits(client=c)["hafen.backpressure"]
    assert row["engagements"] >= 1
    assert held == {"produce"}  # producers held; consumers (inputs in memory, small output) never
    # what Dask had sent before the guard engaged lands on top: at most 3 per worker of 2 threads
    assert seen["most_bytes"] <= 256 * MiB + 8 * SIZE
    assert seen["most_alive"] < N // 4


def _held_by_guard(dask_scheduler) -> set[str]:
    ext = dask_scheduler.extensions["hafen_limits"]
    return set(ext.guard.held_groups)
