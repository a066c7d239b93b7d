"""Small forecasts and sales_by_store datasets, laid out as the pipeline writes them.

A module with a unique name (not conftest) so tests can import it whatever else is on sys.path.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

import hafen

STORES = [1, 2, 3]
PRODUCTS = list(range(1, 11))
LAST = dt.date(2025, 6, 30)


def forecasts_frame(products: list[int], scale: float = 1.0) -> pd.DataFrame:
    rows = [
        (s, p, LAST + dt.timedelta(days=h), scale * (s * 100 + p + h / 100), float(p))
        for s in STORES
        for p in products
        for h in range(1, 29)
    ]
    return pd.DataFrame(rows, columns=["store_id", "product_id", "date", "forecast", "baseline"])


def history_frame() -> pd.DataFrame:
    days = [LAST - dt.timedelta(days=d) for d in range(59, -1, -1)]
    rows = [
        (s, p, d, int((s + p + i) % 7))
        for s in STORES
        for p in PRODUCTS
        for i, d in enumerate(days)
    ]
    frame = pd.DataFrame(rows, columns=["store_id", "product_id", "date", "qty"])
    frame["region"] = np.where(frame["store_id"] % 2 == 0, "north", "south")
    return frame


def make_root(root: Path) -> Path:
    """forecasts: two files per store (products 1-5, then 6-10); sales_by_store: one."""
    hafen.write_dataset(
        forecasts_frame(PRODUCTS[:5]),
        str(root / "forecasts"),
        partition_on=["store_id"],
        indices=["product_id"],
    )
    hafen.write_dataset(forecasts_frame(PRODUCTS[5:]), str(root / "forecasts"), mode="append")
    hafen.write_dataset(
        history_frame(),
        str(root / "sales_by_store"),
        partition_on=["store_id"],
        indices=["product_id"],
    )
    return root
