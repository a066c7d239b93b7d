"""Customers' data into their relational database: ``POST /v1/{table}``.

A batch is a JSON array of objects (or ``{"rows": [...]}``), a CSV file with a header, or a
Parquet file, chosen by ``Content-Type``. It is read from the request as it streams in (to a
spooled temporary file), and refused with 413 once it passes the size limit. Every row is
checked against the table: required columns and their types, values that make no sense
(negative quantities, a promotion that ends before it starts, a discount outside [0, 1)), keys
that repeat in the batch or already exist, and references to stores and products that do not
exist. Any error refuses the whole batch with 422 and the rows at fault; a valid batch is
inserted in one transaction.

A JSON array whose rows are all plainly valid is read straight into Arrow columns and checked a
column at a time (:func:`read_batch`); anything else is read into Python objects and checked row
by row, which names the row and column at fault. On SQLite the server's batches take turns at the
database's write lock in the server (:func:`insert_batch`), not in SQLite's sleeping busy handler.

``Idempotency-Key`` makes a retry safe: the key is recorded in the same transaction as the rows
(table ``hafen_batches``), so a batch either lands with its key or not at all; a retry with the
same key and body gets the first answer and inserts nothing, also when it arrives while the
first is being inserted (the key's row is written first and concurrent writers wait on it).

Every batch also takes an **ingest sequence number** in its transaction, and its rows carry it in
the column ``hafen_seq``: the watermark incremental runs (:mod:`hafen.pipeline._incremental`)
extract from, ``hafen_seq`` above the last run's, whatever the sales' dates (late data for old
days is picked up). A run must know a number below which every batch has landed:

- on SQLite, write transactions are serial, so the number is the tenant's counter
  (``hafen_sequence``) plus one, and once the counter reads N every batch up to N has landed;
- on PostgreSQL, batches insert side by side and would commit out of the order of any counter
  they took (or wait on its lock, which cost about a quarter of the ingest rate: see
  benchmarks/README.md), so the number is the transaction's own id (``pg_current_xact_id()``),
  which needs no lock; every transaction whose id is below the oldest one still running
  (``pg_snapshot_xmin``) has finished, so everything below that horizon has landed. A long
  transaction on the database holds the horizon back: what lands after it waits for a later run,
  and nothing is lost.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import operator
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from hafen.sql._url import connect, parse_url, quote_ident

if TYPE_CHECKING:
    from hafen.serve._tenants import Tenant

__all__ = [
    "DEFAULT_MAX_BODY",
    "SEQUENCE_TABLE",
    "SEQ_COLUMN",
    "TABLES",
    "BatchError",
    "BodyTooLarge",
    "CheckedBatch",
    "check_batch",
    "create_tables",
    "ingest_batch",
    "insert_batch",
    "parse_body",
    "read_batch",
    "read_body",
]

#: Largest accepted batch body, in bytes.
DEFAULT_MAX_BODY = 64 * 1024 * 1024
MAX_ERRORS = 100  # row errors listed in a 422 (the total is given too)
_SPOOL = 1024 * 1024
_BUSY_SECONDS = 60  # a SQLite writer waits this long for another one


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # int, float, str, date
    check: Callable[[Any], str | None] | None = None
    references: str | None = None  # a table whose key this column must name


@dataclasses.dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[_Column, ...]
    ddl: str
    row_check: Callable[[dict[str, Any]], str | None] | None = None

    @property
    def key(self) -> str:
        return self.columns[0].name

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _nonneg(v: Any) -> str | None:
    return "must not be negative" if v < 0 else None


def _positive(v: Any) -> str | None:
    return "must be positive" if v <= 0 else None


def _fraction(v: Any) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _promo_dates(row: dict[str, Any]) -> str | None:
    return "end_date is before start_date" if row["end_date"] < row["start_date"] else None


TABLES: dict[str, _Table] = {
    t.name: t
    for t in [
        _Table(
            "stores",
            (
                _Column("store_id", "int", _nonneg),
                _Column("name", "str"),
                _Column("region", "str"),
                _Column("size", "float", _positive),
            ),
            "store_id BIGINT PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL, "
            "size DOUBLE PRECISION NOT NULL",
        ),
        _Table(
            "products",
            (
                _Column("product_id", "int", _nonneg),
                _Column("name", "str"),
                _Column("product_group", "str"),
                _Column("price", "float", _nonneg),
            ),
            "product_id BIGINT PRIMARY KEY, name TEXT NOT NULL, product_group TEXT NOT NULL, "
            "price DOUBLE PRECISION NOT NULL",
        ),
        _Table(
            "holidays",
            (_Column("date", "date"), _Column("name", "str")),
            "date DATE PRIMARY KEY, name TEXT NOT NULL",
        ),
        _Table(
            "promotions",
            (
                _Column("promo_id", "int", _nonneg),
                _Column("store_id", "int", references="stores"),
                _Column("product_id", "int", references="products"),
                _Column("start_date", "date"),
                _Column("end_date", "date"),
                _Column("discount", "float", _fraction),
            ),
            "promo_id BIGINT PRIMARY KEY, store_id BIGINT NOT NULL, product_id BIGINT NOT NULL, "
            "start_date DATE NOT NULL, end_date DATE NOT NULL, discount DOUBLE PRECISION NOT NULL",
            _promo_dates,
        ),
        _Table(
            "sales",
            (
                _Column("sale_id", "int", _nonneg),
                _Column("date", "date"),
                _Column("store_id", "int", references="stores"),
                _Column("product_id", "int", references="products"),
                _Column("qty", "int", _nonneg),
            ),
            "sale_id BIGINT PRIMARY KEY, date DATE NOT NULL, store_id BIGINT NOT NULL, "
            "product_id BIGINT NOT NULL, qty BIGINT NOT NULL",
        ),
    ]
}
_EXPECTED = {
    "int": "is not an integer",
    "float": "is not a number",
    "date": "is not a valid ISO date (YYYY-MM-DD)",
    "str": "is not a string",
}
_BATCHES_DDL = "key TEXT PRIMARY KEY, tbl TEXT NOT NULL, digest TEXT NOT NULL, body TEXT NOT NULL"
#: The ingest sequence: the counter's table, and the column every ingested row carries.
SEQUENCE_TABLE = "hafen_sequence"
SEQ_COLUMN = "hafen_seq"
_SEQUENCE_DDL = "id INTEGER PRIMARY KEY, n BIGINT NOT NULL"


class BatchError(Exception):
    """A batch refused: the status and the JSON body to answer with."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("detail"))
        self.status = status
        self.body = body


