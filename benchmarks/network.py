"""Network: what a blip costs over ``tcp://`` and over ``hafen://``, and what hafen:// costs.

(a) Blips. A graph of costly tasks (0.5 s each, one reduction) on a scheduler and 3 workers in
    processes of their own, each worker behind chaos proxies (``ProxiedCluster``); one worker's
    connections are severed five times in one run, for 1, 5, 29, 35 and 1 seconds (one second
    apart; the grace period is Dask config ``hafen.comm.grace``, 60 s by default). Per transport:
    workers lost, results lost, tasks recomputed, tasks sent to a worker twice, ``KilledWorker``
    (tasks erred), and the wall time against the same graph without faults.
(b) Throughput. A worker holds ``--gigabytes`` of results in 64 MiB blocks; another worker
    fetches them all (``len`` of each, so the time is the transfer's). Process-based
    ``LocalCluster`` of 2 workers, no proxy; ``tcp://`` and ``hafen://`` in turns, a fresh
    cluster per measurement.

Every measurement runs ``--rounds`` times (at least 3) with the contenders in turns, alternating
which goes first; the tables give the median and the range.

Goals (issue 15): (a) over hafen://, 0 workers lost, 0 results lost, 0 recomputed, and a wall
time within 1.1x the fault-free run plus the blips' own length; (b) hafen:// within 1.05x of
tcp://.

Run: ``.venv/bin/python benchmarks/network.py`` (about 40 minutes: 3 rounds of (a) at the default
sizes); ``--only throughput`` or ``--only blips``; ``--blips 1,3,5,1,3 --grace 6s`` for the
scaled-down schedule of the tests (a few minutes).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import dask
from rich.console import Console
from rich.table import Table

import hafen
from hafen.cluster.comm import ProxiedCluster
from hafen.cluster.resilience import Fault, RunResult, costly_graph, run_chaos
from hafen.testing import random_block

PROTOCOLS = ("tcp", "hafen")
BLOCK = 64 * 2**20


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max)``."""
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def in_turns(rounds: int) -> list[tuple[str, ...]]:
    """The contenders' order per round, alternating which goes first."""
    return [PROTOCOLS if r % 2 == 0 else PROTOCOLS[::-1] for r in range(rounds)]


# --- (a) blips ---------------------------------------------------------------------------------


def blip_round(
    protocol: str, blips: list[float], duration: float, config: dict[str, Any]
) -> tuple[RunResult, RunResult]:
    """One fault-free and one faulty run of the same graph on a fresh ProxiedCluster."""
    schedule, at = [], 1.0
    for seconds in blips:
        schedule.append((at, seconds))
        at += seconds + 1.0
    tasks = math.ceil((at + 5) * 3 / duration)  # outlasts the schedule on 3 workers
    with (
        dask.config.set(config),
        ProxiedCluster(3, protocol=protocol, config=config) as cluster,
        cluster.client() as client,
    ):
        victim = cluster.workers[0].address
        faults = [Fault("sever", at=a, duration=s, worker=victim) for a, s in schedule]
        report = run_chaos(
            client,
            lambda: costly_graph(tasks, duration, replicate=None),
            faults,
            reference=True,
            timeout=20 * tasks * duration,
            network=cluster.proxies,
        )
    assert report.reference is not None
    if not report.matched:
        raise AssertionError(f"{protocol}: the output differs from the fault-free run")
    return report.reference, report.faulty


