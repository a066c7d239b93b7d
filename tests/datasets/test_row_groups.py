"""Lookups that read only the row groups that may match, with footers kept per process: the same
rows as Arrow's dataset scanner, errors naming damaged and missing files, and the fallbacks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import hafen
from hafen.datasets import _row_groups, _scan
from hafen.errors import CorruptDataError, StorageError


def _table(n: int = 4000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    key = rng.integers(-300, 300, n)
    return pa.table(
        {
            "part": pa.array(
                [None if i % 97 == 0 else int(v) for i, v in enumerate(rng.integers(0, 3, n))],
                pa.int64(),
            ),
            "key": pa.array(key, mask=rng.random(n) < 0.05),
            "big": pa.array(rng.integers(0, 2**64 - 1, n, dtype=np.uint64), pa.uint64()),
            "x": rng.normal(size=n),
            "name": pa.array(rng.choice(["b", "a", None, "c"], n).tolist(), pa.string()),
            "row": np.arange(n),
        }
    )


def _write(tmp_path, **options) -> hafen.Dataset:
    return hafen.write_dataset(_table(), str(tmp_path / "ds"), partition_on=["part"], **options)


def _scanned(ds: hafen.Dataset, predicates, columns=None) -> pa.Table:
    """What Arrow's dataset scanner reads for the same query."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_scan, "read_matching", lambda *a, **k: None)
        return ds.read_arrow(columns, predicates=predicates)


QUERIES = [
    [[("key", "==", 7)]],
    [[("key", "==", 7)], [("key", "==", -250)]],
    [[("key", ">=", 100), ("key", "<", 120)]],
    [[("key", "in", [3, 5, 299, 1000])]],
    [[("key", "==", 7), ("part", "==", 1)]],
    [[("key", "<=", -290)], [("part", "==", None), ("key", ">", 0)]],
    [[("key", "==", 5), ("name", "==", "a")]],  # a string literal beside: Arrow's filter
    [[("key", "==", 5), ("part", "!=", 1)]],
    [[("x", ">", 2.5)]],
    [[("big", ">", 2**64 - 2**60)]],
    [[("key", "==", 100_000)]],  # in no row group
]


@pytest.mark.parametrize("sort_by", [None, ["key"]])
def test_lookups_read_the_rows_the_scanner_reads(tmp_path, sort_by):
    ds = _write(tmp_path, indices=["key"], sort_by=sort_by, row_group_size=200)
    hits = 0
    for predicates in QUERIES:
        for columns in (None, ["row", "key"], ["x"]):
            hits += _row_groups.footer_cache_info()["hits"]
            _row_groups.clear_footers()
            want = _scanned(ds, predicates, columns)
            for _ in range(2):  # the footers read, then kept
                got = ds.read_arrow(columns, predicates=predicates)
                assert got.schema == want.schema, predicates
                assert got.equals(want), (predicates, columns)
    assert hits > 0


def test_sorted_files_read_only_the_matching_row_groups(tmp_path, monkeypatch):
    ds = _write(tmp_path, sort_by=["key"], row_group_size=200)
    read: list[list[int]] = []
    original = _row_groups.pq.ParquetFile.read_row_groups

    def spy(self, groups, *args, **kwargs):
        read.append(list(groups))
        return original(self, groups, *args, **kwargs)

    monkeypatch.setattr(_row_groups.pq.ParquetFile, "read_row_groups", spy)
    got = ds.read_arrow(predicates=[[("key", "==", 7)]])
    assert got.num_rows == _scanned(ds, [[("key", "==", 7)]]).num_rows > 0
    assert read and all(len(groups) <= 2 for groups in read)  # of about 7 per file


def test_a_column_added_later_falls_back_to_the_scanner(tmp_path):
    url = str(tmp_path / "ds")
    table = _table(500)
    hafen.write_dataset(table.drop_columns(["x"]), url, partition_on=["part"])
    ds = hafen.write_dataset(table, url, mode="append", schema_mode="merge")
    predicates = [[("key", ">", 200)]]
    got = ds.read_arrow(predicates=predicates)
    assert got.equals(_scanned(ds, predicates))
    assert got.column("x").null_count > 0