class BodyTooLarge(BatchError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, {"error": "too_large", "detail": f"the body is over {limit} bytes"})


class _Db:
    """One connection to a tenant's database, in one of its two dialects."""

    def __init__(self, tenant: Tenant, *, create: bool = False) -> None:
        self.url = parse_url(tenant.database)
        self.tenant = tenant
        self.sqlite = self.url.dialect == "sqlite"
        pooled = None if create else _POOL.take(tenant.database, self._identity())
        self.conn: Any = pooled
        if pooled is None:
            self.conn = connect(self.url, "ingest", create=create)
            if self.sqlite:
                self.conn.execute(f"PRAGMA busy_timeout = {_BUSY_SECONDS * 1000}")

    def _identity(self) -> Any:
        """What a pooled connection must still match: on SQLite, the database file (a file
        replaced at the same path is another database)."""
        if not self.sqlite:
            return None
        assert self.url.path is not None
        try:
            found = os.stat(self.url.path)
        except OSError:
            return ()
        return (found.st_dev, found.st_ino)

    def release(self) -> None:
        """Hand the connection (no transaction open) back to the pool, for the next batch."""
        _POOL.give(self.tenant.database, self._identity(), self.conn)

    def name(self, table: str) -> str:
        return quote_ident(self.tenant.table(table))

    def marks(self, n: int) -> str:
        return ", ".join("?" * n) if self.sqlite else ", ".join(f"${i + 1}" for i in range(n))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params if self.sqlite else (tuple(params) or None))
            try:
                return [tuple(r) for r in cur.fetchall()]
            except Exception:  # a statement without rows
                return []
        finally:
            cur.close()

    def next_seq(self) -> int:
        """The batch's ingest sequence number, in the open transaction (see the module
        docstring): the counter plus one on SQLite, the transaction's id on PostgreSQL."""
        if self.sqlite:
            sql = f"UPDATE {self.name(SEQUENCE_TABLE)} SET n = n + 1 WHERE id = 1 RETURNING n"
        else:
            sql = "SELECT pg_current_xact_id()::text::bigint"
        return int(self.execute(sql)[0][0])

    def driver_rows(
        self, data: Any, values: list[list[Any]] | None = None
    ) -> list[tuple[Any, ...]] | None:
        """On SQLite, ``data`` (an Arrow table; or its columns' ``values`` when at hand) as the
        rows ``executemany`` binds (dates as ISO text: SQLite has no date type), made before the
        write lock is taken; None otherwise."""
        if not self.sqlite:
            return None
        import pyarrow as pa

        columns = values or [
            c.cast(pa.string()).to_pylist()
            if pa.types.is_date32(c.type)
            else c.to_pylist()
            if pa.types.is_string(c.type)
            else c.to_numpy().tolist()  # int64, float64: the same Python values, faster
            for c in data.columns
        ]
        return list(zip(*columns, strict=True))

    def insert(
        self, table: _Table, data: Any, seq: int, rows: list[tuple[Any, ...]] | None = None
    ) -> None:
        """Insert ``data`` (an Arrow table of ``table``'s columns; on SQLite, ``rows`` are its
        :meth:`driver_rows` when made already) with ingest sequence ``seq``, in the open
        transaction: ``executemany`` on SQLite, the binary COPY of ADBC's bulk ingest on
        PostgreSQL."""
        import pyarrow as pa

        names = [*table.names, SEQ_COLUMN]
        if self.sqlite:
            rows = self.driver_rows(data) if rows is None else rows
            assert rows is not None
            self.executemany(
                f"INSERT INTO {self.name(table.name)} ({', '.join(map(quote_ident, names))}) "
                f"VALUES ({self.marks(len(table.names))}, {int(seq)})",
                rows,
            )
            return
        data = data.append_column(SEQ_COLUMN, pa.array([seq] * data.num_rows, pa.int64()))
        cur = self.conn.cursor()
        try:
            cur.adbc_ingest(table.name, data, mode="append", db_schema_name=self.tenant.schema)
        finally:
            cur.close()

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        cur = self.conn.cursor()
        try:
            cur.executemany(sql, rows)
        finally:
            cur.close()

    def begin(self) -> None:
        if self.sqlite:
            self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        if self.sqlite:
            self.conn.execute("COMMIT")
        else:
            self.conn.commit()

    def rollback(self) -> None:
        if self.sqlite:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        else:
            self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


