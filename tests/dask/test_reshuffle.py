"""reshuffle: the output is a pandas groupby of the input, the source is untouched, errors early."""

from __future__ import annotations

import datetime as dt
import os
import time

import dask
import pandas as pd
import pytest
from _ddf_checks import assert_same_rows, check_reshuffled, index_is_exact, no_compute

import hafen
from hafen.dask import _buckets, _reshuffle
from hafen.dask._common import ClusterShape, cluster_shape, resolve_budget
from hafen.datasets._transaction import StagingPlan
from hafen.errors import (
    ConfigError,
    DatasetExistsError,
    DatasetNotFoundError,
    PredicateError,
    SchemaError,
)

CASES = [
    # partition_on, num_buckets, bucket_by given, sort_by, indices, bucket_by used
    (["store_id"], 1, None, [], [], []),
    (["store_id"], 4, ["product_id"], ["product_id"], ["product_id"], ["product_id"]),
    (["region", "store_id"], 3, None, ["qty", "price"], [], ["qty", "price"]),
    ([], 2, None, ["date"], [], ["date"]),
    ([], 3, ["region", "qty"], [], [], ["region", "qty"]),
    (["store_id"], 2, None, ["store_id", "product_id"], [], ["product_id"]),
    (["date"], 2, None, ["store_id"], ["product_id"], ["product_id"]),
]


@pytest.mark.parametrize(
    ("partition_on", "buckets", "bucket_by", "sort_by", "indices", "used"), CASES
)
def test_output_is_a_pandas_groupby(
    tmp_path, src, sales, partition_on, buckets, bucket_by, sort_by, indices, used
):
    before = hafen.open_dataset(src)
    out = hafen.reshuffle(
        src,
        str(tmp_path / "dst"),
        partition_on=partition_on,
        num_buckets=buckets,
        bucket_by=bucket_by,
        sort_by=sort_by,
        indices=indices,
    )
    assert out.version == 0 and out.indices == indices
    check_reshuffled(out, sales, partition_on, buckets, used, sort_by)
    if indices:
        assert index_is_exact(out, indices[0], 7)
    # the source is unchanged: same version, same files, same rows
    after = hafen.open_dataset(src)
    assert after.version == before.version
    assert {f.path for f in after.files()} == {f.path for f in before.files()}
    assert_same_rows(after.read(), sales)
    assert not os.path.exists(tmp_path / "dst" / "_hafen" / "scratch")


def test_the_history_records_the_reshuffle(tmp_path, src):
    out = hafen.reshuffle(src, str(tmp_path / "dst"), ["store_id"], num_buckets=2)
    (entry,) = out.history()
    params = entry["parameters"]
    assert params["writer"] == "reshuffle" and params["source_version"] == 1
    assert params["bucket_by"] == ["date", "product_id", "qty", "price", "region"]


def test_tiny_chunks_still_give_the_same_result(tmp_path, src, sales, monkeypatch):
    """Many flushes per map task and groups larger than a chunk (several sorted files)."""
    monkeypatch.setattr(_reshuffle, "chunk_bytes_for", lambda budget, threads: 8 * 1024)
    out = hafen.reshuffle(
        src, str(tmp_path / "dst"), ["store_id"], num_buckets=2, sort_by=["product_id"]
    )
    assert len(out.files()) > 5 * 2  # groups were split into several files
    check_reshuffled(
        out, sales, ["store_id"], 2, ["product_id"], ["product_id"], one_file_per_group=False
    )


def test_columns_predicates_and_version(tmp_path, src, sales):
    hafen.write_dataset(sales.head(50), src, mode="append")  # version 2, not read below
    preds = [[("qty", ">=", 5)]]
    out = hafen.reshuffle(
        src,
        str(tmp_path / "dst"),
        ["store_id"],
        columns=["store_id", "product_id", "qty"],
        predicates=preds,
        version=1,
    )
    expected = sales[sales.qty >= 5][["store_id", "product_id", "qty"]]
    assert out.schema.names == ["store_id", "product_id", "qty"]
    check_reshuffled(out, expected, ["store_id"], 1, [], [])


def test_an_empty_selection_creates_an_empty_dataset(tmp_path, src):
    out = hafen.reshuffle(
        src, str(tmp_path / "dst"), ["store_id"], predicates=[[("qty", ">", 100)]]
    )
    assert out.num_rows == 0 and out.files() == []
    assert out.schema.names == hafen.open_dataset(src).schema.names


