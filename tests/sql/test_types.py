"""The type mapping of hafen.sql._types (and docs/sql-types.md), both ways, on both databases."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest

import hafen

UTC = dt.UTC

DATASET = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "b": pa.array([True, False, None]),
        "i16": pa.array([-32768, 7, None], pa.int16()),
        "i32": pa.array([-(2**31), 7, None], pa.int32()),
        "i64": pa.array([-(2**63), 2**63 - 1, None], pa.int64()),
        "f32": pa.array([1.5, -0.25, None], pa.float32()),
        "f64": pa.array([1e300, -2.5e-300, None], pa.float64()),
        "dec": pa.array([Decimal("123456789.123"), Decimal("-0.001"), None], pa.decimal128(12, 3)),
        "s": pa.array(["héllo", "", None]),
        "bin": pa.array([b"\x00\x01", b"", None]),
        "d": pa.array([dt.date(1970, 1, 1), dt.date(2999, 12, 31), None]),
        "ts": pa.array([dt.datetime(2020, 1, 2, 3, 4, 5, 678901), dt.datetime(1900, 1, 1), None],
                       pa.timestamp("us")),
        "tz": pa.array([dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC), dt.datetime(1999, 12, 31, 23,
                        tzinfo=UTC), None], pa.timestamp("us", "UTC")),
    }
)  # fmt: skip

POSTGRES_DDL = {
    "id": "bigint", "b": "boolean", "i16": "smallint", "i32": "integer", "i64": "bigint",
    "f32": "real", "f64": "double precision", "dec": "numeric(12,3)", "s": "text",
    "bin": "bytea", "d": "date", "ts": "timestamp without time zone",
    "tz": "timestamp with time zone",
}  # fmt: skip
SQLITE_DDL = {
    "id": "BIGINT", "b": "BOOLEAN", "i16": "SMALLINT", "i32": "INTEGER", "i64": "BIGINT",
    "f32": "REAL", "f64": "DOUBLE", "dec": "NUMERIC(12, 3)", "s": "TEXT", "bin": "BLOB",
    "d": "DATE", "ts": "TIMESTAMP", "tz": "TIMESTAMPTZ",
}  # fmt: skip
#: What SQLite gives back where it has no narrower type (documented in the table).
SQLITE_WIDENED = {"i32": pa.int64(), "f32": pa.float64()}


def _declared(url: str, table: str) -> dict[str, str]:
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"))
        rows = con.execute(f"PRAGMA table_info({table})").fetchall()
        con.close()
        return {r[1]: r[2] for r in rows}
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns "
            "JOIN pg_attribute ON attrelid = %s::regclass AND attname = column_name "
            "WHERE table_name = %s",
            (table, table),
        ).fetchall()
    return {name: kind.replace(", ", ",") for name, kind in rows}


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_dataset_to_database_and_back(dialect, tmp_path, request, client):
    if dialect == "sqlite":
        url, ddl, widened = f"sqlite:///{tmp_path / 'types.db'}", SQLITE_DDL, SQLITE_WIDENED
    else:
        url, ddl, widened = request.getfixturevalue("pg_url"), POSTGRES_DDL, {}
    source = str(tmp_path / "source")
    hafen.write_dataset(DATASET, source)
    assert hafen.load(source, url, table="typed", key=["id"], client=client) == 3
    declared = _declared(url, "typed")
    assert {k: v.replace(", ", ",") for k, v in declared.items()} == {
        k: v.replace(", ", ",") for k, v in ddl.items()
    }
    back = hafen.extract(url, "typed", str(tmp_path / "back"), client=client).read_arrow()
    names = DATASET.column_names
    types = [widened.get(n, DATASET.schema.field(n).type) for n in names]
    columns = [DATASET.column(n).cast(t) for n, t in zip(names, types, strict=True)]
    expected = pa.table(columns, names=names)
    assert back.schema == expected.schema
    assert back.sort_by("id").equals(expected)


POSTGRES_TABLE = """
CREATE TABLE native (
  a int2, b int4, c int8, d real, e double precision, f numeric(10, 2), g numeric, h text,
  i varchar(10), j char(3), k boolean, l date, m timestamp, n timestamptz, o bytea, p jsonb
);
INSERT INTO native VALUES
  (1, 2, 3, 1.5, 2.5, 12.34, 0.5, 'x', 'y', 'z', true, '2020-02-29', '2020-01-02 03:04:05.5',
   '2020-01-02 03:04:05+02', '\\x0102', '{"k": 1}'),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""