def blips_table(rounds: int, blips: list[float], duration: float, grace: str) -> Table:
    config = {"hafen.comm.grace": grace}
    runs: dict[str, list[tuple[RunResult, RunResult]]] = {p: [] for p in PROTOCOLS}
    for order in in_turns(rounds):
        for protocol in order:
            runs[protocol].append(blip_round(protocol, blips, duration, config))
    total = sum(blips)
    lengths = ", ".join(f"{b:g}" for b in blips)
    table = Table(
        title=f"(a) one worker of 3 severed {len(blips)} times ({lengths} s; grace {grace}); "
        f"median (range) of {rounds} rounds"
    )
    for column in ("transport", "workers lost", "results lost", "recomputed", "sent twice",
                   "KilledWorker", "fault-free", "with blips", "ratio", "goal"):  # fmt: skip
        table.add_column(column, justify="left" if column == "transport" else "right")
    for protocol in PROTOCOLS:
        pairs = runs[protocol]
        faulty = [f for _, f in pairs]
        ref = [r.wall_time for r, _ in pairs]
        wall = [f.wall_time for f in faulty]
        ratio = [f / r for r, f in zip(ref, wall, strict=True)]
        goal = [f <= 1.1 * r + total for r, f in zip(ref, wall, strict=True)]
        table.add_row(
            f"{protocol}://",
            spread([f.workers_lost for f in faulty], "{:g}"),
            spread([f.lost for f in faulty], "{:g}"),
            spread([f.recomputed for f in faulty], "{:g}"),
            spread([f.restarted for f in faulty], "{:g}"),
            spread([f.erred for f in faulty], "{:g}"),
            spread(ref, "{:.1f}s"),
            spread(wall, "{:.1f}s"),
            spread(ratio),
            f"{sum(goal)}/{len(goal)} within 1.1x + {total:g}s",
        )
    return table


# --- (b) throughput ----------------------------------------------------------------------------


def transfer_seconds(protocol: str, gigabytes: float) -> float:
    """Seconds for one worker to fetch ``gigabytes`` of results from another (fresh cluster)."""
    from distributed import wait

    n = max(1, round(gigabytes * 2**30 / BLOCK))
    with hafen.connect(
        n_workers=2,
        threads_per_worker=1,
        memory_limit=f"{gigabytes * 2 + 2:.0f}GiB",
        protocol=protocol,
        preload=["hafen.cluster.comm"],
        dashboard_address=":0",
    ) as client:
        source, sink = sorted(client.scheduler_info()["workers"])
        blocks = [
            client.submit(random_block, BLOCK, i, workers=[source], pure=False) for i in range(n)
        ]
        wait(blocks)
        started = time.perf_counter()
        sizes = client.gather(
            [client.submit(len, b, workers=[sink], allow_other_workers=False) for b in blocks]
        )
        seconds = time.perf_counter() - started
        assert sizes == [BLOCK // 8] * n
    return seconds


def throughput_table(rounds: int, gigabytes: float) -> Table:
    seconds: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    for order in in_turns(rounds):
        for protocol in order:
            seconds[protocol].append(transfer_seconds(protocol, gigabytes))
    table = Table(
        title=f"(b) {gigabytes:g} GiB of 64 MiB results fetched by another worker; "
        f"median (range) of {rounds} rounds, in turns"
    )
    for column in ("transport", "seconds", "GiB/s", "vs tcp:// (median)"):
        table.add_column(column, justify="left" if column == "transport" else "right")
    base = statistics.median(seconds["tcp"])
    for protocol in PROTOCOLS:
        values = seconds[protocol]
        table.add_row(
            f"{protocol}://",
            spread(values, "{:.2f}"),
            spread([gigabytes / s for s in values]),
            f"{statistics.median(values) / base:.3f}x",
        )
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", choices=["blips", "throughput"], default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blips", default="1,5,29,35,1", help="seconds of each sever")
    parser.add_argument("--grace", default="60s", help="hafen.comm.grace for (a)")
    parser.add_argument("--duration", type=float, default=0.5, help="seconds per task in (a)")
    parser.add_argument("--gigabytes", type=float, default=2.0, help="data moved in (b)")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    console = Console(width=160)
    console.print(
        f"network: {platform.python_version()}, {platform.machine()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    parts: list[Callable[[], Table]] = []
    if args.only in (None, "throughput"):
        parts.append(lambda: throughput_table(args.rounds, args.gigabytes))
    if args.only in (None, "blips"):
        blips = [float(b) for b in args.blips.split(",")]
        parts.append(lambda: blips_table(args.rounds, blips, args.duration, args.grace))
    for part in parts:
        started = time.time()
        table = part()
        console.print(table)
        console.print(f"  ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
