"""Reads of a few whole files (a service's first read of a file), each file read by itself:
the rows Arrow's dataset scanner reads, partition columns only through the scanner, and every
footer checked on every read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import hafen
from hafen.datasets import _scan
from hafen.errors import CorruptDataError


def _dataset(tmp_path) -> hafen.Dataset:
    rng = np.random.default_rng(1)
    n = 3000
    table = pa.table(
        {
            "store": pa.array([None if i % 101 == 0 else i % 4 for i in range(n)], pa.int64()),
            "product": rng.integers(0, 50, n),
            "x": rng.normal(size=n),
            "name": pa.array(rng.choice(["a", "b", None], n).tolist(), pa.string()),
        }
    )
    return hafen.write_dataset(table, str(tmp_path / "ds"), partition_on=["store"])


def _scanned(ds: hafen.Dataset, files, columns=None) -> pa.Table:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_scan, "_DIRECT_FILES", 0)
        return ds.read_arrow(columns, files=files)


def _spy(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = _scan._read_whole

    def spy(*args, **kwargs):
        found = original(*args, **kwargs)
        calls.append(found is not None)
        return found

    monkeypatch.setattr(_scan, "_read_whole", spy)
    return calls


def test_a_few_whole_files_read_as_the_scanner_reads_them(tmp_path, monkeypatch):
    ds = _dataset(tmp_path)
    files = sorted(ds.files(), key=lambda f: f.path)
    calls = _spy(monkeypatch)
    for some in (files[:1], files[1:3], files[:4]):
        for columns in (None, ["x", "store"], ["name"], ["store", "product"]):
            got = ds.read_arrow(columns, files=some)
            want = _scanned(ds, some, columns)
            assert got.schema == want.schema
            assert got.equals(want), (some, columns)
    assert calls and all(calls)


def test_partition_columns_only_go_through_the_scanner(tmp_path, monkeypatch):
    ds = _dataset(tmp_path)
    files = sorted(ds.files(), key=lambda f: f.path)
    calls = _spy(monkeypatch)
    got = ds.read_arrow(["store"], files=files[:2])
    assert calls == [False]  # nothing stored in the files is asked for: Arrow's scanner
    assert got.equals(_scanned(ds, files[:2], ["store"]))
    assert got.num_rows == sum(f.num_rows for f in files[:2]) > 0


def test_a_footer_damaged_after_a_read_is_found_by_the_next(tmp_path):
    ds = _dataset(tmp_path)
    f = sorted(ds.files(), key=lambda f: f.path)[0]
    path = tmp_path / "ds" / f.path
    original = path.read_bytes()
    assert ds.read_arrow(files=[f]).num_rows == f.num_rows  # a first read
    # the footer's length says more than the file holds
    path.write_bytes(original[:-8] + (len(original) * 2).to_bytes(4, "little") + original[-4:])
    with pytest.raises(CorruptDataError) as caught:
        ds.read_arrow(files=[f])
    assert caught.value.path == f"{ds.url}/{f.path}"


def test_a_file_without_a_column_added_later_goes_through_the_scanner(tmp_path):
    url = str(tmp_path / "ds")
    table = pa.table({"k": [1, 2, 3], "v": [1.0, 2.0, 3.0]})
    hafen.write_dataset(table.drop_columns(["v"]), url)
    ds = hafen.write_dataset(table, url, mode="append", schema_mode="merge")
    files = sorted(ds.files(), key=lambda f: f.num_rows)
    got = ds.read_arrow(files=files)
    assert got.equals(_scanned(ds, files))
    assert got.column("v").null_count == 3
