"""Shared data and checks for the hafen.dask tests (importable by worker processes too)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from distributed import WorkerPlugin


def make_sales(rows: int = 3000, days: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    day0 = dt.date(2024, 1, 1)
    df = pd.DataFrame(
        {
            "date": [day0 + dt.timedelta(days=int(d)) for d in rng.integers(0, days, rows)],
            "store_id": rng.integers(0, 5, rows).astype("int64"),
            "product_id": rng.integers(0, 40, rows).astype("int64"),
            "qty": rng.integers(1, 10, rows).astype("int32"),
            "price": rng.random(rows).round(3),
            "region": rng.choice(["north", "south", "east"], rows),
        }
    )
    df.loc[rng.random(rows) < 0.05, "price"] = np.nan
    return df


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with columns by name and rows in a total order, for comparing contents."""
    cols = sorted(df.columns)
    out = df[cols].sort_values(cols, na_position="last", kind="stable")
    return out.reset_index(drop=True)


def assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(canonical(actual), canonical(expected), check_dtype=False)


def bucket_column(df: pd.DataFrame, bucket_by: list[str], num_buckets: int) -> np.ndarray:
    """Each row's bucket, by the documented rule: pandas' stable row hash modulo the count."""
    if num_buckets == 1:
        return np.zeros(len(df), dtype=np.int64)
    hashes = pd.util.hash_pandas_object(df[bucket_by], index=False).to_numpy()
    return (hashes % np.uint64(num_buckets)).astype(np.int64)


def _key(values: tuple) -> tuple:
    return tuple(None if pd.isna(v) else v for v in values)


def check_reshuffled(
    out,
    expected: pd.DataFrame,
    partition_on: list[str],
    num_buckets: int,
    bucket_by: list[str],
    sort_by: list[str],
    *,
    one_file_per_group: bool = True,
) -> None:
    """``out`` holds exactly a pandas groupby of ``expected`` by partition and bucket.

    Every file holds one (partition, bucket) group and is sorted by ``sort_by``; the groups'
    contents equal those of ``expected`` grouped the same way in pandas.
    """
    assert_same_rows(out.read(), expected)
    assert out.partition_on == partition_on
    keys = [*partition_on, "__bucket"]
    exp = expected.assign(__bucket=bucket_column(expected, bucket_by, num_buckets))
    pandas_groups = {
        _key(k if isinstance(k, tuple) else (k,)): g.drop(columns="__bucket")
        for k, g in exp.groupby(keys, dropna=False, sort=False)
    }
    found: dict[tuple, list[pd.DataFrame]] = {}
    for f in out.files():
        df = out.read_arrow(files=[f]).to_pandas()
        assert len(df) > 0
        buckets = set(bucket_column(df, bucket_by, num_buckets).tolist())
        assert len(buckets) == 1, f"{f.path} mixes buckets {buckets}"
        values = tuple(df[c].iloc[0] for c in partition_on)
        for c in partition_on:
            assert df[c].nunique(dropna=False) == 1, f"{f.path} mixes partitions"
        if sort_by:
            resorted = df.sort_values(sort_by, kind="stable", na_position="last")
            assert list(resorted.index) == list(df.index), f"{f.path} is not sorted by {sort_by}"
        found.setdefault(_key((*values, buckets.pop())), []).append(df)
    assert set(found) == set(pandas_groups)
    for key, frames in found.items():
        if one_file_per_group:
            assert len(frames) == 1, f"group {key} has {len(frames)} files"
        assert_same_rows(pd.concat(frames), pandas_groups[key])
    per_partition: dict[tuple, int] = {}
    for key, frames in found.items():
        per_partition[key[:-1]] = per_partition.get(key[:-1], 0) + len(frames)
    if one_file_per_group:
        assert max(per_partition.values()) <= num_buckets


def index_is_exact(ds, column: str, value) -> bool:
    """The secondary index names exactly the files holding ``value``."""
    holding = {
        f.path[len("table/") : -len(".parquet")]
        for f in ds.files()
        if value in set(ds.read_arrow([column], files=[f]).column(0).to_pylist())
    }
    return bool(holding) and ds.index_lookup(column, [value]) == holding


def no_compute(*args, **kwargs):
    """A Dask scheduler that fails: for checking that nothing was computed."""
    raise AssertionError("a Dask graph was computed although the arguments were refused")


class HoldOnce(WorkerPlugin):
    """A worker plugin: once, right after a task whose key contains ``marker`` has finished,
    block the worker (before it reports the result) and record its pid in ``flag``.

    A test that kills that worker then loses a task whose side effects (pieces, staged files)
    are already written, the worst moment for duplicate or half-committed output.
    """

    name = "hafen-test-hold-once"

    def __init__(self, marker: str, flag: str, seconds: float = 30.0) -> None:
        self.marker = marker
        self.flag = flag
        self.seconds = seconds

    def transition(self, key, start, finish, **kwargs) -> None:
        import os
        import time

        if finish != "memory" or self.marker not in str(key):
            return
        try:
            fd = os.open(self.flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return  # held once already
        os.write(fd, f"{os.getpid()} {key}".encode())
        os.close(fd)
        time.sleep(self.seconds)  # killed long before this ends
