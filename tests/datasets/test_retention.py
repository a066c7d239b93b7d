"""Log retention: vacuum beside writers and readers never loses a commit or freezes a reader.

Each test causes the interleaving that broke before: another writer and a vacuum run while a
write is staging its files (so its base version is old when it commits), checkpoints vanish
under a lazily opened state, readers hold a version while vacuum retires it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import hafen
from hafen.datasets import _actions, _logstore, _transaction
from hafen.datasets._write import StagedWrite, stage_table
from hafen.datasets._write_dataset import commit_staged
from hafen.errors import ConfigError, ConflictError, VersionNotFoundError, VersionVacuumedError


def rows(*ids: int) -> pd.DataFrame:
    return pd.DataFrame({"part": [i % 3 for i in ids], "id": list(ids)})


def ids(ds: hafen.Dataset) -> list[int]:
    return sorted(ds.read()["id"])


def while_staging(monkeypatch: pytest.MonkeyPatch, meanwhile) -> None:
    """Run ``meanwhile()`` once, right after the next write stages its files."""
    done = []

    def staged_then_interfere(*args, **kwargs):
        staged = stage_table(*args, **kwargs)
        if not done:
            done.append(True)
            meanwhile()
        return staged

    monkeypatch.setattr(_transaction, "stage_table", staged_then_interfere)


def age(paths: list[Path], seconds: float) -> None:
    past = time.time() - seconds
    for path in paths:
        os.utime(path, (past, past))


def test_a_write_whose_base_was_vacuumed_lands_in_the_latest_version(tmp_path, monkeypatch):
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url, partition_on=["part"])

    def others_commit_and_vacuum() -> None:
        for i in range(1, 11):
            hafen.write_dataset(rows(i), url, mode="append")
        hafen.open_dataset(url).vacuum(retain_versions=3)  # retires entries; files are young

    while_staging(monkeypatch, others_commit_and_vacuum)
    mine = hafen.write_dataset(rows(100), url, mode="append")  # based on version 0
    # before: it re-created the vacuumed entry 1, was told "version 1", and no one saw it
    assert mine.version == 11
    latest = hafen.open_dataset(url)
    assert latest.version == 11 and ids(latest) == [*range(11), 100]
    assert [h["version"] for h in latest.history()] == [11, 10, 9, 8]


def test_an_overwrite_whose_base_was_vacuumed_conflicts_or_rebases(tmp_path, monkeypatch):
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0, 1, 2), url, partition_on=["part"])

    def others_commit_and_vacuum() -> None:
        for i in range(3, 6):
            hafen.write_dataset(rows(i), url, mode="append")
        hafen.open_dataset(url).vacuum(retain_versions=1)

    while_staging(monkeypatch, others_commit_and_vacuum)
    with pytest.raises(ConflictError, match="vacuumed"):
        hafen.write_dataset(rows(30), url, mode="overwrite")  # part 0: what landed is unknown
    assert ids(hafen.open_dataset(url)) == [0, 1, 2, 3, 4, 5]
    while_staging(monkeypatch, others_commit_and_vacuum)
    ds = hafen.write_dataset(rows(30), url, mode="overwrite", on_conflict="retry")
    # part 0 (ids 0, 3, 3) replaced; the second round appended 3, 4, 5 again
    assert ids(ds) == [1, 2, 4, 4, 5, 5, 30] and ids(hafen.open_dataset(url)) == ids(ds)


def test_a_commit_does_not_raise_after_landing_when_its_checkpoint_was_vacuumed(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "5")
    monkeypatch.setenv("HAFEN_PLATEAU_VIEW", "false")  # it would read the files before vacuum
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url, partition_on=["part"])
    for i in range(1, 9):
        hafen.write_dataset(rows(i), url, mode="append")
    _logstore.clear_state_cache()  # a new process: the next write opens from checkpoint 5, lazily

    def another_commit_and_vacuum() -> None:
        hafen.write_dataset(rows(9), url, mode="append")
        hafen.open_dataset(url).vacuum(retain_versions=2)

    while_staging(monkeypatch, another_commit_and_vacuum)
    # version 10 lands on top of 9 and writes checkpoint 10, which needs the files of
    # checkpoint 5, removed meanwhile; before, CorruptMetadataError came after the commit
    mine = hafen.write_dataset(rows(10), url, mode="append")
    assert mine.version == 10
    assert _logstore.list_checkpoints(mine.storage) == [8, 10]
    _logstore.clear_state_cache()
    assert ids(hafen.open_dataset(url)) == list(range(11))


def test_readers_follow_vacuum_and_a_recreated_dataset(tmp_path):
    url = str(tmp_path / "ds")
    reader = hafen.write_dataset(rows(0), url, partition_on=["part"])
    for i in range(1, 6):
        hafen.write_dataset(rows(i), url, mode="append")
    hafen.open_dataset(url).vacuum(retain_versions=2, grace_period=0)
    assert not reader.is_latest()
    assert reader.latest().version == 5  # before: frozen at 0, its next entry was deleted

    old = hafen.open_dataset(url)
    for recreated_versions in (2, 9):  # fewer, then more versions than the reader saw
        shutil.rmtree(url)
        hafen.write_dataset(rows(50), url, partition_on=["part"])
        for i in range(1, recreated_versions):
            hafen.write_dataset(rows(50 + i), url, mode="append")
        assert not old.is_latest()
        new = old.latest()
        assert new.state.dataset_id != old.state.dataset_id
        assert ids(new) == list(range(50, 50 + recreated_versions))
        old = new
    assert old.is_latest() and old.latest() is old


def test_a_checkpoint_the_hint_names_may_be_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "5")
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url, partition_on=["part"])
    for i in range(1, 12):
        hafen.write_dataset(rows(i), url, mode="append")
    Path(url, _actions.checkpoint_path(10)).unlink()
    _logstore.clear_state_cache()
    assert ids(hafen.open_dataset(url)) == list(range(12))  # before: every read failed
    assert ids(hafen.open_dataset(url, version=7)) == list(range(8))


def test_vacuum_with_an_old_entry_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "5")
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url, partition_on=["part"])
    for i in range(1, 10):
        hafen.write_dataset(rows(i), url, mode="append")
    Path(url, _actions.log_path(2)).unlink()
    report = hafen.open_dataset(url).vacuum(retain_versions=3, grace_period=0)
    assert report.removed_versions == [3, 4, 5, 6]  # below 2 nothing is left to retire
    assert ids(hafen.open_dataset(url)) == list(range(10))
    assert ids(hafen.open_dataset(url, version=7)) == list(range(8))


@pytest.mark.parametrize(
    ("retain", "grace", "match"),
    [
        ("5", 0, "retain_versions"),
        (0, 0, "retain_versions"),
        (True, 0, "retain_versions"),
        (2.5, 0, "retain_versions"),
        (2, float("nan"), "finite"),
        (2, float("inf"), "finite"),
        (2, -1, "finite"),
        (2, "soon", "not a duration"),
        (2, True, "not a duration"),
    ],
)
def test_vacuum_refuses_bad_arguments(tmp_path, retain, grace, match):
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url)
    hafen.write_dataset(rows(1), url, mode="append")
    with pytest.raises(ConfigError, match=match):
        hafen.open_dataset(url).vacuum(retain_versions=retain, grace_period=grace)
    assert ids(hafen.open_dataset(url, version=0)) == [0]


def test_retired_entries_keep_their_versions_taken_until_the_log_retention(tmp_path, monkeypatch):
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url, partition_on=["part"])
    for i in range(1, 8):
        hafen.write_dataset(rows(i), url, mode="append")
    ds = hafen.open_dataset(url)
    assert ds.vacuum(retain_versions=3, grace_period=0).removed_versions == list(range(5))
    log = Path(url, _actions.LOG_DIR)
    stubs = [log / Path(_actions.log_path(v)).name for v in range(5)]
    assert all(p.exists() for p in stubs)  # the names stay taken: no writer can land there
    with pytest.raises(VersionVacuumedError, match="version 3 was vacuumed"):
        hafen.open_dataset(url, version=3)
    with pytest.raises(VersionNotFoundError, match="version 3"):
        _logstore.read_commit(ds.storage, 3)
    assert [h["version"] for h in ds.history()] == [7, 6, 5]

    # stubs go once older than the log retention, which cannot be shorter than the minimum
    monkeypatch.setenv("HAFEN_LOG_RETENTION", "1s")
    with pytest.raises(ConfigError, match="log_retention"):
        ds.vacuum(retain_versions=3, grace_period=0)
    monkeypatch.setattr(_logstore, "MIN_LOG_RETENTION", 1.0)
    age(stubs[:3], 3600)
    ds.vacuum(retain_versions=3, grace_period=0)
    assert [p.exists() for p in stubs] == [False, False, False, True, True]
    assert ids(hafen.open_dataset(url)) == list(range(8))


def test_a_writer_with_an_old_base_cannot_land_in_a_freed_version(tmp_path, monkeypatch):
    """A base older than the log retention: its next version's stub may have been deleted."""
    monkeypatch.setattr(_logstore, "MIN_LOG_RETENTION", 1.0)
    monkeypatch.setenv("HAFEN_LOG_RETENTION", "1s")
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url, partition_on=["part"])
    hafen.write_dataset(rows(1), url, mode="append")
    stale = hafen.open_dataset(url)  # version 1, seen to be the latest now
    for i in range(2, 8):
        hafen.write_dataset(rows(i), url, mode="append")
    ds = hafen.open_dataset(url)
    ds.vacuum(retain_versions=2, grace_period=0)
    age(list(Path(url, _actions.LOG_DIR).glob("*.json")), 3600)
    hafen.open_dataset(url).vacuum(retain_versions=2, grace_period=0)
    assert not Path(url, _actions.log_path(2)).exists()  # the version after the stale base is free
    staged = stage_table(
        ds.storage, pa.Table.from_pandas(rows(100), preserve_index=False), partition_on=["part"]
    )
    base = dataclasses.replace(stale.state, observed=0.0)  # seen to be the latest long ago
    mine = commit_staged(url, [staged], mode="append", base=base)
    assert mine.version == 8  # before: it created version 2 again, below the checkpoint
    assert ids(hafen.open_dataset(url)) == [*range(8), 100]


