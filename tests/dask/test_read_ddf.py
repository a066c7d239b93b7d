"""read_ddf: pushdown, partitioning of the plan, pinned versions, and errors on the client."""

from __future__ import annotations

import datetime as dt

import dask
import pandas as pd
import pytest
from _ddf_checks import assert_same_rows

import hafen
from hafen.errors import (
    ConfigError,
    DatasetNotFoundError,
    PredicateError,
    SchemaError,
    VersionNotFoundError,
)


def test_reads_everything_one_partition_per_file(src, sales):
    ddf = hafen.read_ddf(src, files_per_partition=1)
    assert ddf.npartitions == len(hafen.open_dataset(src).files())
    assert_same_rows(ddf.compute(), sales)


def test_known_divisions_give_a_global_range_index(src, sales):
    ddf = hafen.read_ddf(src, files_per_partition=3)
    assert ddf.known_divisions
    df = ddf.compute()
    assert list(df.index) == list(range(len(sales)))
    assert ddf.loc[100:110].compute().index.tolist() == list(range(100, 111))


def test_small_files_are_grouped_by_default(src):
    assert hafen.read_ddf(src).npartitions == 1


def test_columns_and_predicates_are_pushed_down(src, sales):
    day, other = dt.date(2024, 1, 3), dt.date(2024, 1, 5)
    preds = [
        [("date", "==", day), ("store_id", "in", [1, 2])],
        [("date", "==", other), ("qty", ">", 8)],
    ]
    ddf = hafen.read_ddf(src, columns=["store_id", "qty"], predicates=preds, files_per_partition=1)
    ds = hafen.open_dataset(src)
    assert ddf.npartitions == len(ds.files(preds)) < len(ds.files())
    assert not ddf.known_divisions
    keep = ((sales.date == day) & sales.store_id.isin([1, 2])) | (
        (sales.date == other) & (sales.qty > 8)
    )
    expected = sales[keep][["store_id", "qty"]]
    assert_same_rows(ddf.compute(), expected)


def test_meta_matches_the_data(src):
    ddf = hafen.read_ddf(src, files_per_partition=2)
    df = ddf.compute()
    assert list(ddf.columns) == list(df.columns)
    assert dict(ddf.dtypes) == dict(df.dtypes)


def test_projection_reaches_the_reader(src, sales):
    ddf = hafen.read_ddf(src)
    got = ddf[["product_id"]].compute()
    assert list(got.columns) == ["product_id"]
    assert sorted(got.product_id) == sorted(sales.product_id)


def test_dispatch_by_a_partition_column(src, sales):
    ddf = hafen.read_ddf(src, dispatch_by=["date"])
    assert ddf.npartitions == sales.date.nunique()
    for i in range(ddf.npartitions):
        part = ddf.get_partition(i).compute()
        assert part.date.nunique() == 1
    assert_same_rows(ddf.compute(), sales)


def test_dispatch_by_another_column(src, sales):
    preds = [[("qty", ">=", 5)]]
    ddf = hafen.read_ddf(src, predicates=preds, dispatch_by=["store_id"])
    expected = sales[sales.qty >= 5]
    assert ddf.npartitions == expected.store_id.nunique()
    parts = [ddf.get_partition(i).compute() for i in range(ddf.npartitions)]
    assert [p.store_id.unique().tolist() for p in parts] == [[s] for s in range(5)]
    assert_same_rows(pd.concat(parts), expected)


def test_dispatch_by_a_float_column_with_both_zeros_reads_each_row_once(tmp_path):
    """0.0 and -0.0 are one value (``x == 0.0`` matches both), so one partition: Arrow's
    group_by tells them apart, and each of the two partitions read the rows of both."""
    df = pd.DataFrame({"p": [1, 1, 2, 2, 2], "x": [0.0, -0.0, 0.0, 1.0, None], "v": range(5)})
    url = str(tmp_path / "ds")
    hafen.write_dataset(df, url, partition_on=["p"])
    ddf = hafen.read_ddf(url, dispatch_by=["x"])
    parts = [ddf.get_partition(i).compute() for i in range(ddf.npartitions)]
    assert sorted(sorted(p.v) for p in parts) == [[0, 1, 2], [3], [4]]


def test_the_version_is_pinned_when_called(src, sales):
    ddf = hafen.read_ddf(src)
    hafen.write_dataset(sales.head(10), src, mode="append")
    assert len(ddf.compute()) == len(sales)
    assert len(hafen.read_ddf(src).compute()) == len(sales) + 10
    assert len(hafen.read_ddf(src, version=1).compute()) == len(sales)


def test_an_empty_selection_is_one_empty_partition(src):
    ddf = hafen.read_ddf(src, predicates=[[("date", ">", dt.date(2030, 1, 1))]])
    assert ddf.npartitions == 1
    df = ddf.compute()
    assert len(df) == 0 and list(df.columns) == list(hafen.open_dataset(src).schema.names)


def test_works_on_a_distributed_cluster(src, sales):
    from hafen.testing import thread_cluster

    with thread_cluster(2, threads_per_worker=1):
        assert_same_rows(hafen.read_ddf(src, files_per_partition=2).compute(), sales)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"columns": ["nope"]}, SchemaError),
        ({"columns": "qty"}, ConfigError),
        ({"predicates": [[("nope", "==", 1)]]}, PredicateError),
        ({"predicates": [[("qty", "~", 1)]]}, PredicateError),
        ({"dispatch_by": ["nope"]}, SchemaError),
        ({"files_per_partition": 0}, ConfigError),
        ({"version": 99}, VersionNotFoundError),
    ],
)
def test_bad_arguments_fail_on_the_client(src, kwargs, error):
    with dask.config.set(scheduler="sync"), pytest.raises(error):
        hafen.read_ddf(src, **kwargs)


def test_missing_dataset(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        hafen.read_ddf(str(tmp_path / "missing"))