def test_append_and_overwrite_an_existing_destination(tmp_path, src, sales):
    dst = str(tmp_path / "dst")
    hafen.reshuffle(src, dst, ["store_id"], num_buckets=2, predicates=[[("store_id", "<", 2)]])
    out = hafen.reshuffle(
        src, dst, ["store_id"], num_buckets=2, predicates=[[("store_id", ">=", 2)]], mode="append"
    )
    assert out.version == 1
    check_reshuffled(out, sales, ["store_id"], 2, list(sales.columns.drop("store_id")), [])
    out = hafen.reshuffle(
        src,
        dst,
        ["store_id"],
        num_buckets=1,
        predicates=[[("store_id", "==", 3)]],
        mode="overwrite",
    )
    assert out.version == 2
    assert len([f for f in out.files() if f.partition == "store_id=3"]) == 1
    assert_same_rows(out.read(), sales)


def test_on_an_in_process_distributed_cluster(tmp_path, src, sales):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            memory_limit="2GiB",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster),
    ):
        shape = cluster_shape()
        assert shape == ClusterShape(2 * 2**30, 1, 2, True)
        assert resolve_budget(None, shape) == 2 * 2**30
        assert resolve_budget("8GiB", shape) == 2 * 2**30  # never above the workers' limit
        assert resolve_budget("1GiB", shape) == 2**30
        out = hafen.reshuffle(
            src, str(tmp_path / "dst"), ["store_id"], num_buckets=3, sort_by=["product_id"]
        )
    check_reshuffled(out, sales, ["store_id"], 3, ["product_id"], ["product_id"])


def test_budget_without_a_cluster(monkeypatch):
    shape = ClusterShape(None, 2, 1, False)
    assert resolve_budget(None, shape) == 2**30
    assert resolve_budget("512MiB", shape) == 512 * 2**20
    monkeypatch.setenv("HAFEN_MEMORY_BUDGET", "3GiB")
    assert resolve_budget(None, shape) == 3 * 2**30
    assert _reshuffle.chunk_bytes_for(2**30, 1) > _reshuffle.chunk_bytes_for(2**30, 2)


def test_a_failing_task_leaves_the_destination_unchanged(tmp_path, src, sales, monkeypatch):
    dst = str(tmp_path / "dst")
    hafen.write_dataset(sales.head(10), dst, partition_on=["store_id"])
    calls = []
    real = StagingPlan.stage  # what the reduce tasks stage their files with

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(StagingPlan, "stage", failing)
    with pytest.raises(OSError, match="disk full"):
        hafen.reshuffle(src, dst, ["store_id"], num_buckets=2, mode="append")
    ds = hafen.open_dataset(dst)
    assert ds.version == 0
    assert_same_rows(ds.read(), sales.head(10))
    assert not os.path.exists(os.path.join(dst, "_hafen", "scratch"))
    # a new destination is not created, and no directory is left behind
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        hafen.reshuffle(src, str(tmp_path / "new"), ["store_id"], num_buckets=2)
    with pytest.raises(DatasetNotFoundError):
        hafen.open_dataset(str(tmp_path / "new"))


def test_the_callers_dataset_object_is_not_changed(tmp_path, src):
    ds = hafen.open_dataset(src)
    files = list(ds.files())
    state = ds.state.to_json()
    hafen.reshuffle(ds, str(tmp_path / "dst"), ["store_id"], num_buckets=2)
    assert ds.files() == files
    assert ds.state.to_json() == state