POSTGRES_EXPECTED = {
    "a": (pa.int16(), 1), "b": (pa.int32(), 2), "c": (pa.int64(), 3), "d": (pa.float32(), 1.5),
    "e": (pa.float64(), 2.5), "f": (pa.decimal128(10, 2), Decimal("12.34")),
    "g": (pa.float64(), 0.5), "h": (pa.string(), "x"), "i": (pa.string(), "y"),
    "j": (pa.string(), "z  "), "k": (pa.bool_(), True), "l": (pa.date32(), dt.date(2020, 2, 29)),
    "m": (pa.timestamp("us"), dt.datetime(2020, 1, 2, 3, 4, 5, 500000)),
    "n": (pa.timestamp("us", "UTC"), dt.datetime(2020, 1, 2, 1, 4, 5, tzinfo=UTC)),
    "o": (pa.binary(), b"\x01\x02"), "p": (pa.string(), '{"k": 1}'),
}  # fmt: skip

SQLITE_TABLE = """
CREATE TABLE native (
  a SMALLINT, b INTEGER, c BIGINT, d REAL, e DOUBLE, f NUMERIC(10, 2), g NUMERIC, h TEXT,
  i VARCHAR(10), k BOOLEAN, l DATE, m DATETIME, n TIMESTAMPTZ, o BLOB
);
INSERT INTO native VALUES
  (1, 2, 3, 1.5, 2.5, 12.34, 0.5, 'x', 'y', 1, '2020-02-29', '2020-01-02 03:04:05.5',
   '2020-01-02 03:04:05+02:00', x'0102'),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""
SQLITE_EXPECTED = {
    "a": (pa.int16(), 1), "b": (pa.int64(), 2), "c": (pa.int64(), 3), "d": (pa.float64(), 1.5),
    "e": (pa.float64(), 2.5), "f": (pa.decimal128(10, 2), Decimal("12.34")),
    "g": (pa.float64(), 0.5), "h": (pa.string(), "x"), "i": (pa.string(), "y"),
    "k": (pa.bool_(), True), "l": (pa.date32(), dt.date(2020, 2, 29)),
    "m": (pa.timestamp("us"), dt.datetime(2020, 1, 2, 3, 4, 5, 500000)),
    "n": (pa.timestamp("us", "UTC"), dt.datetime(2020, 1, 2, 1, 4, 5, tzinfo=UTC)),
    "o": (pa.binary(), b"\x01\x02"),
}  # fmt: skip


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_database_types_to_dataset(dialect, tmp_path, request, client):
    if dialect == "sqlite":
        path = tmp_path / "native.db"
        con = sqlite3.connect(path)
        con.executescript(SQLITE_TABLE)
        con.close()
        url, expected = f"sqlite:///{path}", SQLITE_EXPECTED
    else:
        url, expected = request.getfixturevalue("pg_url"), POSTGRES_EXPECTED
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(POSTGRES_TABLE)
    ds = hafen.extract(url, "native", str(tmp_path / "ds"), client=client)
    assert {f.name: f.type for f in ds.schema} == {k: t for k, (t, _) in expected.items()}
    rows = ds.read_arrow().to_pylist()
    values = next(r for r in rows if r["h"] is not None)
    assert values == {k: v for k, (_, v) in expected.items()}
    nulls = next(r for r in rows if r["h"] is None)
    assert set(nulls.values()) == {None}


def test_expression_columns_take_their_values_type(tmp_path, client):
    path = tmp_path / "e.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x INTEGER)")
    con.executemany("INSERT INTO t VALUES (?)", [(None,), (2,)])
    con.commit()
    con.close()
    query = "SELECT x * 2 AS a, x / 4.0 AS b, 'v' || x AS c FROM t"
    ds = hafen.extract(f"sqlite:///{path}", query, str(tmp_path / "ds"), client=client)
    assert [f.type for f in ds.schema] == [pa.int64(), pa.float64(), pa.string()]
