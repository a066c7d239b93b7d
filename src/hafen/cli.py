"""The ``hafen`` command line.

Commands import what they need when they run, so ``hafen --help`` stays fast.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

from hafen._version import __version__
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


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


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
        f"{ds.num_rows:,} rows in {len(files)} files ({_fmt_bytes(sum(f.size for f in files))}), "
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
        f"({_fmt_bytes(sum(c.size for c in data))}) and {indices} index files checked",
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
        f"{verb} {len(report.removed_files)} files ({_fmt_bytes(report.bytes_freed)}) and "
        f"{len(report.removed_versions)} old versions; kept {report.kept_young} unreferenced "
        "files younger than the grace period"
    )


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
    from hafen.cluster.limits._table import limits_table

    console.print(limits_table(address))


# --- chaos ----------------------------------------------------------------------------------


@main.command()
@click.option("--scheduler", default=None, help="Scheduler address; default: a local cluster.")
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
    from hafen.cluster import connect
    from hafen.cluster.resilience import Fault, costly_graph, run_chaos

    schedule = [Fault.parse(text) for text in faults]
    if scheduler:
        client = connect(scheduler)
    else:
        client = connect(n_workers=workers, threads_per_worker=threads, dashboard_address=":0")
    try:
        report = run_chaos(
            client,
            lambda: costly_graph(tasks, duration, replicate=2 if replicate else None),
            schedule,
            seed=seed,
            reference=not no_reference,
        )
    finally:
        client.close()
    console.print(report.table())
    for event in report.faulty.faults:
        console.print(
            f"  {event.time:6.1f}s  {event.action:<9} {event.worker}  {event.detail}",
            highlight=False,
        )
    if report.matched is False:
        sys.exit(1)


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


# --- pipeline -------------------------------------------------------------------------------


def _serve_after(root: str, host: str, port: int) -> None:
    from hafen.serve import serve

    console.print(f"Serving {root} on http://{host}:{port}/ (Ctrl-C to stop)", highlight=False)
    serve(root, host=host, port=port)


@main.command("demo")
@click.option(
    "--workdir",
    default=None,
    metavar="DIR",
    help="Work folder (default: the workdir setting, ./hafen-demo).",
)
@click.option("--stores", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--products", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--days", default=730, show_default=True, type=click.IntRange(min=70))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--fresh", is_flag=True, help="Delete the work folder first.")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Use this Dask cluster.")
@click.option(
    "--storage",
    default=None,
    metavar="URL",
    help="Write the datasets under this URL (e.g. az://container/path) instead of DIR/datasets; "
    "Azure credentials from AZURE_STORAGE_* or hafen.toml [storage_options].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead.")
@click.option("--serve", "then_serve", is_flag=True, help="Then serve the results over HTTP.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def demo_command(
    workdir: str | None,
    stores: int,
    products: int,
    days: int,
    seed: int,
    fresh: bool,
    scheduler: str | None,
    storage: str | None,
    as_json: bool,
    then_serve: bool,
    host: str,
    port: int,
) -> None:
    """Run the reference pipeline on a synthetic retail database.

    Makes DIR/retail.sqlite (or reuses it), then extracts, denormalizes, reshuffles, forecasts
    and writes DIR/datasets/{sales,sales_by_store,forecasts}. Rerunning adds a version.
    """
    import json

    from hafen.config import get_settings
    from hafen.pipeline import SynthParams, demo, summary_dict

    root = workdir or get_settings().workdir
    result = demo(
        root,
        synth=SynthParams(stores=stores, products=products, days=days, seed=seed),
        fresh=fresh,
        console=None if as_json else console,
        scheduler=scheduler,
        **({"datasets_root": storage} if storage else {}),
    )
    if as_json:
        click.echo(json.dumps(summary_dict(result), indent=2, default=str))
    if then_serve:
        _serve_after(result.config.datasets_root, host, port)


@main.command("run")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="A pipeline.toml (see hafen.pipeline._config).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead.")
@click.option("--serve", "then_serve", is_flag=True, help="Then serve the results over HTTP.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def run_command(config_path: str, as_json: bool, then_serve: bool, host: str, port: int) -> None:
    """Run the reference pipeline on the database and storage named in a pipeline.toml."""
    import json

    from hafen.pipeline import load_config, run_pipeline, summary_dict
    from hafen.pipeline._run import prepare_database

    cfg = load_config(config_path)
    seconds = None
    if cfg.synth is not None:
        seconds = prepare_database(cfg, cfg.synth, None if as_json else console)
    result = run_pipeline(cfg, console=None if as_json else console, synth_seconds=seconds)
    if as_json:
        click.echo(json.dumps(summary_dict(result), indent=2, default=str))
    if then_serve:
        _serve_after(cfg.datasets_root, host, port)


# --- serve ----------------------------------------------------------------------------------


@main.command("serve")
@click.argument("url")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--refresh",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between checks for new versions.",
)
def serve_command(url: str, host: str, port: int, refresh: float) -> None:
    """Serve the forecasts (and the datasets' metadata) under URL over HTTP.

    URL is a folder of datasets (such as hafen-demo/datasets) or one forecasts dataset.
    """
    from hafen.serve import serve

    console.print(f"Serving {url} on http://{host}:{port}/ (docs at /docs)", highlight=False)
    serve(url, host=host, port=port, refresh=refresh)


# --- reshuffle ------------------------------------------------------------------------------


@main.command("reshuffle")
@click.argument("src")
@click.argument("dst")
@click.option(
    "--partition-on", "-p", multiple=True, help="An output partition column (repeat for more)."
)
@click.option("--num-buckets", "-n", default=1, show_default=True, type=int)
@click.option("--bucket-by", multiple=True, help="Hash these columns to pick a bucket.")
@click.option("--sort-by", multiple=True, help="Sort each output file by these columns.")
@click.option("--index", "indices", multiple=True, help="Build a secondary index on a column.")
@click.option("--columns", default=None, help="Comma-separated columns to keep (default: all).")
@click.option("--where", default=None, help='Rows to keep, e.g. "date >= 2024-01-01".')
@click.option("--version", type=int, default=None, help="Read this version of SRC.")
@click.option(
    "--mode",
    type=click.Choice(["create", "append", "overwrite"]),
    default="create",
    show_default=True,
)
@click.option("--memory-budget", default=None, help='Peak memory per worker, e.g. "1GiB".')
@click.option(
    "--scheduler",
    "address",
    default=None,
    metavar="ADDRESS",
    help="Use this Dask cluster (default: HAFEN_SCHEDULER, else a local one).",
)
@click.option("--workers", default=2, show_default=True, help="Workers of a local cluster.")
def reshuffle_command(
    src: str,
    dst: str,
    partition_on: tuple[str, ...],
    num_buckets: int,
    bucket_by: tuple[str, ...],
    sort_by: tuple[str, ...],
    indices: tuple[str, ...],
    columns: str | None,
    where: str | None,
    version: int | None,
    mode: str,
    memory_budget: str | None,
    address: str | None,
    workers: int,
) -> None:
    """Rewrite dataset SRC partitioned by other columns into DST, in bounded memory.

    Example: hafen reshuffle data/sales data/by_store -p store_id -n 4 --sort-by product_id
    --index product_id
    """
    import time

    from hafen.cluster import connect
    from hafen.config import get_settings
    from hafen.dask import reshuffle
    from hafen.datasets._predicates import parse_predicates

    predicates = parse_predicates(where) if where else None
    local = {} if (address or get_settings().scheduler) else {"n_workers": workers}
    started = time.perf_counter()
    with connect(address, **local):
        ds = reshuffle(
            src,
            dst,
            list(partition_on),
            num_buckets=num_buckets,
            bucket_by=list(bucket_by) or None,
            sort_by=list(sort_by),
            indices=list(indices),
            memory_budget=memory_budget,
            columns=[c.strip() for c in columns.split(",")] if columns else None,
            predicates=predicates,
            version=version,
            mode=mode,  # type: ignore[arg-type]  # click.Choice checked it
        )
    console.print(
        f"{ds.url}: version {ds.version}, {ds.num_rows:,} rows in {len(ds.files())} files, "
        f"{len(ds.partitions())} partitions by {ds.partition_on or '(none)'} "
        f"({time.perf_counter() - started:.1f} s)",
        highlight=False,
    )
