"""The pipeline's stages, each a function of the configuration that returns what it made.

1. :func:`extract`: the database's tables into ``raw/*`` datasets (sales by day), in parallel
   tasks under the cluster-wide limit :data:`~hafen.pipeline._config.DB_LIMIT`.
2. :func:`denormalize`: sales joined with products, stores, promotions and holidays into
   ``sales``, partitioned by date.
3. :func:`reshuffle`: ``sales`` into ``sales_by_store``, partitioned by store, indexed by product.
4. :func:`forecast`: one task per store: evaluate and forecast (:mod:`hafen.pipeline._model`).
5. :func:`write_forecasts`: the forecasts into ``forecasts``, partitioned by store, indexed by
   product, as one commit.

Every write replaces the partitions it writes (``mode="overwrite"``): rerunning adds one version
to each dataset and duplicates no row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from hafen.datasets import Dataset
from hafen.pipeline._config import DB_LIMIT, PipelineConfig
from hafen.pipeline._model import ModelParams, StoreForecast, as_days, forecast_store

__all__ = [
    "IMPLEMENTATION",
    "denormalize",
    "extract",
    "forecast",
    "reshuffle",
    "write_forecasts",
]

#: The hafen capability behind each stage, for the summary.
IMPLEMENTATION = {
    "extract": "hafen.extract",
    "denormalize": "hafen.read_ddf + write_ddf",
    "reshuffle": "hafen.reshuffle",
    "forecast": "gradient boosting, a task per store",
    "write forecasts": "hafen.write_ddf, one commit",
}


# -- 1. extract ------------------------------------------------------------------------------

#: (table, query, split_on, partition_on): the sales by day, promotions by store.
TABLES = [
    ("sales", "SELECT sale_id, date, store_id, product_id, qty FROM sales", "sale_id", ["date"]),
    (
        "promotions",
        "SELECT promo_id, store_id, product_id, start_date, end_date, discount FROM promotions",
        "promo_id",
        ["store_id"],
    ),
    ("products", "SELECT product_id, name, product_group, price FROM products", None, []),
    ("stores", "SELECT store_id, name, region, size FROM stores", None, []),
    ("holidays", "SELECT date, name FROM holidays", None, []),
]


def extract(cfg: PipelineConfig) -> dict[str, Dataset]:
    """Stage 1: every source table into ``raw/<table>``; returns the new versions."""
    from hafen.sql import extract as run

    out = {}
    for table, query, split_on, partition_on in TABLES:
        out[table] = run(
            cfg.source_url,
            query,
            cfg.dataset(f"raw/{table}"),
            split_on=split_on,
            chunks=cfg.chunks if table == "sales" else 2 if split_on else 1,
            partition_on=partition_on,
            limit=DB_LIMIT,
            mode="overwrite",
        )
    return out


# -- 2. denormalize --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dimensions:
    """Pinned versions of the small tables a sales partition is joined with."""

    stores: Dataset
    products: Dataset
    holidays: Dataset
    promotions: Dataset


def _literal(ds: Dataset, column: str, day: np.datetime64) -> Any:
    """``day`` as a value comparable with ``column`` (extracted dates may be text or dates)."""
    value = dt.date.fromisoformat(str(day))
    type_ = ds.schema.field(column).type
    return (
        value.isoformat() if pa.types.is_string(type_) or pa.types.is_large_string(type_) else value
    )


def _expand_promotions(promos: pd.DataFrame, lo: np.datetime64, hi: np.datetime64) -> pd.DataFrame:
    """One row per store x product x promoted day in ``[lo, hi]``, with its discount."""
    start = np.maximum(as_days(promos["start_date"]), lo)
    end = np.minimum(as_days(promos["end_date"]), hi)
    length = np.maximum((end - start).astype(np.int64) + 1, 0)
    row = np.repeat(np.arange(len(promos)), length)
    step = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    return pd.DataFrame(
        {
            "store_id": promos["store_id"].to_numpy(dtype=np.int64)[row],
            "product_id": promos["product_id"].to_numpy(dtype=np.int64)[row],
            "day": start[row] + step,
            "discount": promos["discount"].to_numpy(dtype=np.float64)[row],
        }
    ).drop_duplicates(["store_id", "product_id", "day"], keep="last")


def denormalize_part(part: pd.DataFrame, dims: Dimensions) -> pd.DataFrame:
    """Join one partition of raw sales with the dimensions; dates become real dates."""
    days = as_days(part["date"]) if len(part) else np.array([], dtype="datetime64[D]")
    frame = pd.DataFrame(
        {
            "date": days,
            "store_id": part["store_id"].to_numpy(dtype=np.int64),
            "product_id": part["product_id"].to_numpy(dtype=np.int64),
            "qty": part["qty"].to_numpy(dtype=np.int64),
            "sale_id": part["sale_id"].to_numpy(dtype=np.int64),
        }
    )
    products = dims.products.read(columns=["product_id", "product_group", "price"])
    stores = dims.stores.read(columns=["store_id", "region", "size"])
    frame = frame.merge(products.astype({"product_id": "int64"}), on="product_id", how="left")
    frame = frame.merge(
        stores.astype({"store_id": "int64"}).rename(columns={"size": "store_size"}),
        on="store_id",
        how="left",
    )
    discount = np.zeros(len(frame))
    holiday = pd.Series([None] * len(frame), dtype=object)
    if len(frame):
        lo, hi = days.min(), days.max()
        promos = dims.promotions.read(
            predicates=[
                [
                    ("start_date", "<=", _literal(dims.promotions, "start_date", hi)),
                    ("end_date", ">=", _literal(dims.promotions, "end_date", lo)),
                ]
            ]
        )
        if len(promos):
            daily = _expand_promotions(promos, lo, hi)
            keys = frame[["store_id", "product_id"]].assign(day=frame["date"].to_numpy())
            joined = keys.merge(daily, on=["store_id", "product_id", "day"], how="left")
            discount = joined["discount"].fillna(0.0).to_numpy()
        hol = dims.holidays.read()
        if len(hol):
            names = dict(zip(as_days(hol["date"]), hol["name"], strict=True))
            holiday = pd.Series([names.get(d) for d in days], dtype=object)
    frame["discount"] = discount
    frame["holiday"] = holiday.to_numpy()
    frame["date"] = pd.Series(days).dt.date.to_numpy()
    return frame


def _schema_of_sales() -> pa.Schema:
    return pa.schema(
        [
            ("date", pa.date32()),
            ("store_id", pa.int64()),
            ("product_id", pa.int64()),
            ("qty", pa.int64()),
            ("sale_id", pa.int64()),
            ("product_group", pa.string()),
            ("price", pa.float64()),
            ("region", pa.string()),
            ("store_size", pa.float64()),
            ("discount", pa.float64()),
            ("holiday", pa.string()),
        ]
    )


_DATE = pd.ArrowDtype(pa.date32())


def _to_table(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Round-trip through Arrow so the partition's dtypes are exactly the schema's.

    Dates stay Arrow dates (``ArrowDtype``): as Python objects Dask would turn them into strings.
    """
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    return table.to_pandas(types_mapper={pa.date32(): _DATE}.get)


