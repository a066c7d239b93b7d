"""Detected damage: checksums in every file and in the log; a damaged file is an error naming it.

The sweep flips single bytes all over a real data file (page headers, data and dictionary pages,
footer) and requires every read to return exactly the original rows or raise a
``CorruptDataError`` naming the file, and ``verify`` to flag the file every time.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hafen
from hafen.datasets import Dataset
from hafen.datasets._dataset import storage_for
from hafen.datasets._schema import conform, normalize_schema
from hafen.datasets._write import StagingWriter, stage_table
from hafen.datasets._write_dataset import commit_staged
from hafen.errors import CorruptDataError, HafenWarning, StorageError


def table(n: int = 3000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "part": pa.array(rng.integers(0, 2, n)),
            "store_id": pa.array(rng.integers(0, 5, n)),
            "qty": pa.array(rng.random(n)),
            "price": pa.array(rng.normal(size=n)),
            "name": pa.array(rng.choice(["apple", "pear", "fig"], n)),
            "ts": pa.array(pd.date_range("2024-01-01", periods=n, freq="h", tz="Europe/Berlin")),
            "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=i % 9) for i in range(n)]),
        }
    )


def write(url: str, data: pa.Table, *, row_group_size: int = 1000, **options) -> Dataset:
    """A dataset of ``data`` whose files have several row groups."""
    storage = storage_for(url)
    data = conform(data, normalize_schema(data.schema))
    staged = stage_table(storage, data, row_group_size=row_group_size, **options)
    layout = {k: options[k] for k in ("partition_on", "indices") if k in options}
    return commit_staged(url, [staged], mode="create", **layout)


def crc(path: Path) -> str:
    return f"crc32:{zlib.crc32(path.read_bytes()):08x}"


def local(ds: Dataset, path: str) -> Path:
    return Path(ds.storage.full(path))


# -- what is written ---------------------------------------------------------------------------


def test_every_writer_records_the_checksum_of_the_bytes_it_wrote(tmp_path):
    data = table(500)
    ds = write(str(tmp_path / "staged"), data, partition_on=["part"])  # Arrow's dataset writer
    schema = ds.schema
    with StagingWriter(ds.storage, schema, partition_on=["part"]) as w:  # streaming writer
        w.write(conform(table(300, seed=1), schema))
    ds = commit_staged(ds.storage, [w.staged], mode="append")
    empty = hafen.write_dataset(data.slice(0, 0).drop_columns(["part"]), str(tmp_path / "e"))
    files = [(ds, f) for f in ds.files()] + [(empty, f) for f in empty.files()]
    assert len(files) == 5
    for owner, f in files:
        path = local(owner, f.path)
        assert f.checksum == crc(path), f.path
        assert f.size == path.stat().st_size
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows == f.num_rows
    # the checksum is in the log entry, and a reader of the log gets it back
    entry = json.loads((tmp_path / "staged" / "_hafen/log/00000000000000000001.json").read_text())
    (add,) = [a["add"] for a in entry["actions"] if "add" in a][:1]
    assert add["checksum"].startswith("crc32:")
    reopened = hafen.open_dataset(str(tmp_path / "staged"))
    assert {f.path: f.checksum for f in reopened.files()} == {
        f.path: f.checksum for f in ds.files()
    }


def test_pages_carry_checksums_in_data_and_index_files(tmp_path):
    ds = write(str(tmp_path / "ds"), table(500), partition_on=["part"], indices=["store_id"])
    (part,) = ds.state.index_parts
    for path in [local(ds, f.path) for f in ds.files()] + [local(ds, part.path)]:
        data = bytearray(path.read_bytes())
        first_page = pq.ParquetFile(path).metadata.row_group(0).column(0)
        start = first_page.dictionary_page_offset or first_page.data_page_offset
        data[start + first_page.total_compressed_size - 1] ^= 0x01  # last byte of a page
        path.write_bytes(bytes(data))
        with pytest.raises(OSError, match="CRC"):
            pq.read_table(path, page_checksum_verification=True)


def test_every_type_passes_the_footer_checks(tmp_path):
    """Parquet stores some types as others (seconds as milliseconds, date64 as days): the
    footer checks accept what an intact file holds, for every type a dataset can have."""
    import decimal

    cols = {
        "i8": pa.array([1, 2, None], pa.int8()),
        "u64": pa.array([1, 2, 3], pa.uint64()),
        "f32": pa.array([1.5, None, 3], pa.float32()),
        "b": pa.array([True, False, None]),
        "s": pa.array(["a", "b", None], pa.large_string()),
        "bin": pa.array([b"a", b"b", None]),
        "fsb": pa.array([b"ab", b"cd", b"ef"], pa.binary(2)),
        "d32": pa.array([dt.date(2024, 1, 1)] * 3),
        "d64": pa.array([dt.date(2024, 1, 1)] * 3, pa.date64()),
        "t32": pa.array([dt.time(1, 2, 3)] * 3, pa.time32("s")),
        "t64": pa.array([dt.time(1, 2, 3)] * 3, pa.time64("ns")),
        "dur": pa.array([1, 2, 3], pa.duration("s")),
        "dec": pa.array([decimal.Decimal("1.23")] * 3, pa.decimal128(10, 2)),
        "lst": pa.array([[1], [2, 3], None], pa.large_list(pa.int64())),
        "st": pa.array([{"x": 1}, {"x": 2}, None]),
        "mp": pa.array([[("k", 1)], [], None], pa.map_(pa.string(), pa.int64())),
        "dic": pa.array(["a", "b", "a"]).dictionary_encode(),
        "nul": pa.nulls(3),
    }
    for unit in ("s", "ms", "us", "ns"):
        for tz in (None, "Europe/Berlin"):
            cols[f"ts_{unit}_{tz}"] = pa.array([0, 1, None], pa.timestamp(unit, tz))
    data = pa.table(cols)
    ds = hafen.write_dataset(data, str(tmp_path / "ds"))
    assert ds.read_arrow().equals(conform(data, ds.schema))
    assert pa.Table.from_batches(list(ds.scan_batches())).num_rows == 3
    assert ds.verify().ok


def test_logs_without_checksums_still_read_and_verify(tmp_path):
    """Entries written before checksums were recorded have none; nothing requires one."""
    url = tmp_path / "ds"
    hafen.write_dataset(table(200).to_pandas(), str(url), partition_on=["part"])
    entry = url / "_hafen/log/00000000000000000000.json"
    log = json.loads(entry.read_text())
    for action in log["actions"]:
        action.get("add", {}).pop("checksum", None)
    entry.write_text(json.dumps(log))
    hafen.datasets._logstore.clear_state_cache()
    ds = hafen.open_dataset(str(url))
    assert all(f.checksum is None for f in ds.files())
    assert ds.read_arrow().num_rows == 200
    report = ds.verify()
    assert report.ok and report.without_checksum == len(ds.files())


# -- the sweep ---------------------------------------------------------------------------------


def _offsets(path: Path) -> list[int]:
    """Offsets all over a Parquet file: every byte of its page headers' area and footer, and
    a stride through the pages' data (dictionary and data pages of every column chunk)."""
    size = path.stat().st_size
    meta = pq.ParquetFile(path).metadata
    footer = int.from_bytes(path.read_bytes()[-8:-4], "little")
    offsets = set(range(0, 4)) | set(range(size - 8 - footer, size))
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            starts = {start, chunk.data_page_offset}
            for s in starts:
                offsets |= set(range(s, s + 24))  # the page header and the first values
            offsets |= set(range(start, start + chunk.total_compressed_size, 29))
    return sorted(offsets)