class _Pool:
    """Idle ingest connections by database URL: a batch reuses one instead of connecting
    (on PostgreSQL, a connection costs a round trip and authentication; on SQLite, closing the
    last connection checkpoints the write-ahead log)."""

    SIZE = 8  # idle connections kept per database
    #: A server connection idle longer than this is tried (``SELECT 1``) before it is reused: a
    #: server restarted meanwhile would otherwise fail the next batches.
    FRESH = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[tuple[Any, Any, float]]] = {}

    def take(self, url: str, identity: Any) -> Any:
        while True:
            with self._lock:
                idle = self._idle.get(url)
                if not idle:
                    return None
                conn, was, since = idle.pop()
            if was == identity and (
                identity is not None or time.monotonic() - since < self.FRESH or _alive(conn)
            ):
                return conn
            with contextlib.suppress(Exception):
                conn.close()

    def give(self, url: str, identity: Any, conn: Any) -> None:
        with self._lock:
            idle = self._idle.setdefault(url, [])
            if len(idle) < self.SIZE:
                idle.append((conn, identity, time.monotonic()))
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection (at exit: before the drivers' modules are torn down)."""
        with self._lock:
            idle = [entry[0] for entries in self._idle.values() for entry in entries]
            self._idle.clear()
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def _alive(conn: Any) -> bool:
    """Whether a PostgreSQL connection still answers."""
    try:
        cur = conn.cursor()
        try:
            cur.execute("SELECT 1")
            cur.fetchall()
        finally:
            cur.close()
        conn.rollback()
    except Exception:
        return False
    return True


_POOL = _Pool()
atexit.register(_POOL.close)


def create_tables(tenant: Tenant) -> None:
    """The ingest tables (and the batch keys' table) in the tenant's database, if missing."""
    db = _Db(tenant, create=True)
    try:
        db.begin()
        if tenant.schema is not None:
            db.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(tenant.schema)}")
        elif db.sqlite:
            db.conn.execute("PRAGMA journal_mode=WAL") if not db.conn.in_transaction else None
        for table in TABLES.values():
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {db.name(table.name)} "
                f"({table.ddl}, {SEQ_COLUMN} BIGINT NOT NULL)"
            )
        # incremental runs select sales by sequence number
        db.execute(
            f"CREATE INDEX IF NOT EXISTS sales_{SEQ_COLUMN} ON {db.name('sales')} ({SEQ_COLUMN})"
        )
        db.execute(f"CREATE TABLE IF NOT EXISTS {db.name('hafen_batches')} ({_BATCHES_DDL})")
        db.execute(f"CREATE TABLE IF NOT EXISTS {db.name(SEQUENCE_TABLE)} ({_SEQUENCE_DDL})")
        db.execute(
            f"INSERT INTO {db.name(SEQUENCE_TABLE)} (id, n) VALUES (1, 0) "
            "ON CONFLICT (id) DO NOTHING"
        )
        db.commit()
    finally:
        db.close()
    if tenant.schema is None:  # WAL lets readers (the pipeline) run beside the ingest
        db = _Db(tenant)
        try:
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()


