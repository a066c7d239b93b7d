"""Commit cost as a dataset grows, and the cost of opening one with many versions.

    python benchmarks/commit_log.py                  # 10,000 versions (anchors: 1,000)
    python benchmarks/commit_log.py --versions 2000 --anchor-versions 500

Each version appends 10 rows to a new partition. Reported: the mean time of a commit among the
first and the last 100, and the time to open the latest version with its file list (in a process
that has not seen the dataset), for

- hafen: checkpoints every 50 versions, the writer process remembers the state it committed;
- hafen, cold: the same with ``HAFEN_STATE_CACHE=false``, as if every commit came from a new
  process (it reads the newest checkpoint, which holds every file, and the entries after it);
- hafen, no checkpoints (and no cache): opening replays the whole log;
- hafen + plateau view: the default, which also rewrites plateau's metadata file per commit;
- plateau's ``update_dataset_from_dataframes`` (the anchor).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import track
from rich.table import Table

import hafen
from hafen.config import reload_settings

console = Console()


def frame(i: int) -> pd.DataFrame:
    return pd.DataFrame({"batch": [i % 500] * 10, "i": [i] * 10, "v": [float(i)] * 10})


def grow(name: str, n: int, commit) -> list[float]:
    times = []
    for i in track(range(n), description=name, console=console, transient=True):
        start = time.perf_counter()
        commit(i)
        times.append(time.perf_counter() - start)
    return times


def timed(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument(
        "--anchor-versions",
        type=int,
        default=1_000,
        help="Versions for the anchors (no checkpoints, plateau view, plateau), which grow slower.",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hafen-log-"))
    rows = []

    def hafen_run(name: str, interval: int, view: bool, cache: bool, n: int) -> None:
        os.environ["HAFEN_CHECKPOINT_INTERVAL"] = str(interval)
        os.environ["HAFEN_PLATEAU_VIEW"] = "true" if view else "false"
        os.environ["HAFEN_STATE_CACHE"] = "true" if cache else "false"
        reload_settings()  # the process reads its settings once
        url = str(root / name)
        hafen.write_dataset(frame(0), url, partition_on=["batch"])
        times = grow(name, n - 1, lambda i: hafen.write_dataset(frame(i + 1), url, mode="append"))
        os.environ["HAFEN_STATE_CACHE"] = "false"  # open as a process that never saw it
        reload_settings()
        opened = timed(lambda: len(hafen.open_dataset(url).files()))  # with the file list
        assert hafen.open_dataset(url).version == n - 1
        rows.append((name, n, times[:100], times[-100:], opened))

    hafen_run("hafen", 50, False, True, args.versions)
    hafen_run("hafen, cold", 50, False, False, args.versions)
    hafen_run("hafen, no checkpoints", 10**9, False, False, args.anchor_versions)
    hafen_run("hafen + plateau view", 50, True, True, args.anchor_versions)

    from minimalkv import get_store_from_url
    from plateau.core.factory import DatasetFactory
    from plateau.io.eager import store_dataframes_as_dataset, update_dataset_from_dataframes

    (root / "plateau").mkdir()
    store = partial(get_store_from_url, f"hfs://{root / 'plateau'}")
    store_dataframes_as_dataset(
        dfs=[frame(0)], store=store, dataset_uuid="p", partition_on=["batch"]
    )
    times = grow(
        "plateau",
        args.anchor_versions - 1,
        lambda i: update_dataset_from_dataframes([frame(i + 1)], store=store, dataset_uuid="p"),
    )
    opened = timed(lambda: DatasetFactory("p", store).partitions)
    rows.append(("plateau", args.anchor_versions, times[:100], times[-100:], opened))

    table = Table(title="commit_log: one small append per version")
    for col in (
        "writer",
        "versions",
        "commit, first 100 (ms)",
        "commit, last 100 (ms)",
        "last / first",
        "open latest (ms)",
    ):
        table.add_column(col)
    for name, n, first, last, opened in rows:
        f, la = statistics.mean(first) * 1e3, statistics.mean(last) * 1e3
        table.add_row(
            name, f"{n:,}", f"{f:.1f}", f"{la:.1f}", f"{la / f:.2f}x", f"{opened * 1e3:.1f}"
        )
    console.print(table)
    base = {r[0]: r for r in rows}
    console.print(
        f"open latest: hafen at {args.versions:,} versions with checkpoints takes "
        f"{base['hafen'][4] / base['hafen, no checkpoints'][4]:.3f}x the time of hafen at "
        f"{args.anchor_versions:,} versions without"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
