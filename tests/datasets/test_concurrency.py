"""Concurrent writers in separate processes: no lost updates, real conflicts, killed writers."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _writers
import pandas as pd
import pytest

import hafen

PROCESS_BACKENDS = ["local"]


@pytest.fixture(params=PROCESS_BACKENDS)
def shared_url(request, tmp_path) -> str:
    """A dataset URL that several processes can reach."""
    if request.param == "local":
        return str(tmp_path / "shared")
    raise AssertionError(request.param)


def seed(url: str) -> hafen.Dataset:
    df = pd.DataFrame({"part": [1, 1, 2, 2], "writer": [-1] * 4, "i": [0] * 4, "j": [0, 1, 0, 1]})
    return hafen.write_dataset(df, url, partition_on=["part"])


def run_all(procs: list[mp.Process], timeout: float = 120) -> None:
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"writer process failed with exit code {p.exitcode}"


def test_eight_processes_appending_lose_nothing(shared_url):
    seed(shared_url)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(8)
    procs = [
        ctx.Process(target=_writers.append_many, args=(shared_url, w, 5, barrier)) for w in range(8)
    ]
    run_all(procs)
    ds = hafen.open_dataset(shared_url)
    assert ds.version == 40
    history = ds.history()
    assert sum(h["operation"] == "append" for h in history) == 40
    df = ds.read()
    rows = df[df["writer"] >= 0]
    assert len(rows) == 8 * 5 * 4
    assert set(map(tuple, rows[["writer", "i"]].drop_duplicates().to_numpy())) == {
        (w, i) for w in range(8) for i in range(5)
    }


def race_overwrites(url: str, parts: list[int], retry: bool = False) -> dict[int, str]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(parts))
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_writers.overwrite_partition, args=(url, w, p, barrier, results, retry))
        for w, p in enumerate(parts)
    ]
    run_all(procs)
    return dict(results.get(timeout=10) for _ in parts)


def test_overwriting_the_same_partition_one_wins(shared_url):
    seed(shared_url)
    outcome = race_overwrites(shared_url, [1, 1])
    landed = [w for w, r in outcome.items() if r == "landed"]
    conflicted = [w for w, r in outcome.items() if r.startswith("conflict")]
    assert len(landed) == 1 and len(conflicted) == 1, outcome
    ds = hafen.open_dataset(shared_url)
    assert ds.version == 1
    part1 = ds.read(predicates=[[("part", "==", 1)]])
    assert set(part1["writer"]) == {landed[0]} and len(part1) == 3
    assert len(ds.read(predicates=[[("part", "==", 2)]])) == 2
    # the loser's staged files were removed: only referenced files remain on disk
    on_disk = {str(p.relative_to(shared_url)) for p in Path(shared_url, "table").rglob("*.parquet")}
    ever_referenced = {
        f.path for v in (0, 1) for f in hafen.open_dataset(shared_url, version=v).files()
    }
    assert on_disk <= ever_referenced


def test_overwriting_different_partitions_both_land(shared_url):
    seed(shared_url)
    outcome = race_overwrites(shared_url, [1, 2])
    assert set(outcome.values()) == {"landed"}, outcome
    df = hafen.open_dataset(shared_url).read()
    assert sorted(df.groupby("part")["writer"].unique().map(list).sum()) == [0, 1]


def test_overwrite_with_retry_lands_both_in_order(shared_url):
    seed(shared_url)
    outcome = race_overwrites(shared_url, [1, 1], retry=True)
    assert set(outcome.values()) == {"landed"}, outcome
    ds = hafen.open_dataset(shared_url)
    assert ds.version == 2
    part1 = ds.read(predicates=[[("part", "==", 1)]])
    assert len(part1) == 3 and part1["writer"].nunique() == 1  # the later one replaced the earlier


def test_killed_writer_leaves_previous_version_and_vacuum_respects_grace(shared_url):
    before = seed(shared_url)
    with subprocess.Popen(
        [sys.executable, _writers.__file__, shared_url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ) as writer:
        try:
            line = writer.stdout.readline()
            assert line.startswith("staged"), line
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(30)
    ds = hafen.open_dataset(shared_url)
    assert ds.version == before.version
    pd.testing.assert_frame_equal(ds.read(), before.read())
    orphans = [
        p
        for p in Path(shared_url, "table").rglob("*.parquet")
        if str(p.relative_to(shared_url)) not in {f.path for f in ds.files()}
    ]
    assert orphans, "the killed writer should have left staged files behind"

    report = ds.vacuum(grace_period="1h")
    assert report.removed_files == [] and report.kept_young >= len(orphans)
    assert all(p.exists() for p in orphans)

    old = time.time() - 2 * 3600  # the grace period has passed for the orphans only
    for p in orphans:
        os.utime(p, (old, old))
    report = ds.vacuum(grace_period="1h")
    assert sorted(report.removed_files) == sorted(str(p.relative_to(shared_url)) for p in orphans)
    assert not any(p.exists() for p in orphans)
    pd.testing.assert_frame_equal(hafen.open_dataset(shared_url).read(), before.read())