def test_a_write_older_than_the_grace_period_does_not_commit(tmp_path, monkeypatch):
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url, partition_on=["part"])
    monkeypatch.setenv("HAFEN_GRACE_PERIOD", "10s")
    real = StagedWrite.__init__

    def staged_long_ago(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self.started -= 3600

    monkeypatch.setattr(StagedWrite, "__init__", staged_long_ago)
    with pytest.raises(ConflictError, match="grace period"):
        hafen.write_dataset(rows(1), url, mode="append")
    monkeypatch.undo()
    ds = hafen.open_dataset(url)
    assert ds.version == 0 and len(list(Path(url, "table").rglob("*.parquet"))) == 1


def test_a_commit_landing_while_vacuum_reads_the_log_keeps_its_files(tmp_path, monkeypatch):
    """Found by the checker on Azurite: vacuum took its cutoff only after a slow log read."""
    monkeypatch.setenv("HAFEN_PLATEAU_VIEW", "false")  # the view would protect its files
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url, partition_on=["part"])
    read_log = _logstore.read_entries_down
    landed: list[hafen.Dataset] = []

    def a_commit_lands_meanwhile(*args, **kwargs):
        entries = read_log(*args, **kwargs)
        if not landed:
            landed.append(hafen.write_dataset(rows(7), url, mode="append"))
            # its files are as old as the grace period when the log has been read
            new = [f.path for f in landed[0].state.files.values() if f.version == 1]
            age([Path(url, p) for p in new], 10)
        return entries

    monkeypatch.setattr(_logstore, "read_entries_down", a_commit_lands_meanwhile)
    report = hafen.open_dataset(url).vacuum(retain_versions=5, grace_period=10)
    assert report.removed_files == []
    assert ids(hafen.open_dataset(url)) == [0, 7]


def test_commit_retries_counts_retries_after_the_first_attempt(tmp_path, monkeypatch):
    """HAFEN_COMMIT_RETRIES=0 was accepted, then every write gave up after 0 attempts."""
    monkeypatch.setenv("HAFEN_COMMIT_RETRIES", "0")
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(0), url, partition_on=["part"])
    assert hafen.write_dataset(rows(1), url, mode="append").version == 1

    while_staging(monkeypatch, lambda: hafen.write_dataset(rows(2), url, mode="append"))
    with pytest.raises(ConflictError, match="gave up after 1 attempt"):
        hafen.write_dataset(rows(3), url, mode="append")  # lost its one race; no retry left
    monkeypatch.setenv("HAFEN_COMMIT_RETRIES", "1")
    while_staging(monkeypatch, lambda: hafen.write_dataset(rows(4), url, mode="append"))
    assert hafen.write_dataset(rows(5), url, mode="append").version == 4
    assert ids(hafen.open_dataset(url)) == [0, 1, 2, 4, 5]
