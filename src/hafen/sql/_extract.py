"""``extract``: a query (or table) into a dataset, in parallel ranges, committed once.

The query is split into ranges of ``split_on`` (integers, dates or timestamps), from the column's
min/max or the given bounds. The first range is open below and also takes NULLs, the last is open
above, so every row lands in exactly one range whatever the bounds. Each range is one Dask task
under the cluster-wide limit: it opens its own connection, streams Arrow batches into its own
staged Parquet files and returns the small :class:`StagedWrite`. A failed attempt removes what it
staged, and Dask retries it; only successful attempts' files are committed, in one commit at the
end, by the write transaction (:class:`~hafen.datasets._transaction.WriteTransaction`) that
checked the dataset before any range ran and gave the tasks their staging plan. If a range keeps
failing nothing is committed and the staged files are removed, so the dataset is unchanged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from hafen.datasets._dataset import Dataset, storage_for
from hafen.datasets._schema import conform, normalize_schema
from hafen.datasets._storage import Storage
from hafen.datasets._transaction import StagingPlan, WriteTransaction, discard
from hafen.datasets._validate import Mode, check_options
from hafen.datasets._write import StagedWrite
from hafen.errors import ConfigError, HafenError, SchemaError, SQLError
from hafen.sql._source import (
    SUBQUERY_ALIAS,
    InferenceMismatch,
    as_query,
    bounds,
    check_source,
    connect_reader,
    describe,
    read_batches,
)
from hafen.sql._tasks import first_error, limit_name, run_chunks, task_client
from hafen.sql._url import DatabaseURL, connect, parse_url, quote_ident

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["extract"]

DEFAULT_CHUNKS = 16
DEFAULT_RETRIES = 3
_EPOCH = dt.datetime(1970, 1, 1)


def extract(
    db_url: str,
    query_or_table: str,
    dataset_url: str | Storage | Dataset,
    *,
    split_on: str | None = None,
    chunks: int = DEFAULT_CHUNKS,
    bounds: tuple[Any, Any] | None = None,
    partition_on: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    limit: str | int | None = None,
    mode: Mode = "append",
    retries: int = DEFAULT_RETRIES,
    client: Client | None = None,
    storage_options: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> Dataset:
    """Extract a query or a table into a dataset, in parallel ranges, in one commit.

    Parameters
    ----------
    db_url
        ``sqlite:///path.db`` or ``postgresql://user:password@host:port/db``.
    query_or_table
        A table name (``sales``, ``shop.sales``) or a ``SELECT`` query.
    dataset_url
        Where the dataset is (or will be); any URL :func:`hafen.write_dataset` accepts, or the
        dataset's :class:`~hafen.datasets.Dataset` (the new version goes on top of the latest).
    split_on
        An integer, date or timestamp column of the result to split on; ``None`` reads the whole
        result in one task.
    chunks
        How many ranges (tasks) to split into.
    bounds
        ``(low, high)`` to split between instead of the column's min and max; rows outside
        still land in the first or last range.
    partition_on, indices
        The dataset's layout, as in :func:`hafen.write_dataset`.
    limit
        A cluster-wide limit (:func:`hafen.set_limit`) each range takes a slot of, or a number
        of slots for this call; ``None``: as many connections as the cluster has threads.
    mode
        ``"create"``, ``"append"`` or ``"overwrite"``, as in :func:`hafen.write_dataset`.
    retries
        Times a failed range is run again (a dropped connection, a killed backend).
    client
        The Dask client; defaults to the running one, else an in-process cluster for the call.
    storage_options
        fsspec options for the dataset's storage (over the ``storage_options`` setting).
    parameters
        Recorded with the new version's commit, beside hafen's own (see
        :meth:`~hafen.datasets.Dataset.history`): e.g. the watermark the data covers.

    Returns
    -------
    Dataset
        The new version.

    Raises
    ------
    hafen.errors.SQLError
        The URL is invalid, the table does not exist, the database failed (no secrets shown).
    hafen.errors.SchemaError
        A column type has no dataset equivalent, or the result does not match the dataset.

    Examples
    --------
    >>> hafen.extract("postgresql://...", "sales", "data/sales", split_on="sale_id",
    ...               chunks=64, partition_on=["date"], limit="postgres")  # doctest: +SKIP
    """
    db = parse_url(db_url)
    check_options(mode)
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ConfigError(f"chunks must be a positive integer, got {chunks!r}")
    if not isinstance(query_or_table, str) or not query_or_table.strip():
        raise ConfigError("query_or_table must be a table name or a SELECT query")
    query = as_query(query_or_table)
    storage = storage_for(dataset_url, storage_options)

    conn = connect(db, "meta")
    try:
        check_source(db, conn, query_or_table)
        schema = describe(db, conn, query)
        ranges = _plan_ranges(db, conn, query, schema, split_on, chunks, bounds)
    finally:
        with contextlib.suppress(Exception):
            conn.close()

    with WriteTransaction(storage, mode=mode, partition_on=partition_on, indices=indices) as tx:
        target = tx.validate(normalize_schema(schema))  # before any range is read
        queries = [_range_query(db, query, split_on, lo, hi, schema) for lo, hi in ranges]
        with task_client(client) as dask_client, limit_name(dask_client, limit) as name:
            outcome = run_chunks(
                dask_client,
                extract_range,
                [(db, q, tx.plan) for q in queries],
                limit=name,
                retries=retries,
                name="hafen-extract",
            )
        tx.add(outcome.results)
        if outcome.errors:  # raised inside the transaction: what the others staged is removed
            exc = first_error(outcome.errors)
            failed = len(outcome.errors)
            if isinstance(exc, HafenError):
                shown = db.scrub(str(exc))
                what = f"{failed} of {len(queries)} ranges failed; nothing committed"
                error = type(exc)(f"{what}: {shown}")
                raise error from (exc if shown == str(exc) else None)
            raise SQLError(
                f"{db.masked}: {failed} of {len(queries)} ranges failed; nothing committed: "
                f"{db.scrub(str(exc))}"
            ) from None
        if not any(s.files for s in outcome.results) and tx.base is None:
            tx.add(StagedWrite(schema=target))
        parameters = {
            "source": db.public,  # never a credential in the log
            "query": query if len(query) <= 2000 else query[:2000] + "...",
            "split_on": split_on,
            "ranges": len(queries),
            **(parameters or {}),
        }
        return Dataset(storage, tx.commit(parameters))


def extract_range(db: DatabaseURL, query: str, plan: StagingPlan) -> StagedWrite:
    """One range: stream the query's rows into staged files; on failure remove them."""
    try:
        return _stage_range(db, query, plan, fast=True)
    except InferenceMismatch:  # SQLite values of mixed types: the slower, exact reader
        return _stage_range(db, query, plan, fast=False)


