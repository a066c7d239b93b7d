"""Staging through Arrow's dataset writer: layout, statistics, order and index entries."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import hafen
from hafen.datasets import _write
from hafen.datasets._actions import file_label
from hafen.datasets._dataset import storage_for
from hafen.datasets._indices import encode_index_part
from hafen.datasets._parquet import column_stats
from hafen.datasets._partitioning import split_by_partition
from hafen.datasets._schema import partition_label
from hafen.datasets._storage._base import Storage
from hafen.datasets._write import StagingWriter, stage_table
from hafen.datasets._write_dataset import commit_staged


def odd_table(n: int = 400, seed: int = 0) -> pa.Table:
    """Partition values that need quoting, nulls, dates; data columns of every stat type."""
    rng = np.random.default_rng(seed)
    stamps = pa.array(
        (1_700_000_000_000_000_000 + rng.integers(0, 10**9, n) * 1000).astype("datetime64[ns]")
    )
    return pa.table(
        {
            "region": pa.array(rng.choice(["a/b", "c d", "e%f", "é=1"], n)).to_pylist()[:-3]
            + [None] * 3,
            "day": [dt.date(2024, 1, 1) + dt.timedelta(days=int(i) % 3) for i in range(n)],
            "product": rng.integers(0, 60, n),
            "x": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "ts": stamps.cast(pa.timestamp("ns", tz="Europe/Berlin")),
            "name": pa.array(rng.choice(["fig", "pear", None], n)),
            "seq": np.arange(n),
        }
    )


def int_keys(n: int = 400) -> pa.Table:
    """Integer partition keys (Arrow names their directories itself): negative, null, uint8."""
    table = odd_table(n).drop_columns(["region", "day"])
    small = pa.array(np.arange(n) % 3, pa.uint8())
    signed = pa.array([None if i % 11 == 0 else i % 5 - 2 for i in range(n)], pa.int64())
    return table.append_column("small", small).append_column("signed", signed)


def wide_int_keys(n: int = 400) -> pa.Table:
    """Integer keys over int8's whole range, and a pair spanning too many codes to count."""
    table = odd_table(n).drop_columns(["region", "day"])
    tiny = pa.array([-128 if i % 2 else 127 for i in range(n)], pa.int8())
    far = pa.array([(i % 3) * 2**40 - 2**41 for i in range(n)], pa.int64())
    return table.append_column("tiny", tiny).append_column("far", far)


@pytest.mark.parametrize(
    ("make", "keys"),
    [
        (odd_table, ["region", "day"]),
        (int_keys, ["small", "signed"]),
        (wide_int_keys, ["tiny"]),
        (wide_int_keys, ["tiny", "far"]),
    ],
)
def test_staged_files_match_the_split_exactly(url, make, keys):
    table = make()
    storage = storage_for(url)
    staged = stage_table(storage, table, partition_on=keys, indices=["product"])
    expected = {
        partition_label(keys, values): part for values, part in split_by_partition(table, keys)
    }
    assert {f.partition for f in staged.files} == set(expected)
    assert sum(f.num_rows for f in staged.files) == table.num_rows
    fs = storage.arrow_filesystem
    for f in staged.files:
        assert f.path.startswith(f"table/{f.partition}/") and f.path.endswith(".parquet")
        written = pq.read_table(storage.full(f.path), filesystem=fs)
        part = expected[f.partition]
        assert written.column_names == part.column_names  # no partition columns in the file
        assert written.schema.types == part.schema.types
        assert written.to_pandas().equals(part.to_pandas())  # same rows, same order (NaN too)
        assert f.num_rows == part.num_rows
        assert f.size == storage.size(f.path)
        assert dict(f.stats) == column_stats(part)
    # index entries: exactly the distinct (value, file) pairs, sorted by value
    entries = staged.index_entries["product"]
    got = sorted(
        zip(
            entries.column("value").to_pylist(),
            entries.column("label").cast(pa.string()).to_pylist(),
            strict=True,
        )
    )
    want = sorted(
        (v, file_label(f.path))
        for f in staged.files
        for v in pc.unique(expected[f.partition].column("product")).to_pylist()
    )
    assert got == want
    assert entries.column("value").to_pylist() == sorted(entries.column("value").to_pylist())
    assert staged.encoded_indices == {}  # encoded only on request


