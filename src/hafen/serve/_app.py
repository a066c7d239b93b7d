"""The HTTP API over the pipeline's datasets (FastAPI).

``GET /forecasts`` and ``GET /history`` are point lookups: the store is a partition value and the
product a secondary index, so :meth:`~hafen.datasets.Dataset.read_arrow` opens one file (the
store's) after looking the product up in the index, never a scan. ``GET /datasets`` and
``GET /datasets/{name}`` describe the datasets; ``GET /healthz`` says the service is up; ``GET /``
is a small page that charts history and forecast.

Answers name datasets, never where they are stored (see :mod:`hafen.serve._public`); a failed
lookup is answered with a status and a JSON reason (see :mod:`hafen.serve._errors`). A lookup
that fails on the version the registry holds -- its files vacuumed, the dataset deleted or
recreated meanwhile -- is tried once more on the latest version before it fails.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from hafen._version import __version__
from hafen.datasets import Dataset
from hafen.datasets._dataset import storage_for
from hafen.errors import HafenError
from hafen.serve._answers import DEFAULT_BODY_CACHE_BYTES, ForecastBodies
from hafen.serve._errors import ApiError, api_error, error_responses, install_handlers
from hafen.serve._fast import FastLookups
from hafen.serve._lookup import DEFAULT_CACHE_BYTES, Lookup, between
from hafen.serve._page import PAGE
from hafen.serve._public import Locations, public_value
from hafen.serve._registry import DEFAULT_REFRESH, Registry, describe, identity

__all__ = ["FORECASTS", "HISTORY", "create_app"]

#: Dataset names the lookups read, relative to the served root.
FORECASTS = "forecasts"
HISTORY = "sales_by_store"
MAX_ID = 2**62
FORECAST_COLUMNS = ["store_id", "product_id", "date", "forecast", "baseline"]
HISTORY_COLUMNS = ["product_id", "date", "qty"]
MAX_HISTORY = 1000
T = TypeVar("T")


StoreId = Annotated[int, Query(ge=0, le=MAX_ID, description="The store.")]
ProductId = Annotated[int, Query(ge=0, le=MAX_ID, description="The product.")]
OptionalProductId = Annotated[
    int | None, Query(ge=0, le=MAX_ID, description="The product; all when absent.")
]
From = Annotated[dt.date | None, Query(alias="from", description="First day (ISO), inclusive.")]
To = Annotated[dt.date | None, Query(alias="to", description="Last day (ISO), inclusive.")]
Last = Annotated[int, Query(ge=1, le=MAX_HISTORY, description="At most this many latest days.")]
HistoryLimit = Annotated[int, Query(ge=1, le=1000, description="Latest commits to list.")]
PartitionLimit = Annotated[int, Query(ge=0, le=100_000, description="Partitions to list at most.")]
DatasetName = Annotated[str, Path(description="The dataset's path under the root.")]


class ForecastRow(BaseModel):
    store_id: int
    product_id: int
    date: dt.date
    forecast: float
    baseline: float | None = None


class Forecasts(BaseModel):
    dataset: str
    version: int
    store_id: int
    product_id: int | None
    rows: list[ForecastRow]


class HistoryRow(BaseModel):
    date: dt.date
    qty: float | None


class History(BaseModel):
    dataset: str
    version: int
    store_id: int
    product_id: int
    rows: list[HistoryRow]


class DatasetInfo(BaseModel):
    name: str
    version: int
    timestamp: str | None
    num_rows: int
    partition_on: list[str]
    indices: list[str]


class DatasetList(BaseModel):
    datasets: list[DatasetInfo]


class Column(BaseModel):
    name: str
    type: str
    nullable: bool


class DatasetDetail(DatasetInfo):
    columns: list[Column] = Field(alias="schema")
    partitions: list[dict[str, Any]]
    partitions_total: int
    history: list[dict[str, Any]]


class Health(BaseModel):
    status: str
    version: str
    datasets: dict[str, int]


def _wants_csv(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept.split("text/csv")[0]


def _csv(table: pa.Table) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in _records(table):
        writer.writerow(["" if v is None else v for v in row.values()])
    return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8")


def _as_days(table: pa.Table) -> pa.Table:
    """``table`` with a timestamp ``date`` column cut to its days (in the column's time zone):
    the API serves days, whatever type the dataset keeps them in."""
    index = table.schema.get_field_index("date")
    if index < 0 or not pa.types.is_timestamp(table.schema.field(index).type):
        return table
    return table.set_column(index, "date", pc.cast(table.column(index), pa.date32(), safe=False))


def _records(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts, dates as ISO strings (Arrow casts date32 to ``YYYY-MM-DD``)."""
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_date(column.type):
            column = column.cast(pa.string())
        elif pa.types.is_floating(column.type):  # NaN is not JSON: null
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
        columns[name] = column.to_pylist()
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


JSON = "application/json"


def _json(payload: dict[str, Any]) -> Response:
    # the payload is built from validated parameters and the dataset's typed columns, so the
    # response model's validation is skipped on this hot path (it still documents the schema)
    return Response(json.dumps(payload, allow_nan=False), media_type=JSON)


def _forecasts_body(ds: Any, store_id: int, product_id: int | None, table: pa.Table) -> bytes:
    payload = {
        "dataset": FORECASTS,
        "version": ds.version,
        "store_id": store_id,
        "product_id": product_id,
        "rows": _records(table),
    }
    return json.dumps(payload, allow_nan=False).encode()


def _check_range(start: dt.date | None, end: dt.date | None) -> None:
    if start is not None and end is not None and start > end:
        raise HTTPException(400, f"'from' ({start}) is after 'to' ({end})")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _locations(registry: Registry) -> Locations:
    roots = [registry.root]
    with contextlib.suppress(HafenError, OSError, ValueError):
        roots.append(storage_for(registry.root).root)
    return Locations(roots)


def create_app(
    root: str,
    *,
    refresh: float = DEFAULT_REFRESH,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    body_cache_bytes: int = DEFAULT_BODY_CACHE_BYTES,
    fast_path: bool = True,
) -> FastAPI:
    """The API over the datasets under ``root`` (a folder of datasets, or one dataset).

    Parameters
    ----------
    root
        ``hafen-demo/datasets`` (any fsspec URL); ``forecasts`` and ``sales_by_store`` below it
        serve ``/forecasts`` and ``/history``. A single dataset URL is served as its last part.
    refresh
        Seconds between checks for a new version of a dataset (0: on every request).
    cache_bytes
        Memory for decoded data files (see :mod:`hafen.serve._lookup`), and as much again for
        the fast path's prepared files (see :mod:`hafen.serve._answers`).
    body_cache_bytes
        Memory for the fast path's ready response bodies, emptied on each new version.
    fast_path
        Answer plain point lookups before FastAPI's machinery (see :mod:`hafen.serve._fast`);
        the application is then wrapped, and attributes such as ``.state`` pass through.

    Examples
    --------
    >>> app = create_app("hafen-demo/datasets")  # doctest: +SKIP
    """
    registry = Registry(root, refresh=refresh)
    lookup = Lookup(max_bytes=cache_bytes)
    bodies = ForecastBodies(
        lookup,
        name=FORECASTS,
        columns=FORECAST_COLUMNS,
        prepared_bytes=cache_bytes,
        body_bytes=body_cache_bytes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        registry.start()  # new versions are looked for off the event loop
        try:
            yield
        finally:
            registry.stop()

    app = FastAPI(
        title="hafen",
        version=__version__,
        summary="Forecasts and dataset metadata, always at the latest committed version.",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.lookup = lookup
    app.state.bodies = bodies

    install_handlers(app)
    locations = _locations(registry)

    def dataset(name: str) -> Dataset:
        try:
            return registry.get(name)
        except Exception as exc:
            raise api_error(exc, name) from None

    def answer(name: str, fn: Callable[[Dataset], T]) -> T:
        """``fn`` on the latest version of ``name``; once more on a re-opened latest version
        if it fails on the one held (vacuumed, deleted or recreated meanwhile)."""
        ds = dataset(name)
        try:
            return fn(ds)
        except HTTPException:
            raise
        except Exception as exc:
            if not isinstance(exc, HafenError | OSError | pa.ArrowException):
                raise api_error(exc, name) from None
            failed = exc
        try:
            fresh = registry.reopen(name)
        except Exception as exc:
            raise api_error(exc, name) from None
        if identity(fresh) == identity(ds):
            raise api_error(failed, name) from None
        try:
            return fn(fresh)
        except HTTPException:
            raise
        except Exception as exc:
            raise api_error(exc, name) from None

    # The lookups are async: once a file is cached a lookup takes well under a millisecond of
    # CPU, less than handing it to a worker thread; a first read of a file blocks the loop for
    # that one read.
    @app.get(
        "/forecasts",
        response_model=Forecasts,
        responses={
            200: {"content": {"text/csv": {}}, "description": "JSON, or CSV on Accept: text/csv"},
            400: {"description": "Invalid parameters"},
            **error_responses(404, 500, 503),
        },
    )
    async def get_forecasts(
        request: Request,
        store_id: StoreId,
        product_id: OptionalProductId = None,
        start: From = None,
        end: To = None,
    ) -> Any:
        """Forecasts of one store (and product), from the latest version of ``forecasts``."""
        _check_range(start, end)
        key = None if product_id is None else ("product_id", product_id)

        def rows(ds: Dataset) -> tuple[Dataset, pa.Table]:
            return ds, lookup.rows(ds, ("store_id", store_id), key, FORECAST_COLUMNS)

        ds, table = answer(FORECASTS, rows)
        if table.num_rows == 0:
            what = f"store {store_id}" + ("" if product_id is None else f", product {product_id}")
            detail = f"no forecasts for {what} in version {ds.version}"
            raise ApiError(404, "no_rows", detail, dataset=FORECASTS)
        table = between(_as_days(table), "date", start, end)
        table = table.sort_by([("product_id", "ascending"), ("date", "ascending")])
        if _wants_csv(request):
            return _csv(table)
        return Response(_forecasts_body(ds, store_id, product_id, table), media_type=JSON)

    def fast_answer(query: bytes) -> bytes | None:
        """The JSON body of a plain point lookup, or None to let the route answer."""
        try:
            return bodies.get(registry.get(FORECASTS), query)
        except Exception:  # the route answers, with its error handling
            return None

    @app.get(
        "/history",
        response_model=History,
        responses={
            200: {"content": {"text/csv": {}}, "description": "JSON, or CSV on Accept: text/csv"},
            400: {"description": "Invalid parameters"},
            **error_responses(404, 500, 503),
        },
    )
    async def get_history(
        request: Request,
        store_id: StoreId,
        product_id: ProductId,
        start: From = None,
        end: To = None,
        last: Last = 120,
    ) -> Any:
        """Daily sales of one store and product, from the latest version of ``sales_by_store``."""
        _check_range(start, end)

        def rows(ds: Dataset) -> tuple[Dataset, pa.Table]:
            key = ("product_id", product_id)
            return ds, lookup.rows(ds, ("store_id", store_id), key, HISTORY_COLUMNS)

        ds, table = answer(HISTORY, rows)
        if table.num_rows == 0:
            detail = f"no sales for store {store_id}, product {product_id} in version {ds.version}"
            raise ApiError(404, "no_rows", detail, dataset=HISTORY)
        table = between(_as_days(table), "date", start, end).select(["date", "qty"])
        table = table.sort_by("date")
        table = table.slice(max(0, table.num_rows - last))
        if _wants_csv(request):
            return _csv(table)
        return _json(
            {
                "dataset": HISTORY,
                "version": ds.version,
                "store_id": store_id,
                "product_id": product_id,
                "rows": _records(table),
            }
        )

    @app.get("/datasets", response_model=DatasetList, responses=error_responses(503))
    def list_datasets() -> Any:
        """Every dataset under the served root, at its latest version."""
        try:
            names = registry.names()
        except Exception as exc:
            raise api_error(exc, None) from None
        infos = []
        for name in names:
            try:
                infos.append(describe(name, registry.get(name)))
            except (HafenError, OSError):
                continue  # deleted meanwhile, or failing: /datasets/{name} says why
        return {"datasets": infos}

    @app.get(
        "/datasets/{name:path}",
        response_model=DatasetDetail,
        responses=error_responses(404, 500, 503),
    )
    def show_dataset(
        name: DatasetName,
        history: HistoryLimit = 20,
        partitions: PartitionLimit = 1000,
    ) -> Any:
        """Schema, partitions, version and history of one dataset."""

        def detail(ds: Dataset) -> dict[str, Any]:
            values = ds.partitions()
            commits = ds.history(limit=history)
            return {
                **describe(name, ds),
                "schema": [
                    {"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in ds.schema
                ],
                "partitions": _jsonable(values[:partitions]),
                "partitions_total": len(values),
                "history": [public_value(c, locations) for c in commits],
            }

        return answer(name, detail)

    @app.get("/healthz", response_model=Health, responses=error_responses(503))
    def healthz() -> Any:
        """Up, with the version of every dataset served."""
        try:
            versions = registry.versions()
        except Exception as exc:
            raise api_error(exc, None) from None
        return {"status": "ok", "version": __version__, "datasets": versions}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE

    return FastLookups(app, fast_answer) if fast_path else app  # type: ignore[return-value]
