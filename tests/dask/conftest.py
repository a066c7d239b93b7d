"""Fixtures for hafen.dask: small sales data and a source dataset partitioned by day."""

from __future__ import annotations

import pandas as pd
import pytest
from _ddf_checks import make_sales

import hafen


@pytest.fixture
def sales() -> pd.DataFrame:
    return make_sales()


@pytest.fixture
def src(tmp_path, sales) -> str:
    """A dataset partitioned by day, written in two commits (so two files in some days)."""
    url = str(tmp_path / "src")
    half = len(sales) // 2
    hafen.write_dataset(sales.iloc[:half], url, partition_on=["date"], indices=["product_id"])
    hafen.write_dataset(sales.iloc[half:], url, mode="append")
    return url
