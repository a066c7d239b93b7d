"""The commit log: checkpoints bound opening; corrupt files are named; old versions vacuumed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import hafen
from hafen.datasets import _log
from hafen.errors import CorruptMetadataError, VersionNotFoundError


def one(i: int) -> pd.DataFrame:
    return pd.DataFrame({"i": [i], "v": [float(i)]})


def test_open_reads_from_the_newest_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HAFEN_CHECKPOINT_INTERVAL", "10")
    url = str(tmp_path / "ds")
    for i in range(25):
        hafen.write_dataset(one(i), url, mode="append")
    assert _log.list_checkpoints(hafen.open_dataset(url).storage) == [10, 20]
    # entries before the newest checkpoint are never read when opening the latest version
    Path(url, _log.log_path(5)).write_text("garbage")
    ds = hafen.open_dataset(url)
    assert ds.version == 24 and sorted(ds.read()["i"]) == list(range(25))
    assert sorted(hafen.open_dataset(url, version=15).read()["i"]) == list(range(16))
    # ... but an old version that needs them names the corrupt file
    with pytest.raises(CorruptMetadataError, match=r"00000000000000000005\.json"):
        hafen.open_dataset(url, version=7)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-version"])
def test_corrupt_log_entry_names_the_file(tmp_path, damage):
    url = str(tmp_path / "ds")
    hafen.write_dataset(one(0), url)
    hafen.write_dataset(one(1), url, mode="append")
    entry = Path(url, _log.log_path(1))
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
    checkpoint = Path(url, _log.checkpoint_path(2))
    checkpoint.write_text(checkpoint.read_text()[:40])
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
    Path(url, _log.LOG_DIR, ".tmp-deadbeef").write_text('{"version": 1, "act')
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
