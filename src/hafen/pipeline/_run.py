"""Running the pipeline end to end: cluster, stages, timings, and the summary.

:func:`run_pipeline` runs the five data stages of :mod:`hafen.pipeline._stages` and returns a
:class:`PipelineResult`; :func:`demo` first makes (or reuses) the synthetic database in a work
folder. Both print progress and the summary (stage 6) when given a console.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from hafen._secrets import redact
from hafen.errors import ConfigError
from hafen.pipeline import _stages
from hafen.pipeline._config import DB_LIMIT, PipelineConfig, SynthParams
from hafen.pipeline._progress import StageProgress, peak_rss

__all__ = ["PipelineResult", "StageReport", "demo", "demo_config", "run_pipeline"]


@dataclasses.dataclass
class StageReport:
    name: str
    rows: int
    seconds: float
    implementation: str  # the hafen capability (or model) that ran it
    detail: str = ""


@dataclasses.dataclass
class PipelineResult:
    """What a run did: per stage rows and time, accuracy, peaks, and the datasets' versions."""

    config: PipelineConfig
    stages: list[StageReport]
    wape_model: float
    wape_baseline: float
    holdout_rows: int
    peak_memory: dict[str, int]
    db_slots_max: int
    db_concurrency: int
    dashboard: str | None
    versions: dict[str, int]
    store_metrics: list[dict[str, Any]]
    synth_seconds: float | None = None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


def _implementation(name: str) -> str:
    return _stages.IMPLEMENTATION[name]


def _connect(cfg: PipelineConfig) -> Any:
    from hafen.cluster import connect
    from hafen.config import get_settings

    address = cfg.scheduler or get_settings().scheduler  # [cluster] scheduler, else the setting
    if address:
        return connect(address)
    with warnings.catch_warnings():
        # "Port 8787 is already in use": distributed then picks a free port, printed later
        warnings.filterwarnings("ignore", "Port .* is already in use", UserWarning)
        return connect(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            dashboard_address=":8787",
        )


def run_pipeline(
    cfg: PipelineConfig,
    *,
    client: Any = None,
    console: Any = None,
    synth_seconds: float | None = None,
) -> PipelineResult:
    """Run stages 1-5 on ``cfg`` and return the result (stage 6 prints it when ``console``).

    Parameters
    ----------
    cfg
        Where the data comes from and goes (see :class:`PipelineConfig`).
    client
        A ``distributed.Client`` with hafen's extensions (``hafen.connect()``); by default one is
        made from ``cfg`` and closed at the end.
    console
        A ``rich.console.Console`` for progress and the summary; None runs silently.

    Examples
    --------
    >>> result = run_pipeline(load_config("pipeline.toml"))  # doctest: +SKIP
    """
    from hafen.cluster import set_limit

    own = client is None
    if own:
        client = _connect(cfg)
    try:
        set_limit(DB_LIMIT, concurrency=cfg.concurrency, client=client)
        dashboard = getattr(client, "dashboard_link", None)
        if console is not None and dashboard:
            console.print(f"Dask dashboard: [link={dashboard}]{dashboard}[/link]")
        with _progress_display(console) as progress:
            result = _run_stages(cfg, client, progress, dashboard)
        result.synth_seconds = synth_seconds
        if console is not None:
            from hafen.pipeline._summary import print_summary

            print_summary(result, console)
        return result
    finally:
        if own:
            _close(client)


def _close(client: Any) -> None:
    """Close a client and the cluster it started, without the nannies' warnings about workers
    that take more than a few seconds to stop on a busy machine (they are stopped anyway)."""
    logger = logging.getLogger("distributed.nanny")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        client.close()
    finally:
        logger.setLevel(level)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_display(console: Any) -> Any:
    if console is None:
        return _Null()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TimeElapsedColumn(),
        console=console,
    )


