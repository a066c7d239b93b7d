"""The commit log: checkpoints bound opening; corrupt files are named; old versions vacuumed."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

import hafen
from hafen.datasets import _actions, _logstore
from hafen.datasets._storage import Storage
from hafen.errors import CorruptMetadataError, HafenWarning, StorageError, VersionNotFoundError


def one(i: int) -> pd.DataFrame:
    return pd.DataFrame({"i": [i], "v": [float(i)]})


def test_open_reads_from_the_newest_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "10")
    url = str(tmp_path / "ds")
    for i in range(25):
        hafen.write_dataset(one(i), url, mode="append")
    assert _logstore.list_checkpoints(hafen.open_dataset(url).storage) == [10, 20]
    # entries before the newest checkpoint are never read when opening the latest version
    Path(url, _actions.log_path(5)).write_text("garbage")
    ds = hafen.open_dataset(url)
    assert ds.version == 24 and sorted(ds.read()["i"]) == list(range(25))
    assert sorted(hafen.open_dataset(url, version=15).read()["i"]) == list(range(16))
    # ... but an old version that needs them names the corrupt file
    with pytest.raises(CorruptMetadataError, match=r"00000000000000000005\.json"):
        hafen.open_dataset(url, version=7)


def test_a_checkpoint_that_cannot_be_written_does_not_fail_the_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "3")
    url = str(tmp_path / "ds")
    for i in range(3):
        hafen.write_dataset(one(i), url, mode="append")
    real = _logstore.write_checkpoint

    def fail(storage, state):
        raise StorageError(f"{storage.url}: the disk is full")

    monkeypatch.setattr(_logstore, "write_checkpoint", fail)
    with pytest.warns(HafenWarning, match="version 3 landed, but its checkpoint"):
        ds = hafen.write_dataset(one(3), url, mode="append")  # landed: a retry would duplicate
    assert ds.version == 3 and _logstore.list_checkpoints(ds.storage) == []
    monkeypatch.setattr(_logstore, "write_checkpoint", real)
    for i in range(4, 7):
        hafen.write_dataset(one(i), url, mode="append")
    monkeypatch.setenv("HAFEN_STATE_CACHE", "false")
    ds = hafen.open_dataset(url)
    assert _logstore.list_checkpoints(ds.storage) == [6]
    assert sorted(ds.read()["i"]) == list(range(7))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-version"])
def test_corrupt_log_entry_names_the_file(tmp_path, damage):
    url = str(tmp_path / "ds")
    hafen.write_dataset(one(0), url)
    hafen.write_dataset(one(1), url, mode="append")
    entry = Path(url, _actions.log_path(1))
    text = entry.read_text()
    if damage == "truncate":
        entry.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        entry.write_bytes(b"\x00\xff" * 10)
    else:
        entry.write_text(text.replace('"version":1', '"version":7'))
    with pytest.raises(CorruptMetadataError, match=str(entry)):
        hafen.open_dataset(url)


def test_corrupt_checkpoint_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "2")
    url = str(tmp_path / "ds")
    for i in range(3):
        hafen.write_dataset(one(i), url, mode="append")
    checkpoint = Path(url, _actions.checkpoint_path(2))
    checkpoint.write_text(checkpoint.read_text()[:40])
    _logstore.clear_state_cache()  # as a new process: this one remembers version 2 without it
    # the file list is read from the checkpoint when first needed, not when opening
    with pytest.raises(CorruptMetadataError, match=str(checkpoint)):
        hafen.open_dataset(url).read()
    Path(url, _actions.LAST_CHECKPOINT).unlink()  # without the hint, opening reads it at once
    _logstore.clear_state_cache()
    with pytest.raises(CorruptMetadataError, match=str(checkpoint)):
        hafen.open_dataset(url)


def test_corrupt_plateau_metadata_names_the_file(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    meta = root / "sales.by-dataset-metadata.json"
    meta.write_text('{"dataset_metadata_version": 4, "partitions": {')
    with pytest.raises(CorruptMetadataError, match=str(meta)):
        hafen.open_dataset(str(root / "sales"))


def test_interrupted_log_write_is_invisible(tmp_path):
    url = str(tmp_path / "ds")
    hafen.write_dataset(one(0), url)
    # a writer that died while writing its entry leaves only a temporary file
    Path(url, _actions.LOG_DIR, ".tmp-deadbeef").write_text('{"version": 1, "act')
    ds = hafen.open_dataset(url)
    assert ds.version == 0
    assert hafen.write_dataset(one(1), url, mode="append").version == 1


def test_vacuum_drops_old_versions_but_keeps_retained_ones_readable(tmp_path):
    url = str(tmp_path / "ds")
    hafen.write_dataset(one(0), url)
    for i in range(1, 6):
        hafen.write_dataset(one(i), url, mode="overwrite")
    ds = hafen.open_dataset(url)
    report = ds.vacuum(retain_versions=2, grace_period=0)
    assert report.removed_versions == [0, 1, 2, 3]
    assert len(report.removed_files) == 4
    assert sorted(hafen.open_dataset(url, version=4).read()["i"]) == [4]
    assert sorted(hafen.open_dataset(url).read()["i"]) == [5]
    with pytest.raises(VersionNotFoundError, match="version 2"):
        hafen.open_dataset(url, version=2)
    assert hafen.write_dataset(one(6), url, mode="append").version == 6
    assert [h["version"] for h in hafen.open_dataset(url).history()] == [6, 5, 4]


def test_vacuum_removes_old_scratch_of_dead_jobs(tmp_path):
    url = str(tmp_path / "ds")
    ds = hafen.write_dataset(one(0), url)
    scratch = Path(url, "_hafen", "scratch", "reshuffle-dead", "m0-f0.arrow")
    scratch.parent.mkdir(parents=True)
    scratch.write_bytes(b"x" * 10)
    assert ds.vacuum(grace_period="1h").removed_files == []
    assert ds.vacuum(grace_period=0).removed_files == ["_hafen/scratch/reshuffle-dead/m0-f0.arrow"]
    assert not scratch.exists()


class StorageCalls:
    """Counts the storage calls of a block, by method and by the log's directories."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        for name in ("read_bytes", "list", "walk", "exists", "put_if_absent", "write_bytes"):
            original = getattr(Storage, name)

            def counted(storage, path, *args, _name=name, _original=original, **kwargs):
                area = (
                    "log"
                    if path.startswith(_actions.LOG_DIR)
                    else "checkpoints"
                    if path.startswith(_actions.CHECKPOINT_DIR)
                    else path.split("/")[0]
                )
                self.calls[f"{_name} {area}"] += 1
                return _original(storage, path, *args, **kwargs)

            monkeypatch.setattr(Storage, name, counted)

    def total(self) -> int:
        return sum(self.calls.values())


