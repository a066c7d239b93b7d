"""Reshuffle by day -> by store x 4 buckets: hafen vs plateau and dask, wall time and worker RSS.

One run builds a source dataset (``--rows`` rows in ``--days`` day partitions, 10 Dask partitions
when read), then times, on the same fresh process-based LocalCluster (workers restarted between
runs):

- ``hafen``: ``hafen.reshuffle(src, dst, partition_on=["store_id"], num_buckets=4,
  bucket_by=["product_id"], sort_by=["product_id"], indices=["product_id"])``
- ``plateau`` (anchor): ``update_dataset_from_ddf(ddf, shuffle=True, partition_on=["store_id"],
  num_buckets=4, bucket_by=["product_id"], sort_partitions_by=["product_id"],
  secondary_indices=["product_id"])``
- ``dask`` (anchor): ``ddf.shuffle(["store_id", "product_id"], npartitions=4)``, each partition
  sorted by ``product_id``, then ``.to_parquet(partition_on=["store_id"])`` (so every store gets
  at most 4 files, as with 4 buckets)

The anchors read the source with ``hafen.read_ddf(src, files_per_partition=days // 10)``: 10 Dask
partitions. Peak RSS is sampled every 50 ms for each worker process (psutil). The contenders run
in turns, ``--rounds`` times (at least 3), the order rotating each round; each figure is the
median and the range of its rounds, and the speedups are ratios of medians. Usage::

    .venv/bin/python benchmarks/reshuffle.py --rows 10_000_000
    .venv/bin/python benchmarks/reshuffle.py --rows 50_000_000 --only hafen \\
        --memory-limit 1GiB --budget 1GiB
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import psutil

import hafen


def make_source(url: str, rows: int, days: int, stores: int, products: int) -> None:
    rng = np.random.default_rng(42)
    per_day = rows // days
    day0 = dt.date(2024, 1, 1)
    for d in range(days):
        n = per_day if d < days - 1 else rows - per_day * (days - 1)
        df = pd.DataFrame(
            {
                "date": np.full(n, np.datetime64(day0 + dt.timedelta(days=d), "D")).astype(
                    "datetime64[s]"
                ),
                "store_id": rng.integers(0, stores, n, dtype=np.int32),
                "product_id": rng.integers(0, products, n, dtype=np.int32),
                "qty": rng.integers(1, 20, n, dtype=np.int16),
                "price": rng.random(n).round(2) * 100,
            }
        )
        df["date"] = df["date"].dt.date
        hafen.write_dataset(df, url, partition_on=["date"], mode="append")


def remove(url: str) -> None:
    """Remove a dataset directory and the plateau metadata file hafen and plateau keep beside it."""
    shutil.rmtree(url, ignore_errors=True)
    if os.path.exists(url + ".by-dataset-metadata.json"):
        os.remove(url + ".by-dataset-metadata.json")


class RssSampler:
    """Peak RSS (bytes) of each given process, sampled in a thread."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peaks = {p: 0 for p in pids}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self.procs:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[proc.pid] = max(self.peaks[proc.pid], rss)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_hafen(src: str, dst: str, budget: str | None) -> None:
    out = hafen.reshuffle(
        src,
        dst,
        partition_on=["store_id"],
        num_buckets=4,
        bucket_by=["product_id"],
        sort_by=["product_id"],
        indices=["product_id"],
        memory_budget=budget,
    )
    assert out.num_rows == hafen.open_dataset(src).num_rows