def test_encoded_index_is_the_file_its_entries_make(url):
    storage = storage_for(url)
    table = int_keys()
    staged = stage_table(
        storage, table, partition_on=["small"], indices=["product", "name"], encode_index=True
    )
    assert set(staged.encoded_indices) == {"product", "name"}
    for column, encoded in staged.encoded_indices.items():
        type_ = table.schema.field(column).type
        assert encoded == encode_index_part(column, staged.index_entries[column], type_)
    # split into several files per partition: the entries name the real files, nothing encoded
    split = stage_table(
        storage,
        table,
        partition_on=["small"],
        indices=["product"],
        encode_index=True,
        max_rows_per_file=50,
    )
    assert split.encoded_indices == {}
    labels = set(split.index_entries["product"].column("label").cast(pa.string()).to_pylist())
    assert labels == {file_label(f.path) for f in split.files}


def test_partitions_split_into_several_files_keep_exact_index_entries(url):
    table = odd_table(300).drop_columns(["day"])
    storage = storage_for(url)
    staged = stage_table(
        storage, table, partition_on=["region"], indices=["product", "name"], max_rows_per_file=40
    )
    assert max(f.num_rows for f in staged.files) <= 40
    assert len(staged.files) > len({f.partition for f in staged.files})
    ds = commit_staged(
        url, [staged], mode="create", partition_on=["region"], indices=["product", "name"]
    )
    read = ds.read_arrow().sort_by("seq").to_pandas()
    assert read.equals(table.select(ds.schema.names).to_pandas())
    for column, value in [("product", 7), ("name", "fig")]:
        holding = {
            f.path
            for f in ds.files()
            if value in set(ds.read_arrow(files=[f]).column(column).to_pylist())
        }
        assert {f.path for f in ds.files([[(column, "==", value)]])} == holding


def test_unpartitioned_and_empty_tables(url):
    storage = storage_for(url)
    table = odd_table(100)
    staged = stage_table(storage, table, indices=["name"], max_rows_per_file=30)
    assert [f.partition for f in staged.files] == [""] * 4
    assert sorted(f.num_rows for f in staged.files) == [10, 30, 30, 30]
    assert set(staged.index_entries["name"].column("value").to_pylist()) == {"fig", "pear"}
    empty = stage_table(storage, table.slice(0, 0))
    assert [f.num_rows for f in empty.files] == [0]
    assert stage_table(storage, table.slice(0, 0), partition_on=["region"]).files == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_rows_keep_their_order_within_a_partition(url):
    n = 200_000
    table = pa.table({"k": np.arange(n) % 3, "seq": np.arange(n)})
    table = pa.concat_tables(table.slice(i, 2000) for i in range(0, n, 2000))  # 100 batches
    storage = storage_for(url)
    for workers in (1, None):
        staged = stage_table(storage, table, partition_on=["k"], max_workers=workers)
        for f in staged.files:
            seq = pq.read_table(storage.full(f.path), columns=["seq"]).column(0).to_numpy()
            assert (np.diff(seq) > 0).all()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize(
    "values",
    [
        pa.array([3, -2, None, 3, 7, -2, None, 0], pa.int64()),
        pa.array([2**64 - 1, 2**64 - 3, 5, None, 2**64 - 1, 0, 1, 1], pa.uint64()),
        pa.array([1, 2, 3, 4, 5, 6, 7, 2**40], pa.int64()),  # too wide for the bitmap
        pa.array([250, 0, 7, 7, 250, None, 1, 2], pa.uint8()),
        pa.array([127, -128, 0, 127, -128, 5, None, -1], pa.int8()),  # wider than int8
    ],
)
def test_distinct_pairs_of_integers(values, url):
    from hafen.datasets._indices import distinct_pairs as _distinct_pairs

    codes = np.array([0, 1, 1, 1, 0, 2, 2, 0], dtype=np.int64)
    got_values, got_codes = _distinct_pairs(pa.chunked_array([values]), codes, 3)
    pairs = {(v, int(c)) for v, c in zip(values.to_pylist(), codes, strict=True) if v is not None}
    want = sorted(pairs)
    assert list(zip(got_values.to_pylist(), got_codes.tolist(), strict=True)) == want
    assert got_values.type == values.type


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_more_partitions_than_arrow_keeps_open(url):
    n = 1100  # above Arrow's default max_partitions and max_open_files (1024)
    table = pa.table(
        {"k": np.arange(2 * n) % n, "v": np.arange(2 * n) % 7, "seq": np.arange(2 * n)}
    )
    table = pa.concat_tables([table.slice(0, n), table.slice(n)])  # two batches
    storage = storage_for(url)
    staged = stage_table(storage, table, partition_on=["k"], indices=["v"])
    assert len({f.partition for f in staged.files}) == n
    # one file per partition (Arrow's dataset writer, used before, split them to stay under
    # 1024 open files; hafen's writer keeps no file open between batches)
    assert len(staged.files) == n
    assert sum(f.num_rows for f in staged.files) == 2 * n
    ds = commit_staged(url, [staged], mode="create", partition_on=["k"], indices=["v"])
    assert ds.read_arrow().sort_by("seq").column("v").to_pylist() == table.column("v").to_pylist()
    holding = {f.path for f in ds.files() if 3 in ds.read_arrow(files=[f]).column("v").to_pylist()}
    assert {f.path for f in ds.files([[("v", "==", 3)]])} == holding