@pytest.mark.slow
def test_single_byte_flips_never_read_as_different_values(tmp_path):
    url = str(tmp_path / "ds")
    ds = write(url, table(), partition_on=["part"])
    f = sorted(ds.files(), key=lambda f: f.path)[0]
    path = local(ds, f.path)
    original = path.read_bytes()
    expected = ds.read_arrow(files=[f])
    where = f"{ds.url}/{f.path}"
    offsets = _offsets(path)
    assert len(offsets) > 1500
    outcomes = {"same": 0, "error": 0}
    for i, offset in enumerate(offsets):
        damaged = bytearray(original)
        damaged[offset] ^= (0x01, 0x80, 0xFF, 0x10)[i % 4]
        path.write_bytes(bytes(damaged))
        try:
            got = ds.read_arrow(files=[f])
        except CorruptDataError as exc:
            assert exc.path == where and where in str(exc), (offset, exc)
            outcomes["error"] += 1
        else:
            assert got.equals(expected), f"byte {offset} changed the values read"
            outcomes["same"] += 1
        if i % 5 == 0:  # the streaming read too
            try:
                batches = list(ds.scan_batches(files=[f]))
            except CorruptDataError as exc:
                assert exc.path == where, (offset, exc)
            else:
                got = pa.Table.from_batches(batches, schema=ds.schema)
                assert got.equals(expected), f"byte {offset} changed the values streamed"
        report = ds.verify()
        assert [c.path for c in report.bad] == [f.path], offset
    path.write_bytes(original)
    assert ds.verify().ok
    # most flips are errors; some bytes (statistics, unused metadata) do not change the values
    assert outcomes["error"] > len(offsets) / 2 and outcomes["same"] > 0


