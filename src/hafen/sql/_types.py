"""Type mapping between datasets (Arrow) and relational databases, both ways.

One table; ``docs/sql-types.md`` has the same one with examples.

=================================  ===========================  ================================
Dataset (Arrow)                    PostgreSQL (reads back as)   SQLite declared type (stored as)
=================================  ===========================  ================================
bool                               boolean                      BOOLEAN (0 / 1)
int8, int16, uint8                 smallint (int16)             SMALLINT (int16)
int32, uint16                      integer (int32)              INTEGER (reads int64)
int64, uint32                      bigint (int64)               BIGINT (int64)
float16, float32                   real (float32)               REAL (8 bytes; reads float64)
float64                            double precision (float64)   DOUBLE (float64)
decimal128/256(p, s)               numeric(p, s) (decimal(p,s)) NUMERIC(p, s) (REAL: 15 digits)
string, large_string, dictionary   text (string)                TEXT
binary, large_binary               bytea (binary)               BLOB
date32, date64                     date (date32)                DATE ('YYYY-MM-DD')
timestamp[unit]                    timestamp (timestamp[us])    TIMESTAMP ('YYYY-MM-DD HH:MM:SS.f')
timestamp[unit, tz]                timestamptz ([us, UTC])      TIMESTAMPTZ ('...SS.f+00:00')
null (no values at all)            text                         TEXT
=================================  ===========================  ================================

Reading, also: PostgreSQL ``numeric`` without a precision reads as float64 (not exact: cast in
the query, ``amount::numeric(18, 4)``, to keep it exact); ``json``/``jsonb`` read as string.
SQLite columns are read by their declared type (affinity rules: ``INT`` -> int64, ``CHAR``,
``CLOB``, ``TEXT`` -> string, ``REAL``, ``FLOA``, ``DOUB`` -> float64, ``DEC``/``NUMERIC(p, s)``
-> decimal(p, s), ``BOOL`` -> bool, ``DATE`` -> date32, ``DATETIME``/``TIMESTAMP`` ->
timestamp[us]); a column without one (an expression) by the type of its first non-null value.

Every column is nullable both ways; NULL is a null. Timestamps are microseconds in PostgreSQL:
finer units are truncated. Unsigned 64-bit integers, lists, structs, times, intervals and other
database types (``uuid``, arrays, ...) are refused with a :class:`SchemaError` naming the column;
cast them in the query (``id::text``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hafen.errors import SchemaError

__all__ = [
    "arrow_from_postgres",
    "arrow_from_sqlite",
    "compatible",
    "conform_batch",
    "postgres_type",
    "sqlite_column",
    "sqlite_type",
    "to_sqlite_values",
]

UTC = "UTC"
_NUMERIC_TYPMOD_OFFSET = 4


# --- dataset -> database --------------------------------------------------------------------


def _unsupported(column: str, type_: pa.DataType, db: str) -> SchemaError:
    return SchemaError(
        f"column {column!r}: type {type_} has no {db} equivalent "
        "(supported: integers, floats, decimals, strings, binary, booleans, dates, timestamps)"
    )


def _value_type(type_: pa.DataType) -> pa.DataType:
    return type_.value_type if pa.types.is_dictionary(type_) else type_


# The declared column type of each kind of Arrow type, per database; decimals are formatted.
_DECLARED = {
    "PostgreSQL": {
        "bool": "boolean", "int16": "smallint", "int32": "integer", "int64": "bigint",
        "float32": "real", "float64": "double precision", "decimal": "numeric({p}, {s})",
        "text": "text", "binary": "bytea", "date": "date",
        "timestamptz": "timestamptz", "timestamp": "timestamp",
    },
    "SQLite": {
        "bool": "BOOLEAN", "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT",
        "float32": "REAL", "float64": "DOUBLE", "decimal": "NUMERIC({p}, {s})",
        "text": "TEXT", "binary": "BLOB", "date": "DATE",
        "timestamptz": "TIMESTAMPTZ", "timestamp": "TIMESTAMP",
    },
}  # fmt: skip


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_boolean(t):
        return "bool"
    if t in (pa.int8(), pa.int16(), pa.uint8()):
        return "int16"
    if t in (pa.int32(), pa.uint16()):
        return "int32"
    if t in (pa.int64(), pa.uint32()):
        return "int64"
    if t in (pa.float16(), pa.float32()):
        return "float32"
    if t == pa.float64():
        return "float64"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return "text"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    return None


def _declared_type(column: str, type_: pa.DataType, database: str) -> str:
    t = _value_type(type_)
    kind = _kind(t)
    if kind is None:
        raise _unsupported(column, type_, database)
    name = _DECLARED[database][kind]
    return name.format(p=t.precision, s=t.scale) if kind == "decimal" else name


def postgres_type(column: str, type_: pa.DataType) -> str:
    """The PostgreSQL column type for an Arrow type, or :class:`SchemaError`."""
    return _declared_type(column, type_, "PostgreSQL")


def sqlite_type(column: str, type_: pa.DataType) -> str:
    """The declared SQLite column type for an Arrow type, or :class:`SchemaError`."""
    return _declared_type(column, type_, "SQLite")


def for_postgres_ingest(table: pa.Table) -> pa.Table:
    """``table`` with types ADBC's PostgreSQL ingest writes as the mapped type."""
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        t = column.type
        target = None
        if pa.types.is_dictionary(t):
            target = t.value_type
        elif pa.types.is_null(t):
            target = pa.string()
        elif t == pa.int8() or t == pa.uint8():
            target = pa.int16()
        elif t == pa.uint16():
            target = pa.int32()
        elif t == pa.uint32():
            target = pa.int64()
        elif t == pa.float16():
            target = pa.float32()
        elif pa.types.is_date64(t):
            target = pa.date32()
        elif pa.types.is_decimal(t):
            target = pa.string()  # exact; numeric(p, s) parses it
        elif pa.types.is_timestamp(t) and t.unit == "ns":
            target = pa.timestamp("us", t.tz)
        if target is not None:
            try:
                column = column.cast(target, safe=not pa.types.is_timestamp(t))
            except pa.ArrowInvalid as exc:
                raise SchemaError(
                    f"column {name!r}: cannot convert {t} to {target}: {exc}"
                ) from exc
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def to_sqlite_values(table: pa.Table) -> list[tuple[Any, ...]]:
    """Rows of ``table`` as tuples of values the sqlite3 module stores as the mapped type."""
    columns: list[list[Any]] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        t = _value_type(column.type)
        if pa.types.is_dictionary(column.type):
            column = column.cast(t)
        if pa.types.is_boolean(t):
            column = column.cast(pa.int8())
        elif pa.types.is_date(t):
            column = column.cast(pa.date32()).cast(pa.string())
        elif pa.types.is_timestamp(t):
            if t.tz:
                micro = column.cast(pa.timestamp("us", UTC), safe=False)
                column = pc.strftime(micro, format="%Y-%m-%d %H:%M:%S+00:00")
            else:
                micro = column.cast(pa.timestamp("us"), safe=False)
                column = pc.strftime(micro, format="%Y-%m-%d %H:%M:%S")
        elif pa.types.is_decimal(t) or pa.types.is_null(t):
            column = column.cast(pa.string())
        else:
            sqlite_type(name, t)  # refuses what SQLite cannot hold
        columns.append(column.to_pylist())
    return list(zip(*columns, strict=True)) if columns else []


