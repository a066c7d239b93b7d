"""Writing, reading, modes, time travel, history, indices and deletes, on every backend."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import hafen
from hafen.datasets._logstore import latest_version
from hafen.datasets._schema import conform
from hafen.errors import (
    ConfigError,
    DatasetExistsError,
    DatasetNotFoundError,
    PredicateError,
    SchemaError,
    VersionNotFoundError,
)


def sales(n: int = 600, seed: int = 0, day0: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "date": [dt.date(2024, 1, 1) + dt.timedelta(days=day0 + int(i) % 6) for i in range(n)],
            "store_id": rng.integers(0, 5, n),
            "product_id": rng.integers(0, 40, n),
            "qty": rng.random(n),
            "name": rng.choice(["apple", "pear", "fig"], n),
        }
    )


def canon(df: pd.DataFrame) -> pd.DataFrame:
    cols = sorted(df.columns)
    return df[cols].sort_values(cols).reset_index(drop=True)


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = canon(a), canon(b)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_categorical=False)


def test_roundtrip_and_description(url):
    df = sales()
    ds = hafen.write_dataset(df, url, partition_on=["date"], indices=["product_id"])
    assert ds.version == 0
    assert ds.num_rows == len(df)
    assert ds.partition_on == ["date"]
    assert ds.indices == ["product_id"]
    assert set(ds.schema.names) == set(df.columns)
    assert ds.partitions() == [{"date": d} for d in sorted(df["date"].unique())]
    same(hafen.open_dataset(url).read(), df)
    table = ds.read_arrow(columns=["qty", "date"])
    assert table.column_names == ["qty", "date"]


def test_modes(url):
    df = sales()
    with pytest.raises(DatasetNotFoundError):
        hafen.open_dataset(url)
    hafen.write_dataset(df, url, partition_on=["date"])
    with pytest.raises(DatasetExistsError):
        hafen.write_dataset(df, url, partition_on=["date"])
    ds = hafen.write_dataset(df, url, mode="append")
    assert ds.version == 1 and ds.num_rows == 2 * len(df)
    # overwrite replaces only the partitions present in the new data
    new = sales(50, seed=1)
    new = new[new["date"] == dt.date(2024, 1, 2)]
    ds = hafen.write_dataset(new, url, mode="overwrite")
    expected = pd.concat([df, df])
    expected = pd.concat([expected[expected["date"] != dt.date(2024, 1, 2)], new])
    same(ds.read(), expected)
    with pytest.raises(ConfigError):
        hafen.write_dataset(df, url, mode="upsert")


def test_append_creates_and_unpartitioned_overwrite(url):
    df = sales(100)
    hafen.write_dataset(df, url, mode="append")
    ds = hafen.write_dataset(df.head(7), url, mode="overwrite")
    assert ds.num_rows == 7
    same(ds.read(), df.head(7))


def test_time_travel_and_history(url):
    frames = [sales(50 + i, seed=i, day0=i) for i in range(4)]
    hafen.write_dataset(frames[0], url, partition_on=["date"])
    for f in frames[1:3]:
        hafen.write_dataset(f, url, mode="append")
    hafen.write_dataset(frames[3], url, mode="overwrite")
    ds = hafen.open_dataset(url)
    assert ds.version == 3
    expected = frames[0]
    same(hafen.open_dataset(url, version=0).read(), expected)
    for v in (1, 2):
        expected = pd.concat([expected, frames[v]])
        same(hafen.open_dataset(url, version=v).read(), expected)
    history = ds.history()
    assert [h["version"] for h in history] == [3, 2, 1, 0]
    assert [h["operation"] for h in history] == ["overwrite", "append", "append", "create"]
    assert history[1]["rows_added"] == len(frames[2])
    assert history[0]["files_removed"] > 0
    assert all(h["timestamp"] for h in history)
    with pytest.raises(VersionNotFoundError):
        hafen.open_dataset(url, version=4)


def test_index_prunes_files(url):
    df = sales(2000)
    ds = hafen.write_dataset(df, url, partition_on=["store_id"], indices=["product_id"])
    for _ in range(2):  # several commits: several index parts
        ds = hafen.write_dataset(sales(300, seed=7), url, mode="append")
    holding = {
        f.path
        for f in ds.files()
        if 13 in set(ds.read_arrow(files=[f]).column("product_id").to_pylist())
    }
    selected = {f.path for f in ds.files([[("product_id", "==", 13)]])}
    assert selected == holding
    result = ds.read(predicates=[[("product_id", "in", [13, 14])]])
    full = ds.read()
    same(result, full[full["product_id"].isin([13, 14])])


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_index_lookups_across_row_groups_of_the_index_file(url, monkeypatch):
    import pyarrow.parquet as pq

    # 3,000 values, each in two of three partitions: index row groups of 1,024 values
    monkeypatch.setattr("hafen.datasets._indices._INDEX_GROUP_LABELS", 2048)
    n = 6000
    table = pa.table({"k": np.arange(n) % 3, "v": (np.arange(n) // 2) * 7, "seq": np.arange(n)})
    ds = hafen.write_dataset(table, url, partition_on=["k"], indices=["v"])
    (part,) = ds._state.live_index_parts("v")
    groups = pq.ParquetFile(ds._storage.full(part.path)).metadata.num_row_groups
    assert groups == 3
    for values in ([0], [7 * 1023, 7 * 1024], [7 * 2999], [3, 7 * 3000], [7 * 5, 7 * 2500]):
        got = ds.read_arrow(predicates=[[("v", "in", values)]]).sort_by("seq")
        assert got.column("seq").to_pylist() == [
            i for i in range(n) if table.column("v")[i].as_py() in values
        ]
        holding = {
            f.path
            for f in ds.files()
            if set(values) & set(ds.read_arrow(files=[f]).column("v").to_pylist())
        }
        assert {f.path for f in ds.files([[("v", "in", values)]])} == holding


def test_stats_prune_files(url):
    df = pd.DataFrame({"k": np.arange(1000), "v": np.arange(1000) * 2.0})
    hafen.write_dataset(df.iloc[:500], url)
    ds = hafen.write_dataset(df.iloc[500:], url, mode="append")
    assert len(ds.files([[("k", ">=", 700)]])) == 1
    assert len(ds.files([[("k", "<", 0)]])) == 0
    same(ds.read(predicates=[[("k", ">=", 700)]]), df[df["k"] >= 700])


def test_delete(url):
    df = sales()
    hafen.write_dataset(df, url, partition_on=["date"], indices=["product_id"])
    ds = hafen.open_dataset(url)
    before = ds.version
    d = dt.date(2024, 1, 3)
    ds = ds.delete([[("date", "==", d)], [("store_id", "==", 1)]])
    expected = df[(df["date"] != d) & (df["store_id"] != 1)]
    same(ds.read(), expected)
    assert ds.version == before + 1
    assert ds.history()[0]["operation"] == "delete"
    # the index stays right for rewritten files
    same(
        ds.read(predicates=[[("product_id", "==", 5)]]),
        expected[expected["product_id"] == 5],
    )


def test_delete_unknown_column_deletes_nothing(url):
    df = sales()
    ds = hafen.write_dataset(df, url, partition_on=["date"])
    with pytest.raises(PredicateError, match="stor_id"):
        ds.delete([[("stor_id", "==", 1)]])
    with pytest.raises(PredicateError):
        ds.delete(None)
    with pytest.raises(PredicateError):
        ds.delete([])
    after = hafen.open_dataset(url)
    assert after.version == ds.version
    same(after.read(), df)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([[("qty", "~", 1)]], "operator"),
        ([[("nope", "==", 1)]], "nope"),
        ([("qty", "==", 1)], "AND-list"),
        ([[("qty", "in", 3)]], "list"),
        ([[("store_id", "==", "x")]], "store_id"),
        ([[("date", "<", None)]], "null"),
    ],
)
def test_bad_predicates_name_the_problem(url, bad, match):
    ds = hafen.write_dataset(sales(), url, partition_on=["date"])
    with pytest.raises(PredicateError, match=match):
        ds.read(predicates=bad)


def test_bad_layout_is_refused(url):
    df = sales()
    with pytest.raises(SchemaError, match="nope"):
        hafen.write_dataset(df, url, partition_on=["nope"])
    with pytest.raises(ConfigError, match="date"):
        hafen.write_dataset(df, url, partition_on=["date"], indices=["date"])
    hafen.write_dataset(df, url, partition_on=["date"])
    with pytest.raises(SchemaError, match="partition_on"):
        hafen.write_dataset(df, url, partition_on=["store_id"], mode="append")
    with pytest.raises(SchemaError, match="unknown columns"):
        hafen.open_dataset(url).read(columns=["qtty"])


def test_empty_results_keep_the_schema(url):
    ds = hafen.write_dataset(sales(), url, partition_on=["date"])
    out = ds.read_arrow(predicates=[[("date", "<", dt.date(2000, 1, 1))]])
    assert out.num_rows == 0
    assert out.schema == ds.schema


def test_arrow_input_and_null_partition(url):
    table = pa.table({"region": ["n", None, "s", None], "x": [1, 2, 3, 4]})
    ds = hafen.write_dataset(table, url, partition_on=["region"])
    assert {tuple(p.items()) for p in ds.partitions()} == {
        (("region", None),),
        (("region", "n"),),
        (("region", "s"),),
    }
    out = ds.read(predicates=[[("region", "==", None)]])
    assert sorted(out["x"]) == [2, 4]


def test_null_in_a_categorical_partition_column_round_trips(url):
    """pandas writes a missing category as a null, like any other null partition value."""
    df = pd.DataFrame({"c": pd.Categorical(["a", None, "b", None]), "v": [1, 2, 3, 4]})
    ds = hafen.write_dataset(df, url, partition_on=["c"])
    back = hafen.open_dataset(url).read().sort_values("v")
    assert isinstance(back["c"].dtype, pd.CategoricalDtype)
    assert back["c"].tolist()[::2] == ["a", "b"] and back["c"].isna().tolist()[1::2] == [1, 1]
    assert sorted(ds.read(predicates=[[("c", "==", None)]])["v"]) == [2, 4]
    assert sorted(ds.read(predicates=[[("c", "!=", None)]])["v"]) == [1, 3]
    assert ds.read(predicates=[[("c", "==", "a")]])["v"].tolist() == [1]
    streamed = pa.Table.from_batches(list(ds.scan_batches(["c", "v"]))).to_pandas()
    assert int(streamed["c"].isna().sum()) == 2


def test_zeros_of_both_signs_in_a_float_partition_column_read_back_as_written(url):
    """0.0 and -0.0 are two partitions; Arrow's scanner filled both with the sign of the one
    read first (the partition expressions were kept by equal values)."""
    df = pd.DataFrame({"p": [-0.0, 0.0, 1.0], "s": ["neg", "pos", "one"]})
    ds = hafen.write_dataset(df, url, partition_on=["p"])
    streamed = pa.Table.from_batches(list(ds.scan_batches())).to_pandas()
    signs = dict(zip(streamed["s"], np.signbit(streamed["p"]), strict=True))
    assert signs == {"neg": True, "pos": False, "one": False}
    assert len(ds.read(predicates=[[("p", "==", 0.0)]])) == 2


def test_a_string_partition_value_like_the_null_marker_is_not_null(url):
    marker = "__HIVE_DEFAULT_PARTITION__"
    df = pd.DataFrame({"s": [marker, None, "x"], "v": [1, 2, 3]})
    ds = hafen.write_dataset(df, url, partition_on=["s"])
    back = hafen.open_dataset(url).read().sort_values("v")
    assert back["s"].iloc[0] == marker and pd.isna(back["s"].iloc[1])
    assert {p["s"] for p in ds.partitions()} == {marker, None, "x"}
    assert ds.read(predicates=[[("s", "==", marker)]])["v"].tolist() == [1]
    assert ds.read(predicates=[[("s", "==", None)]])["v"].tolist() == [2]
    # overwriting the string's partition leaves the null one alone, and the reverse
    ds = hafen.write_dataset(pd.DataFrame({"s": [marker], "v": [10]}), url, mode="overwrite")
    assert sorted(ds.read()["v"]) == [2, 3, 10]
    ds = hafen.write_dataset(pd.DataFrame({"s": [None], "v": [20]}), url, mode="overwrite")
    assert sorted(ds.read()["v"]) == [3, 10, 20]


def test_a_version_beyond_any_log_entry_is_not_found(url):
    hafen.write_dataset(sales(10), url)
    with pytest.raises(VersionNotFoundError, match="below 2"):
        hafen.open_dataset(url, version=99999999999999999999999)
    with pytest.raises(VersionNotFoundError):
        hafen.open_dataset(url, version=2**63)


def test_latest_follows_new_commits(url):
    ds = hafen.write_dataset(sales(10), url)
    assert ds.is_latest() and ds.latest() is ds
    newer = hafen.write_dataset(sales(10), url, mode="append")
    assert not ds.is_latest()
    assert ds.latest().version == newer.version == 1
    assert latest_version(ds.storage) == 1


def test_scan_batches_streams_the_same_rows(url):
    df = sales(3000)
    ds = hafen.write_dataset(df, url, partition_on=["date"])
    predicates = [[("store_id", "in", [1, 3])]]
    batches = list(ds.scan_batches(["store_id", "qty"], predicates=predicates, batch_size=100))
    assert batches and max(b.num_rows for b in batches) <= 100
    streamed = pa.Table.from_batches(batches).to_pandas()
    same(streamed, ds.read(columns=["store_id", "qty"], predicates=predicates))
    assert list(ds.scan_batches(predicates=[[("store_id", "==", 99)]])) == []


def test_staging_writer_aborts_on_error(url):
    from hafen.datasets._dataset import storage_for
    from hafen.datasets._write import StagingWriter

    ds = hafen.write_dataset(sales(50), url, partition_on=["date"])
    table = conform(pa.Table.from_pandas(sales(50, seed=3)), ds.schema)
    storage = storage_for(url)
    with pytest.raises(RuntimeError), StagingWriter(storage, ds.schema, partition_on=["date"]) as w:
        w.write(table)
        raise RuntimeError("the source failed mid-stream")
    staged_paths = {i.path for i in storage.walk("table") if i.path.endswith(".parquet")}
    assert staged_paths == {f.path for f in ds.files()}


def test_a_deleted_dataset_directory_does_not_block_a_new_one(tmp_path):
    import shutil

    url = str(tmp_path / "gone")
    hafen.write_dataset(sales(20), url, partition_on=["date"])
    shutil.rmtree(url)  # the plateau view beside it stays behind
    assert (tmp_path / "gone.by-dataset-metadata.json").exists()
    with pytest.raises(DatasetNotFoundError):
        hafen.open_dataset(url)
    ds = hafen.write_dataset(sales(10), url)
    assert ds.version == 0 and ds.num_rows == 10


def test_a_dataset_is_not_kept_alive_by_its_caches(tmp_path):
    import gc
    import weakref

    url = str(tmp_path / "ds")
    hafen.write_dataset(pd.DataFrame({"k": [1, 2], "v": [1.0, 2.0]}), url, partition_on=["k"])
    ds = hafen.open_dataset(url)
    assert ds.partitions() == [{"k": 1}, {"k": 2}]
    assert len(ds.read(predicates=[[("k", "==", 1)]])) == 1
    ref = weakref.ref(ds)
    del ds
    gc.collect()
    assert ref() is None