BAD = [
    ({"partition_on": ["nope"]}, SchemaError, "nope"),
    ({"partition_on": "store_id"}, ConfigError, "list"),
    ({"num_buckets": 0}, ConfigError, "num_buckets"),
    ({"num_buckets": "4"}, ConfigError, "num_buckets"),
    ({"num_buckets": True}, ConfigError, "num_buckets"),
    ({"bucket_by": ["nope"]}, SchemaError, "nope"),
    ({"bucket_by": ["store_id"], "num_buckets": 2}, ConfigError, "partition columns"),
    ({"sort_by": ["nope"]}, SchemaError, "nope"),
    ({"indices": ["nope"]}, SchemaError, "nope"),
    ({"indices": ["store_id"]}, ConfigError, "partition columns"),
    ({"columns": ["product_id", "qty"]}, SchemaError, "store_id"),  # partition column missing
    ({"columns": ["store_id"]}, SchemaError, "besides"),
    ({"predicates": [[("nope", "==", 1)]]}, PredicateError, "nope"),
    ({"mode": "upsert"}, ConfigError, "mode"),
    ({"memory_budget": "300MiB"}, ConfigError, "too small"),
    ({"memory_budget": "lots"}, ConfigError, "size"),
    ({"version": 7}, hafen.errors.VersionNotFoundError, "7"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD)
def test_bad_arguments_fail_before_any_work(tmp_path, src, kwargs, error, match):
    args = {"partition_on": ["store_id"], **kwargs}
    dst = tmp_path / "dst"
    with dask.config.set(scheduler=no_compute), pytest.raises(error, match=match):
        hafen.reshuffle(src, str(dst), **args)
    assert not dst.exists()


def test_destination_checks_before_any_work(tmp_path, src, sales):
    dst = str(tmp_path / "dst")
    hafen.write_dataset(sales, dst, partition_on=["region"])
    with dask.config.set(scheduler=no_compute):
        with pytest.raises(DatasetExistsError):
            hafen.reshuffle(src, dst, ["region"])
        with pytest.raises(SchemaError, match="partition_on"):
            hafen.reshuffle(src, dst, ["store_id"], mode="append")
        with pytest.raises(SchemaError, match="qty"):
            hafen.reshuffle(src, dst, ["region"], columns=["region", "store_id"], mode="append")
        with pytest.raises(ConfigError, match="other than its source"):
            hafen.reshuffle(src, src, ["store_id"], mode="append")
        with pytest.raises(DatasetNotFoundError):
            hafen.reshuffle(str(tmp_path / "missing"), str(tmp_path / "x"), ["store_id"])
    assert hafen.open_dataset(dst).version == 0


def test_dates_and_nulls_as_partition_values(tmp_path):
    df = pd.DataFrame(
        {
            "day": [dt.date(2024, 1, 1), None, dt.date(2024, 1, 2), None] * 5,
            "k": ["a", "b", None, "c"] * 5,
            "v": range(20),
        }
    )
    src = str(tmp_path / "src")
    hafen.write_dataset(df, src, partition_on=["k"])
    out = hafen.reshuffle(src, str(tmp_path / "dst"), ["day"], num_buckets=2, sort_by=["v"])
    check_reshuffled(out, df, ["day"], 2, ["v"], ["v"])


def test_no_task_holds_more_than_its_chunk(tmp_path, src, sales, monkeypatch):
    """The memory plan, checked where it is enforced: every buffer a map task splits holds at
    most one chunk plus one batch, and every table a reduce task sorts at most one chunk (or
    one piece, when a single piece is larger)."""
    chunk = 16 * 1024
    monkeypatch.setattr(_reshuffle, "chunk_bytes_for", lambda budget, threads: chunk)
    flushed, built, largest_batch, largest_piece = [], [], [0], [0]
    real_flush, real_chunks = _buckets._flush, _buckets._chunks

    def flush(spec, task, n, batches):
        largest_batch[0] = max([largest_batch[0], *(b.nbytes for b in batches)])
        flushed.append(sum(b.nbytes for b in batches))
        pieces = real_flush(spec, task, n, batches)
        largest_piece[0] = max([largest_piece[0], *(p.nbytes for p in pieces)])
        return pieces

    def chunks(pieces, limit):
        out = real_chunks(pieces, limit)
        built.extend(sum(p.nbytes for p in c) for c in out)  # what one reduce step reads
        return out

    monkeypatch.setattr(_buckets, "_flush", flush)
    monkeypatch.setattr(_buckets, "_chunks", chunks)
    with dask.config.set(scheduler="sync"):
        out = hafen.reshuffle(src, str(tmp_path / "dst"), ["store_id"], num_buckets=2)
    monkeypatch.undo()
    assert len(flushed) > 5 and len(built) >= 10
    assert max(flushed) <= chunk + largest_batch[0]
    assert max(built) <= max(chunk, largest_piece[0])
    check_reshuffled(
        out,
        sales,
        ["store_id"],
        2,
        list(sales.columns.drop("store_id")),
        [],
        one_file_per_group=False,
    )


def test_scratch_left_by_a_dead_client_is_swept_after_the_grace_period(tmp_path, src):
    dst = tmp_path / "dst"
    old = dst / "_hafen" / "scratch" / "reshuffle-dead" / "m00000-f0000.arrow"
    young = dst / "_hafen" / "scratch" / "reshuffle-running" / "m00000-f0000.arrow"
    for path in (old, young):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    hafen.reshuffle(src, str(dst), ["store_id"])
    assert not old.parent.exists()
    assert young.exists()  # may be another run's, in progress
