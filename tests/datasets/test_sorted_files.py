"""Files sorted by ``sort_by``: the rows, the Parquet metadata, and lookups through them."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import hafen
from hafen.datasets._write import SORTED_ROW_GROUP_SIZE, _radix_order, sort_rows
from hafen.errors import ConfigError, SchemaError


def _table(n: int = 3000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "part": rng.integers(0, 3, n),
            "key": rng.integers(-500, 500, n),
            "name": pa.array(rng.choice(["b", "a", None, "c"], n).tolist(), pa.string()),
            "row": np.arange(n),
        }
    )


def _files(ds: hafen.Dataset) -> list[pq.ParquetFile]:
    return [pq.ParquetFile(ds.storage.full(f.path)) for f in ds.files()]


def test_each_file_is_sorted_and_says_so(tmp_path):
    table = _table()
    ds = hafen.write_dataset(
        table,
        str(tmp_path / "ds"),
        partition_on=["part"],
        indices=["key"],
        sort_by=["part", "key", "row"],
        row_group_size=100,
    )
    for f in _files(ds):
        read = f.read()
        keys = read.column("key").to_numpy()
        assert (np.diff(keys) >= 0).all()
        rows = read.column("row").to_numpy()
        assert (np.lexsort((rows, keys)) == np.arange(len(rows))).all()
        # partition columns are not in the files: the order names the file's own columns
        names = [read.column_names[c.column_index] for c in f.metadata.row_group(0).sorting_columns]
        assert names == ["key", "row"]
        assert f.metadata.row_group(0).num_rows == 100
    assert ds.read_arrow().sort_by("row").equals(table.select(ds.schema.names))
    assert ds.history()[0]["parameters"]["sort_by"] == ["part", "key", "row"]


def test_lookups_on_sorted_files_find_the_same_rows(tmp_path):
    table = _table(seed=1)
    plain = hafen.write_dataset(table, str(tmp_path / "a"), partition_on=["part"], indices=["key"])
    ordered = hafen.write_dataset(
        table,
        str(tmp_path / "b"),
        partition_on=["part"],
        indices=["key"],
        sort_by=["key"],
        row_group_size=64,
    )
    for predicates in (
        [[("key", "==", 7)]],
        [[("key", "in", [-500, 3, 499, 1000])]],
        [[("key", ">=", -20), ("key", "<", 35)]],
        [[("key", "==", 7)], [("name", "==", "c"), ("key", ">", 400)]],
        [[("name", "==", "a"), ("key", "<=", 0)]],
    ):
        want = plain.read_arrow(predicates=predicates).sort_by("row")
        got = ordered.read_arrow(predicates=predicates).sort_by("row")
        assert got.equals(want), predicates
        assert got.num_rows > 0


def test_the_default_row_groups_of_sorted_files(tmp_path):
    table = _table(n=SORTED_ROW_GROUP_SIZE + 10)
    ds = hafen.write_dataset(table, str(tmp_path / "ds"), sort_by=["key"])
    (f,) = _files(ds)
    assert [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)] == [
        SORTED_ROW_GROUP_SIZE,
        10,
    ]


@pytest.mark.parametrize(
    "keys",
    [["key"], ["part", "key"], ["name", "key"], ["key", "name"], ["wide"], ["part", "wide"]],
)
def test_sort_rows_is_a_stable_sort(keys):
    table = _table().append_column(
        "wide", pa.array(np.random.default_rng(2).integers(-(2**40), 2**40, 3000))
    )
    want = table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys]))
    assert sort_rows(table, keys).equals(want)


def test_integer_keys_are_sorted_by_radix():
    table = _table().append_column("u", pa.array(np.arange(3000) % 7, pa.uint8()))
    assert _radix_order(table, ["part", "key", "u"]) is not None
    assert _radix_order(table, ["name"]) is None  # strings and nulls: Arrow's sort


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"sort_by": "key"}, ConfigError),
        ({"sort_by": ["key", "key"]}, ConfigError),
        ({"sort_by": ["nope"]}, SchemaError),
        ({"row_group_size": 0}, ConfigError),
        ({"row_group_size": 1.5}, ConfigError),
    ],
)
def test_bad_sort_options(tmp_path, kwargs, error):
    with pytest.raises(error):
        hafen.write_dataset(_table(), str(tmp_path / "ds"), **kwargs)
    assert not (tmp_path / "ds").exists() or not list((tmp_path / "ds").rglob("*.parquet"))


def test_sorting_by_a_categorical_sorts_by_its_values(tmp_path):
    df = pd.DataFrame({"c": pd.Categorical(["b", "a", "c", "a"], categories=["c", "b", "a"])})
    ds = hafen.write_dataset(df, str(tmp_path / "ds"), sort_by=["c"])
    assert list(ds.read()["c"]) == ["a", "a", "b", "c"]


def test_a_column_that_cannot_be_sorted_is_refused_before_any_file(tmp_path):
    table = pa.table({"x": pa.array([[1], [2]]), "y": [1, 2]})
    with pytest.raises(SchemaError, match="cannot be sorted"):
        hafen.write_dataset(table, str(tmp_path / "ds"), sort_by=["x"])
    assert not list(tmp_path.rglob("*.parquet"))


def test_write_ddf_sorts_each_file(tmp_path):
    df = _table().to_pandas()
    ddf = dd.from_pandas(df, npartitions=3)
    with dask.config.set(scheduler="sync"):
        ds = hafen.write_ddf(ddf, str(tmp_path / "ds"), partition_on=["part"], sort_by=["key"])
    for f in _files(ds):
        keys = f.read(columns=["key"]).column(0).to_numpy()
        assert (np.diff(keys) >= 0).all()
    got = ds.read().sort_values("row").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[df.columns], df, check_dtype=False)
