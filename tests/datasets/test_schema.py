"""Schema checks: incompatible data is refused with the columns named; merge adds columns."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

import hafen
from hafen.errors import SchemaError


def base() -> pd.DataFrame:
    return pd.DataFrame({"k": [1, 2, 3], "qty": [1.0, 2.0, 3.0], "name": ["a", "b", "c"]})


def test_incompatible_append_names_columns_and_types(url):
    hafen.write_dataset(base(), url)
    bad = base().assign(qty=["x", "y", "z"])
    with pytest.raises(
        SchemaError, match=r"column 'qty': the dataset has double, the data has string"
    ):
        hafen.write_dataset(bad, url, mode="append")
    with pytest.raises(SchemaError, match="'extra'"):
        hafen.write_dataset(base().assign(extra=1), url, mode="append")
    with pytest.raises(SchemaError, match="missing from the data: 'name'"):
        hafen.write_dataset(base().drop(columns="name"), url, mode="append")
    ds = hafen.open_dataset(url)
    assert ds.version == 0 and ds.num_rows == 3


def test_compatible_variants_are_cast(url):
    hafen.write_dataset(base(), url)
    table = pa.table(
        {
            "k": pa.array([4], pa.int32()),
            "qty": pa.array([4.0], pa.float32()),
            "name": pa.array(["d"], pa.large_string()),
        }
    )
    ds = hafen.write_dataset(table, url, mode="append")
    assert ds.schema.field("k").type == pa.int64()
    assert sorted(ds.read()["k"]) == [1, 2, 3, 4]


def test_merge_adds_nullable_columns(url):
    hafen.write_dataset(base(), url)
    more = base().assign(k=[7, 8, 9], promo=[True, False, True]).drop(columns="name")
    ds = hafen.write_dataset(more, url, mode="append", schema_mode="merge")
    assert ds.schema.names == ["k", "qty", "name", "promo"]
    assert ds.schema.field("promo").nullable
    df = ds.read().sort_values("k")
    assert df["promo"].isna().tolist() == [True, True, True, False, False, False]
    assert df["name"].isna().tolist() == [False, False, False, True, True, True]
    # the old version keeps its schema
    assert hafen.open_dataset(url, version=0).schema.names == ["k", "qty", "name"]
    with pytest.raises(SchemaError, match="'promo'"):
        hafen.write_dataset(
            base().assign(promo=["yes"] * 3), url, mode="append", schema_mode="merge"
        )


def test_categoricals_round_trip(url):
    df = base().assign(cat=pd.Categorical(["x", "y", "x"]))
    ds = hafen.write_dataset(df, url)
    ds = hafen.write_dataset(df.assign(cat=pd.Categorical(["z", "z", "y"])), url, mode="append")
    out = ds.read()
    assert isinstance(out["cat"].dtype, pd.CategoricalDtype)
    assert sorted(out["cat"].astype(str)) == ["x", "x", "y", "y", "z", "z"]
