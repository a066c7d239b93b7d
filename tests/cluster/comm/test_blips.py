"""Network blips on real processes: a scheduler and workers in processes of their own, every
worker behind chaos proxies (:class:`~hafen.cluster.comm.ProxiedCluster`).

The grace period is 6 s here instead of 60 s, so that "within the grace period" and "past it"
take seconds: the issue's blips of 1, 5, 29 and 35 s against 60 s become 1, 3 and 5 s, and 8 s
for the blip that outlasts it; a silent link is given up after 2 s. The proxy times the blips;
the tests wait for outcomes with deadlines and never assert durations.

The hafen:// tests share one cluster (workers without nannies, to start fewer processes) and run
in file order: the drain and the blip past the grace period, which remove workers, come last.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest
from click.testing import CliRunner
from distributed import Client, wait

import hafen
from hafen.cli import main
from hafen.cluster.comm import ProxiedCluster
from hafen.cluster.resilience import Fault, RunResult, costly_graph, resilience_counts, run_chaos
from hafen.cluster.resilience._chaos import _combine, _costly
from hafen.testing import (
    DEADLINE,
    ExecLog,
    digest,
    gated_sum,
    logged_task,
    poll_for,
    random_block,
)

pytestmark = pytest.mark.slow

GRACE = 6.0
CONFIG = {"hafen.comm.grace": f"{GRACE:g}s", "hafen.comm.link-timeout": "2s"}
#: (at, seconds) of the five severs of one worker: 1, 3, 5, 1 and 3 s, a second apart.
SEVERS = ((0.5, 1), (2.5, 3), (6.5, 5), (12.5, 1), (14.5, 3))
TASKS = 200  # x 0.25 s on 3 workers: longer than the schedule of severs


@pytest.fixture(scope="module")
def cluster() -> Iterator[ProxiedCluster]:
    """Three workers behind proxies over hafen://, and this process configured alike."""
    with dask.config.set(CONFIG), ProxiedCluster(3, nanny=False, config=CONFIG) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster: ProxiedCluster) -> Iterator[Client]:
    with cluster.client() as client:
        yield client


def running(client: Client) -> list[str]:
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


def five_severs(cluster: ProxiedCluster, client: Client) -> RunResult:
    victim = cluster.workers[0].address
    faults = [Fault("sever", at=at, duration=s, worker=victim) for at, s in SEVERS]
    report = run_chaos(
        client,
        lambda: costly_graph(TASKS, 0.25, replicate=None),
        faults,
        reference=False,
        timeout=300,
        network=cluster.proxies,
    )
    run = report.faulty
    assert run.output == _combine([_costly(i, 0) for i in range(TASKS)])
    assert run.erred == 0, run  # no KilledWorker
    return run


def test_five_severs_of_one_worker_cost_nothing_over_hafen(cluster, client):
    """One worker of three loses every connection five times mid-graph: it is never removed, no
    result is lost, no task is sent twice, nothing is recomputed."""
    run = five_severs(cluster, client)
    severed = [e for e in run.faults if e.detail.endswith("2 proxies")]
    assert len(severed) == 5, run.faults  # all five fired while the graph ran
    assert run.workers_lost == 0 and run.lost == 0, run
    assert run.recomputed == 0 and run.restarted == 0, run
    assert cluster.workers[0].address in running(client)


def test_the_same_severs_over_tcp_lose_the_worker_and_its_results():
    """The control: over tcp:// the first sever closes the worker; what it held is recomputed."""
    config = {"hafen.comm.grace": f"{GRACE:g}s"}
    with (
        ProxiedCluster(3, protocol="tcp", nanny=False, config=config) as cluster,
        cluster.client() as client,
    ):
        run = five_severs(cluster, client)
        assert run.workers_lost >= 1, run
        assert run.recomputed + run.lost >= 1, run
        poll_for(lambda: cluster.workers[0].process.poll() is not None, DEADLINE)


def test_a_blackhole_mid_transfer_of_a_200mb_result(cluster, client):
    """The path between two workers goes dark once 50 MB of a 200 MB result went through: the
    link is given up, the session resumes on a new one and the source sends the result again;
    it arrives whole (same digest). The blackhole lasts 5 s: past the link timeout (2 s),
    within the grace period (6 s, counted from the link given up); the issue's 10 s are
    against a 60 s grace period."""

    # Run on a worker (pickled by value: stand-alone workers cannot import this module).
    def sessions(dask_worker: Any = None) -> list[tuple[int, int, int]]:
        pool = dask_worker.rpc
        comms = [c for cs in (*pool.available.values(), *pool.occupied.values()) for c in cs]
        listened = [s for lst in dask_worker.listeners for s in lst.sessions.sessions.values()]
        every = [c.session for c in comms] + listened
        return [(s.resumes, s.resent, s.duplicates) for s in every]

    source, sink = cluster.workers[0], cluster.workers[1].address
    nbytes = 200_000_000
    block = client.submit(random_block, nbytes, 3, workers=[source.address], pure=False)
    wait(block)
    resilience_counts(client, reset=True)
    source.inbound.blackhole(5, after_bytes=50_000_000)  # what the sink fetches goes through it
    check = client.submit(digest, block, workers=[sink], allow_other_workers=False)
    assert check.result(timeout=120) == digest(random_block(nbytes, 3))
    assert source.inbound.stats["blackholes"] == 1
    resumed = [s for s in client.run(sessions, workers=[source.address])[source.address] if s[0]]
    assert resumed and max(resent for _, resent, _ in resumed) >= 1, resumed
    counts = resilience_counts(client)
    assert counts["workers_removed"] == 0 and counts["restarted"] == 0, counts
    del block, check