async def read_body(chunks: Any, limit: int) -> tuple[IO[bytes], str]:
    """The streamed body in a spooled temporary file, and its SHA-256; 413 past ``limit``."""
    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115  # handed to the caller
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            digest.update(chunk)
            out.write(chunk)
    except BaseException:  # too large, or cut off: nothing is kept
        out.close()
        raise
    out.seek(0)
    return out, digest.hexdigest()


def _refuse(detail: str) -> BatchError:
    return BatchError(422, {"error": "invalid_body", "detail": detail, "rows": []})


def parse_body(body: IO[bytes], content_type: str) -> list[dict[str, Any]]:
    """The rows of a JSON, CSV or Parquet body."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("", "application/json"):
        try:
            data = json.load(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _refuse(f"not JSON: {exc}") from None
        if isinstance(data, dict) and "rows" in data:
            data = data["rows"]
        if not isinstance(data, list):
            raise _refuse('a JSON body is an array of objects, or {"rows": [...]}')
        return data
    if kind in ("text/csv", "application/csv"):
        try:
            text = io.TextIOWrapper(body, encoding="utf-8", newline="")
            return [dict(r) for r in csv.DictReader(text)]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise _refuse(f"not CSV: {exc}") from None
    if kind in ("application/vnd.apache.parquet", "application/x-parquet", "application/parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(body).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise _refuse(f"not Parquet: {exc}") from None
    raise BatchError(
        415,
        {
            "error": "unsupported_media_type",
            "detail": f"cannot read {kind!r}: JSON, CSV or Parquet",
        },
    )


def _value(kind: str, v: Any) -> Any:
    """``v`` as the column's type; ValueError if it is not one."""
    if v is None or v == "":
        raise ValueError("is required")
    if kind == "int":
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError("is not an integer")
        out = int(v) if isinstance(v, int | float) else int(str(v).strip())
        if abs(out) >= 2**63:
            raise ValueError("is out of range")
        return out
    if kind == "float":
        if isinstance(v, bool):
            raise ValueError("is not a number")
        number = float(v)
        if not math.isfinite(number):
            raise ValueError("is not a finite number")
        return number
    if kind == "date":
        if isinstance(v, dt.datetime):
            raise ValueError("is a timestamp, not a day")
        if isinstance(v, dt.date):
            return v
        if not isinstance(v, str):
            raise ValueError("is not an ISO date")
        return dt.date.fromisoformat(v)
    if not isinstance(v, str):
        raise ValueError("is not a string")
    return v


def _fast(kind: str, v: Any, dates: dict[str, dt.date]) -> Any:
    """``v`` as the column's type when it is already plainly one, else raise (the slow path
    then says why): the common case costs a type check (and a dict lookup for dates)."""
    t = type(v)
    if kind == "int" and t is int:
        return v
    if kind == "float" and (t is float or t is int) and math.isfinite(v):
        return float(v)
    if kind == "str" and t is str and v:
        return v
    if kind == "date" and t is str:
        day = dates.get(v)
        if day is None:
            day = dates[v] = _value("date", v)
        return day
    return _value(kind, v)


