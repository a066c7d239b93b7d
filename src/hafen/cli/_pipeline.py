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
@click.option(
    "--tenants",
    "loop",
    is_flag=True,
    help="Show the customer's loop: a tenant posts its data to the API, runs, posts one more "
    "week, runs again; prints the forecasts' change.",
)
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
    loop: bool,
    scheduler: str | None,
    storage: str | None,
    as_json: bool,
    then_serve: bool,
    host: str,
    port: int,
) -> None:
    """Run the reference pipeline on a synthetic retail database.

    Makes DIR/retail.sqlite (or reuses it), then extracts, denormalizes, reshuffles, forecasts
    and writes DIR/datasets/{sales,sales_by_store,forecasts}. Rerunning adds a version. With
    --tenants, the data goes in through the API instead (see hafen.cli._loop).
    """
    import json

    from hafen.config import get_settings
    from hafen.pipeline import SynthParams, demo, summary_dict

    root = workdir or get_settings().workdir
    if loop:
        import shutil
        from pathlib import Path

        from hafen.cli._loop import customer_loop

        if fresh and Path(root).exists():
            shutil.rmtree(root)
        synth = SynthParams(stores=stores, products=products, days=days, seed=seed)
        with cluster_client(resolve_scheduler(scheduler), local={"n_workers": 2}) as client:
            customer_loop(root, synth=synth, console=console, client=client)
        return
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
    default=None,
    type=click.Path(dir_okay=False),
    help="A pipeline.toml (see hafen.pipeline._config).",
)
@click.option(
    "--tenant",
    default=None,
    metavar="NAME",
    help="Instead of --config: run on tenant NAME's database and dataset root.",
)
@click.option("--home", default="hafen-service", show_default=True, help="With --tenant.")
@click.option("--database", default=None, metavar="URL", help="With --tenant: PostgreSQL URL.")
@click.option(
    "--full",
    is_flag=True,
    help="Rebuild every dataset whole (by default a database filled through the ingest API is "
    "run incrementally: only what arrived since the last run).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead.")
@click.option("--serve", "then_serve", is_flag=True, help="Then serve the results over HTTP.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def run_command(
    config_path: str | None,
    tenant: str | None,
    home: str,
    database: str | None,
    full: bool,
    as_json: bool,
    then_serve: bool,
    host: str,
    port: int,
) -> None:
    """Run the reference pipeline on the database and storage named in a pipeline.toml, or on
    a tenant's (--tenant).

    A database filled through the ingest API is run incrementally: only the batches that
    arrived since the last run are extracted, and only the stores they change are forecast
    again; a run with nothing new commits nothing.
    """
    import json

    from hafen.pipeline import PipelineConfig, load_config, run_pipeline, summary_dict
    from hafen.pipeline._run import prepare_database

    if (config_path is None) == (tenant is None):
        raise click.UsageError("pass one of --config and --tenant")
    if tenant is not None:
        from hafen.serve import Tenants

        found = Tenants(home, database=database).get(tenant)
        cfg = PipelineConfig(source_url=found.source_url, datasets_root=found.datasets)
    else:
        assert config_path is not None
        cfg = load_config(config_path)
    seconds = None
    if cfg.synth is not None:
        seconds = prepare_database(cfg, cfg.synth, None if as_json else console)
    result = run_pipeline(
        cfg, console=None if as_json else console, synth_seconds=seconds, full=full
    )
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
@click.option(
    "--tenants",
    "with_tenants",
    is_flag=True,
    help="URL is a service home (hafen tenants): every request but /healthz needs a tenant's "
    "key, and /v1/ takes the tenant's data.",
)
@click.option("--database", default=None, metavar="URL", help="With --tenants: PostgreSQL URL.")
def serve_command(
    url: str, host: str, port: int, refresh: float, with_tenants: bool, database: str | None
) -> None:
    """Serve the forecasts (and the datasets' metadata) under URL over HTTP.

    URL is a folder of datasets (such as hafen-demo/datasets) or one forecasts dataset; with
    --tenants, a service home made by ``hafen tenants add``.
    """
    from hafen.serve import serve

    if with_tenants:
        import uvicorn

        from hafen.serve import create_service

        console.print(f"Serving tenants of {url} on http://{host}:{port}/", highlight=False)
        app = create_service(url, database=database, refresh=refresh)
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
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