def _dictionary_encoded(storage, path: str) -> dict[str, bool]:
    meta = pq.ParquetFile(storage.full(path), filesystem=storage.arrow_filesystem).metadata
    group = meta.row_group(0)
    return {
        group.column(i).path_in_schema: group.column(i).has_dictionary_page
        for i in range(group.num_columns)
    }


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_dictionary_encoding_only_where_values_repeat(url, monkeypatch):
    n = 200_000
    rng = np.random.default_rng(0)
    chunks = [slice(0, 70_000), slice(70_000, n)]  # several chunks: sampled a chunk at a time
    table = pa.table(
        {
            "k": np.arange(n) % 4,
            "distinct": rng.random(n),  # a dictionary as large as the data: plain
            "ids": rng.permutation(n),  # unique integers: plain
            "few": rng.integers(0, 300, n),
            "words": pa.chunked_array(
                [pa.array(rng.choice(["fig", "pear", "plum"], n)[c]) for c in chunks]
            ),
            "names": pa.chunked_array(
                [pa.array(np.char.add("n", rng.permutation(n).astype(str))[c]) for c in chunks]
            ),
            "cat": pa.array(np.char.add("c", (np.arange(n) % n).astype(str))).dictionary_encode(),
        }
    )
    storage = storage_for(url)
    want = {"distinct": False, "ids": False, "few": True, "words": True, "names": False}
    want["cat"] = True  # categorical columns keep their dictionary
    staged = stage_table(storage, table, partition_on=["k"], indices=["few"])
    for f in staged.files:
        assert _dictionary_encoded(storage, f.path) == want
    # the streaming writer chooses alike, and the setting restores Arrow's default
    with StagingWriter(storage, table.schema, partition_on=["k"]) as writer:
        writer.write(table)
    assert _dictionary_encoded(storage, writer.staged.files[0].path) == want
    monkeypatch.setenv("HAFEN_PARQUET_DICTIONARY", "always")
    staged = stage_table(storage, table, partition_on=["k"])
    assert set(_dictionary_encoded(storage, staged.files[0].path).values()) == {True}
    # and what is read back is the same either way
    ds = hafen.write_dataset(table, url, partition_on=["k"], mode="overwrite")
    assert ds.read_arrow().sort_by("ids").equals(table.select(ds.schema.names).sort_by("ids"))


def test_dictionary_choice_takes_every_type():
    import decimal

    from hafen.datasets._parquet import dictionary_columns

    n = 10_000
    table = pa.table(
        {
            "decimal": pa.array([decimal.Decimal(i) for i in range(n)], pa.decimal128(10, 2)),
            "binary": pa.array([b"x%d" % (i % 5) for i in range(n)]),
            "null": pa.nulls(n),
            "bool": pa.array([i % 2 == 0 for i in range(n)]),
            "time": pa.array([dt.time(0, i % 60) for i in range(n)]),
            "duration": pa.array(np.arange(n).astype("timedelta64[s]")),
            "large": pa.array(["a"] * n, pa.large_string()),
            "half": pa.array(np.ones(n, np.float16)),
            "fixed": pa.array([b"ab"] * n, pa.binary(2)),
            "json": pa.array([f'{{"a": {i % 5}}}' for i in range(n)], pa.json_()),
            "uuid": pa.array([bytes(16)] * n, pa.uuid()),
        }
    )
    chosen = dictionary_columns(table, 1 << 18)
    assert isinstance(chosen, list)
    assert set(table.column_names) - set(chosen) == {"decimal", "duration"}  # all distinct
    assert dictionary_columns(table.append_column("list", pa.array([[1]] * n)), 1 << 18) is True


@pytest.mark.parametrize(
    ("distinct", "sample", "total", "rows", "low", "high"),
    [
        (4096, 4096, 10**7, 10**5, 10**5, 10**5),  # no repeat seen: assume none
        (100, 4096, 10**7, 10**5, 99.9, 100.1),  # every value seen
        (3361, 4096, 10**7, 2**18, 9_500, 10_500),  # about 10,000 values
        (40, 40, 40, 10**5, 40, 40),  # the whole column was the sample
    ],
)
def test_distinct_per_group_estimate(distinct, sample, total, rows, low, high):
    from hafen.datasets._parquet import _distinct_per_group

    assert low <= _distinct_per_group(distinct, sample, total, rows) <= high


