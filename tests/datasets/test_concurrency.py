"""Concurrent writers in separate processes: no lost updates, real conflicts, killed writers."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import uuid

import _writers
import pandas as pd
import pytest

import hafen
from hafen.datasets._dataset import storage_for

PROCESS_BACKENDS = ["local", "azure", "s3"]


@pytest.fixture(params=PROCESS_BACKENDS)
def shared_url(request, tmp_path, monkeypatch) -> str:
    """A dataset URL that several processes can reach.

    On Azure, child processes find the credentials where production does: in
    ``AZURE_STORAGE_CONNECTION_STRING``, which they inherit (set for this test only). On S3
    (moto) likewise: in ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_ENDPOINT_URL``.
    """
    if request.param == "local":
        return str(tmp_path / "shared")
    if request.param == "azure":
        server = request.getfixturevalue("azurite")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string)
        return server.url(f"{uuid.uuid4().hex[:8]}/shared")
    if request.param == "s3":
        moto = request.getfixturevalue("moto_s3")
        for name, value in moto.environment.items():
            monkeypatch.setenv(name, value)
        return f"s3://{moto.bucket()}/shared"
    raise AssertionError(request.param)


def stored_parquet(url: str) -> set[str]:
    """The Parquet files under ``table/`` in storage, relative to the dataset root."""
    return {i.path for i in storage_for(url).walk("table") if i.path.endswith(".parquet")}


def age_past_grace(url: str, paths: list[str]) -> str:
    """Make the grace period pass for ``paths`` only; return the grace period to vacuum with.

    Local files are dated back two hours (``os.utime``) and the grace period is one hour. Blob
    storage sets last-modified times itself, so on Azure and S3 the test waits until the files are
    older than a short grace period (their times are whole seconds, hence the margin).
    """
    storage = storage_for(url)
    if storage.protocol == "file":
        old = time.time() - 2 * 3600
        for path in paths:
            os.utime(storage.full(path), (old, old))
        return "1h"
    grace = 2.0
    newest = max(i.modified for i in storage.walk("table") if i.path in paths)
    ready = newest + dt.timedelta(seconds=grace + 1.5)
    time.sleep(max(0.0, (ready - dt.datetime.now(dt.UTC)).total_seconds()))
    return f"{grace}s"


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
    # on Azurite (one Node process on a shared 2-core machine) fewer commits keep the test lean;
    # the eight writers still start together and contend for every version
    commits = 2 if shared_url.startswith(("az://", "s3://")) else 5
    seed(shared_url)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(8)
    procs = [
        ctx.Process(target=_writers.append_many, args=(shared_url, w, commits, barrier))
        for w in range(8)
    ]
    run_all(procs, timeout=240)  # a hang guard: 8 interpreters on 2 shared cores can be slow
    ds = hafen.open_dataset(shared_url)
    assert ds.version == 8 * commits
    history = ds.history()
    assert sum(h["operation"] == "append" for h in history) == 8 * commits
    df = ds.read()
    rows = df[df["writer"] >= 0]
    assert len(rows) == 8 * commits * 4
    assert set(map(tuple, rows[["writer", "i"]].drop_duplicates().to_numpy())) == {
        (w, i) for w in range(8) for i in range(commits)
    }


def test_appends_beside_two_vacuums_are_never_lost(shared_url, monkeypatch):
    """Vacuums retire the versions appenders based their commits on, again and again."""
    monkeypatch.setenv("HAFEN_GRACE_PERIOD", "2s")  # the writers' and the vacuums' alike
    writers, commits = 3, (6 if shared_url.startswith(("az://", "s3://")) else 25)
    seed(shared_url)
    ctx = mp.get_context("spawn")
    barrier, stop, results = ctx.Barrier(writers + 2), ctx.Event(), ctx.Queue()
    vacuums = [
        ctx.Process(target=_writers.vacuum_until, args=(shared_url, retain, "2s", stop, barrier))
        for retain in (1, 4)
    ]
    procs = [
        ctx.Process(
            target=_writers.append_acknowledged, args=(shared_url, w, commits, barrier, results)
        )
        for w in range(writers)
    ]
    for p in vacuums:
        p.start()
    try:
        run_all(procs, timeout=240)
    finally:
        stop.set()
        for p in vacuums:
            p.join(60)
    acknowledged = [results.get(timeout=10) for _ in range(writers * commits)]
    versions = [v for _, _, v in acknowledged]
    assert len(set(versions)) == len(versions), "a version was given to two writers"
    ds = hafen.open_dataset(shared_url)
    assert ds.version == writers * commits
    rows = ds.read()
    present = set(zip(rows["writer"], rows["i"], strict=True))
    assert {(w, i) for w, i, _ in acknowledged} <= present  # before: about half were lost
    for h in ds.history():  # every retained version still reads
        hafen.open_dataset(shared_url, version=h["version"]).read()


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
    # the loser's staged files were removed: only referenced files remain in storage
    on_disk = stored_parquet(shared_url)
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
    storage = storage_for(shared_url)
    orphans = sorted(stored_parquet(shared_url) - {f.path for f in ds.files()})
    assert orphans, "the killed writer should have left staged files behind"

    report = ds.vacuum(grace_period="1h")
    assert report.removed_files == [] and report.kept_young >= len(orphans)
    assert all(storage.exists(p) for p in orphans)

    grace = age_past_grace(shared_url, orphans)  # the grace period has passed for the orphans
    report = ds.vacuum(grace_period=grace)
    assert sorted(report.removed_files) == orphans
    assert not any(storage.exists(p) for p in orphans)
    pd.testing.assert_frame_equal(hafen.open_dataset(shared_url).read(), before.read())


def test_appenders_racing_to_create_all_land(shared_url):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [
        ctx.Process(target=_writers.append_to_missing, args=(shared_url, w, barrier))
        for w in range(4)
    ]
    run_all(procs)
    ds = hafen.open_dataset(shared_url)
    assert ds.version == 3
    assert sorted(ds.read()["writer"]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [h["operation"] for h in ds.history()][-1] == "create"