def run_plateau(src: str, dst: str, days: int) -> None:
    from minimalkv import get_store_from_url
    from plateau.io.dask.dataframe import update_dataset_from_ddf

    os.makedirs(dst, exist_ok=True)
    ddf = hafen.read_ddf(src, files_per_partition=max(1, days // 10))
    store = partial(get_store_from_url, f"hfs://{dst}")
    update_dataset_from_ddf(
        ddf,
        store=store,
        dataset_uuid="by_store",
        partition_on=["store_id"],
        shuffle=True,
        num_buckets=4,
        bucket_by=["product_id"],
        sort_partitions_by=["product_id"],
        secondary_indices=["product_id"],
    ).compute()


def run_dask(src: str, dst: str, days: int) -> None:
    ddf = hafen.read_ddf(src, files_per_partition=max(1, days // 10))
    shuffled = ddf.shuffle(["store_id", "product_id"], npartitions=4)
    shuffled = shuffled.map_partitions(lambda df: df.sort_values("product_id", kind="stable"))
    # the dates are Python objects in pandas (as Dataset.read gives them), which dask cannot
    # infer a type from: give it the source's schema
    shuffled.to_parquet(
        dst, partition_on=["store_id"], write_index=False, schema=hafen.open_dataset(src).schema
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=10_000_000)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--stores", type=int, default=50)
    parser.add_argument("--products", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="6GiB", help="per worker")
    parser.add_argument("--budget", default="1GiB", help="hafen's memory_budget per worker")
    parser.add_argument("--only", default="hafen,plateau,dask")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds in turns (at least 3)")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: one or two runs are noise on a shared machine")

    from distributed import Client, LocalCluster

    workdir = args.workdir or tempfile.mkdtemp(prefix="hafen-bench-")
    src = os.path.join(workdir, "src")
    if not os.path.exists(src):
        t0 = time.perf_counter()
        make_source(src, args.rows, args.days, args.stores, args.products)
        print(f"source: {args.rows:,} rows in {args.days} days, {time.perf_counter() - t0:.1f} s")
    source = hafen.open_dataset(src)
    size = sum(f.size for f in source.files())
    print(
        f"source {src}: {source.num_rows:,} rows, {len(source.files())} files, "
        f"{size / 2**20:.0f} MiB"
    )

    runs: dict[str, list[tuple[float, float]]] = {}  # name -> (wall s, peak RSS MiB) per round
    runners = {
        "hafen": lambda dst: run_hafen(src, dst, args.budget),
        "plateau": lambda dst: run_plateau(src, dst, args.days),
        "dask": lambda dst: run_dask(src, dst, args.days),
    }
    names = args.only.split(",")
    order = [names[r % len(names) :] + names[: r % len(names)] for r in range(args.rounds)]
    for name in (n for turn in order for n in turn):
        # a fresh cluster per run: same starting point, and nothing left over from the last one
        with (
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=args.memory_limit,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            pids = list(client.run(os.getpid).values())
            dst = os.path.join(workdir, f"out-{name}")
            remove(dst)
            baseline = max(psutil.Process(p).memory_info().rss for p in pids)
            with RssSampler(pids) as sampler:
                t0 = time.perf_counter()
                runners[name](dst)
                wall = time.perf_counter() - t0
            peak = max(sampler.peaks.values())
            runs.setdefault(name, []).append((wall, peak / 2**20))
            print(
                f"{name:8s} wall {wall:7.1f} s   peak worker RSS {peak / 2**20:6.0f} MiB "
                f"(idle {baseline / 2**20:.0f} MiB)",
                flush=True,
            )
            remove(dst)
    results: dict[str, dict[str, Any]] = {}
    for name, got in runs.items():
        walls, peaks = [w for w, _ in got], [p for _, p in got]
        results[name] = {
            "wall_s": round(statistics.median(walls), 2),
            "wall_range_s": [round(min(walls), 2), round(max(walls), 2)],
            "peak_rss_mib": round(statistics.median(peaks)),
            "peak_rss_range_mib": [round(min(peaks)), round(max(peaks))],
        }
        print(
            f"{name:8s} wall {statistics.median(walls):7.1f} s ({min(walls):.1f}-{max(walls):.1f}),"
            f" peak worker RSS {statistics.median(peaks):6.0f} MiB "
            f"({min(peaks):.0f}-{max(peaks):.0f}); median (range) of {len(got)} rounds in turns"
        )
    if "hafen" in results:
        for anchor in ("plateau", "dask"):
            if anchor in results:
                ratio = results[anchor]["wall_s"] / results["hafen"]["wall_s"]
                results[f"speedup_vs_{anchor}"] = {"ratio": round(ratio, 2)}
                print(f"hafen is {ratio:.2f}x as fast as {anchor} (medians)")
    print(
        json.dumps(
            {
                "rows": args.rows,
                "days": args.days,
                "stores": args.stores,
                "workers": args.workers,
                "memory_limit": args.memory_limit,
                "budget": args.budget,
                "rounds": args.rounds,
                "results": results,
            }
        )
    )
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