def test_a_damaged_or_missing_file_is_named(tmp_path):
    ds = _write(tmp_path)
    predicates = [[("key", "==", 7)]]
    f = sorted(ds.files(predicates), key=lambda f: f.path)[0]
    path = tmp_path / "ds" / f.path
    original = path.read_bytes()
    where = f"{ds.url}/{f.path}"
    # a damaged footer, before it was kept
    _row_groups.clear_footers()
    path.write_bytes(original[:-8] + (len(original) * 2).to_bytes(4, "little") + original[-4:])
    with pytest.raises(CorruptDataError) as caught:
        ds.read_arrow(predicates=predicates)
    assert caught.value.path == where
    # a damaged page after the footer was kept: an error, never other values
    path.write_bytes(original)
    want = ds.read_arrow(predicates=predicates)
    meta = _row_groups.pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(meta.schema.names.index("x"))
    damaged = bytearray(original)
    damaged[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0x04
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptDataError) as caught:
        ds.read_arrow(predicates=predicates)
    assert caught.value.path == where
    path.unlink()
    with pytest.raises(StorageError, match="missing file"):
        ds.read_arrow(predicates=predicates)
    path.write_bytes(original)
    assert ds.read_arrow(predicates=predicates).equals(want)


def _spy_reads(monkeypatch) -> list[dict]:
    """The keyword arguments of every ``ParquetFile`` the lookups open."""
    opened: list[dict] = []
    original = _row_groups.pq.ParquetFile.__init__

    def spy(self, source, *args, **kwargs):
        opened.append(kwargs)
        original(self, source, *args, **kwargs)

    monkeypatch.setattr(_row_groups.pq.ParquetFile, "__init__", spy)
    return opened


def test_dictionary_strings_are_read_as_dictionaries_and_decoded_once_kept(tmp_path, monkeypatch):
    ds = _write(tmp_path, sort_by=["key"], row_group_size=200)
    opened = _spy_reads(monkeypatch)
    for predicates in QUERIES[:4]:
        got = ds.read_arrow(predicates=predicates)
        want = _scanned(ds, predicates)
        assert got.schema == want.schema and got.column("name").type == pa.string()
        assert got.equals(want), predicates
    lookups = [kw for kw in opened if "pre_buffer" in kw]  # the lookups' own reads
    assert lookups and all(kw.get("read_dictionary") == ["name"] for kw in lookups)


def test_files_with_and_without_a_dictionary_read_together(tmp_path):
    """A string column with a dictionary in one file and plain (every value distinct) in
    another: the lookup's rows are the scanner's."""
    url = str(tmp_path / "ds")
    table = _table(600)
    hafen.write_dataset(table, url, partition_on=["part"], sort_by=["key"], row_group_size=100)
    n = 600
    unique = table.set_column(
        table.schema.get_field_index("name"), "name", pa.array([f"n{i}" for i in range(n)])
    )
    ds = hafen.write_dataset(unique, url, mode="append", sort_by=["key"], row_group_size=100)
    for predicates in ([[("key", ">=", 0), ("key", "<", 40)]], [[("key", "in", [3, 9, -7])]]):
        for columns in (None, ["name", "part"], ["part"]):
            got = ds.read_arrow(columns, predicates=predicates)
            assert got.equals(_scanned(ds, predicates, columns)), (predicates, columns)


def test_a_lookup_reading_only_partition_columns(tmp_path):
    ds = _write(tmp_path, indices=["key"], sort_by=["key"], row_group_size=200)
    for predicates in ([[("key", "==", 7)]], [[("key", "<", -200)], [("key", "==", 5)]]):
        got = ds.read_arrow(["part"], predicates=predicates)
        assert got.equals(_scanned(ds, predicates, ["part"]))
        assert got.num_rows > 0


def test_index_footers_are_kept_and_cleared(tmp_path, monkeypatch):
    from hafen.datasets import _indices

    ds = _write(tmp_path, indices=["key"], sort_by=["key"], row_group_size=200)
    _row_groups.clear_footers()
    assert _indices.index_footer_info() == {"size": 0, "hits": 0, "misses": 0}
    want = _scanned(ds, [[("key", "==", 7)]])
    assert _indices.index_footer_info()["size"] == 1
    for _ in range(3):
        assert ds.read_arrow(predicates=[[("key", "==", 7)]]).equals(want)
    info = _indices.index_footer_info()
    assert info["size"] == 1 and info["hits"] >= 3
    assert _row_groups.footer_cache_info()["size"] > 0
    _row_groups.clear_footers()  # both kinds of footers
    assert _indices.index_footer_info()["size"] == 0
    assert _row_groups.footer_cache_info()["size"] == 0