# -- reads name the damaged file -----------------------------------------------------------------


def test_a_damaged_file_among_many_is_named_by_every_read(tmp_path):
    url = str(tmp_path / "ds")
    ds = write(url, table(2000), partition_on=["part"])
    f = sorted(ds.files(), key=lambda f: f.path)[1]
    path = local(ds, f.path)
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    qty = meta.schema.names.index("qty")  # plain doubles
    chunk = meta.row_group(0).column(qty)
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0x04
    path.write_bytes(bytes(data))
    where = f"{ds.url}/{f.path}"
    with pytest.raises(CorruptDataError, match=r"has checksum crc32:\w+, .*CRC") as caught:
        ds.read_arrow()
    assert caught.value.path == where and where in str(caught.value)
    with pytest.raises(CorruptDataError) as caught:
        list(ds.scan_batches())
    assert caught.value.path == where
    with pytest.raises(CorruptDataError) as caught:
        ds.read(columns=["qty"], predicates=[[("store_id", ">=", 0)]])
    assert caught.value.path == where
    assert len(ds.read(columns=["price", "name"])) == 2000  # other columns read fine
    # a hafen error, picklable with its path (Dask workers send it to the client)
    again = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(again, CorruptDataError) and again.path == where
    assert isinstance(caught.value, StorageError)
    report = ds.verify()
    assert [c.path for c in report.bad] == [f.path]
    assert "has checksum crc32:" in report.bad[0].problem


def test_a_renamed_column_in_a_footer_is_an_error_not_nulls(tmp_path):
    """A flip in a column's name in the footer still parses; Arrow alone reads nulls."""
    ds = write(str(tmp_path / "ds"), table(300))
    (f,) = ds.files()
    path = local(ds, f.path)
    data = path.read_bytes()
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    at = data.index(b"price", footer)  # its first mention: the Parquet schema
    path.write_bytes(data[:at] + b"prize" + data[at + 5 :])
    assert pq.read_table(path).column_names.count("prize") == 1  # it does parse
    with pytest.raises(CorruptDataError, match="names a column 'prize'"):
        ds.read_arrow()
    with pytest.raises(CorruptDataError, match="names a column 'prize'"):
        list(ds.scan_batches())


def test_a_truncated_or_missing_file_is_named(tmp_path):
    ds = write(str(tmp_path / "ds"), table(600), partition_on=["part"])
    a, b = sorted(ds.files(), key=lambda f: f.path)
    path = local(ds, a.path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match=a.path):
        ds.read_arrow()
    local(ds, b.path).unlink()
    report = ds.verify()
    assert {c.path: c.problem for c in report.bad} == {
        a.path: f"is {a.size - 100} bytes, the log records {a.size}",
        b.path: "is missing",
    }
    with pytest.raises(StorageError, match=b.path.rsplit("/", 1)[1]):
        ds.read_arrow(files=[b])


