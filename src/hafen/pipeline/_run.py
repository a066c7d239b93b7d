"""Running the pipeline end to end: cluster, stages, timings, and the summary.

:func:`run_pipeline` runs the five data stages of :mod:`hafen.pipeline._stages` and returns a
:class:`PipelineResult`; :func:`demo` first makes (or reuses) the synthetic database in a work
folder. Both print progress and the summary (stage 6) when given a console.
"""

from __future__ import annotations

import contextlib
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
from hafen.datasets import Dataset
from hafen.errors import ConfigError
from hafen.pipeline import _incremental, _stages
from hafen.pipeline._config import DB_LIMIT, PipelineConfig, SynthParams
from hafen.pipeline._incremental import IngestSequence
from hafen.pipeline._progress import StageProgress, peak_rss

__all__ = ["PipelineResult", "StageReport", "demo", "demo_config", "run_pipeline"]

#: The dataset beside ``forecasts`` that keeps each store's fitted models.
MODELS = "forecast_models"


@dataclasses.dataclass
class StageReport:
    """One stage of a run: its rows, seconds, and the hafen capability (or model) that ran it."""

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
    #: The P10-P90 ranges on the held-out window: mean pinball loss and coverage, of the model
    #: and of the seasonal naive baseline with its empirical quantiles.
    ranges: dict[str, float] = dataclasses.field(default_factory=dict)
    #: What each dataset got this run: "rebuild" (whole), "append" (new data only) or "skip".
    steps: dict[str, str] = dataclasses.field(default_factory=dict)
    #: The stores forecast this run (the others' forecasts were still current).
    forecast_stores: list[int] = dataclasses.field(default_factory=list)
    #: The source's ingest sequence number the run covers; None for a source without one.
    watermark: int | None = None
    #: Models fitted this run; the other stores forecast with the models kept from an earlier
    #: run for the same training data (see :mod:`hafen.pipeline._model`).
    models_fitted: int = 0

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
    full: bool = False,
) -> PipelineResult:
    """Run stages 1-5 on ``cfg`` and return the result (stage 6 prints it when ``console``).

    On a database filled through the ingest API the run is incremental: it extracts the batches
    that arrived since the last run and redoes only what they change (see
    :mod:`hafen.pipeline._incremental`); other databases are extracted whole every time.

    Parameters
    ----------
    cfg
        Where the data comes from and goes (see :class:`PipelineConfig`).
    client
        A ``distributed.Client`` with hafen's extensions (``hafen.connect()``); by default one is
        made from ``cfg`` and closed at the end.
    console
        A ``rich.console.Console`` for progress and the summary; None runs silently.
    full
        Rebuild every dataset whole, whatever the last run left.

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
            result = _run_stages(cfg, client, progress, dashboard, full=full)
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


def _written_rows(ds: Dataset, step: str) -> int:
    """Rows the step added to ``ds`` this run (all its rows for a rebuild, none for a skip)."""
    if step == "skip":
        return 0
    return ds.num_rows if step == "rebuild" else int(ds.history(limit=1)[0]["rows_added"])


def _extract(
    cfg: PipelineConfig, sequence: IngestSequence | None, full: bool
) -> tuple[dict[str, Dataset], dict[str, str]]:
    """Stage 1: each table whole, or (sales) the batches after its watermark, or not at all."""
    out: dict[str, Dataset] = {}
    steps: dict[str, str] = {}
    for table, *_ in _stages.TABLES:
        current = _incremental.open_latest(cfg.dataset(f"raw/{table}"))
        own = _incremental.lineage(current) or {}
        watermark = own.get("watermark")
        if full or sequence is None or current is None or watermark is None:
            step = "rebuild"
        elif not sequence.has_rows(table, watermark):
            step = "skip"
        else:  # the small tables are taken whole; the sales from the watermark on
            step = "append" if table == "sales" else "rebuild"
        steps[f"raw/{table}"] = step
        if step == "skip":
            assert current is not None
            out[table] = current
            continue
        generation = own["generation"] if step == "append" else _incremental.new_generation()
        where, number = None, None
        if sequence is not None:
            where = sequence.where(watermark if step == "append" else None)
            number = sequence.number
        out[table] = _stages.extract_table(
            cfg,
            table,
            where=where,
            mode="append" if step == "append" else "overwrite",
            parameters={_incremental.KEY: {"generation": generation, "watermark": number}},
        )
    return out, steps


def _derive(
    cfg: PipelineConfig, name: str, inputs: dict[str, Dataset], main: str, full: bool
) -> tuple[Dataset | None, _incremental.Step, dict[str, Any]]:
    """The latest ``name``, what to do to it given ``inputs``, and the lineage to commit."""
    refs = {k: _incremental.input_ref(v) for k, v in inputs.items()}
    current = _incremental.open_latest(cfg.dataset(name))
    step = _incremental.plan_step(_incremental.lineage(current), refs, main, full=full)
    return current, step, {"generation": step.generation, "inputs": refs}


def _run_stages(
    cfg: PipelineConfig, client: Any, progress: Any, dashboard: str | None, *, full: bool = False
) -> Any:
    tracker = StageProgress(client, progress, limit=DB_LIMIT)
    tasks = max(2, 2 * sum(client.nthreads().values()))
    reports: list[StageReport] = []
    key = _incremental.KEY

    began = time.perf_counter()
    with tracker.stage("1. extract (database -> raw/*)", watch_limit=True):
        sequence = None if full else _incremental.source_sequence(cfg.source_url)
        raw, steps = _extract(cfg, sequence, full)
    reports.append(
        StageReport(
            "extract",
            _written_rows(raw["sales"], steps["raw/sales"]),
            time.perf_counter() - began,
            _implementation("extract"),
            ", ".join(
                f"{k} {v.num_rows:,}" + ("" if steps[f"raw/{k}"] != "skip" else " (unchanged)")
                for k, v in raw.items()
                if k != "sales"
            )
            + _mode(steps["raw/sales"]),
        )
    )

    began = time.perf_counter()
    with tracker.stage("2. denormalize (-> sales by date)"):
        inputs = {f"raw/{t}": raw[t] for t, *_ in _stages.TABLES}
        current, step, lineage = _derive(cfg, "sales", inputs, "raw/sales", full)
        if step.action == "rebuild":
            sales = _stages.denormalize(cfg, raw, tasks=tasks, parameters={key: lineage})
        elif step.action == "append":
            assert step.since is not None
            new = _incremental.added_since(raw["sales"], step.since)
            sales = _stages.denormalize_files(
                cfg, raw, new, tasks=tasks, parameters={key: lineage}, base=current
            )
        else:
            assert current is not None
            sales = current
        steps["sales"] = step.action
    reports.append(
        StageReport(
            "denormalize",
            _written_rows(sales, step.action),
            time.perf_counter() - began,
            _implementation("denormalize"),
            f"{len(sales.partitions())} date partitions" + _mode(step.action),
        )
    )

    began = time.perf_counter()
    with tracker.stage("3. reshuffle (-> sales_by_store)"):
        current, step, lineage = _derive(cfg, "sales_by_store", {"sales": sales}, "sales", full)
        if step.action == "append" and _incremental.crowded(current):  # one file per store again
            step = _incremental.Step("rebuild", generation=_incremental.new_generation())
            lineage["generation"] = step.generation
        if step.action == "rebuild":
            by_store = _stages.reshuffle(cfg, sales, parameters={key: lineage})
        elif step.action == "append":
            assert step.since is not None
            new = _incremental.added_since(sales, step.since)
            by_store = _stages.reshuffle_files(
                cfg, sales, new, tasks=tasks, parameters={key: lineage}, base=current
            )
        else:
            assert current is not None
            by_store = current
        steps["sales_by_store"] = step.action
    reports.append(
        StageReport(
            "reshuffle",
            _written_rows(by_store, step.action),
            time.perf_counter() - began,
            _implementation("reshuffle"),
            f"{len(by_store.partitions())} store partitions" + _mode(step.action),
        )
    )

    # stage 5's transactions: opened in stage 4, whose tasks stage into them; an error removes
    # what was staged
    with contextlib.ExitStack() as exits:
        began = time.perf_counter()
        with tracker.stage("4. forecast (one task per store)"):
            inputs = {"sales_by_store": by_store}
            inputs.update({f"raw/{t}": raw[t] for t in ("products", "holidays", "promotions")})
            current, step, lineage = _derive(cfg, "forecasts", inputs, "sales_by_store", full)
            first_day, last_day = _stages.calendar(sales)
            lineage["calendar"] = [first_day.isoformat(), last_day.isoformat()]
            own = _incremental.lineage(current) or {}
            if step.action != "rebuild" and own.get("calendar") != lineage["calendar"]:
                step = _incremental.Step("rebuild", generation=_incremental.new_generation())
                lineage["generation"] = step.generation
            stores: set[int] | None = None  # all
            if step.action == "append":
                assert step.since is not None
                stores = _stores_of(by_store, _incremental.added_since(by_store, step.since))
            elif step.action == "skip":
                stores = set()
            outcomes: list[_stages.StoreOutcome] = []
            if stores != set():
                kept_models = None if full else _incremental.open_latest(cfg.dataset(MODELS))
                # the tasks stage their files into stage 5's transactions (open until it commits)
                writer = exits.enter_context(_stages.ForecastWrite(cfg, current, kept_models))
                futures = _stages.forecast(
                    cfg,
                    by_store,
                    sales,
                    raw,
                    client,
                    token=uuid.uuid4().hex[:12],
                    plans=writer.plans,
                    stores=stores,
                    models=kept_models,
                )
                lineage["models"] = None if kept_models is None else kept_models.version
                outcomes = client.gather(futures)
                del futures
            fresh = [o.metrics for o in outcomes]
            fitted = sum(o.fitted for o in outcomes)
            kept = (
                {}
                if step.action == "rebuild"
                else {m["store_id"]: m for m in own.get("metrics", [])}
            )
            kept.update({m["store_id"]: m for m in fresh})
            store_metrics = [kept[s] for s in sorted(kept)]
            steps["forecasts"] = step.action
        holdout_rows = sum(m["holdout_rows"] for m in store_metrics)
        reports.append(
            StageReport(
                "forecast",
                sum(m["holdout_rows"] for m in fresh),
                time.perf_counter() - began,
                _implementation("forecast"),
                f"{len(fresh)} of {len(store_metrics)} stores forecast, {fitted} model(s) fitted; "
                "rows: held-out rows scored",
            )
        )

        began = time.perf_counter()
        with tracker.stage("5. write forecasts (one commit)"):
            if outcomes:
                # the models first: the forecasts name the version of the models they used
                calendar = {"calendar": lineage["calendar"]}
                models = writer.models(outcomes, {key: calendar})
                if models is not None:
                    lineage["models"] = models.version
                lineage["metrics"] = store_metrics
                forecasts = writer.forecasts(outcomes, {key: lineage})
            else:
                assert current is not None
                forecasts = current
        reports.append(
            StageReport(
                "write forecasts",
                sum(
                    f.num_rows
                    for f in forecasts.files()
                    if fresh and f.version == forecasts.version
                ),
                time.perf_counter() - began,
                _implementation("write forecasts"),
                f"version {forecasts.version}" + ("" if fresh else " (unchanged)"),
            )
        )

    actual = sum(m["actual_sum"] for m in store_metrics)
    wape_model = sum(m["abs_error_model"] for m in store_metrics) / max(actual, 1e-12)
    wape_baseline = sum(m["abs_error_baseline"] for m in store_metrics) / max(actual, 1e-12)
    held = max(holdout_rows, 1)
    ranges = {
        f"{what}_{who}": sum(m.get(f"{key}_{who}", 0) for m in store_metrics) / divisor
        for what, key, divisor in (("pinball", "pinball", 3 * held), ("coverage", "covered", held))
        for who in ("model", "baseline")
    }
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
        store_metrics=store_metrics,
        ranges=ranges,
        steps=steps,
        forecast_stores=sorted(m["store_id"] for m in fresh),
        watermark=None if sequence is None else sequence.number,
        models_fitted=fitted,
    )


def _mode(step: str) -> str:
    return {"append": "; incremental (new data only)", "skip": "; up to date"}.get(step, "")


def _stores_of(ds: Dataset, files: list[Any]) -> set[int]:
    """The stores (partition values) ``files`` of ``ds`` belong to."""
    return {int(ds.state.partition_values(f.partition)["store_id"]) for f in files}


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