# --- database -> dataset --------------------------------------------------------------------


def _numeric_type(precision: int | None, scale: int | None) -> pa.DataType:
    if precision is None:
        return pa.float64()
    scale = scale or 0
    if precision <= 38:
        return pa.decimal128(precision, scale)
    return pa.decimal256(min(precision, 76), scale)


_POSTGRES_SIMPLE = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "json": pa.string(),
    "jsonb": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", UTC),
}


def arrow_from_postgres(field: pa.Field) -> pa.Field:
    """The dataset field for a field of ADBC's PostgreSQL result schema."""
    meta = field.metadata or {}
    typname = meta.get(b"POSTGRESQL:type", b"").decode()
    if typname == "numeric":
        typmod = int(meta.get(b"POSTGRESQL:typmod", b"-1"))
        if typmod < _NUMERIC_TYPMOD_OFFSET:
            return pa.field(field.name, pa.float64())
        typmod -= _NUMERIC_TYPMOD_OFFSET
        return pa.field(field.name, _numeric_type(typmod >> 16, typmod & 0xFFFF))
    if typname in _POSTGRES_SIMPLE:
        return pa.field(field.name, _POSTGRES_SIMPLE[typname])
    raise SchemaError(
        f"column {field.name!r}: PostgreSQL type {typname or field.type} is not supported; "
        f"cast it in the query (e.g. {field.name}::text)"
    )


