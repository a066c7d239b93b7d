"""``hafen demo``, ``run``, ``serve`` and ``reshuffle``: the pipeline, its API, and datasets
rewritten on a cluster."""

from __future__ import annotations

import click

from hafen.cli._common import cluster_client, console, resolve_scheduler, scheduler_option

__all__ = ["demo_command", "reshuffle_command", "run_command", "serve_command"]


def _serve_after(root: str, host: str, port: int) -> None:
    from hafen.serve import serve

    console.print(f"Serving {root} on http://{host}:{port}/ (Ctrl-C to stop)", highlight=False)
    serve(root, host=host, port=port)


@click.command("demo")
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
@scheduler_option
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
        scheduler=resolve_scheduler(scheduler),
        **({"datasets_root": storage} if storage else {}),
    )
    if as_json:
        click.echo(json.dumps(summary_dict(result), indent=2, default=str))
    if then_serve:
        _serve_after(result.config.datasets_root, host, port)


@click.command("run")
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


@click.command("serve")
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


@click.command("reshuffle")
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
@scheduler_option
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
    scheduler: str | None,
    workers: int,
) -> None:
    """Rewrite dataset SRC partitioned by other columns into DST, in bounded memory.

    Example: hafen reshuffle data/sales data/by_store -p store_id -n 4 --sort-by product_id
    --index product_id
    """
    import time

    from hafen.dask import reshuffle
    from hafen.datasets._predicates import parse_predicates

    predicates = parse_predicates(where) if where else None
    started = time.perf_counter()
    with cluster_client(scheduler, local={"n_workers": workers}):
        ds = reshuffle(
            src,
            dst,
            partition_on=list(partition_on),
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