#: The checks of :data:`TABLES` over whole columns (NumPy arrays): True where a value passes.
_VECTOR_CHECKS: dict[Any, Callable[[Any], Any]] = {
    _nonneg: lambda a: a >= 0,
    _positive: lambda a: a > 0,
    _fraction: lambda a: (a >= 0) & (a < 1),
}
_KINDS: dict[str, set[type]] = {"int": {int}, "float": {int, float}, "str": {str}, "date": {str}}
_FIRST_DAY = -719_162  # 0001-01-01 in days since 1970-01-01: Python has no year 0


def _column(kind: str, values: list[Any]) -> Any:
    """``values`` as an Arrow array of the column's type if every one is plainly valid (the
    row-by-row path would accept it as is), else None."""
    import pyarrow as pa

    if not set(map(type, values)) <= _KINDS[kind]:
        return None
    if kind in ("str", "date") and not all(values):  # "" is a missing value
        return None
    types = {"int": pa.int64(), "float": pa.float64()}
    return _typed(kind, pa.array(values, types.get(kind, pa.string())))


def _typed(kind: str, array: Any) -> Any:
    """``array`` (int64, float64 or, for strings and dates, non-empty strings; no nulls) as the
    column's type if every value is plainly valid, else None."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "int":
        return array if not len(array) or pc.min(array).as_py() > -(2**63) else None
    if kind == "float":
        return array if bool(np.isfinite(array.to_numpy()).all()) else None
    if kind == "str":
        return array
    # YYYY-MM-DD exactly (what date.fromisoformat reads, and writes back), a real day
    if not pc.all(pc.match_substring_regex(array, r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")).as_py():
        return None
    days = array.cast(pa.date32())  # ArrowInvalid for a day that does not exist
    return days if pc.min(days.cast(pa.int32())).as_py() >= _FIRST_DAY else None


def _columnar(table: _Table, rows: list[Any]) -> tuple[Any, list[list[Any]]] | None:
    """The batch as an Arrow table (the columns' types, in order) and as the column values a
    driver binds (dates as their ISO text), if every row is plainly valid; else None: the
    row-by-row path (:func:`_validate`) then finds and names what is wrong. Valid batches cost
    a few passes over each column instead of Python per value."""
    import pyarrow as pa

    width = len(table.columns)
    if not rows or set(map(type, rows)) != {dict} or set(map(len, rows)) != {width}:
        return None
    arrays = []
    values = []
    try:
        for column in table.columns:
            given = list(map(operator.itemgetter(column.name), rows))
            array = _column(column.kind, given)
            if array is None:
                return None
            arrays.append(array)
            values.append(array.to_pylist() if column.kind == "float" else given)  # ints too
    except (KeyError, TypeError, ValueError, OverflowError, pa.ArrowException):
        return None
    data = _whole(table, arrays)
    return None if data is None else (data, values)


def _whole(table: _Table, arrays: list[Any]) -> Any:
    """The checks of :func:`_columnar` over whole columns (typed ``arrays``, a row each): the
    columns' value checks, the row check and the key's uniqueness; the batch as an Arrow table
    if they pass, else None."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    for column, array in zip(table.columns, arrays, strict=True):
        check = _VECTOR_CHECKS[column.check] if column.check else None
        if check is not None and not bool(check(array.to_numpy()).all()):
            return None
    data = pa.table(arrays, names=table.names)
    if table.row_check is _promo_dates:
        if not pc.all(pc.greater_equal(data["end_date"], data["start_date"])).as_py():
            return None
    elif table.row_check is not None:
        return None
    keys = data.column(0).to_numpy()
    if len(np.unique(keys)) != len(keys):  # a key repeats: say which rows
        return None
    return data


def _json_columns(table: _Table, body: bytes) -> Any:
    """The Arrow table :func:`_columnar` gives for the JSON array of objects ``body``, read
    straight into Arrow columns (no Python object per value) when every row is plainly valid;
    else None (then the body is read as before, and checked row by row).

    Arrow's reader refuses what :func:`_columnar` would: a value of another JSON type than the
    column's (a float or a string for an integer, a number for a string), a key not a column,
    a key given twice; a missing column or a null leaves a null, refused below."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    if body.lstrip()[:1] != b"[":
        return None
    native = {"int": pa.int64(), "float": pa.float64()}
    row = pa.struct([(c.name, native.get(c.kind, pa.string())) for c in table.columns])
    options = pj.ParseOptions(
        explicit_schema=pa.schema([("rows", pa.list_(row))]),
        unexpected_field_behavior="error",
        newlines_in_values=True,
    )
    wrapped = b'{"rows": ' + body + b"}"  # one JSON object: Arrow's reader reads objects
    try:
        read = pj.read_json(
            io.BytesIO(wrapped),
            # the object in one block (a block boundary inside it would refuse it)
            read_options=pj.ReadOptions(use_threads=False, block_size=len(wrapped) + 1),
            parse_options=options,
        )
        rows = pc.list_flatten(read.column(0)).combine_chunks()
        if not len(rows) or rows.null_count:
            return None
        arrays = []
        for position, column in enumerate(table.columns):
            given = rows.field(position)
            if given.null_count:
                return None
            if column.kind in ("str", "date") and pc.min(pc.utf8_length(given)).as_py() == 0:
                return None  # "" is a missing value
            array = _typed(column.kind, given)
            if array is None:
                return None
            arrays.append(array)
    except (pa.ArrowException, ValueError, OverflowError):
        return None
    return _whole(table, arrays)


def _as_table(table: _Table, rows: list[tuple[Any, ...]]) -> Any:
    """Typed rows (values in column order) as an Arrow table of the columns' types."""
    import pyarrow as pa

    types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "date": pa.date32()}
    arrays = [pa.array([r[i] for r in rows], types[c.kind]) for i, c in enumerate(table.columns)]
    return pa.table(arrays, names=table.names)


