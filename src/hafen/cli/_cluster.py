"""``hafen limits`` and ``hafen chaos``: the cluster extensions on the command line."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from hafen.cli._common import cluster_client, console, resolve_scheduler, scheduler_option

if TYPE_CHECKING:
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
    help="ACTION@WHEN[/EVERY]: ACTION is kill, terminate, drain or pause; WHEN is a share of "
    "tasks done ('70%') or seconds ('3s'); EVERY repeats it ('kill@2s/3s'). Repeatable.",
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
) -> None:
    """Run a graph of costly tasks while faults hit the workers; report what it cost.

    The graph is TASKS tasks of DURATION seconds feeding one reduction. Prints, for a fault-free
    run and a run with faults, the wall time, recomputed tasks, lost results and whether the
    outputs match; exits 1 if they do not.
    """
    from hafen.cluster.resilience import Fault, costly_graph, run_chaos

    schedule = [Fault.parse(text) for text in faults]
    local = {"n_workers": workers, "threads_per_worker": threads, "dashboard_address": ":0"}
    with cluster_client(scheduler, local=local) as client:
        assert client is not None  # a local cluster without an address
        report = run_chaos(
            client,
            lambda: costly_graph(tasks, duration, replicate=2 if replicate else None),
            schedule,
            seed=seed,
            reference=not no_reference,
        )
    console.print(report.table())
    for event in report.faulty.faults:
        console.print(
            f"  {event.time:6.1f}s  {event.action:<9} {event.worker}  {event.detail}",
            highlight=False,
        )
    if report.matched is False:
        sys.exit(1)