_DECLARED_NUMERIC = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def arrow_from_sqlite(column: str, declared: str, sample: Any = None) -> pa.DataType:
    """The dataset type for an SQLite column, by its declared type (or a sample value)."""
    d = declared.upper().strip()
    if not d:
        if isinstance(sample, bool | int):
            return pa.int64()
        if isinstance(sample, float):
            return pa.float64()
        if isinstance(sample, bytes):
            return pa.binary()
        return pa.string()
    if d.startswith("BOOL"):
        return pa.bool_()
    if d in ("SMALLINT", "INT2", "TINYINT"):
        return pa.int16()
    if "INT" in d:
        return pa.int64()
    if any(s in d for s in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if "BLOB" in d:
        return pa.binary()
    if any(s in d for s in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    if d.startswith(("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE", "DATETIMETZ")):
        return pa.timestamp("us", UTC)
    if d.startswith(("TIMESTAMP", "DATETIME")):
        return pa.timestamp("us")
    if d == "DATE":
        return pa.date32()
    if d.startswith(("NUMERIC", "DECIMAL", "DEC")):
        match = _DECLARED_NUMERIC.search(d)
        if match is None:
            return pa.float64()
        precision, scale = int(match.group(1)), int(match.group(2) or 0)
        return _numeric_type(precision, scale)
    raise SchemaError(f"column {column!r}: SQLite declared type {declared!r} is not supported")


def sqlite_column(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    """Build an Arrow array of ``type_`` from values the sqlite3 module returned."""
    if pa.types.is_decimal(type_):
        quantum = decimal.Decimal(1).scaleb(-type_.scale)
        return pa.array(
            [None if v is None else decimal.Decimal(str(v)).quantize(quantum) for v in values],
            type=type_,
        )
    if pa.types.is_boolean(type_):
        return pa.array(values, type=pa.int64()).cast(pa.bool_())
    if pa.types.is_date(type_) or pa.types.is_timestamp(type_):
        as_text = [v if v is None or isinstance(v, str) else _iso(v) for v in values]
        return pa.array(as_text, type=pa.string()).cast(type_)
    if pa.types.is_string(type_):
        return pa.array([v if v is None or isinstance(v, str) else str(v) for v in values])
    if pa.types.is_integer(type_):
        return pa.array(values, type=pa.int64()).cast(type_)
    if pa.types.is_floating(type_):
        return pa.array([None if v is None else float(v) for v in values], type=type_)
    return pa.array(values, type=type_)


def _iso(value: Any) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


# --- both -----------------------------------------------------------------------------------


def conform_batch(batch: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a batch the driver returned to the dataset schema (same names, in order)."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    columns = []
    for field, column in zip(schema, table.columns, strict=True):
        if isinstance(column.type, pa.ExtensionType):
            column = column.cast(column.type.storage_type)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"column {field.name!r}: cannot convert {column.type} to {field.type}: {exc}"
                ) from exc
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _family(type_: pa.DataType) -> str:
    t = _value_type(type_)
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_null(t):
        return "null"
    return str(t)


_ACCEPTS = {
    "bool": {"bool"},
    "int": {"int"},
    "number": {"int", "number"},
    "text": {"text"},
    "binary": {"binary"},
    "date": {"date"},
    "timestamp": {"timestamp", "date"},
    "timestamptz": {"timestamptz"},
}


def compatible(data: pa.DataType, column: pa.DataType) -> bool:
    """Whether values of Arrow type ``data`` may be written into a column read as ``column``."""
    source = _family(data)
    return source == "null" or source in _ACCEPTS.get(_family(column), set())