def _row_errors(table: _Table, i: int, row: Any) -> list[dict[str, Any]]:
    """The errors of one row that failed the fast path (none if it only needed converting)."""
    if not isinstance(row, dict):
        return [{"row": i, "column": None, "error": "is not an object"}]
    names = {c.name for c in table.columns}
    errors = [
        {"row": i, "column": str(extra), "error": "is not a column"}
        for extra in sorted(set(row) - names, key=str)
    ]
    out: dict[str, Any] = {}
    for column in table.columns:
        try:
            value = _value(column.kind, row.get(column.name))
        except (ValueError, TypeError) as exc:
            reason = str(exc) if str(exc).startswith("is ") else _EXPECTED[column.kind]
            errors.append({"row": i, "column": column.name, "error": reason})
            continue
        problem = column.check(value) if column.check else None
        if problem:
            errors.append({"row": i, "column": column.name, "error": problem})
        out[column.name] = value
    if not errors and table.row_check and (problem := table.row_check(out)):
        errors.append({"row": i, "column": None, "error": problem})
    return errors


def _validate(
    table: _Table, rows: list[Any]
) -> tuple[list[tuple[Any, ...]], list[int], list[dict[str, Any]]]:
    """The typed rows (values in column order), their numbers in the batch (from 0), and the
    row-level errors."""
    typed: list[tuple[Any, ...]] = []
    numbers: list[int] = []
    errors: list[dict[str, Any]] = []
    columns = [(c.name, c.kind, c.check) for c in table.columns]
    width = len(columns)
    dates: dict[str, dt.date] = {}
    seen: set[Any] = set()
    for i, row in enumerate(rows):
        try:
            if type(row) is not dict or len(row) != width:
                raise ValueError
            values = tuple(_fast(kind, row[name], dates) for name, kind, _ in columns)
            for (_, _, check), value in zip(columns, values, strict=True):
                if check is not None and check(value):
                    raise ValueError
            if table.row_check and table.row_check(dict(zip(table.names, values, strict=True))):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            found = _row_errors(table, i, row)
            if found:
                errors.extend(found)
                continue
            values = tuple(_value(kind, row[name]) for name, kind, _ in columns)
        if values[0] in seen:
            errors.append({"row": i, "column": table.key, "error": "repeats a key of this batch"})
            continue
        seen.add(values[0])
        typed.append(values)
        numbers.append(i)
    return typed, numbers, errors


