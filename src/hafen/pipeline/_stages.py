"""The pipeline's stages, each a function of the configuration that returns what it made.

1. :func:`extract`: the database's tables into ``raw/*`` datasets (sales by day), in parallel
   tasks under the cluster-wide limit :data:`~hafen.pipeline._config.DB_LIMIT`.
2. :func:`denormalize`: sales joined with products, stores, promotions and holidays into
   ``sales``, partitioned by date.
3. :func:`reshuffle`: ``sales`` into ``sales_by_store``, partitioned by store, indexed by product.
4. :func:`forecast`: one task per store: evaluate and forecast (:mod:`hafen.pipeline._model`),
   with the models kept in ``forecast_models`` where they fit the training data; each task
   stages its store's files.
5. :class:`ForecastWrite`: the files the tasks staged committed as one version of ``forecasts``
   (partitioned by store, indexed by product), after the models of the stores that fitted new
   ones as one version of ``forecast_models`` (partitioned by store).

Every write replaces the partitions it writes (``mode="overwrite"``): rerunning adds one version
to each dataset and duplicates no row. An incremental run (:mod:`hafen.pipeline._incremental`)
extracts with a ``where`` condition, appends with :func:`denormalize_files` and
:func:`reshuffle_files`, and forecasts a subset of the stores.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from hafen.datasets import DataFile, Dataset
from hafen.datasets._transaction import LATEST, StagingPlan, WriteTransaction
from hafen.datasets._validate import Mode
from hafen.datasets._write import StagedWrite
from hafen.pipeline._config import DB_LIMIT, PipelineConfig
from hafen.pipeline._model import ModelParams, StoreForecast, as_days, forecast_store

__all__ = [
    "IMPLEMENTATION",
    "ForecastWrite",
    "denormalize",
    "denormalize_files",
    "extract",
    "extract_table",
    "forecast",
    "reshuffle",
    "reshuffle_files",
]

#: The hafen capability behind each stage, for the summary.
IMPLEMENTATION = {
    "extract": "hafen.extract",
    "denormalize": "hafen.read_ddf + write_ddf",
    "reshuffle": "hafen.reshuffle",
    "forecast": "gradient boosting, a task per store",
    "write forecasts": "staged by the forecast tasks, one commit",
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
    return {table: extract_table(cfg, table) for table, *_ in TABLES}


def extract_table(
    cfg: PipelineConfig,
    table: str,
    *,
    where: str | None = None,
    mode: Mode = "overwrite",
    parameters: dict[str, Any] | None = None,
) -> Dataset:
    """One source table (its rows matching the SQL condition ``where``) into ``raw/<table>``."""
    from hafen.sql import extract as run

    [(query, split_on, partition_on)] = [(q, s, p) for t, q, s, p in TABLES if t == table]
    return run(
        cfg.source_url,
        query if where is None else f"{query} WHERE {where}",
        cfg.dataset(f"raw/{table}"),
        split_on=split_on,
        chunks=cfg.chunks if table == "sales" else 2 if split_on else 1,
        partition_on=partition_on,
        limit=DB_LIMIT,
        mode=mode,
        parameters=parameters,
    )


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


def _lookup(keys: np.ndarray, wanted: np.ndarray) -> pa.Array:
    """Positions of ``wanted`` in the unique ``keys`` (null where absent), for ``Array.take``."""
    position = pd.Index(keys).get_indexer(wanted)
    return pa.array(position, type=pa.int64(), mask=position < 0)


def _promotion_keys(
    store: np.ndarray, product: np.ndarray, day: np.ndarray, lo: np.datetime64, span: int
) -> np.ndarray | None:
    """One int64 per (store, product, day in ``[lo, lo + span)``), or None if it could overflow."""
    if not len(store):
        return np.zeros(0, dtype=np.int64)
    top_s, top_p = int(store.max()), int(product.max())
    if min(int(store.min()), int(product.min())) < 0 or (top_s + 1) * (top_p + 1) * span >= 2**62:
        return None
    offset = (day.astype("datetime64[D]") - lo).astype(np.int64)  # pandas gives [s]
    return (store * (top_p + 1) + product) * span + offset


def _discounts(
    frame: pd.DataFrame, days: np.ndarray, daily: pd.DataFrame, lo: np.datetime64, span: int
) -> np.ndarray:
    """The discount of every row of ``frame`` (0 without a promotion), from ``daily`` promotions."""
    keys = _promotion_keys(
        np.concatenate([frame["store_id"].to_numpy(), daily["store_id"].to_numpy()]),
        np.concatenate([frame["product_id"].to_numpy(), daily["product_id"].to_numpy()]),
        np.concatenate([days, daily["day"].to_numpy()]),
        lo,
        span,
    )
    if keys is None:  # ids too large to pack into one integer: a three-column join
        sales_keys = frame[["store_id", "product_id"]].assign(day=days)
        joined = sales_keys.merge(daily, on=["store_id", "product_id", "day"], how="left")
        return joined["discount"].fillna(0.0).to_numpy()
    position = pd.Index(keys[len(frame) :]).get_indexer(keys[: len(frame)])
    values = np.append(daily["discount"].to_numpy(dtype=np.float64), 0.0)
    return values[position]  # -1 (no promotion) picks the appended 0


def denormalize_part(part: pd.DataFrame, dims: Dimensions) -> pd.DataFrame:
    """Join one partition of raw sales with the dimensions; dates become real dates.

    The joins are lookups in the small tables (by position, in Arrow), so the cost per row is
    a few array operations and never a Python object per row.
    """
    return denormalize_table(part, dims).to_pandas(types_mapper={pa.date32(): _DATE}.get)


def denormalize_table(part: pd.DataFrame, dims: Dimensions) -> pa.Table:
    """:func:`denormalize_part` as an Arrow table with exactly the ``sales`` schema."""
    days = as_days(part["date"]) if len(part) else np.array([], dtype="datetime64[D]")
    store = part["store_id"].to_numpy(dtype=np.int64)
    product = part["product_id"].to_numpy(dtype=np.int64)
    products = dims.products.read_arrow(["product_id", "product_group", "price"])
    stores = dims.stores.read_arrow(["store_id", "region", "size"])
    by_product = _lookup(products["product_id"].to_numpy().astype(np.int64), product)
    by_store = _lookup(stores["store_id"].to_numpy().astype(np.int64), store)
    discount = np.zeros(len(part))
    holiday = pa.nulls(len(part), type=pa.string())
    if len(part):
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
            span = int((hi - lo).astype(np.int64)) + 1
            discount = _discounts(
                pd.DataFrame({"store_id": store, "product_id": product}), days, daily, lo, span
            )
        hol = dims.holidays.read_arrow()
        if hol.num_rows:
            hol_days = as_days(hol["date"])
            last = ~pd.Index(hol_days).duplicated(keep="last")  # one name per day: the last
            names = hol["name"].filter(pa.array(last)).cast(pa.string())
            holiday = names.take(_lookup(hol_days[last], days))
    columns = {
        "date": pa.array(days, type=pa.date32()),
        "store_id": pa.array(store),
        "product_id": pa.array(product),
        "qty": pa.array(part["qty"].to_numpy(dtype=np.int64)),
        "sale_id": pa.array(part["sale_id"].to_numpy(dtype=np.int64)),
        "product_group": products["product_group"].take(by_product),
        "price": products["price"].take(by_product),
        "region": stores["region"].take(by_store),
        "store_size": stores["size"].take(by_store),
        "discount": pa.array(discount, type=pa.float64()),
        "holiday": holiday,
    }
    schema = _schema_of_sales()
    return pa.table([_chunked(columns[f.name]).cast(f.type) for f in schema], schema=schema)


def _chunked(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])


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


def denormalize(
    cfg: PipelineConfig,
    raw: dict[str, Dataset],
    *,
    tasks: int,
    parameters: dict[str, Any] | None = None,
) -> Dataset:
    """Stage 2: ``raw/sales`` joined with the dimensions into ``sales``, partitioned by date."""
    from hafen.dask import read_ddf, write_ddf

    dims = Dimensions(raw["stores"], raw["products"], raw["holidays"], raw["promotions"])
    # at least `tasks` partitions, and at most PARTITION_ROWS rows in each (one day of a large
    # chain is a million rows: a day per partition then)
    files = max(1, len(raw["sales"].files()))
    rows_per_file = max(1, raw["sales"].num_rows // files)
    per_partition = min(-(-files // tasks), max(1, PARTITION_ROWS // rows_per_file))
    sales = read_ddf(raw["sales"], files_per_partition=per_partition)
    meta = denormalize_part(sales._meta, dims)
    joined = sales.map_partitions(denormalize_part, dims, meta=meta)
    return write_ddf(
        joined,
        cfg.dataset("sales"),
        partition_on=["date"],
        mode="overwrite",
        parameters=parameters,
    )


def _files_ddf(ds: Dataset, files: list[DataFile], tasks: int, columns: list[str] | None) -> Any:
    """The rows of ``files`` of ``ds`` as a Dask DataFrame of at most ``tasks`` partitions."""
    import dask
    import dask.dataframe as dd

    state = dataclasses.replace(ds.state, files={}, index_parts=[])
    ordered = sorted(files, key=lambda f: f.path)
    n = max(1, min(tasks, len(ordered)))
    groups = [tuple(ordered[i::n]) for i in range(n)]
    meta = StoreFiles(ds.storage, state, ()).read(columns)
    parts = [dask.delayed(StoreFiles(ds.storage, state, group).read)(columns) for group in groups]
    return dd.from_delayed(parts, meta=meta, verify_meta=False)


def denormalize_files(
    cfg: PipelineConfig,
    raw: dict[str, Dataset],
    files: list[DataFile],
    *,
    tasks: int,
    parameters: dict[str, Any] | None = None,
    base: Dataset | None = None,
) -> Dataset:
    """Stage 2 for new data: the rows of ``files`` of ``raw/sales`` denormalized and appended to
    ``sales`` (its latest version ``base`` if given; on the client when they are few, see
    :data:`LOCAL_ROWS`)."""
    from hafen.dask import write_ddf

    dims = Dimensions(raw["stores"], raw["products"], raw["holidays"], raw["promotions"])
    if _few(files):
        part = StoreFiles.of(raw["sales"], files).read(None)
        table = denormalize_table(part, dims)
        return _write_here(table, cfg.dataset("sales"), ["date"], [], parameters, base)
    new = _files_ddf(raw["sales"], files, tasks, None)
    joined = new.map_partitions(denormalize_part, dims, meta=denormalize_part(new._meta, dims))
    return write_ddf(
        joined, cfg.dataset("sales"), partition_on=["date"], mode="append", parameters=parameters
    )


#: New rows up to which an incremental stage (:func:`denormalize_files`,
#: :func:`reshuffle_files`) runs on the client instead of in tasks: a day of the demo's default
#: size is 1,000 rows, a few milliseconds of work, where the tasks' round trips to the cluster
#: (graph, scheduling, staging, results) took about a tenth of a second per stage.
LOCAL_ROWS = 50_000


def _few(files: list[DataFile]) -> bool:
    return sum(f.num_rows for f in files) <= LOCAL_ROWS


def _write_here(
    table: pa.Table,
    url: str,
    partition_on: list[str],
    indices: list[str],
    parameters: dict[str, Any] | None,
    base: Dataset | None,
) -> Dataset:
    """Append ``table`` to the dataset at ``url`` (on ``base``, its latest version, if given:
    opening it again reads its log again) from the client, in one commit."""
    from hafen.datasets._dataset import storage_for

    with WriteTransaction(
        storage_for(url),
        mode="append",
        partition_on=partition_on,
        indices=indices,
        base=LATEST if base is None else base.state,
    ) as tx:
        tx.stage(tx.prepare(table))
        recorded = {"writer": "client", "partitions": 1, **(parameters or {})}
        return Dataset(tx.storage, tx.commit(recorded))


# -- 3. reshuffle ----------------------------------------------------------------------------


def reshuffle(
    cfg: PipelineConfig, sales: Dataset, *, parameters: dict[str, Any] | None = None
) -> Dataset:
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
        parameters=parameters,
    )


def _sorted_by_product(part: pd.DataFrame) -> pd.DataFrame:
    return part.sort_values(["store_id", "product_id", "date"], kind="stable")


def reshuffle_files(
    cfg: PipelineConfig,
    sales: Dataset,
    files: list[DataFile],
    *,
    tasks: int,
    parameters: dict[str, Any] | None = None,
    base: Dataset | None = None,
) -> Dataset:
    """Stage 3 for new data: the rows of ``files`` of ``sales`` appended to ``sales_by_store``
    (its latest version ``base`` if given; a new file per store they touch, sorted by product
    and date; on the client when they are few, see :data:`LOCAL_ROWS`)."""
    if _few(files):
        part = _sorted_by_product(StoreFiles.of(sales, files).read(None))
        table = pa.Table.from_pandas(part, preserve_index=False)
        url = cfg.dataset("sales_by_store")
        return _write_here(table, url, ["store_id"], ["product_id"], parameters, base)
    new = _files_ddf(sales, files, tasks, None).map_partitions(_sorted_by_product)
    return _write_by_store(new, cfg.dataset("sales_by_store"), "append", parameters)


def _write_by_store(
    ddf: Any,
    url: str,
    mode: Mode,
    parameters: dict[str, Any] | None,
    indices: tuple[str, ...] = ("product_id",),
) -> Dataset:
    """``ddf`` into the dataset at ``url``, partitioned by store, indexed by product."""
    from hafen.dask import write_ddf

    return write_ddf(
        ddf,
        url,
        partition_on=["store_id"],
        indices=list(indices),
        mode=mode,
        parameters=parameters,
    )


# -- 4. forecast -----------------------------------------------------------------------------


def calendar(sales: Dataset) -> tuple[dt.date, dt.date]:
    """First and last day of history, from the partition values alone."""
    days = [p["date"] for p in sales.partitions()]
    return min(days), max(days)


@dataclasses.dataclass(frozen=True)
class StoreFiles:
    """What a forecast task needs to read one store's rows of a dataset partitioned by store.

    The files are selected on the client; the dataset's state comes without its file list and
    indices. Passing the whole :class:`~hafen.datasets.Dataset` instead would pickle every file
    of every store into every task: at 500 stores that was about 280 KiB and 60 ms of pickling
    per task on the client, the same again to unpickle on the worker, and a scan of all files
    per read, so the stage's overhead grew with the square of the number of stores.
    """

    storage: Any
    state: Any  # DatasetState with files={} and index_parts=[]: schema and layout only
    files: tuple[DataFile, ...]

    @classmethod
    def of(cls, ds: Dataset, files: list[DataFile]) -> StoreFiles:
        """``files`` of ``ds``, in the order of their paths."""
        state = dataclasses.replace(ds.state, files={}, index_parts=[])
        return cls(ds.storage, state, tuple(sorted(files, key=lambda f: f.path)))

    def read(self, columns: list[str] | None) -> pd.DataFrame:
        table = Dataset(self.storage, self.state).read_arrow(columns, files=list(self.files))
        return table.to_pandas(types_mapper={pa.date32(): _DATE}.get)


def files_by_store(ds: Dataset, column: str = "store_id") -> dict[int, StoreFiles]:
    """``ds`` (partitioned by ``column``) split into one :class:`StoreFiles` per store."""
    state = dataclasses.replace(ds.state, files={}, index_parts=[])
    values: dict[str, int] = {}
    groups: dict[int, list[DataFile]] = {}
    for f in ds.files():
        if f.partition not in values:
            values[f.partition] = int(ds.state.partition_values(f.partition)[column])
        groups.setdefault(values[f.partition], []).append(f)
    return {
        store: StoreFiles(ds.storage, state, tuple(sorted(files, key=lambda f: f.path)))
        for store, files in groups.items()
    }


@dataclasses.dataclass(frozen=True)
class ForecastPlans:
    """Where the forecast tasks stage their files: ``forecasts`` and ``forecast_models``."""

    forecasts: StagingPlan
    models: StagingPlan


@dataclasses.dataclass(frozen=True)
class StoreOutcome:
    """What one store's forecast task returns: its held-out metrics, the models it fitted, and
    the files it staged (its forecasts; its models when it fitted any)."""

    metrics: dict[str, Any]
    fitted: int
    forecasts: StagedWrite
    models: StagedWrite | None


def _forecast_task(
    history_files: StoreFiles,
    promotion_files: StoreFiles,
    model_files: StoreFiles | None,
    store_id: int,
    products: pd.DataFrame,
    holidays: pd.DataFrame,
    first_day: dt.date,
    last_day: dt.date,
    params: ModelParams,
    plans: ForecastPlans,
) -> StoreOutcome:
    history = history_files.read(["product_id", "date", "qty"])
    promos = promotion_files.read(["product_id", "start_date", "end_date", "discount"])
    models: dict[str, bytes] = {}
    if model_files is not None:
        kept = model_files.read(["fingerprint", "model"])
        models = dict(zip(kept["fingerprint"], kept["model"], strict=True))
    result = forecast_store(
        history,
        store_id=store_id,
        products=products,
        promotions=promos,
        holidays=holidays,
        first_day=first_day,
        last_day=last_day,
        params=params,
        models=models,
    )
    # the task stages its own files: the client commits them without another round trip
    frame = result.forecasts
    table = pa.table(
        [pa.array(frame[f.name].array, f.type) for f in FORECAST_SCHEMA], FORECAST_SCHEMA
    )
    staged = plans.forecasts.stage(plans.forecasts.prepare(table))
    staged_models = None
    if result.fitted:  # the models it forecast with, kept for the next runs
        staged_models = plans.models.stage(plans.models.prepare(_models_table(result)))
    return StoreOutcome(result.metrics, result.fitted, staged, staged_models)


def _models_table(result: StoreForecast) -> pa.Table:
    store = int(result.metrics["store_id"])
    return pa.table(
        {
            "store_id": pa.array([store] * len(result.models), pa.int64()),
            "fingerprint": pa.array(list(result.models), pa.string()),
            "model": pa.array(list(result.models.values()), pa.binary()),
        },
        schema=MODEL_SCHEMA,
    )


FORECAST_SCHEMA = pa.schema(
    [
        ("store_id", pa.int64()),
        ("product_id", pa.int64()),
        ("date", pa.date32()),
        ("forecast", pa.float64()),
        ("baseline", pa.float64()),
        ("p10", pa.float64()),
        ("p50", pa.float64()),
        ("p90", pa.float64()),
    ]
)


MODEL_SCHEMA = pa.schema(
    [("store_id", pa.int64()), ("fingerprint", pa.string()), ("model", pa.binary())]
)


#: Bytes of the products and holidays tables, times the tasks, up to which each forecast task is
#: given its own copy: a broadcast costs a round trip to every worker first.
SCATTER_BYTES = 4 * 2**20


def forecast(
    cfg: PipelineConfig,
    by_store: Dataset,
    sales: Dataset,
    raw: dict[str, Dataset],
    client: Any,
    *,
    token: str,
    plans: ForecastPlans,
    stores: set[int] | None = None,
    models: Dataset | None = None,
) -> list[Any]:
    """Stage 4: one task per store (of ``stores``, default all), with the kept ``models`` where
    they fit, each staging its files by ``plans``; returns the tasks' futures (of
    :class:`StoreOutcome`)."""
    first_day, last_day = calendar(sales)
    products = raw["products"].read(columns=["product_id", "product_group", "price"])
    holidays = raw["holidays"].read()
    history = files_by_store(by_store)
    promotions = files_by_store(raw["promotions"])
    no_promotions = StoreFiles(
        raw["promotions"].storage,
        dataclasses.replace(raw["promotions"].state, files={}, index_parts=[]),
        (),
    )
    kept = {} if models is None else files_by_store(models)
    small = products.memory_usage(deep=True).sum() + holidays.memory_usage(deep=True).sum()
    if small * len(history) > SCATTER_BYTES:  # sent once to every worker, not in every task
        [products, holidays] = client.scatter([products, holidays], broadcast=True)
    return [
        client.submit(
            _forecast_task,
            history[store],
            promotions.get(store, no_promotions),
            kept.get(store),
            store,
            products,
            holidays,
            first_day,
            last_day,
            cfg.model,
            plans,
            key=f"forecast-store-{store}-{token}",
        )
        for store in sorted(history)
        if stores is None or store in stores
    ]


# -- 5. write --------------------------------------------------------------------------------


class ForecastWrite:
    """Stage 5's two transactions, opened before stage 4 so its tasks stage into them: the
    stores' models (``forecast_models``) and their forecasts (``forecasts``), each replacing
    those stores' partitions in one commit. Leaving the ``with`` block on an error removes
    what was staged.

    The first store's files wait for the last store's: a forecast stage longer than 80 % of
    vacuum's grace period (``HAFEN_GRACE_PERIOD``, 1 h by default) cannot commit them safely
    and fails with :class:`~hafen.errors.ConflictError`, committing nothing."""

    def __init__(
        self, cfg: PipelineConfig, forecasts: Dataset | None, models: Dataset | None
    ) -> None:
        self._forecasts = _transaction(cfg.dataset("forecasts"), forecasts, ["product_id"])
        self._models = _transaction(cfg.dataset("forecast_models"), models, [])
        self._forecasts.validate(FORECAST_SCHEMA)
        self._models.validate(MODEL_SCHEMA)
        self.plans = ForecastPlans(self._forecasts.plan, self._models.plan)

    def __enter__(self) -> ForecastWrite:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._models.discard()
            self._forecasts.discard()

    def models(self, outcomes: list[StoreOutcome], parameters: dict[str, Any]) -> Dataset | None:
        """Commit the models the stores that fitted any forecast with; None if none did."""
        staged = [o.models for o in outcomes if o.models is not None]
        if not staged:
            return None
        self._models.add(staged)
        return Dataset(self._models.storage, self._models.commit(_recorded(staged, parameters)))

    def forecasts(self, outcomes: list[StoreOutcome], parameters: dict[str, Any]) -> Dataset:
        """Commit the stores' forecasts as one version of ``forecasts``."""
        staged = [o.forecasts for o in outcomes]
        self._forecasts.add(staged)
        state = self._forecasts.commit(_recorded(staged, parameters))
        return Dataset(self._forecasts.storage, state)


def _transaction(url: str, current: Dataset | None, indices: list[str]) -> WriteTransaction:
    from hafen.datasets._dataset import storage_for

    return WriteTransaction(
        storage_for(url),
        mode="overwrite",
        partition_on=["store_id"],
        indices=indices,
        base=LATEST if current is None else current.state,
    )


def _recorded(staged: list[StagedWrite], parameters: dict[str, Any]) -> dict[str, Any]:
    return {"writer": "forecast tasks", "partitions": len(staged), **parameters}