def grow(url: str, versions: int) -> None:
    hafen.write_dataset(one(0), url, partition_on=["i"])
    for i in range(1, versions):
        hafen.write_dataset(one(i), url, mode="append")


@pytest.mark.parametrize("cached", [True, False])
def test_append_cost_does_not_grow_with_versions(tmp_path, monkeypatch, cached):
    """An append's storage calls are the same at 31 and at 231 versions, and none lists the log.

    (Every tenth version also writes a checkpoint, which reads the previous one: that cost is
    the state's size, once per interval.)
    """
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "10")
    monkeypatch.setenv("HAFEN_PLATEAU_VIEW", "false")
    costs = []
    for versions in (31, 231):
        url = str(tmp_path / f"ds{versions}")
        grow(url, versions)
        if not cached:
            _logstore.clear_state_cache()
        with monkeypatch.context() as m:
            calls = StorageCalls(m)
            ds = hafen.write_dataset(one(versions), url, mode="append")
        assert ds.version == versions and ds.num_rows == versions + 1
        assert not any(key.startswith(("list log", "walk log")) for key in calls.calls)
        # an append needs the schema and layout, not the file list the checkpoint holds
        assert "read_bytes checkpoints" not in calls.calls
        costs.append(calls.calls)
    assert costs[0] == costs[1]