def _existing(db: _Db, table: str, column: str, values: set[Any]) -> set[Any]:
    found: set[Any] = set()
    items = sorted(values)
    for start in range(0, len(items), 500):
        part = items[start : start + 500]
        params = [v.isoformat() if isinstance(v, dt.date) and db.sqlite else v for v in part]
        name = quote_ident(column)
        sql = f"SELECT {name} FROM {db.name(table)} WHERE {name} IN ({db.marks(len(part))})"
        for (v,) in db.execute(sql, params):
            found.add(dt.date.fromisoformat(v) if isinstance(v, str) and table == "holidays" else v)
    return found


def _check_database(
    db: _Db, table: _Table, data: Any, numbers: Sequence[int], *, keys: bool
) -> list[dict[str, Any]]:
    """Rows (``data``, an Arrow table; ``numbers``, their rows in the batch) naming stores or
    products that do not exist, and (with ``keys``) rows whose key exists already."""
    import pyarrow.compute as pc

    errors = []
    for position, column in enumerate(table.columns):
        if not (position == 0 and keys) and column.references is None:
            continue
        if column.references is not None:
            # the common case: every referenced id exists (a few distinct ids, checked once)
            distinct = set(pc.unique(data.column(position)).to_pylist())
            if _existing(db, column.references, column.name, distinct) == distinct:
                continue
        values = data.column(position).to_pylist()
        if position == 0 and keys:
            taken = _existing(db, table.name, table.key, set(values))
            errors += [
                {"row": n, "column": table.key, "error": "already exists"}
                for v, n in zip(values, numbers, strict=True)
                if v in taken
            ]
        if column.references is None:
            continue
        present = _existing(db, column.references, column.name, set(values))
        for v, n in zip(values, numbers, strict=True):
            if v not in present:
                what = f"names no existing {column.references[:-1]} ({v})"
                errors.append({"row": n, "column": column.name, "error": what})
    return errors


def _invalid(table: str, errors: list[dict[str, Any]]) -> BatchError:
    errors.sort(key=lambda e: (e["row"] is None, e["row"] or 0))
    return BatchError(
        422,
        {
            "error": "invalid_rows",
            "detail": f"{len(errors)} error(s) in the batch for {table}; nothing was inserted",
            "rows": errors[:MAX_ERRORS],
            "errors_total": len(errors),
        },
    )


@dataclasses.dataclass(frozen=True)
class CheckedBatch:
    """A batch that passed the checks of its rows alone (:func:`check_batch`): what
    :func:`insert_batch` inserts after the checks against the database."""

    table: str
    data: Any  # an Arrow table of the table's columns
    numbers: Sequence[int]  # each row's number in the batch, from 0
    values: list[list[Any]] | None = None  # the columns' values as a SQLite driver binds them


def check_batch(table_name: str, rows: list[Any]) -> CheckedBatch:
    """Check the rows of one batch on their own; raises :class:`BatchError` (422, the rows
    named) if any is wrong."""
    table = TABLES[table_name]
    checked = _columnar(table, rows)
    if checked is not None:
        return CheckedBatch(table_name, checked[0], range(len(rows)), checked[1])
    typed, numbers, errors = _validate(table, rows)  # something to convert or to refuse
    if errors:
        raise _invalid(table_name, errors)
    return CheckedBatch(table_name, _as_table(table, typed), numbers)


