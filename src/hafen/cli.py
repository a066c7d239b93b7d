"""The ``hafen`` command line.

Commands import what they need when they run, so ``hafen --help`` stays fast.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

from hafen import __version__
from hafen.errors import HafenError

console = Console()
err_console = Console(stderr=True)


class _Group(click.Group):
    """A click group that prints hafen errors as one readable line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except HafenError as exc:
            err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="hafen")
def main() -> None:
    """hafen: production-grade data pipelines on Dask."""


# --- datasets -------------------------------------------------------------------------------


@main.group(cls=_Group)
def dataset() -> None:
    """Inspect and maintain datasets."""


# --- limits ---------------------------------------------------------------------------------


@main.command("limits")
@click.option(
    "--scheduler",
    "address",
    default=None,
    metavar="ADDRESS",
    help="Scheduler address (default: the HAFEN_SCHEDULER setting).",
)
def limits_command(address: str | None) -> None:
    """Show the cluster-wide limits held on the scheduler."""
    from hafen.cluster._cli import limits_table

    console.print(limits_table(address))


# --- sql ------------------------------------------------------------------------------------


@main.command("extract")
@click.argument("db_url")
@click.argument("query_or_table")
@click.argument("dataset_url")
@click.option("--split-on", default=None, help="Integer, date or timestamp column to split on.")
@click.option("--chunks", default=16, show_default=True, help="Number of ranges (tasks).")
@click.option("--partition-on", multiple=True, help="Partition column (repeatable).")
@click.option("--index", "indices", multiple=True, help="Secondary-index column (repeatable).")
@click.option("--limit", default=None, help="Cluster-wide limit name, or a number of slots.")
@click.option(
    "--mode",
    type=click.Choice(["create", "append", "overwrite"]),
    default="append",
    show_default=True,
)
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler address.")
def extract_command(
    db_url: str,
    query_or_table: str,
    dataset_url: str,
    split_on: str | None,
    chunks: int,
    partition_on: tuple[str, ...],
    indices: tuple[str, ...],
    limit: str | None,
    mode: str,
    scheduler: str | None,
) -> None:
    """Extract QUERY_OR_TABLE from DB_URL into the dataset at DATASET_URL, in one commit."""
    from hafen.sql._cli import run_extract

    ds = run_extract(
        db_url,
        query_or_table,
        dataset_url,
        split_on=split_on,
        chunks=chunks,
        partition_on=list(partition_on) or None,
        indices=list(indices) or None,
        limit=limit,
        mode=mode,
        scheduler=scheduler,
    )
    console.print(f"{ds.url}: version {ds.version}, {ds.num_rows:,} rows", highlight=False)


@main.command("load")
@click.argument("dataset_url")
@click.argument("db_url")
@click.option("--table", required=True, help="Target table (created if missing).")
@click.option(
    "--mode",
    type=click.Choice(["append", "replace", "upsert"]),
    default="append",
    show_default=True,
)
@click.option("--key", "keys", multiple=True, help="Key column for upsert (repeatable).")
@click.option("--chunks", default=None, type=int, help="Number of tasks (default: per file).")
@click.option("--limit", default=None, help="Cluster-wide limit name, or a number of slots.")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler address.")
def load_command(
    dataset_url: str,
    db_url: str,
    table: str,
    mode: str,
    keys: tuple[str, ...],
    chunks: int | None,
    limit: str | None,
    scheduler: str | None,
) -> None:
    """Load the dataset at DATASET_URL into a table of DB_URL."""
    from hafen.sql._cli import run_load

    rows = run_load(
        dataset_url,
        db_url,
        table=table,
        mode=mode,
        key=list(keys) or None,
        chunks=chunks,
        limit=limit,
        scheduler=scheduler,
    )
    console.print(f"{table}: {rows:,} rows written ({mode})", highlight=False)
