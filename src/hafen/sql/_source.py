"""Reading from a database: a query's schema, a column's bounds, and rows as Arrow batches.

PostgreSQL goes through ADBC's libpq driver, which runs ``COPY (query) TO STDOUT (FORMAT
binary)`` and decodes it in C into Arrow record batches (``benchmarks/sql.py`` compares it with
connectorx and psycopg's COPY). SQLite goes through the standard library, ``fetchmany`` at a
time.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from hafen.errors import SchemaError, SQLError
from hafen.sql._types import (
    arrow_from_postgres,
    arrow_from_sqlite,
    conform_batch,
    sqlite_column,
)
from hafen.sql._url import DatabaseURL, connect, map_db_errors, quote_ident

__all__ = [
    "InferenceMismatch",
    "as_query",
    "bounds",
    "connect_reader",
    "describe",
    "read_batches",
    "table_exists",
]

#: Rows per batch read from SQLite.
SQLITE_BATCH_ROWS = 65_536
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
SUBQUERY_ALIAS = "hafen_q"


def is_table_name(query_or_table: str) -> bool:
    return bool(_IDENTIFIER.match(query_or_table.strip()))


def as_query(query_or_table: str) -> str:
    """A query for a table name, or the query itself (without a trailing semicolon)."""
    text = query_or_table.strip()
    if is_table_name(text):
        return f"SELECT * FROM {quote_ident(text)}"
    return text.rstrip().rstrip(";")


def table_exists(db: DatabaseURL, conn: Any, table: str) -> bool:
    """Whether ``table`` (optionally ``schema.table``) exists."""
    if db.dialect == "sqlite":
        rows = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (table,)
        ).fetchall()
        return bool(rows)
    cur = conn.cursor()
    try:
        cur.execute(f"SELECT to_regclass('{_literal_text(quote_ident(table))}') IS NOT NULL")
        row = cur.fetchone()
    finally:
        cur.close()
    return bool(row and row[0])


def _literal_text(text: str) -> str:
    return text.replace("'", "''")


def check_source(db: DatabaseURL, conn: Any, query_or_table: str) -> None:
    """Refuse a table name that does not exist, with a clear message."""
    if is_table_name(query_or_table) and not table_exists(db, conn, query_or_table.strip()):
        raise SQLError(f"{db.masked}: table {query_or_table.strip()!r} does not exist")


def describe(db: DatabaseURL, conn: Any, query: str) -> pa.Schema:
    """The dataset schema of ``query``'s result (see :mod:`hafen.sql._types`)."""
    with map_db_errors(db, "describing the query"):
        if db.dialect == "postgresql":
            cur = conn.cursor()
            try:
                raw = cur.adbc_execute_schema(query)
            finally:
                cur.close()
            conn.rollback()
            schema = pa.schema([arrow_from_postgres(f) for f in raw])
        else:
            schema = _describe_sqlite(conn, query)
    names = schema.names
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SchemaError(f"the query returns duplicate column names {duplicates}; alias them")
    return schema


def _describe_sqlite(conn: Any, query: str) -> pa.Schema:
    view = "hafen_describe_view"
    conn.execute(f"DROP VIEW IF EXISTS temp.{view}")
    conn.execute(f"CREATE TEMP VIEW {view} AS {query}")
    try:
        info = conn.execute(f"PRAGMA temp.table_info({view})").fetchall()
        fields = []
        for _cid, name, declared, *_ in info:
            sample = None
            if not declared:
                row = conn.execute(
                    f"SELECT {quote_ident(name)} FROM {view} "
                    f"WHERE {quote_ident(name)} IS NOT NULL LIMIT 1"
                ).fetchone()
                sample = row[0] if row else None
            fields.append(pa.field(name, arrow_from_sqlite(name, declared or "", sample)))
    finally:
        conn.execute(f"DROP VIEW IF EXISTS temp.{view}")
    return pa.schema(fields)


def bounds(
    db: DatabaseURL, conn: Any, query: str, column: str, type_: pa.DataType
) -> tuple[Any, Any]:
    """``(min, max)`` of ``column`` in ``query``'s result, as Python values of its type."""
    sql = (
        f"SELECT min({quote_ident(column)}), max({quote_ident(column)}) "
        f"FROM ({query}) AS {SUBQUERY_ALIAS}"
    )
    with map_db_errors(db, f"finding the bounds of {column!r}"):
        if db.dialect == "postgresql":
            cur = conn.cursor()
            try:
                cur.execute(sql)
                lo, hi = cur.fetchone()
            finally:
                cur.close()
            conn.rollback()
        else:
            lo, hi = conn.execute(sql).fetchone()
    return _as_python(lo, type_), _as_python(hi, type_)


def _as_python(value: Any, type_: pa.DataType) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return pa.array([value]).cast(type_)[0].as_py()
    if (
        pa.types.is_timestamp(type_)
        and isinstance(value, dt.datetime)
        and type_.tz
        and value.tzinfo is None
    ):
        return value.replace(tzinfo=dt.UTC)
    return value


class InferenceMismatch(Exception):
    """ADBC's SQLite driver met a value of another type than it inferred: use the stdlib."""


def read_batches(db: DatabaseURL, conn: Any, query: str, schema: pa.Schema) -> Iterator[pa.Table]:
    """Run ``query`` and yield its rows as tables of ``schema``, one batch at a time.

    ``conn`` is an ADBC connection for PostgreSQL; for SQLite either an ADBC connection (fast,
    but it infers column types from the first rows: :class:`InferenceMismatch` when a later
    value differs) or a stdlib one.
    """
    with map_db_errors(db, "reading"):
        if db.dialect == "sqlite" and isinstance(conn, sqlite3.Connection):
            cur = conn.execute(query)
            while True:
                rows = cur.fetchmany(SQLITE_BATCH_ROWS)
                if not rows:
                    break
                columns = list(zip(*rows, strict=True))
                arrays = [sqlite_column(columns[i], f.type) for i, f in enumerate(schema)]
                yield pa.Table.from_arrays(arrays, schema=schema)
            return
        cur = conn.cursor()
        try:
            if db.dialect == "sqlite":  # the driver's default, 1,024 rows, makes tiny row groups
                cur.adbc_statement.set_options(
                    **{"adbc.sqlite.query.batch_rows": str(SQLITE_BATCH_ROWS)}
                )
            cur.execute(query)
            reader = cur.fetch_record_batch()
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except OSError as exc:
                    if db.dialect == "sqlite" and "Type mismatch" in str(exc):
                        raise InferenceMismatch(str(exc)) from None
                    raise
                if batch.num_rows:
                    yield _conform_driver_batch(batch, schema)
        finally:
            cur.close()
        conn.rollback()


def _conform_driver_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    columns = []
    for field, column in zip(schema, batch.columns, strict=True):
        if pa.types.is_decimal(field.type) and not pa.types.is_decimal(column.type):
            column = sqlite_column(column.to_pylist(), field.type)
        columns.append(column)
    return conform_batch(pa.RecordBatch.from_arrays(columns, names=schema.names), schema)


def connect_reader(db: DatabaseURL, *, fast: bool = True) -> Any:
    """A connection for :func:`read_batches`: ADBC when available (and ``fast``)."""
    if db.dialect == "sqlite" and fast:
        try:
            import adbc_driver_sqlite.dbapi as adbc_sqlite
        except ImportError:
            return connect(db, "extract")
        with map_db_errors(db, "connecting"):
            uri = "file:" + urllib.parse.quote(db.path or "") + "?mode=ro"
            return adbc_sqlite.connect(uri)
    return connect(db, "extract")