def read_batch(table_name: str, body: IO[bytes], content_type: str) -> CheckedBatch:
    """Read and check one batch's body (JSON, CSV or Parquet): :func:`parse_body`, then
    :func:`check_batch`; a JSON array of plainly valid rows goes straight into Arrow columns."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("", "application/json"):
        data = _json_columns(TABLES[table_name], body.read())
        if data is not None:
            return CheckedBatch(table_name, data, range(data.num_rows))
        body.seek(0)
    return check_batch(table_name, parse_body(body, content_type))


def ingest_batch(
    tenant: Tenant, table_name: str, rows: list[Any], *, key: str | None, digest: str
) -> dict[str, Any]:
    """Validate and insert one batch into the tenant's ``table_name`` in one transaction.

    Returns the answer's body (the first answer again for a retried ``key``); raises
    :class:`BatchError` for a refused batch, with nothing inserted.
    """
    return insert_batch(tenant, check_batch(table_name, rows), key=key, digest=digest)


#: One lock per SQLite database, held from a batch's BEGIN to its COMMIT: SQLite runs one
#: writer at a time anyway, and a writer waiting in SQLite's busy handler sleeps in steps of up
#: to 100 ms, so the database sat idle between batches while the next one slept.
_WRITERS: dict[str, threading.Lock] = {}
_WRITERS_LOCK = threading.Lock()


@contextlib.contextmanager
def _writer(db: _Db) -> Any:
    """Hold the lock of ``db``'s SQLite database (nothing on PostgreSQL); past SQLite's own
    busy timeout (another process writing), go on and let SQLite wait or refuse, as before."""
    if not db.sqlite:
        yield
        return
    with _WRITERS_LOCK:
        lock = _WRITERS.setdefault(db.tenant.database, threading.Lock())
    held = lock.acquire(timeout=_BUSY_SECONDS)
    try:
        yield
    finally:
        if held:
            lock.release()


def insert_batch(
    tenant: Tenant, batch: CheckedBatch, *, key: str | None, digest: str
) -> dict[str, Any]:
    """Insert a checked batch into the tenant's database in one transaction, after checking
    its references (and keys) there; returns the answer's body, as :func:`ingest_batch`."""
    table_name, data, numbers = batch.table, batch.data, batch.numbers
    table = TABLES[table_name]
    answer = {"table": table_name, "inserted": data.num_rows, "idempotency_key": key}
    db = _Db(tenant)
    try:
        prepared = db.driver_rows(data, batch.values)  # outside the transaction: writers queue
        with _writer(db):
            try:
                replayed = _insert(db, table, data, numbers, prepared, key, digest, answer)
            except BaseException:  # rolled back before the next writer begins
                with contextlib.suppress(Exception):
                    db.rollback()
                raise
    except BatchError:  # refused: the connection is fine
        db.rollback()
        db.release()
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            db.rollback()
        db.close()
        raise
    db.release()
    return answer if replayed is None else replayed


def _insert(
    db: _Db,
    table: _Table,
    data: Any,
    numbers: Sequence[int],
    prepared: list[tuple[Any, ...]] | None,
    key: str | None,
    digest: str,
    answer: dict[str, Any],
) -> dict[str, Any] | None:
    """The transaction of :func:`insert_batch`; the first answer for a replayed ``key``, else
    None (committed)."""
    db.begin()
    if key is not None:  # the answer lands with the rows, or neither does
        claimed = db.execute(
            f"INSERT INTO {db.name('hafen_batches')} (key, tbl, digest, body) "
            f"VALUES ({db.marks(4)}) ON CONFLICT (key) DO NOTHING RETURNING key",
            [key, table.name, digest, json.dumps(answer)],
        )
        if not claimed:  # landed before (or just now, by a concurrent retry)
            db.rollback()
            replayed = _replay(db, key, table.name, digest)
            db.rollback()
            return replayed
    errors = _check_database(db, table, data, numbers, keys=False)
    if errors:
        raise _invalid(table.name, errors)
    if data.num_rows:
        try:
            db.insert(table, data, db.next_seq(), prepared)
        except Exception as exc:  # a key that exists: say which rows (a rare, slow path)
            if "IntegrityError" not in type(exc).__name__:
                raise
            db.rollback()
            db.begin()
            errors = _check_database(db, table, data, numbers, keys=True)
            raise _invalid(
                table.name, errors or [{"row": None, "column": None, "error": str(exc)}]
            ) from None
    db.commit()
    return None


def _replay(db: _Db, key: str, table: str, digest: str) -> dict[str, Any]:
    rows = db.execute(
        f"SELECT tbl, digest, body FROM {db.name('hafen_batches')} WHERE key = {db.marks(1)}", [key]
    )
    if not db.sqlite:
        db.conn.rollback()
    stored_table, stored_digest, body = rows[0]
    if stored_table != table or stored_digest != digest:
        raise BatchError(
            422,
            {
                "error": "idempotency_key_reused",
                "detail": "this Idempotency-Key was used for another batch",
                "rows": [],
            },
        )
    return dict(json.loads(body), replayed=True)  # the route answers it without "replayed"