def _stage_range(db: DatabaseURL, query: str, plan: StagingPlan, *, fast: bool) -> StagedWrite:
    writer = plan.writer()
    schema = writer.schema
    try:
        conn = connect_reader(db, fast=fast)
        try:
            for table in read_batches(db, conn, query, schema):
                writer.write(conform(table, schema))
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return writer.close()
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        discard(plan.storage, [writer.staged])
        raise


# --- ranges ---------------------------------------------------------------------------------


def _kind(type_: pa.DataType) -> str | None:
    if pa.types.is_integer(type_):
        return "int"
    if pa.types.is_date(type_):
        return "date"
    if pa.types.is_timestamp(type_):
        return "timestamp"
    return None


def _plan_ranges(
    db: DatabaseURL,
    conn: Any,
    query: str,
    schema: pa.Schema,
    split_on: str | None,
    chunks: int,
    given: tuple[Any, Any] | None,
) -> list[tuple[Any, Any]]:
    """``[(low, high), ...]`` edges of the ranges; ``None`` means open on that side."""
    if split_on is None:
        if given is not None:
            raise ConfigError("bounds= needs split_on=")
        return [(None, None)]
    index = schema.get_field_index(split_on)
    if index < 0:
        raise SchemaError(
            f"split_on column {split_on!r} is not in the result ({', '.join(schema.names)})"
        )
    type_ = schema.field(index).type
    kind = _kind(type_)
    if kind is None:
        raise SchemaError(
            f"split_on column {split_on!r} has type {type_}; it must be an integer, date or "
            "timestamp column"
        )
    if given is not None:
        if len(given) != 2:
            raise ConfigError(f"bounds must be (low, high), got {given!r}")
        lo, hi = given
    else:
        lo, hi = bounds(db, conn, query, split_on, type_)
    if lo is None or hi is None or chunks == 1:
        return [(None, None)]
    a, b = _to_number(lo, kind, split_on), _to_number(hi, kind, split_on)
    if b < a:
        raise ConfigError(f"bounds {given!r}: low is above high")
    n = max(1, min(chunks, b - a + 1))
    edges = [a + (b - a + 1) * i // n for i in range(n + 1)]
    out: list[tuple[Any, Any]] = []
    for i in range(n):
        low = None if i == 0 else _from_number(edges[i], kind, type_)
        high = None if i == n - 1 else _from_number(edges[i + 1], kind, type_)
        out.append((low, high))
    return out


def _to_number(value: Any, kind: str, column: str) -> int:
    try:
        if kind == "int":
            return int(value)
        if kind == "date":
            if isinstance(value, dt.datetime):
                value = value.date()
            if isinstance(value, str):
                value = dt.date.fromisoformat(value)
            return int(value.toordinal())
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = dt.datetime.combine(value, dt.time())
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"bound {value!r} does not fit split_on column {column!r}") from exc


def _from_number(number: int, kind: str, type_: pa.DataType) -> Any:
    if kind == "int":
        return number
    if kind == "date":
        return dt.date.fromordinal(number)
    value = _EPOCH + dt.timedelta(microseconds=number)
    return value.replace(tzinfo=dt.UTC) if type_.tz else value


def _literal(db: DatabaseURL, value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            text = value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "+00:00"
            return f"TIMESTAMPTZ '{text}'" if db.dialect == "postgresql" else f"'{text}'"
        text = value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"TIMESTAMP '{text}'" if db.dialect == "postgresql" else f"'{text}'"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'" if db.dialect == "postgresql" else f"'{value}'"
    raise ConfigError(f"cannot use {value!r} as a range bound")


def _range_query(
    db: DatabaseURL, query: str, column: str | None, lo: Any, hi: Any, schema: pa.Schema
) -> str:
    if column is None or (lo is None and hi is None):
        return query
    col = f"{SUBQUERY_ALIAS}.{quote_ident(column)}"
    conditions = []
    if lo is not None:
        conditions.append(f"{col} >= {_literal(db, lo)}")
    if hi is not None:
        below = f"{col} < {_literal(db, hi)}"
        conditions.append(f"({below} OR {col} IS NULL)" if lo is None else below)
    where = " AND ".join(conditions)
    return f"SELECT * FROM ({query}) AS {SUBQUERY_ALIAS} WHERE {where}"