# -- secondary indices --------------------------------------------------------------------------


def indexed(tmp_path) -> tuple[Dataset, Path, pd.DataFrame]:
    df = table(600).to_pandas()
    ds = hafen.write_dataset(df, str(tmp_path / "ds"), partition_on=["part"], indices=["store_id"])
    (part,) = ds.state.index_parts
    return ds, local(ds, part.path), df


def test_a_damaged_index_is_named_by_lookups_and_skipped_by_reads(tmp_path):
    ds, index, df = indexed(tmp_path)
    want = df[df["store_id"] == 3]
    data = bytearray(index.read_bytes())
    chunk = pq.ParquetFile(index).metadata.row_group(0).column(1)  # the labels
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start + chunk.total_compressed_size - 3] ^= 0x20  # in its last page
    index.write_bytes(bytes(data))
    where = f"{ds.url}/{ds.state.index_parts[0].path}"
    with pytest.raises(CorruptDataError, match="the index file cannot be decoded") as caught:
        ds.index_lookup("store_id", [3])
    assert caught.value.path == where
    with pytest.warns(HafenWarning, match="reading without the index on 'store_id'"):
        got = ds.read(predicates=[[("store_id", "==", 3)]])
    assert sorted(got["qty"]) == sorted(want["qty"])
    report = ds.verify()
    assert [(c.kind, c.path) for c in report.bad] == [("index", ds.state.index_parts[0].path)]


def test_a_missing_or_garbled_index_is_named(tmp_path):
    ds, index, df = indexed(tmp_path)
    index.write_bytes(b"\xff\xfe not parquet at all" * 10)
    with pytest.raises(CorruptDataError, match="the index file cannot be decoded"):
        ds.index_lookup("store_id", [1])
    index.unlink()
    with pytest.raises(CorruptDataError, match="the index file is missing") as caught:
        ds.index_lookup("store_id", [1])
    assert caught.value.path.endswith(ds.state.index_parts[0].path)
    with pytest.warns(HafenWarning, match="is missing"):
        got = ds.read(predicates=[[("store_id", "in", [1, 2])]])
    assert len(got) == int(df["store_id"].isin([1, 2]).sum())


def test_an_index_with_invalid_labels_is_an_error_not_a_unicode_error(tmp_path):
    """An index file written without page checksums (as before) whose labels are garbled."""
    ds, index, _ = indexed(tmp_path)
    pf = pq.read_table(index)
    labels = pf.column("partition").combine_chunks()
    flat = labels.flatten().cast(pa.binary())
    bad = pa.array([b"\xff" + v.as_py()[1:] for v in flat], pa.binary()).cast(
        pa.string(), safe=False
    )
    garbled = pa.ListArray.from_arrays(labels.offsets, bad)
    pq.write_table(pf.set_column(1, "partition", garbled), index)
    with pytest.raises(CorruptDataError, match="index file"):
        ds.index_lookup("store_id", [1])


def test_a_damaged_file_is_named_on_every_backend(url):
    ds = write(url, table(1000), partition_on=["part"], indices=["store_id"])
    f = sorted(ds.files(), key=lambda f: f.path)[0]
    data = bytearray(ds.storage.read_bytes(f.path))
    meta = pq.ParquetFile(pa.BufferReader(bytes(data))).metadata
    chunk = meta.row_group(0).column(meta.schema.names.index("qty"))
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0x01
    ds.storage.write_bytes(f.path, bytes(data))
    where = f"{ds.url}/{f.path}"
    with pytest.raises(CorruptDataError) as caught:
        hafen.open_dataset(url).read_arrow(columns=["qty"])
    assert caught.value.path == where and where in str(caught.value)
    with pytest.raises(CorruptDataError) as caught:
        list(ds.scan_batches(["qty"], predicates=[[("store_id", "==", 1)]]))
    assert caught.value.path == where
    report = ds.verify(max_workers=2)
    assert [(c.kind, c.path) for c in report.bad] == [("data", f.path)]
    assert len(report.files) == len(ds.files()) + 1  # and the index file, sound
