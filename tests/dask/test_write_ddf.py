"""write_ddf: parallel staging and one commit; failures leave the dataset as it was."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import pandas as pd
import pytest
from _ddf_checks import assert_same_rows

import hafen
from hafen.errors import ConfigError, DatasetExistsError, DatasetNotFoundError, SchemaError


def _ddf(df: pd.DataFrame, n: int = 4) -> dd.DataFrame:
    # keep the date column as dates (Dask would make strings of every object column)
    with dask.config.set({"dataframe.convert-string": False}):
        return dd.from_pandas(df, npartitions=n)


def _fail_on_partition(df: pd.DataFrame, partition_info=None) -> pd.DataFrame:
    if partition_info and partition_info["number"] == 2:
        raise RuntimeError("boom in partition 2")
    return df


def test_roundtrip_one_commit(tmp_path, sales):
    url = str(tmp_path / "ds")
    ds = hafen.write_ddf(_ddf(sales), url, partition_on=["store_id"], indices=["product_id"])
    assert ds.version == 0
    assert len(ds.history()) == 1
    assert ds.partition_on == ["store_id"] and ds.indices == ["product_id"]
    assert_same_rows(ds.read(), sales)
    # index entries were collected while staging: the index names exactly the files holding 7
    holding = {
        f.path[len("table/") : -len(".parquet")]
        for f in ds.files()
        if 7 in set(ds.read_arrow(["product_id"], files=[f]).column(0).to_pylist())
    }
    assert holding and ds.index_lookup("product_id", [7]) == holding


def test_roundtrip_through_read_ddf(tmp_path, src, sales):
    url = str(tmp_path / "copy")
    hafen.write_ddf(hafen.read_ddf(src, files_per_partition=2), url, partition_on=["date"])
    assert_same_rows(hafen.read_ddf(url).compute(), sales)


def test_append_and_overwrite(tmp_path, sales):
    url = str(tmp_path / "ds")
    a, b = sales.iloc[:1000], sales.iloc[1000:]
    hafen.write_ddf(_ddf(a), url, partition_on=["store_id"])
    ds = hafen.write_ddf(_ddf(b), url, mode="append")
    assert ds.version == 1
    assert_same_rows(ds.read(), sales)
    only_store_1 = sales[sales.store_id == 1].head(5)
    ds = hafen.write_ddf(_ddf(only_store_1, 1), url, mode="overwrite")
    expected = pd.concat([sales[sales.store_id != 1], only_store_1])
    assert_same_rows(ds.read(), expected)


def test_empty_partitions_write_no_files(tmp_path, sales):
    url = str(tmp_path / "ds")
    ddf = _ddf(sales, 4)
    ddf = ddf[ddf.store_id > 100]  # every partition empty
    hafen.write_ddf(_ddf(sales.head(10), 1), url)
    ds = hafen.write_ddf(ddf, url, mode="append")
    assert len(ds.files()) == 1
    assert ds.num_rows == 10


def test_a_failing_task_leaves_the_previous_version(tmp_path, sales):
    url = str(tmp_path / "ds")
    hafen.write_dataset(sales.head(100), url, partition_on=["store_id"])
    bad = _ddf(sales, 4).map_partitions(_fail_on_partition, meta=sales.head(0))
    with pytest.raises(RuntimeError, match="boom in partition 2"):
        hafen.write_ddf(bad, url, mode="append")
    ds = hafen.open_dataset(url)
    assert ds.version == 0
    assert_same_rows(ds.read(), sales.head(100))


def test_a_failing_task_creates_no_dataset(tmp_path, sales):
    url = str(tmp_path / "new")
    bad = _ddf(sales, 4).map_partitions(_fail_on_partition, meta=sales.head(0))
    with pytest.raises(RuntimeError):
        hafen.write_ddf(bad, url, partition_on=["store_id"])
    with pytest.raises(DatasetNotFoundError):
        hafen.open_dataset(url)


def test_the_callers_dataframe_is_not_changed(tmp_path, sales):
    ddf = _ddf(sales)
    before_meta = ddf._meta.copy()
    before = ddf.compute()
    hafen.write_ddf(ddf, str(tmp_path / "ds"), partition_on=["store_id"], indices=["product_id"])
    pd.testing.assert_frame_equal(ddf._meta, before_meta)
    pd.testing.assert_frame_equal(ddf.compute(), before)
    pd.testing.assert_frame_equal(sales, before)


def _never(df: pd.DataFrame) -> pd.DataFrame:
    raise AssertionError("a task ran although the arguments were refused")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"partition_on": ["nope"]}, SchemaError, "nope"),
        ({"indices": ["nope"]}, SchemaError, "nope"),
        ({"partition_on": "store_id"}, ConfigError, "list"),
        ({"mode": "upsert"}, ConfigError, "mode"),
        ({"schema_mode": "loose"}, ConfigError, "schema_mode"),
        ({"partition_on": ["store_id"], "indices": ["store_id"]}, ConfigError, "partition"),
        (
            {"partition_on": ["price", "qty", "date", "product_id", "store_id", "region"]},
            SchemaError,
            "besides",
        ),
    ],
)
def test_bad_arguments_fail_before_any_task(tmp_path, sales, kwargs, error, match):
    ddf = _ddf(sales).map_partitions(_never, meta=sales.head(0))
    with pytest.raises(error, match=match):
        hafen.write_ddf(ddf, str(tmp_path / "ds"), **kwargs)


def test_mismatch_with_an_existing_dataset_fails_before_any_task(tmp_path, sales):
    url = str(tmp_path / "ds")
    hafen.write_dataset(sales, url, partition_on=["store_id"])
    ddf = _ddf(sales).map_partitions(_never, meta=sales.head(0))
    with pytest.raises(DatasetExistsError):
        hafen.write_ddf(ddf, url, partition_on=["store_id"])
    with pytest.raises(SchemaError, match="partition_on"):
        hafen.write_ddf(ddf, url, partition_on=["region"], mode="append")
    other = ddf.assign(extra=1)
    with pytest.raises(SchemaError, match="extra"):
        hafen.write_ddf(other, url, mode="append")
    typed = _ddf(sales.assign(qty=sales.qty.astype(str))).map_partitions(
        _never, meta=sales.head(0).assign(qty=pd.Series([], dtype=str))
    )
    with pytest.raises(SchemaError, match="qty"):
        hafen.write_ddf(typed, url, mode="append")
    assert hafen.open_dataset(url).version == 0


def test_not_a_dask_dataframe(tmp_path, sales):
    with pytest.raises(ConfigError):
        hafen.write_ddf(sales, str(tmp_path / "ds"))


def test_on_an_in_process_distributed_cluster(tmp_path, src, sales):
    from hafen.testing import thread_cluster

    url = str(tmp_path / "ds")
    with thread_cluster(2, threads_per_worker=1):
        ddf = hafen.read_ddf(src, files_per_partition=3)
        ds = hafen.write_ddf(ddf, url, partition_on=["region"], indices=["store_id"])
    assert ds.version == 0 and len(ds.history()) == 1
    assert_same_rows(ds.read(), sales)


def test_tasks_do_not_carry_the_datasets_files(tmp_path, sales, monkeypatch):
    """A task's arguments hold the schema and layout, not a file list that grows with the data."""
    from hafen.dask import _write

    url = str(tmp_path / "ds")
    hafen.write_ddf(_ddf(sales), url, partition_on=["store_id"])
    assert hafen.open_dataset(url).files()
    seen: list[int] = []
    original = _write._stage_partition

    def recording(part, plan, *args):
        seen.append(len(plan.base.files))
        return original(part, plan, *args)

    monkeypatch.setattr(_write, "_stage_partition", recording)
    with dask.config.set(scheduler="sync"):
        ds = hafen.write_ddf(_ddf(sales), url, mode="append")
    assert ds.version == 1 and ds.num_rows == 2 * len(sales)
    assert seen == [0, 0, 0, 0]
