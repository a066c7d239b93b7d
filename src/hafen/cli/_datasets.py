"""``hafen dataset ls|show|history|read|verify|vacuum``: inspect and maintain datasets."""

from __future__ import annotations

import sys

import click

from hafen.cli._common import HafenGroup, console, err_console, fmt_bytes

__all__ = ["dataset"]


@click.group(cls=HafenGroup)
def dataset() -> None:
    """Inspect and maintain datasets."""


@dataset.command("ls")
@click.argument("url")
def dataset_ls(url: str) -> None:
    """List the datasets directly under URL (hafen's and plateau's)."""
    from rich.table import Table

    from hafen.datasets import open_dataset
    from hafen.datasets._dataset import storage_for
    from hafen.errors import DatasetNotFoundError

    storage = storage_for(url)
    names = set()
    try:
        entries = storage.fs.ls(storage.root, detail=True)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"nothing at {url}") from None
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(".by-dataset-metadata.json"):
            names.add(name[: -len(".by-dataset-metadata.json")])
        elif entry.get("type") == "directory" and storage.fs.exists(f"{entry['name']}/_hafen/log"):
            names.add(name)
    table = Table("dataset", "version", "rows", "files", "partition_on", "updated")
    for name in sorted(names):
        ds = open_dataset(f"{storage.url}/{name}")
        table.add_row(
            name,
            str(ds.version),
            f"{ds.num_rows:,}",
            str(len(ds.files())),
            ", ".join(ds.partition_on) or "-",
            ds.timestamp[:19],
        )
    if not names:
        console.print(f"no datasets under {url}")
        return
    console.print(table)


@dataset.command("show")
@click.argument("url")
@click.option("--version", "version", type=int, default=None, help="Time travel to VERSION.")
def dataset_show(url: str, version: int | None) -> None:
    """Describe a dataset: version, rows, layout, schema and partitions."""
    from rich.table import Table

    from hafen.datasets import open_dataset

    ds = open_dataset(url, version=version)
    files = ds.files()
    console.print(f"[bold]{ds.url}[/]  version [bold]{ds.version}[/]  ({ds.timestamp})")
    console.print(
        f"{ds.num_rows:,} rows in {len(files)} files ({fmt_bytes(sum(f.size for f in files))}), "
        f"{len(ds.partitions())} partitions"
    )
    console.print(
        f"partition_on: {', '.join(ds.partition_on) or '-'}   "
        f"indices: {', '.join(ds.indices) or '-'}"
    )
    schema = Table("column", "type", title="schema")
    for field in ds.schema:
        role = (
            " (partition)"
            if field.name in ds.partition_on
            else (" (indexed)" if field.name in ds.indices else "")
        )
        schema.add_row(field.name + role, str(field.type))
    console.print(schema)


@dataset.command("history")
@click.argument("url")
@click.option("--limit", type=int, default=None, help="Show only the newest LIMIT versions.")
def dataset_history(url: str, limit: int | None) -> None:
    """Show the commits of a dataset, newest first."""
    from rich.table import Table

    from hafen.datasets import open_dataset

    table = Table("version", "time (UTC)", "operation", "files +", "files -", "rows +")
    for h in open_dataset(url).history(limit=limit):
        table.add_row(
            str(h["version"]),
            h["timestamp"][:23].replace("T", " "),
            h["operation"],
            str(h["files_added"]),
            str(h["files_removed"]),
            f"{h['rows_added']:,}",
        )
    console.print(table)


@dataset.command("read")
@click.argument("url")
@click.option("--columns", default=None, help="Comma-separated columns (default: all).")
@click.option(
    "--where",
    default=None,
    help="A SQL condition, e.g. \"store_id in (1, 2) and date >= 2024-01-01 and name = 'x'\".",
)
@click.option("--version", "version", type=int, default=None, help="Time travel to VERSION.")
@click.option("--limit", type=int, default=20, show_default=True, help="Rows to print (0: all).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
def dataset_read(
    url: str, columns: str | None, where: str | None, version: int | None, limit: int, fmt: str
) -> None:
    """Read rows of a dataset, with columns and predicates pushed down."""
    from rich.table import Table

    from hafen.datasets import open_dataset
    from hafen.datasets._predicates import parse_predicates

    ds = open_dataset(url, version=version)
    cols = [c.strip() for c in columns.split(",")] if columns else None
    predicates = parse_predicates(where) if where else None
    df = ds.read(columns=cols, predicates=predicates)
    total = len(df)
    if limit:
        df = df.head(limit)
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
        return
    if fmt == "json":
        click.echo(df.to_json(orient="records", date_format="iso"))
        return
    table = Table(*map(str, df.columns))
    for row in df.itertuples(index=False):
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
    console.print(f"{len(df):,} of {total:,} matching rows shown")


@dataset.command("verify")
@click.argument("url")
@click.option(
    "--version", "version", type=int, default=None, help="Verify VERSION (default: latest)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Files checked at once (default: the cores for local files, 8 for remote stores).",
)
def dataset_verify(url: str, version: int | None, workers: int | None) -> None:
    """Check every file of a version: present, with the size and checksum the log recorded,
    and decodable with Parquet's page checksums on.

    Lists the missing or damaged files and exits with status 1 if there are any.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hafen.datasets import open_dataset

    ds = open_dataset(url, version=version)
    total = len(ds.files()) + sum(len(ds.state.live_index_parts(c)) for c in ds.indices)
    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("verify", total=total)
        report = ds.verify(progress=lambda _: progress.advance(task), max_workers=workers)
    data = [c for c in report.files if c.kind == "data"]
    indices = len(report.files) - len(data)
    console.print(
        f"[bold]{ds.url}[/] version [bold]{ds.version}[/]: {len(data)} data files "
        f"({fmt_bytes(sum(c.size for c in data))}) and {indices} index files checked",
        highlight=False,
    )
    if report.without_checksum:
        console.print(
            f"{report.without_checksum} data files have no checksum in the log (written before "
            "hafen recorded them): checked by size and decoding only",
            highlight=False,
        )
    if report.ok:
        console.print("[green]all files are sound[/]")
        return
    for check in report.bad:  # one line each, never wrapped: paths to copy
        console.print(
            f"[red]bad[/] {check.path} ({check.kind} file): {check.problem}",
            highlight=False,
            soft_wrap=True,
        )
    err_console.print(
        f"[bold red]{len(report.bad)} of {len(report.files)} files are damaged or missing[/]",
        highlight=False,
    )
    sys.exit(1)


@dataset.command("vacuum")
@click.argument("url")
@click.option(
    "--retain",
    "retain",
    type=int,
    default=None,
    help="Versions that stay readable (default: setting retain_versions, 10).",
)
@click.option("--grace", default=None, help="Never remove files younger than this (default 1h).")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
def dataset_vacuum(url: str, retain: int | None, grace: str | None, dry_run: bool) -> None:
    """Remove files that no retained version references."""
    from hafen.datasets import open_dataset

    report = open_dataset(url).vacuum(retain_versions=retain, grace_period=grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    console.print(
        f"{verb} {len(report.removed_files)} files ({fmt_bytes(report.bytes_freed)}) and "
        f"{len(report.removed_versions)} old versions; kept {report.kept_young} unreferenced "
        "files younger than the grace period"
    )