def test_a_failed_write_leaves_no_file_of_its_own_not_even_one_in_flight(tmp_path, monkeypatch):
    """One file fails while another is still being written: the delete of the write's files
    waits for that one, so no file of the failed write is left behind."""
    original = _write._write_file_buffered
    in_flight, failed, deleted = threading.Event(), threading.Event(), threading.Event()

    def write_file(storage, path, table, options):
        if "part=0" in path:
            assert in_flight.wait(30), "the other file never started"
            failed.set()
            raise OSError("the disk is full")
        in_flight.set()
        assert failed.wait(30)
        deleted.wait(2)  # a delete that does not wait for this file comes first: it outlives it
        return original(storage, path, table, options)

    real_delete = Storage.delete

    def delete(self, paths):
        deleted.set()
        return real_delete(self, paths)

    monkeypatch.setattr(_write, "_write_file_buffered", write_file)
    monkeypatch.setattr(Storage, "delete", delete)
    storage = storage_for(str(tmp_path / "ds"))
    table = pa.table({"part": [0, 1, 0, 1], "x": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(OSError, match="the disk is full"):
        stage_table(storage, table, partition_on=["part"], max_workers=2)
    assert deleted.is_set()
    assert not [p for p in (tmp_path / "ds").rglob("*") if p.is_file()]


def test_extension_columns_are_written_and_read_back(tmp_path):
    n = 1000
    table = pa.table(
        {
            "p": np.arange(n) % 3,
            "json": pa.array([f'{{"a": {i % 5}}}' for i in range(n)], pa.json_()),
            "uuid": pa.array([bytes([i % 7]) * 16 for i in range(n)], pa.uuid()),
        }
    )
    ds = hafen.write_dataset(table, str(tmp_path / "ds"), partition_on=["p"])
    back = ds.read_arrow().sort_by([("p", "ascending")])
    assert back.column("json").to_pylist() == table.sort_by("p").column("json").to_pylist()
    assert back.column("uuid").to_pylist() == table.sort_by("p").column("uuid").to_pylist()


def test_a_dictionary_is_chosen_only_where_it_halves_the_bytes():
    from hafen.datasets._parquet import dictionary_columns

    rng = np.random.default_rng(0)
    n = 200_000
    table = pa.table(
        {
            "ids": rng.integers(0, 50_000, n),  # 43% distinct per 100k rows: a third smaller
            "few": rng.integers(0, 1_000, n),
            "names": pa.array(np.char.add("item-", rng.integers(0, 1000, n).astype(str))),
            "floats": rng.random(n),
        }
    )
    assert dictionary_columns(table, 100_000) == ["few", "names"]
    # in groups of 2,000 rows most values are distinct: no dictionary pays for itself
    assert dictionary_columns(table, 2_000) == []
    assert dictionary_columns(table, 2_000, "always") is True


def test_dictionaries_are_chosen_for_the_rows_of_a_partition():
    from hafen.datasets._write import _rows_per_partition

    rng = np.random.default_rng(0)
    even = rng.integers(0, 100, 1_000_000).astype(np.int32)
    assert 9_000 < _rows_per_partition((even, 100, str)) < 11_000
    skewed = np.concatenate([np.zeros(900_000, np.int32), np.arange(1, 100_001, dtype=np.int32)])
    assert _rows_per_partition((skewed, 100_001, str)) > 700_000  # most rows are in one file
    assert _rows_per_partition((np.zeros(10, np.int32), 1, str)) == 10


def test_integers_without_a_dictionary_are_delta_encoded(tmp_path):
    rng = np.random.default_rng(0)
    n = 400_000
    table = pa.table(
        {
            "part": rng.integers(0, 4, n),
            "ids": rng.integers(0, 50_000, n),  # no dictionary: delta
            "few": rng.integers(0, 10, n),  # a dictionary
            "x": rng.random(n),
        }
    )
    ds = hafen.write_dataset(table, str(tmp_path / "ds"), partition_on=["part"])
    path = next((tmp_path / "ds" / "table").rglob("*.parquet"))
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(3)}
    assert "DELTA_BINARY_PACKED" in encodings["ids"]
    assert "RLE_DICTIONARY" in encodings["few"]
    assert "DELTA_BINARY_PACKED" not in encodings["x"]
    order = [("x", "ascending")]
    assert ds.read_arrow().sort_by(order).equals(table.select(ds.schema.names).sort_by(order))
