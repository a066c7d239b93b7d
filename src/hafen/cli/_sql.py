"""``hafen extract`` and ``hafen load``: relational databases and datasets, on a cluster."""

from __future__ import annotations

import click

from hafen.cli._common import cluster_client, console, scheduler_option

__all__ = ["extract_command", "load_command", "parse_limit"]


def parse_limit(value: str | None) -> str | int | None:
    """``--limit``: a number of slots (``"4"``) or the name of a cluster-wide limit."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


@click.command("extract")
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
@scheduler_option
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
    from hafen.sql import extract

    # without a scheduler, extract starts an in-process cluster for the call
    with cluster_client(scheduler) as client:
        ds = extract(
            db_url,
            query_or_table,
            dataset_url,
            split_on=split_on,
            chunks=chunks,
            partition_on=list(partition_on) or None,
            indices=list(indices) or None,
            limit=parse_limit(limit),
            mode=mode,  # type: ignore[arg-type]  # click.Choice checked it
            client=client,
        )
    console.print(f"{ds.url}: version {ds.version}, {ds.num_rows:,} rows", highlight=False)


@click.command("load")
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
@scheduler_option
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
    from hafen.sql import load

    with cluster_client(scheduler) as client:
        rows = load(
            dataset_url,
            db_url,
            table=table,
            mode=mode,  # type: ignore[arg-type]  # click.Choice checked it
            key=list(keys) or None,
            chunks=chunks,
            limit=parse_limit(limit),
            client=client,
        )
    console.print(f"{table}: {rows:,} rows written ({mode})", highlight=False)