def _run_stages(cfg: PipelineConfig, client: Any, progress: Any, dashboard: str | None) -> Any:
    tracker = StageProgress(client, progress, limit=DB_LIMIT)
    tasks = max(2, 2 * sum(client.nthreads().values()))
    reports: list[StageReport] = []

    began = time.perf_counter()
    with tracker.stage("1. extract (database -> raw/*)", watch_limit=True):
        raw = _stages.extract(cfg)
    reports.append(
        StageReport(
            "extract",
            raw["sales"].num_rows,
            time.perf_counter() - began,
            _implementation("extract"),
            ", ".join(f"{k} {v.num_rows:,}" for k, v in raw.items() if k != "sales"),
        )
    )

    began = time.perf_counter()
    with tracker.stage("2. denormalize (-> sales by date)"):
        sales = _stages.denormalize(cfg, raw, tasks=tasks)
    reports.append(
        StageReport(
            "denormalize",
            sales.num_rows,
            time.perf_counter() - began,
            _implementation("denormalize"),
            f"{len(sales.partitions())} date partitions",
        )
    )

    began = time.perf_counter()
    with tracker.stage("3. reshuffle (-> sales_by_store)"):
        by_store = _stages.reshuffle(cfg, sales)
    reports.append(
        StageReport(
            "reshuffle",
            by_store.num_rows,
            time.perf_counter() - began,
            _implementation("reshuffle"),
            f"{len(by_store.partitions())} store partitions",
        )
    )

    began = time.perf_counter()
    with tracker.stage("4. forecast (one task per store)"):
        frames, metric_futures = _stages.forecast(
            cfg, by_store, sales, raw, client, token=uuid.uuid4().hex[:12]
        )
        store_metrics = client.gather(metric_futures)
    holdout_rows = sum(m["holdout_rows"] for m in store_metrics)
    reports.append(
        StageReport(
            "forecast",
            holdout_rows,
            time.perf_counter() - began,
            _implementation("forecast"),
            f"{len(store_metrics)} models; rows: held-out rows scored",
        )
    )

    began = time.perf_counter()
    with tracker.stage("5. write forecasts (one commit)"):
        forecasts = _stages.write_forecasts(cfg, frames)
    del frames
    reports.append(
        StageReport(
            "write forecasts",
            forecasts.num_rows,
            time.perf_counter() - began,
            _implementation("write forecasts"),
            f"version {forecasts.version}",
        )
    )

    actual = sum(m["actual_sum"] for m in store_metrics)
    wape_model = sum(m["abs_error_model"] for m in store_metrics) / max(actual, 1e-12)
    wape_baseline = sum(m["abs_error_baseline"] for m in store_metrics) / max(actual, 1e-12)
    versions = {f"raw/{k}": v.version for k, v in raw.items()}
    versions.update(
        sales=sales.version, sales_by_store=by_store.version, forecasts=forecasts.version
    )
    return PipelineResult(
        config=cfg,
        stages=reports,
        wape_model=wape_model,
        wape_baseline=wape_baseline,
        holdout_rows=holdout_rows,
        peak_memory=peak_rss(client),
        db_slots_max=tracker.slots_max,
        db_concurrency=cfg.concurrency,
        dashboard=dashboard,
        versions=versions,
        store_metrics=sorted(store_metrics, key=lambda m: m["store_id"]),
    )


# -- the demo --------------------------------------------------------------------------------

DEFAULT_WORKDIR = "hafen-demo"


def demo_config(workdir: str | os.PathLike[str], **overrides: Any) -> PipelineConfig:
    """The demo's configuration: ``DIR/retail.sqlite`` and ``DIR/datasets/...``.

    ``overrides`` may replace any field, e.g. ``datasets_root="az://lake/retail"``.
    """
    root = Path(workdir).resolve()
    values = {
        "source_url": f"sqlite:///{root / 'retail.sqlite'}",
        "datasets_root": str(root / "datasets"),
        **overrides,
    }
    return PipelineConfig(**values)


def prepare_database(cfg: PipelineConfig, synth: SynthParams, console: Any = None) -> float | None:
    """Generate the synthetic database unless one with the same parameters is there.

    Returns the seconds spent generating, or None when the existing database was reused.
    Raises :class:`ConfigError` when the database there was made with other parameters.
    """
    from hafen.pipeline import synth as synth_module

    wanted = {**dataclasses.asdict(synth), "start": synth_module.DEFAULT_START}
    existing = synth_module.read_meta(cfg.source_url)
    where = redact(cfg.source_url)  # a PostgreSQL URL may hold a password
    if existing == wanted:
        if console is not None:
            console.print(f"Reusing the synthetic database at {where}")
        return None
    if existing is not None:
        raise ConfigError(
            f"{where} was generated with {existing}, not {wanted}: rerun with the same "
            "sizes, another --workdir, or --fresh to start over"
        )
    if console is not None:
        console.print(
            f"Generating a synthetic retail database ({synth.stores} stores x {synth.products} "
            f"products x {synth.days} days) at {where}"
        )
    info = synth_module.generate(
        cfg.source_url,
        stores=synth.stores,
        products=synth.products,
        days=synth.days,
        seed=synth.seed,
    )
    if console is not None:
        console.print(f"  {info.rows['sales']:,} sales rows in {info.seconds:.1f} s")
    return info.seconds


def demo(
    workdir: str | os.PathLike[str] = DEFAULT_WORKDIR,
    *,
    synth: SynthParams | None = None,
    fresh: bool = False,
    client: Any = None,
    console: Any = None,
    **overrides: Any,
) -> PipelineResult:
    """Run the reference pipeline on a synthetic database in ``workdir``.

    Rerunning in the same folder reuses the database and adds one version to every dataset
    (each write replaces the partitions it writes), so no row is ever duplicated.

    Examples
    --------
    >>> result = demo("hafen-demo", synth=SynthParams(stores=3, products=20))  # doctest: +SKIP
    >>> result.wape_model < result.wape_baseline  # doctest: +SKIP
    True
    """
    synth = synth or SynthParams()
    root = Path(workdir)
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(root, **overrides)
    seconds = prepare_database(cfg, synth, console)
    return run_pipeline(cfg, client=client, console=console, synth_seconds=seconds)
