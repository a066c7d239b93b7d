"""Shared data and checks for the hafen.dask tests (importable by worker processes too)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd


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
