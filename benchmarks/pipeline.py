"""The reference pipeline's stage times at the default size and at 10x: how cost grows with data.

Each size runs ``hafen demo --json`` in a fresh work folder, as a subprocess (its own 2-worker
process-based LocalCluster, 1 thread each), and records:

- the wall time of each stage (from the demo's summary) and of the whole command;
- the CPU seconds of the command and everything it started (the cluster's processes), from
  ``RUSAGE_CHILDREN``: on a machine shared with other work, CPU time says what the pipeline cost
  when wall time also says how long it waited for a core;
- the load average before and after, to show how busy the machine was.

The anchor is the default size (10 stores x 100 products x 730 days); the ratios are each
figure at 10x (``--scale``, stores multiplied) over the anchor's. Usage::

    .venv/bin/python benchmarks/pipeline.py                # default size, then 10x
    .venv/bin/python benchmarks/pipeline.py --scale 10 --stores 10 --products 100 --days 730
    # issue 7's size, 500 stores x 2000 products, against 5 stores of the same shape:
    nice -n 10 .venv/bin/python benchmarks/pipeline.py --stores 5 --products 2000 --days 120 \
        --scale 100 --out /tmp/bench_pipeline_500.json

``--incremental``: an incremental run after ``--new-days`` more days (default a week) against a
full rerun of the same data. A tenant is filled through the ingest code (in-process, not timed)
with all but those days, and run once; that state (database and datasets) is kept. Each round
restores it, posts the days (not timed), and times ``run_pipeline`` incrementally, then restores
again and times ``run_pipeline(full=True)``: the two contenders in turns, on one process-based
2-worker cluster (1 thread each) started once, ``--rounds`` rounds, median and range::

    nice -n 10 .venv/bin/python benchmarks/pipeline.py --incremental --rounds 3

``--incremental --late``: the new batch is late data instead, ten old days of one store (held back
from the first batch): the incremental run forecasts that store again only.

Models train on whole weeks (see ``hafen.pipeline._model``): a new last day that is a Sunday
completes a training week and every store trains again; any other day predicts with the kept
models. The output gives the last day and weekday, and the models each run fitted. At the default
730 days the last day is a Tuesday; ``--days 728`` makes it a Sunday::

    nice -n 10 .venv/bin/python benchmarks/pipeline.py --incremental --new-days 1 --days 728
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _hafen() -> str:
    return str(Path(sys.executable).with_name("hafen"))


class LoadSampler:
    """The 1-minute load average every ``interval`` seconds while a run lasts (other work on a
    shared machine shows there, and a before/after pair misses what happened in between)."""

    def __init__(self, interval: float = 15.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        values = self.samples or [os.getloadavg()[0]]
        return {
            "min": round(min(values), 1),
            "mean": round(sum(values) / len(values), 1),
            "max": round(max(values), 1),
        }


def _utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def run_demo(workdir: Path, stores: int, products: int, days: int) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    started = _utc()
    sampler = LoadSampler()
    began = time.perf_counter()
    with sampler:
        done = subprocess.run(
            [
                _hafen(),
                "demo",
                "--workdir",
                str(workdir),
                "--stores",
                str(stores),
                "--products",
                str(products),
                "--days",
                str(days),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"hafen demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    return {
        "size": {"stores": stores, "products": products, "days": days},
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1
        ),
        "utc": [started, _utc()],
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "load_average_during": sampler.summary(),
        "synth_seconds": summary["synth_seconds"],
        "total_stage_seconds": summary["total_seconds"],
        "stages": {
            s["name"]: {"rows": s["rows"], "seconds": s["seconds"]} for s in summary["stages"]
        },
        "wape_model": round(summary["wape_model"], 4),
        "wape_baseline": round(summary["wape_baseline"], 4),
        "peak_memory_mib": {k: round(v / 2**20) for k, v in summary["peak_memory_bytes"].items()},
        "db_slots_max": summary["db_slots_max"],
    }


def _post_sales(tenant: Any, source: Path, where: str, params: tuple[Any, ...]) -> int:
    import sqlite3

    from hafen.serve._ingest import ingest_batch

    conn = sqlite3.connect(source)
    try:
        cursor = conn.execute(f"SELECT * FROM sales WHERE {where} ORDER BY sale_id", params)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor]
    finally:
        conn.close()
    for start in range(0, len(rows), 50_000):
        ingest_batch(tenant, "sales", rows[start : start + 50_000], key=None, digest="")
    return len(rows)


def _median_range(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(ordered[len(ordered) // 2], 2),
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
    }


def run_incremental(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """Incremental after ``--new-days`` against a full rerun, in turns (see the docstring)."""
    import datetime as dt
    import sqlite3

    from hafen.cluster import connect
    from hafen.pipeline import PipelineConfig, run_pipeline
    from hafen.pipeline.synth import generate
    from hafen.serve import Tenants

    source = base / "source.sqlite"
    info = generate(source, stores=args.stores, products=args.products, days=args.days)
    if args.late:  # store 1's sales of ten days a month back arrive late
        old = (
            (info.end - dt.timedelta(days=40)).isoformat(),
            (info.end - dt.timedelta(days=31)).isoformat(),
        )
        first: tuple[str, tuple[Any, ...]] = ("NOT (store_id = 1 AND date BETWEEN ? AND ?)", old)
        then: tuple[str, tuple[Any, ...]] = ("store_id = 1 AND date BETWEEN ? AND ?", old)
    else:
        cut = (info.end - dt.timedelta(days=args.new_days)).isoformat()
        first, then = ("date <= ?", (cut,)), ("date > ?", (cut,))
    tenants = Tenants(base / "service")
    tenants.add("bench")  # the key is not needed: the batches go in through the ingest code
    tenant = tenants.get("bench")
    conn = sqlite3.connect(source)
    try:
        from hafen.serve._ingest import ingest_batch

        for table in ("stores", "products", "holidays", "promotions"):
            cursor = conn.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, r, strict=True)) for r in cursor]
            ingest_batch(tenant, table, rows, key=None, digest="")
    finally:
        conn.close()
    _post_sales(tenant, source, *first)
    cfg = PipelineConfig(source_url=tenant.source_url, datasets_root=tenant.datasets)
    folder = Path(tenant.datasets).parent
    saved = base / "saved"
    times: dict[str, list[float]] = {"incremental": [], "full": []}
    stages: dict[str, list[dict[str, float]]] = {"incremental": [], "full": []}
    fitted: dict[str, list[int]] = {"incremental": [], "full": []}
    load = []
    client = connect(n_workers=2, threads_per_worker=1, dashboard_address=":0")
    try:
        run_pipeline(cfg, client=client)
        shutil.copytree(folder, saved)
        new_rows = 0
        for _ in range(args.rounds):
            for name in ("incremental", "full"):
                shutil.rmtree(folder)
                shutil.copytree(saved, folder)
                new_rows = _post_sales(tenant, source, *then)
                load.append(os.getloadavg()[0])
                began = time.perf_counter()
                result = run_pipeline(cfg, client=client, full=name == "full")
                times[name].append(time.perf_counter() - began)
                stages[name].append({s.name: round(s.seconds, 2) for s in result.stages})
                fitted[name].append(result.models_fitted)
                print(
                    name,
                    round(times[name][-1], 2),
                    stages[name][-1],
                    f"{fitted[name][-1]} models fitted",
                    flush=True,
                )
    finally:
        client.close()
    inc, full = _median_range(times["incremental"]), _median_range(times["full"])
    return {
        "size": {"stores": args.stores, "products": args.products, "days": args.days},
        "new_data": "10 late days of store 1" if args.late else f"{args.new_days} new days",
        "new_rows": new_rows,
        "last_day": f"{info.end} ({info.end:%A})",
        "models_fitted": fitted,
        "rounds": args.rounds,
        "utc": _utc(),
        "load_average": _median_range(load),
        "incremental_seconds": inc,
        "full_seconds": full,
        "ratio_of_medians": round(inc["median"] / full["median"], 3),
        "stages": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=10)
    parser.add_argument("--products", type=int, default=100)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--scale", type=int, default=10, help="stores multiplier; 1 to skip")
    parser.add_argument("--out", default=None, help="also write the results here (JSON)")
    parser.add_argument(
        "--workdir",
        default=None,
        help="make the work folders here (default: a temporary folder); removed after each run",
    )
    parser.add_argument(
        "--incremental", action="store_true", help="incremental run against a full rerun"
    )
    parser.add_argument("--new-days", type=int, default=7, help="with --incremental")
    parser.add_argument("--rounds", type=int, default=3, help="with --incremental")
    parser.add_argument(
        "--late", action="store_true", help="with --incremental: late data of one store instead"
    )
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="hafen-bench-pipeline-", dir=args.workdir))
    if args.incremental:
        try:
            outcome = run_incremental(args, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(json.dumps(outcome, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(outcome, indent=2))
        return
    results = []
    try:
        sizes = [1] if args.scale == 1 else [1, args.scale]
        for factor in sizes:
            result = run_demo(base / f"x{factor}", args.stores * factor, args.products, args.days)
            results.append(result)
            print(json.dumps(result), flush=True)
            shutil.rmtree(base / f"x{factor}", ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    if len(results) == 2:
        anchor, big = results
        print(f"\n{'stage':<18}{'x1 s':>9}{'x' + str(args.scale) + ' s':>9}{'ratio':>8}")
        for name, stage in anchor["stages"].items():
            other = big["stages"][name]["seconds"]
            ratio = other / stage["seconds"] if stage["seconds"] else float("nan")
            print(f"{name:<18}{stage['seconds']:>9.1f}{other:>9.1f}{ratio:>8.1f}")
        for key in ("wall_seconds", "cpu_seconds"):
            print(f"{key:<18}{anchor[key]:>9.1f}{big[key]:>9.1f}{big[key] / anchor[key]:>8.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