def test_open_latest_needs_no_listing_of_the_log(tmp_path, monkeypatch):
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "10")
    url = str(tmp_path / "ds")
    grow(url, 25)
    _logstore.clear_state_cache()
    with monkeypatch.context() as m:
        m.setattr(_logstore, "list_versions", lambda storage: pytest.fail("listed the log"))
        ds = hafen.open_dataset(url)
        assert ds.version == 24 and sorted(ds.read()["i"]) == list(range(25))
        assert hafen.open_dataset(url, version=22).num_rows == 23


def ds_storage(url: str) -> Storage:
    return hafen.open_dataset(url).storage


@pytest.mark.parametrize("hint", ["missing", "garbage", "stale", "ahead", "no-state"])
def test_the_checkpoint_hint_is_only_a_hint(tmp_path, monkeypatch, hint):
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "10")
    url = str(tmp_path / "ds")
    grow(url, 25)
    path = Path(url, _actions.LAST_CHECKPOINT)
    assert json.loads(path.read_text())["version"] == 20
    if hint == "missing":
        path.unlink()
    elif hint == "garbage":
        path.write_text("{not json")
    elif hint == "stale":  # another writer's older hint landed last
        hint10 = json.loads(path.read_text())
        hint10["version"] = hint10["state"]["version"] = 10
        hint10["state"]["commit_id"] = _logstore.read_commit(ds_storage(url), 10).commit_id
        path.write_text(json.dumps(hint10))
    elif hint == "ahead":  # names a version whose entry does not exist
        path.write_text(path.read_text().replace('"version":20', '"version":30'))
    else:  # an older format without the state
        path.write_text('{"version": 20}')
    _logstore.clear_state_cache()
    ds = hafen.open_dataset(url)
    assert ds.version == 24 and sorted(ds.read()["i"]) == list(range(25))


def test_a_remembered_state_is_checked_against_the_log(tmp_path, monkeypatch):
    """A dataset deleted and recreated at the same URL is never answered from memory."""
    url = str(tmp_path / "ds")
    grow(url, 5)
    assert hafen.open_dataset(url).version == 4
    for versions in (2, 8):  # fewer versions than remembered, then more
        shutil.rmtree(url)
        hafen.write_dataset(pd.DataFrame({"i": [7], "v": [7.0]}), url)
        for _ in range(1, versions):
            hafen.write_dataset(pd.DataFrame({"i": [7], "v": [7.0]}), url, mode="append")
        ds = hafen.open_dataset(url)
        assert ds.version == versions - 1 and set(ds.read()["i"]) == {7}


def test_another_writers_commits_are_seen(tmp_path):
    url = str(tmp_path / "ds")
    grow(url, 3)
    mine = hafen.open_dataset(url)
    # another process appends: simulated by forgetting, appending, and forgetting again
    _logstore.clear_state_cache()
    hafen.write_dataset(one(3), url, mode="append")
    _logstore.clear_state_cache()
    assert hafen.open_dataset(url).version == 3
    assert not mine.is_latest() and mine.latest().version == 3


def test_the_state_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("HAFEN_STATE_CACHE", "false")
    url = str(tmp_path / "ds")
    grow(url, 3)
    with monkeypatch.context() as m:
        calls = StorageCalls(m)
        hafen.open_dataset(url)
    assert calls.calls["read_bytes log"] >= 3  # every entry, since nothing is remembered


def test_a_log_entry_is_a_value():
    """The commit model is frozen: numbering an entry for an attempt makes a new one."""
    entry = _actions.Commit(operation="append")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.version = 3  # type: ignore[misc]
    numbered = dataclasses.replace(entry, version=3)
    assert (entry.version, numbered.version) == (-1, 3)
    assert numbered.commit_id == entry.commit_id