def test_index_lookups_read_only_the_index_row_groups_that_may_match(tmp_path, monkeypatch):
    from hafen.datasets import _indices

    monkeypatch.setattr(_indices, "_INDEX_GROUP_LABELS", 64)
    n = 6000  # 6,000 values in 3 files: index row groups of 1,024 values
    table = pa.table({"part": np.arange(n) % 3, "key": np.arange(n) * 3 - 9000})
    ds = hafen.write_dataset(table, str(tmp_path / "ds"), partition_on=["part"], indices=["key"])
    (part,) = ds.state.live_index_parts("key")
    groups = _indices.pq.ParquetFile(tmp_path / "ds" / part.path).metadata.num_row_groups
    assert groups > 4
    read: list[int] = []
    original = _indices.pq.ParquetFile.read_row_group

    def spy(self, i, *args, **kwargs):
        read.append(i)
        return original(self, i, *args, **kwargs)

    monkeypatch.setattr(_indices.pq.ParquetFile, "read_row_group", spy)
    for values in ([3], [-8997, 8991], [4]):
        read.clear()
        holding = {
            f.path
            for f in ds.files()
            if set(values) & set(ds.read_arrow(files=[f]).column("key").to_pylist())
        }
        assert {f.path for f in ds.files([[("key", "in", values)]])} == holding
        assert len(read) <= len(values)


def test_a_kept_index_footer_still_finds_damaged_pages(tmp_path):
    ds = _write(tmp_path, indices=["key"])
    (part,) = ds.state.live_index_parts("key")
    path = tmp_path / "ds" / part.path
    _row_groups.clear_footers()
    assert ds.index_lookup("key", [7])  # its footer kept
    data = bytearray(path.read_bytes())
    meta = _row_groups.pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(1)  # the labels
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="index file") as caught:
        ds.index_lookup("key", [7])
    assert caught.value.path.endswith(part.path)


def _holds(values: np.ndarray, op: str, value: object) -> np.ndarray:
    if op == "in":
        return np.isin(values, value)
    return {"==": values == value, ">=": values >= value, "<": values < value}[op]


PREDICATES = [
    [[("k", "==", 7)]],
    [[("k", ">=", 100), ("k", "<", 140)]],
    [[("k", "in", [1, 2, 3, 499])]],
    [[("k", "==", 7), ("p", "==", 3)]],
    [[("k", "==", 7)], [("k", "==", 9)]],
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("layout", [{}, {"sort_by": ["k"], "row_group_size": 2048}])
def test_lookups_equal_a_filter_of_the_whole_table(tmp_path, seed, layout):
    """Lookups over many files (row groups chosen, rows filtered together, dictionary strings
    with nulls, partition columns added back per file) return exactly the rows pandas keeps."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40_000))
    df = pd.DataFrame(
        {
            "p": rng.integers(0, 7, n),
            "q": rng.choice(["x", "y"], n),
            "k": rng.integers(0, 500, n),
            "s": rng.choice(np.array(["fig", "pear", None], dtype=object), n),
            "v": rng.normal(size=n),
        }
    )
    url = str(tmp_path / "ds")
    hafen.write_dataset(df, url, partition_on=["p", "q"], indices=["k"], **layout)
    cols = ["p", "q", "k", "v"]
    for predicates in PREDICATES:
        for cold in (True, False):
            if cold:
                _row_groups.clear_footers()
            got = hafen.open_dataset(url).read(predicates=predicates)
            keep = np.zeros(n, dtype=bool)
            for conjunction in predicates:
                rows = np.ones(n, dtype=bool)
                for column, op, value in conjunction:
                    rows &= _holds(df[column].to_numpy(), op, value)
                keep |= rows
            expected = df[keep].sort_values(cols).reset_index(drop=True)
            found = got[[*cols, "s"]].astype({"p": "int64", "q": "object"})
            found = found.sort_values(cols).reset_index(drop=True)
            pd.testing.assert_frame_equal(
                found, expected[[*cols, "s"]], check_dtype=False, check_categorical=False
            )
