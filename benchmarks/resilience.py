"""Resilience: recomputation after a worker dies, with and without replication.

A graph of 200 tasks of 0.5 s each feeding one reduction runs on a process-based LocalCluster of
4 workers x 1 thread (hafen.connect()). Measured in one run:

(a) one worker SIGKILLed at 70 % progress, without replication (the anchor) and with the costly
    tasks annotated ``replicate=2``: wall time, tasks recomputed, replicated tasks recomputed,
    lost results, and whether the output equals the fault-free one;
(b) the cost of replication without faults: wall time with ``replicate=2`` as a ratio to the same
    graph without, in alternating pairs (``--repeat``), median, range and every pair; and the CPU
    seconds the cluster used (workers, scheduler, client), the cost that shows on a busy machine.

Both run ``--repeat`` rounds (at least 3) with the contenders in turns, the order alternating;
(a) reports the median and range of the wall times and the most tasks any round recomputed or
lost, and whether every round's output matched.

Goals (issue 6): zero recomputed replicated tasks in (a); at most 5 % overhead in (b).

Run: ``.venv/bin/python benchmarks/resilience.py`` (about 8 minutes with ``--repeat 3``;
``--tasks/--duration/--workers`` to change the graph).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from typing import Any

import dask
from rich.console import Console
from rich.table import Table

import hafen
from hafen.cluster.resilience import Fault, RunResult, costly_graph, run_chaos, same_output


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cluster_cpu(client) -> float:
    """CPU seconds used so far by the workers and this process (client, scheduler, nannies)."""
    return sum(client.run(_cpu_seconds).values()) + _cpu_seconds()


def run(client, tasks: int, duration: float, replicate: bool, faults: list[Fault]) -> RunResult:
    report = run_chaos(
        client,
        lambda: costly_graph(tasks, duration, replicate=2 if replicate else None),
        faults,
        seed=6,
        reference=False,
        timeout=30 * tasks * duration,
    )
    return report.faulty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--duration", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--repeat", "--rounds", type=int, default=3, help="rounds in turns (at least 3)"
    )
    parser.add_argument("--kill-at", type=float, default=0.7, help="progress of the SIGKILL")
    parser.add_argument(
        "--connect-timeout",
        default=None,
        help="distributed.comm.timeouts.connect for (a) (Dask's default: 30s)",
    )
    args = parser.parse_args()
    if args.repeat < 3:
        parser.error("--repeat must be at least 3: one or two runs are noise on a shared machine")
    # the graph's output, computed in this process with tasks that take no time
    reference = costly_graph(args.tasks, 0, replicate=None).compute(scheduler="sync")

    console = Console(width=120)
    console.print(
        f"resilience: {args.tasks} tasks x {args.duration}s -> 1 reduction, "
        f"{args.workers} workers x 1 thread (processes), {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    client = hafen.connect(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0")
    try:
        client.wait_for_workers(args.workers, timeout=120)
        # (b) fault-free pairs, alternating which goes first.
        plain: list[float] = []
        replicated: list[float] = []
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.repeat):
            order = (False, True) if i % 2 == 0 else (True, False)
            for rep in order:
                before = cluster_cpu(client)
                result = run(client, args.tasks, args.duration, rep, [])
                cpu[rep].append(cluster_cpu(client) - before)
                (replicated if rep else plain).append(result.wall_time)
                assert same_output(result.output, reference)
                console.print(
                    f"  fault-free {'replicate=2' if rep else 'no replication'}: "
                    f"{result.wall_time:.2f}s, {cpu[rep][-1]:.1f} CPU-s"
                )
    finally:
        client.close()
    # (a) one SIGKILL at 70 % progress, each on a fresh cluster (on a loaded machine the nanny
    # may take long to replace a killed worker).
    killed: dict[bool, list[Any]] = {False: [], True: []}
    config = {}
    if args.connect_timeout:
        config["distributed.comm.timeouts.connect"] = args.connect_timeout
    for rep in [
        r for i in range(args.repeat) for r in ((False, True) if i % 2 == 0 else (True, False))
    ]:
        with dask.config.set(config):
            client = hafen.connect(
                n_workers=args.workers, threads_per_worker=1, dashboard_address=":0"
            )
        try:
            client.wait_for_workers(args.workers, timeout=120)
            kill = Fault("kill", at_progress=args.kill_at)
            killed[rep].append(run(client, args.tasks, args.duration, rep, [kill]))
        finally:
            client.close()
        console.print(
            f"  SIGKILL at {args.kill_at:.0%} {'replicate=2' if rep else 'no replication'}: "
            f"{killed[rep][-1].wall_time:.2f}s, recomputed {killed[rep][-1].recomputed}"
        )

    timeout = f", connect timeout {args.connect_timeout}" if args.connect_timeout else ""
    table = Table(title=f"(a) one worker SIGKILLed at {args.kill_at:.0%} progress{timeout}")
    for column in (
        "run",
        "wall time",
        "vs fault-free",
        "recomputed",
        "replicated recomputed",
        "lost",
        "output",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")
    for rep in (False, True):
        runs = killed[rep]
        walls = [r.wall_time for r in runs]
        fault_free = replicated if rep else plain
        anchor = statistics.median(fault_free) if fault_free else float("nan")
        table.add_row(
            "replicate=2" if rep else "no replication",
            f"{statistics.median(walls):.2f}s ({min(walls):.2f}-{max(walls):.2f})",
            f"{statistics.median(walls) / anchor:.2f}x",
            str(max(r.recomputed for r in runs)),
            str(max(r.recomputed_protected for r in runs)) if rep else "-",
            str(max(r.lost for r in runs)),
            "matched" if all(same_output(r.output, reference) for r in runs) else "DIFFERS",
        )
    console.print(table)
    if not plain:
        return

    ratios = [r / p for p, r in zip(plain, replicated, strict=True)]
    table = Table(title=f"(b) replication without faults, median (range) of {len(plain)} pairs")
    for column in ("", "no replication", "replicate=2", "ratio (median)", "ratio per pair"):
        table.add_column(column, justify="right")
    table.add_row(
        "wall time",
        f"{statistics.median(plain):.2f}s ({min(plain):.2f}-{max(plain):.2f})",
        f"{statistics.median(replicated):.2f}s ({min(replicated):.2f}-{max(replicated):.2f})",
        f"{statistics.median(replicated) / statistics.median(plain):.3f}",
        ", ".join(f"{x:.3f}" for x in ratios),
    )
    table.add_row(
        "cluster CPU",
        f"{statistics.median(cpu[False]):.1f}s",
        f"{statistics.median(cpu[True]):.1f}s",
        f"{statistics.median(cpu[True]) / statistics.median(cpu[False]):.3f}",
        ", ".join(f"{r / p:.3f}" for p, r in zip(cpu[False], cpu[True], strict=True)),
    )
    console.print(table)


if __name__ == "__main__":
    main()
