"""``hafen limits`` and ``hafen chaos``: the cluster extensions on the command line."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

import click

from hafen.cli._common import cluster_client, console, resolve_scheduler, scheduler_option
from hafen.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client
    from rich.table import Table

__all__ = ["chaos", "limits_command", "render_limits"]


def render_limits(info: dict[str, dict[str, Any]], *, address: str = "") -> Table:
    """Return the table of ``hafen.limits()``-shaped ``info``.

    When a limit has ``results=`` or ``memory=`` (or the back-pressure guard has acted), the
    table also shows them as "alive / limit" (results counted, or their bytes) and the
    overrides: grants made over them because nothing could free them.
    """
    from dask.utils import format_bytes
    from rich.table import Table

    table = Table(title=f"Limits on {address}" if address else "Limits")
    choke = any(
        row.get("results") is not None or row.get("memory") is not None for row in info.values()
    )
    columns = ["limit", "concurrency", "rate"]
    if choke:
        columns += ["results", "memory"]
    columns += ["in use", "waiting", "granted"]
    if choke:
        columns.append("overrides")
    columns.append("longest wait")
    for column in columns:
        table.add_column(column, justify="left" if column in ("limit", "rate") else "right")
    for name, row in sorted(info.items()):
        conc = row["concurrency"]
        rate = row["rate"]
        if rate is not None and row.get("burst", 1) != 1:
            rate = f"{rate} (burst {row['burst']})"
        cells = [name, "-" if conc is None else str(conc), "-" if rate is None else str(rate)]
        if choke:
            results, memory = row.get("results"), row.get("memory")
            alive_bytes = format_bytes(row.get("alive_bytes", 0))
            cells.append("-" if results is None else f"{row.get('alive', 0)}/{results}")
            cells.append("-" if memory is None else f"{alive_bytes}/{format_bytes(memory)}")
        cells += [str(row["in_use"]), str(row["waiting"]), str(row["granted"])]
        if choke:
            cells.append(str(row.get("overrides", 0)))
        cells.append(f"{row['longest_wait']:.1f}s")
        table.add_row(*cells)
    if not info:
        table.caption = "no limits set (hafen.set_limit creates one)"
    return table


@click.command("limits")
@scheduler_option
def limits_command(scheduler: str | None) -> None:
    """Show the cluster-wide limits held on the scheduler."""
    from hafen.cluster import limits

    # only reads: connects without installing anything on the scheduler
    with cluster_client(scheduler, required=True, install=False) as client:
        info = limits(client=client)
    console.print(render_limits(info, address=resolve_scheduler(scheduler) or ""))


@click.command()
@scheduler_option
@click.option("--workers", default=4, show_default=True, help="Workers of the local cluster.")
@click.option("--threads", default=1, show_default=True, help="Threads per local worker.")
@click.option("--tasks", default=200, show_default=True, help="Costly tasks in the graph.")
@click.option("--duration", default=0.5, show_default=True, help="Seconds per costly task.")
@click.option(
    "--replicate/--no-replicate",
    default=True,
    show_default=True,
    help="Annotate the costly tasks replicate=2.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    default=("kill@70%",),
    show_default=True,
    help="ACTION[:SECONDS]@WHEN[/EVERY]: ACTION is kill, terminate, drain, pause, or the network "
    "faults sever and blackhole (for SECONDS, default 2); WHEN is a share of tasks done ('70%') "
    "or seconds ('3s'); EVERY repeats it ('kill@2s/3s', 'sever:5@30%'). Repeatable.",
)
@click.option(
    "--protocol",
    type=click.Choice(["hafen", "tcp"]),
    default="hafen",
    show_default=True,
    help="Transport of the local cluster with network faults (tcp shows what a blip costs "
    "without hafen://).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random worker choice.")
@click.option("--no-reference", is_flag=True, help="Skip the fault-free reference run.")
def chaos(
    scheduler: str | None,
    workers: int,
    threads: int,
    tasks: int,
    duration: float,
    replicate: bool,
    faults: tuple[str, ...],
    seed: int,
    no_reference: bool,
    protocol: str,
) -> None:
    """Run a graph of costly tasks while faults hit the workers; report what it cost.

    The graph is TASKS tasks of DURATION seconds feeding one reduction. Prints, for a fault-free
    run and a run with faults, the wall time, recomputed tasks, lost results and whether the
    outputs match; exits 1 if they do not. Network faults (sever, blackhole) run on a local
    cluster of processes whose workers sit behind proxies (``ProxiedCluster``).
    """
    from hafen.cluster.resilience import Fault, costly_graph, run_chaos
    from hafen.cluster.resilience._chaos import NETWORK_ACTIONS

    schedule = [Fault.parse(text) for text in faults]
    network = [f for f in schedule if f.action in NETWORK_ACTIONS]
    if network and resolve_scheduler(scheduler):
        raise ConfigError(
            "network faults (sever, blackhole) run on a local cluster behind proxies: "
            "leave out --scheduler and HAFEN_SCHEDULER"
        )
    local = {"n_workers": workers, "threads_per_worker": threads, "dashboard_address": ":0"}
    with contextlib.ExitStack() as stack:
        proxies = None
        client: Client | None
        if network:
            from hafen.cluster.comm import ProxiedCluster

            cluster = stack.enter_context(
                ProxiedCluster(workers, protocol=protocol, nthreads=threads)
            )
            client = stack.enter_context(cluster.client())
            proxies = cluster.proxies
        else:
            client = stack.enter_context(cluster_client(scheduler, local=local))
        assert client is not None  # a local cluster without an address
        report = run_chaos(
            client,
            lambda: costly_graph(tasks, duration, replicate=2 if replicate else None),
            schedule,
            seed=seed,
            reference=not no_reference,
            network=proxies,
        )
    console.print(report.table())
    for event in report.faulty.faults:
        console.print(
            f"  {event.time:6.1f}s  {event.action:<9} {event.worker}  {event.detail}",
            highlight=False,
        )
    if report.matched is False:
        sys.exit(1)