#: Rows a denormalize task holds at most (when files are smaller than that).
PARTITION_ROWS = 2_000_000


def denormalize(cfg: PipelineConfig, raw: dict[str, Dataset], *, tasks: int) -> Dataset:
    """Stage 2: ``raw/sales`` joined with the dimensions into ``sales``, partitioned by date."""
    from hafen.dask import read_ddf, write_ddf

    dims = Dimensions(raw["stores"], raw["products"], raw["holidays"], raw["promotions"])
    # at least `tasks` partitions, and at most PARTITION_ROWS rows in each (one day of a large
    # chain is a million rows: a day per partition then)
    files = max(1, len(raw["sales"].files()))
    rows_per_file = max(1, raw["sales"].num_rows // files)
    per_partition = min(-(-files // tasks), max(1, PARTITION_ROWS // rows_per_file))
    sales = read_ddf(raw["sales"], files_per_partition=per_partition)
    schema = _schema_of_sales()
    meta = _to_table(denormalize_part(sales._meta, dims), schema)
    joined = sales.map_partitions(
        lambda part, dims: _to_table(denormalize_part(part, dims), schema), dims, meta=meta
    )
    return write_ddf(joined, cfg.dataset("sales"), partition_on=["date"], mode="overwrite")


# -- 3. reshuffle ----------------------------------------------------------------------------


def reshuffle(cfg: PipelineConfig, sales: Dataset) -> Dataset:
    """Stage 3: ``sales`` by store, sorted by product and date, indexed by product."""
    from hafen.dask import reshuffle as run

    return run(
        sales,
        cfg.dataset("sales_by_store"),
        partition_on=["store_id"],
        num_buckets=1,
        sort_by=["product_id", "date"],
        indices=["product_id"],
        mode="overwrite",
    )


# -- 4. forecast -----------------------------------------------------------------------------


def calendar(sales: Dataset) -> tuple[dt.date, dt.date]:
    """First and last day of history, from the partition values alone."""
    days = [p["date"] for p in sales.partitions()]
    return min(days), max(days)


def _forecast_task(
    by_store: Dataset,
    promotions: Dataset,
    store_id: int,
    products: pd.DataFrame,
    holidays: pd.DataFrame,
    first_day: dt.date,
    last_day: dt.date,
    params: ModelParams,
) -> StoreForecast:
    history = by_store.read(
        columns=["product_id", "date", "qty"], predicates=[[("store_id", "==", store_id)]]
    )
    promos = promotions.read(
        columns=["product_id", "start_date", "end_date", "discount"],
        predicates=[[("store_id", "==", store_id)]],
    )
    return forecast_store(
        history,
        store_id=store_id,
        products=products,
        promotions=promos,
        holidays=holidays,
        first_day=first_day,
        last_day=last_day,
        params=params,
    )


def _forecasts_of(result: StoreForecast) -> pd.DataFrame:
    return _to_table(result.forecasts, FORECAST_SCHEMA)


def _metrics_of(result: StoreForecast) -> dict[str, Any]:
    return result.metrics


FORECAST_SCHEMA = pa.schema(
    [
        ("store_id", pa.int64()),
        ("product_id", pa.int64()),
        ("date", pa.date32()),
        ("forecast", pa.float64()),
        ("baseline", pa.float64()),
    ]
)


def forecast(
    cfg: PipelineConfig,
    by_store: Dataset,
    sales: Dataset,
    raw: dict[str, Dataset],
    client: Any,
    *,
    token: str,
) -> tuple[list[Any], list[Any]]:
    """Stage 4: one task per store; returns futures of forecast frames and of metrics."""
    first_day, last_day = calendar(sales)
    products = raw["products"].read(columns=["product_id", "product_group", "price"])
    holidays = raw["holidays"].read()
    stores = sorted(int(p["store_id"]) for p in by_store.partitions())
    [products_f, holidays_f] = client.scatter([products, holidays], broadcast=True)
    results = [
        client.submit(
            _forecast_task,
            by_store,
            raw["promotions"],
            store,
            products_f,
            holidays_f,
            first_day,
            last_day,
            cfg.model,
            key=f"forecast-store-{store}-{token}",
        )
        for store in stores
    ]
    frames = client.map(_forecasts_of, results, key=[f"frame-{r.key}" for r in results])
    metrics = client.map(_metrics_of, results, key=[f"metrics-{r.key}" for r in results])
    return frames, metrics


# -- 5. write --------------------------------------------------------------------------------


def write_forecasts(cfg: PipelineConfig, frames: list[Any]) -> Dataset:
    """Stage 5: every store's forecasts as one version of ``forecasts`` (one commit)."""
    import dask.dataframe as dd

    from hafen.dask import write_ddf

    meta = _to_table(FORECAST_SCHEMA.empty_table().to_pandas(), FORECAST_SCHEMA)
    ddf = dd.from_delayed(frames, meta=meta, verify_meta=False)
    return write_ddf(
        ddf,
        cfg.dataset("forecasts"),
        partition_on=["store_id"],
        indices=["product_id"],
        mode="overwrite",
    )
