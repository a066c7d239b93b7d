"""Kartothek/plateau compatibility, both ways."""

from __future__ import annotations

import datetime as dt
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from minimalkv import get_store_from_url
from plateau.io.eager import read_table, store_dataframes_as_dataset

import hafen


def frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "date": [dt.date(2024, 5, 1) + dt.timedelta(days=int(i) % 3) for i in range(n)],
            "store_id": rng.integers(0, 4, n),
            "product_id": rng.integers(0, 10, n),
            "qty": rng.random(n),
            "name": rng.choice(["a", "b"], n),
        }
    )


def canon(df: pd.DataFrame) -> pd.DataFrame:
    cols = sorted(df.columns)
    out = df[cols].sort_values(cols).reset_index(drop=True)
    return out.astype(
        {c: object for c in cols if out[c].dtype.kind in "OUT" or str(out[c].dtype) == "str"}
    )


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    return str(root), partial(get_store_from_url, f"hfs://{root}")


def test_plateau_dataset_opens_reads_and_appends_in_hafen(store):
    root, factory = store
    df = frame()
    store_dataframes_as_dataset(
        dfs=[df],
        store=factory,
        dataset_uuid="sales",
        partition_on=["date"],
        secondary_indices=["product_id"],
    )
    ds = hafen.open_dataset(f"{root}/sales")
    assert ds.version == 0 and ds.num_rows == len(df)
    assert ds.partition_on == ["date"] and ds.indices == ["product_id"]
    pd.testing.assert_frame_equal(canon(ds.read()), canon(df), check_dtype=False)
    hit = ds.read(predicates=[[("product_id", "==", 3)]])
    pd.testing.assert_frame_equal(canon(hit), canon(df[df["product_id"] == 3]), check_dtype=False)
    assert ds.history()[0]["operation"] == "import"

    more = frame(30, seed=1)
    ds = hafen.write_dataset(more, f"{root}/sales", mode="append")
    assert ds.version == 1
    assert [h["operation"] for h in ds.history()] == ["append", "import"]
    both = pd.concat([df, more])
    pd.testing.assert_frame_equal(canon(ds.read()), canon(both), check_dtype=False)
    # ... and plateau still reads it, index included
    back = read_table("sales", factory)
    pd.testing.assert_frame_equal(canon(back), canon(both), check_dtype=False)
    via_index = read_table("sales", factory, predicates=[[("product_id", "==", 3)]])
    pd.testing.assert_frame_equal(
        canon(via_index), canon(both[both["product_id"] == 3]), check_dtype=False
    )


@pytest.mark.parametrize("sort_by", [None, ["product_id"]])
def test_hafen_dataset_reads_in_plateau(store, sort_by):
    root, factory = store
    df = frame()
    url = f"{root}/forecasts"
    # files sorted, in row groups of 4 rows: plateau reads them and their index the same way
    options = {"sort_by": sort_by, "row_group_size": 4 if sort_by else None}
    hafen.write_dataset(df, url, partition_on=["store_id"], indices=["product_id"], **options)
    hafen.write_dataset(frame(20, seed=2), url, mode="append", **options)
    ds = hafen.write_dataset(frame(10, seed=3).assign(store_id=1), url, mode="overwrite", **options)
    expected = ds.read()
    back = read_table("forecasts", factory)
    pd.testing.assert_frame_equal(canon(back), canon(expected), check_dtype=False)
    for pid in (0, 4):
        got = read_table("forecasts", factory, predicates=[[("product_id", "==", pid)]])
        pd.testing.assert_frame_equal(
            canon(got), canon(expected[expected["product_id"] == pid]), check_dtype=False
        )


def test_plateau_reads_sorted_integer_columns_delta_encoded(store):
    """hafen writes an integer ``sort_by`` column as DELTA_BINARY_PACKED; plateau reads it."""
    import pyarrow.parquet as pq

    root, factory = store
    df = frame(400).assign(product_id=lambda d: d["product_id"] * 1_000_003 - 7)
    url = f"{root}/sorted"
    ds = hafen.write_dataset(
        df, url, partition_on=["store_id"], indices=["product_id"], sort_by=["product_id"]
    )
    for f in ds.files():
        meta = pq.read_metadata(f"{url}/{f.path}")
        leaf = meta.schema.names.index("product_id")
        for g in range(meta.num_row_groups):
            assert "DELTA_BINARY_PACKED" in meta.row_group(g).column(leaf).encodings
    back = read_table("sorted", factory)
    pd.testing.assert_frame_equal(canon(back), canon(df), check_dtype=False)
    pid = int(df["product_id"].iloc[5])
    got = read_table("sorted", factory, predicates=[[("product_id", "==", pid)]])
    pd.testing.assert_frame_equal(canon(got), canon(df[df["product_id"] == pid]), check_dtype=False)
    assert (
        ds.read(predicates=[[("product_id", "==", pid)]]).shape[0]
        == (df["product_id"] == pid).sum()
    )


def test_plateau_view_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("HAFEN_PLATEAU_VIEW", "false")
    hafen.write_dataset(frame(), str(tmp_path / "quiet"))
    assert not (tmp_path / "quiet.by-dataset-metadata.json").exists()
    assert hafen.open_dataset(str(tmp_path / "quiet")).num_rows == 60


def test_a_string_like_the_null_marker_means_that_string_both_ways(store):
    """plateau refuses nulls in partition columns, so its ``__HIVE_DEFAULT_PARTITION__`` label
    is the string; hafen writes that string escaped, which plateau reads back as the string."""
    root, factory = store
    marker = "__HIVE_DEFAULT_PARTITION__"
    df = pd.DataFrame({"s": [marker, "x", marker], "v": [1, 2, 3]})
    store_dataframes_as_dataset(dfs=[df], store=factory, dataset_uuid="theirs", partition_on=["s"])
    ds = hafen.open_dataset(f"{root}/theirs")
    assert sorted(ds.read(predicates=[[("s", "==", marker)]])["v"]) == [1, 3]
    assert ds.read(predicates=[[("s", "==", None)]]).empty
    ds = hafen.write_dataset(pd.DataFrame({"s": [marker], "v": [4]}), ds.url, mode="append")
    assert sorted(ds.read(predicates=[[("s", "==", marker)]])["v"]) == [1, 3, 4]

    hafen.write_dataset(df, f"{root}/ours", partition_on=["s"])
    back = read_table("ours", factory)
    assert sorted(back.loc[back["s"] == marker, "v"]) == [1, 3]


def test_a_plateau_view_notices_its_metadata_deleted_or_rewritten(store):
    """A hafen view of a plateau dataset is the newest only while plateau's metadata is the one
    it read: found by a server that caught a dataset half-deleted (its directory gone, its
    metadata file not yet) and served that view for ever."""
    root, factory = store
    df = frame()
    store_dataframes_as_dataset(dfs=[df], store=factory, dataset_uuid="sales")
    ds = hafen.open_dataset(f"{root}/sales")
    assert ds.is_latest() and ds.latest() is ds

    store_dataframes_as_dataset(
        dfs=[frame(seed=1)], store=factory, dataset_uuid="sales", overwrite=True
    )
    assert not ds.is_latest()
    rewritten = ds.latest()
    pd.testing.assert_frame_equal(canon(rewritten.read()), canon(frame(seed=1)), check_dtype=False)

    (Path(root) / "sales.by-dataset-metadata.json").unlink()
    assert not rewritten.is_latest()
    with pytest.raises(hafen.errors.DatasetNotFoundError):
        rewritten.latest()