def test_limits_replication_and_drain_keep_their_guarantees_across_blips(
    cluster, client, tmp_path: Path
):
    """A limited, replicated graph while workers are severed and blackholed; then a drain while
    the worker that takes the results is cut off."""
    limit = f"blips-{uuid.uuid4().hex[:8]}"
    log = ExecLog(tmp_path / "run.log")

    def build() -> Any:
        with dask.annotate(limits=[limit], replicate=2):
            parts = [
                dask.delayed(logged_task)(i, log.path, 0.25, dask_key_name=f"{limit}-{i}")
                for i in range(40)
            ]
        return dask.delayed(gated_sum)(parts, dask_key_name=f"{limit}-total")

    hafen.set_limit(limit, concurrency=2, client=client)
    a, b, c = (w.address for w in cluster.workers)
    faults = [
        Fault("sever", at=1.0, duration=3, worker=a),
        Fault("blackhole", at=5.0, duration=2, worker=b),
    ]
    report = run_chaos(client, build, faults, reference=False, timeout=300, network=cluster.proxies)
    run = report.faulty
    assert run.output == gated_sum([logged_task(i, "/dev/null") for i in range(40)])
    assert run.workers_lost == 0 and run.recomputed == 0 and run.restarted == 0, run
    assert log.max_overlap({}) <= 2  # the limit held in what the workers ran
    assert hafen.limits(client=client)[limit]["in_use"] == 0

    # Drain a worker holding results while one that can take them is cut off for 3 s.
    blocks = client.map(random_block, [2_000_000] * 8, range(8), workers=[c], pure=False)
    wait(blocks)
    resilience_counts(client, reset=True)
    cluster.sever(a, 3)
    drained = hafen.drain(client, [c], timeout=60)
    assert drained.complete and not drained.timed_out and drained.moved == 8, drained
    assert all(set(w) <= {a, b} for w in client.who_has(blocks).values())
    assert [x.nbytes for x in client.gather(blocks)] == [2_000_000] * 8
    counts = resilience_counts(client)
    assert counts["recomputed"] == 0 and counts["workers_removed"] == 1, counts  # the drained
    del blocks


def test_a_blip_longer_than_the_grace_period_removes_the_worker_cleanly(cluster, client):
    """Past the grace period the worker is removed as on TCP, and cannot resume into the
    scheduler that forgot it (it closes); results that had their second copy when the worker was
    cut off are not recomputed.

    Copies are made asynchronously, so a result that landed on the victim moments before the cut
    may still have one copy; the test therefore cuts the link only once several of the victim's
    results are copied, takes the scheduler's view of the copies just before the cut, and checks
    the recomputed keys against it.
    """
    tasks = 60
    victim = running(client)[0]
    resilience_counts(client, reset=True)
    total = client.compute(costly_graph(tasks, 0.2, replicate=2))

    def copied_on(address: str, dask_scheduler: Any = None) -> list[str]:
        return [
            str(ts.key)
            for ts in dask_scheduler.tasks.values()
            if len(ts.who_has or ()) > 1 and address in {ws.address for ws in ts.who_has}
        ]

    def copied_on_victim() -> set[str]:
        return set(client.run_on_scheduler(copied_on, victim))

    poll_for(lambda: len(copied_on_victim()) >= 3, DEADLINE, what="3 victim results copied")
    protected = copied_on_victim()
    cluster.sever(victim, GRACE + 2)
    assert total.result(timeout=300) == _combine([_costly(i, 0) for i in range(tasks)])
    counts = resilience_counts(client)
    assert counts["workers_removed"] == 1 and counts["erred"] == 0, counts
    assert not protected & set(counts["recomputed_keys"]), (protected, counts)
    process = cluster.worker(victim).process
    poll_for(lambda: process.poll() is not None, DEADLINE, what="the removed worker closed")
    assert victim not in running(client)


def test_the_chaos_command_runs_network_faults():
    args = ["chaos", "--workers", "2", "--tasks", "16", "--duration", "0.25", "--no-reference"]
    result = CliRunner().invoke(main, [*args, "--fault", "sever:1@1s"])
    assert result.exit_code == 0, result.output
    assert "sever" in result.output and "2 proxies" in result.output
