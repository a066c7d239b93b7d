"""``load``: a dataset into a table, in parallel chunks, each in its own transaction.

The dataset's files are grouped into chunks; each chunk is one Dask task under the cluster-wide
limit that reads its files and writes them in one transaction. Into PostgreSQL a chunk is copied
(ADBC's binary ``COPY``) into a temporary table and moved into the target with one
``INSERT ... SELECT`` (``ON CONFLICT (key) DO UPDATE`` for upserts); into SQLite it is one
``executemany`` inside ``BEGIN IMMEDIATE``.

No partial table is left behind: a table that does not exist yet, and every ``replace``, is
built under a staging name and swapped in by one transaction at the end (drop the old table,
rename the new one); if a chunk fails the staging table is dropped and the target is untouched.
Appending or upserting into an existing table commits chunk by chunk: after a failure the chunks
that committed stay (an upsert can simply be run again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from hafen.datasets._actions import DataFile, DatasetState
from hafen.datasets._dataset import Dataset, open_dataset
from hafen.datasets._storage import Storage
from hafen.errors import ConfigError, HafenError, SchemaError, SQLError
from hafen.sql._source import table_exists
from hafen.sql._tasks import first_error, limit_name, run_chunks, task_client
from hafen.sql._types import (
    arrow_from_postgres,
    arrow_from_sqlite,
    compatible,
    for_postgres_ingest,
    postgres_type,
    sqlite_type,
    to_sqlite_values,
)
from hafen.sql._url import DatabaseURL, connect, map_db_errors, parse_url, quote_ident

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["load"]

LOAD_MODES = ("append", "replace", "upsert")
#: Chunks when not given: one per data file, at most this many.
MAX_DEFAULT_CHUNKS = 64
DEFAULT_UPSERT_RETRIES = 2


def load(
    dataset_url: str | Storage | Dataset,
    db_url: str,
    *,
    table: str,
    mode: Literal["append", "replace", "upsert"] = "append",
    key: Sequence[str] | None = None,
    chunks: int | None = None,
    limit: str | int | None = None,
    version: int | None = None,
    client: Client | None = None,
    storage_options: dict[str, Any] | None = None,
) -> int:
    """Write a dataset into a database table, in parallel chunks, each its own transaction.

    Parameters
    ----------
    dataset_url
        The dataset to load (its latest version, or ``version``), or an open
        :class:`~hafen.datasets.Dataset` (its version, unless ``version`` says otherwise).
    db_url
        ``sqlite:///path.db`` (created if missing) or ``postgresql://user:password@host/db``.
    table
        The target table (``name`` or ``schema.name``); created from the dataset schema if
        missing (with ``key`` as its primary key).
    mode
        ``"append"`` adds rows; ``"replace"`` builds a new table and swaps it in at the end (the
        old table is replaced only if every chunk succeeded); ``"upsert"`` inserts or updates
        rows by ``key``, so loading twice gives the same table.
    key
        Key columns; required for ``"upsert"`` (the table needs a unique index or primary key
        on exactly these columns).
    chunks
        Number of tasks; default one per data file, at most 64.
    limit
        A cluster-wide limit each chunk takes a slot of, or a number of slots for this call.
    version
        The dataset version to load.
    client
        The Dask client; defaults to the running one, else an in-process cluster for the call.
    storage_options
        fsspec options for the dataset's storage (over the ``storage_options`` setting).

    Returns
    -------
    int
        The number of rows written.

    Raises
    ------
    hafen.errors.SQLError
        The URL is invalid or the database refused (no secrets shown).
    hafen.errors.SchemaError
        A column is missing from the table, or its type does not match.

    Examples
    --------
    >>> hafen.load("data/forecasts", "postgresql://...", table="forecasts",
    ...            mode="upsert", key=["store_id", "product_id", "date"])  # doctest: +SKIP
    """
    db = parse_url(db_url)
    if mode not in LOAD_MODES:
        raise ConfigError(f"mode must be one of {', '.join(LOAD_MODES)}, got {mode!r}")
    if not isinstance(table, str) or not table.strip():
        raise ConfigError("table must be a table name")
    keys = _check_key(key, mode)
    if isinstance(dataset_url, Dataset):
        ds = dataset_url if version is None else open_dataset(dataset_url.storage, version=version)
    else:
        ds = open_dataset(dataset_url, version=version, storage_options=storage_options)
    schema = pa.schema([f for f in ds.schema])
    missing_keys = [k for k in keys if k not in schema.names]
    if missing_keys:
        raise SchemaError(f"key columns {missing_keys} are not in the dataset ({schema.names})")
    ddl_types = {f.name: _db_type(db, f.name, f.type) for f in schema}  # refuses early

    conn = connect(db, "meta", create=True)
    try:
        with map_db_errors(db, f"inspecting table {table!r}"):
            exists = table_exists(db, conn, table)
            if exists and mode != "replace":
                columns = _table_columns(db, conn, table)
                _check_columns(table, schema, columns)
                if mode == "upsert":
                    _check_unique(db, conn, table, keys)
                cast_types = {name: columns[name][0] for name in schema.names}
                target = table
            else:
                target = _staging_name(table)
                _execute(db, conn, _create_sql(db, target, schema, ddl_types, keys))
                cast_types = ddl_types
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    staging = target != table

    groups = _chunk_files(list(ds.files()), chunks)
    # tasks read the files they are given: the schema and layout, not the file list, travel
    header = dataclasses.replace(ds.state, files={}, index_parts=[])
    args = [
        (db, ds.storage, header, group, target, schema.names, cast_types, keys, mode)
        for group in groups
    ]
    try:
        with task_client(client) as dask_client, limit_name(dask_client, limit) as name:
            outcome = run_chunks(
                dask_client,
                load_chunk,
                args,
                limit=name,
                retries=DEFAULT_UPSERT_RETRIES if mode == "upsert" and not staging else 0,
                name="hafen-load",
            )
        if outcome.errors:
            exc = first_error(outcome.errors)
            done = "nothing was changed" if staging else f"{len(outcome.results)} chunks committed"
            message = f"{len(outcome.errors)} of {len(groups)} chunks failed ({done}): "
            if isinstance(exc, HafenError):
                shown = db.scrub(str(exc))
                raise type(exc)(message + shown) from (exc if shown == str(exc) else None)
            raise SQLError(f"{db.masked}: {message}{db.scrub(str(exc))}")
        if staging:
            _swap(db, target, table, replace=(mode == "replace"))
            staging = False
        return int(sum(outcome.results))
    finally:
        if staging:
            _drop_quietly(db, target)


def _check_key(key: Sequence[str] | None, mode: str) -> list[str]:
    if key is None:
        if mode == "upsert":
            raise ConfigError("mode='upsert' needs key= (the columns that identify a row)")
        return []
    if isinstance(key, str):
        return [key]
    keys = list(key)
    if not keys:
        raise ConfigError("key must name at least one column")
    return keys


def _db_type(db: DatabaseURL, column: str, type_: pa.DataType) -> str:
    if db.dialect == "postgresql":
        return postgres_type(column, type_)
    return sqlite_type(column, type_)


def _staging_name(table: str) -> str:
    return f"{table}__hafen_{uuid.uuid4().hex[:10]}"


def _create_sql(
    db: DatabaseURL, table: str, schema: pa.Schema, types: dict[str, str], keys: Sequence[str]
) -> str:
    columns = [f"{quote_ident(f.name)} {types[f.name]}" for f in schema]
    if keys:
        columns.append(f"PRIMARY KEY ({', '.join(quote_ident(k) for k in keys)})")
    return f"CREATE TABLE {quote_ident(table)} ({', '.join(columns)})"


def _execute(db: DatabaseURL, conn: Any, *statements: str) -> None:
    """Run statements in one transaction."""
    with map_db_errors(db, statements[0].split("(")[0].strip()):
        if db.dialect == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql in statements:
                    conn.execute(sql)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        cur = conn.cursor()
        try:
            for sql in statements:
                cur.execute(sql)
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.close()
        conn.commit()


def _swap(db: DatabaseURL, staging: str, table: str, *, replace: bool) -> None:
    conn = connect(db, "meta")
    try:
        new_name = quote_ident(table.split(".")[-1])
        statements = [f"ALTER TABLE {quote_ident(staging)} RENAME TO {new_name}"]
        if replace:
            statements.insert(0, f"DROP TABLE IF EXISTS {quote_ident(table)}")
        _execute(db, conn, *statements)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _drop_quietly(db: DatabaseURL, table: str) -> None:
    with contextlib.suppress(Exception):
        conn = connect(db, "meta")
        try:
            _execute(db, conn, f"DROP TABLE IF EXISTS {quote_ident(table)}")
        finally:
            conn.close()


# --- checks against an existing table -------------------------------------------------------


def _table_columns(db: DatabaseURL, conn: Any, table: str) -> dict[str, tuple[str, Any]]:
    """``{column: (declared type, Arrow type or None)}`` of an existing table."""
    out: dict[str, tuple[str, Any]] = {}
    if db.dialect == "sqlite":
        for _cid, name, declared, *_ in conn.execute(f"PRAGMA table_info({quote_ident(table)})"):
            try:
                arrow = arrow_from_sqlite(name, declared or "", None) if declared else None
            except SchemaError:
                arrow = None
            out[name] = (declared or "", arrow)
        return out
    cur = conn.cursor()
    try:
        cur.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, a.atttypmod "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            f"WHERE a.attrelid = to_regclass('{_text(quote_ident(table))}') "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        )
        rows = cur.fetchall()
    finally:
        cur.close()
    conn.rollback()
    for name, formatted, typname, typmod in rows:
        meta = {"POSTGRESQL:type": typname, "POSTGRESQL:typmod": str(typmod)}
        try:
            arrow = arrow_from_postgres(pa.field(name, pa.null(), metadata=meta)).type
        except SchemaError:
            arrow = None
        out[name] = (formatted, arrow)
    return out


def _text(value: str) -> str:
    return value.replace("'", "''")


def _check_columns(table: str, schema: pa.Schema, columns: dict[str, tuple[str, Any]]) -> None:
    problems = []
    missing = [n for n in schema.names if n not in columns]
    if missing:
        problems.append(
            f"columns {missing} are not in the table (it has {', '.join(columns) or 'none'})"
        )
    for field in schema:
        if field.name not in columns:
            continue
        declared, arrow = columns[field.name]
        if arrow is None or not compatible(field.type, arrow):
            problems.append(
                f"column {field.name!r}: the dataset has {field.type}, the table has {declared}"
            )
    if problems:
        raise SchemaError(f"the dataset does not fit table {table!r}: " + "; ".join(problems))


def _check_unique(db: DatabaseURL, conn: Any, table: str, keys: Sequence[str]) -> None:
    wanted = set(keys)
    found: list[set[str]] = []
    if db.dialect == "sqlite":
        pk = {row[1] for row in conn.execute(f"PRAGMA table_info({quote_ident(table)})") if row[5]}
        found.append(pk)
        for row in conn.execute(f"PRAGMA index_list({quote_ident(table)})").fetchall():
            if row[2]:
                info = conn.execute(f"PRAGMA index_info({quote_ident(row[1])})").fetchall()
                found.append({r[2] for r in info})
    else:
        cur = conn.cursor()
        try:
            cur.execute(
                "SELECT i.indexrelid::bigint, a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                f"WHERE i.indrelid = to_regclass('{_text(quote_ident(table))}') "
                "AND i.indisunique"
            )
            groups: dict[int, set[str]] = {}
            for index, column in cur.fetchall():
                groups.setdefault(index, set()).add(column)
            found.extend(groups.values())
        finally:
            cur.close()
        conn.rollback()
    if wanted not in found:
        raise SchemaError(
            f"upsert into {table!r} on key {list(keys)} needs a unique index or primary key "
            f"on exactly those columns; the table has none (CREATE UNIQUE INDEX ... ON {table} "
            f"({', '.join(keys)}))"
        )


# --- chunks ---------------------------------------------------------------------------------


def _chunk_files(files: list[DataFile], chunks: int | None) -> list[list[DataFile]]:
    if chunks is not None and (not isinstance(chunks, int) or chunks < 1):
        raise ConfigError(f"chunks must be a positive integer, got {chunks!r}")
    if not files:
        return []
    n = min(len(files), chunks or MAX_DEFAULT_CHUNKS)
    groups: list[list[DataFile]] = [[] for _ in range(n)]
    sizes = [0] * n
    for f in sorted(files, key=lambda f: -f.num_rows):
        i = sizes.index(min(sizes))
        groups[i].append(f)
        sizes[i] += f.num_rows
    return [g for g in groups if g]


def load_chunk(
    db: DatabaseURL,
    storage: Storage,
    state: DatasetState,
    files: list[DataFile],
    target: str,
    names: list[str],
    cast_types: dict[str, str],
    keys: list[str],
    mode: str,
) -> int:
    """One chunk: read its files (of the version ``state`` describes) and write them into
    ``target`` in one transaction."""
    data = Dataset(storage, state).read_arrow(files=files).select(names)
    if data.num_rows == 0:
        return 0
    conn = connect(db, "load")
    try:
        with map_db_errors(db, f"writing {data.num_rows} rows into {target!r}"):
            if db.dialect == "postgresql":
                _write_postgres(conn, data, target, names, cast_types, keys, mode)
            else:
                _write_sqlite(conn, data, target, names, keys, mode)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return data.num_rows


def _conflict_clause(names: Sequence[str], keys: Sequence[str], mode: str, excluded: str) -> str:
    if mode != "upsert":
        return ""
    others = [n for n in names if n not in keys]
    target = ", ".join(quote_ident(k) for k in keys)
    if not others:
        return f" ON CONFLICT ({target}) DO NOTHING"
    sets = ", ".join(f"{quote_ident(n)} = {excluded}.{quote_ident(n)}" for n in others)
    return f" ON CONFLICT ({target}) DO UPDATE SET {sets}"


def _write_postgres(
    conn: Any,
    data: pa.Table,
    target: str,
    names: list[str],
    cast_types: dict[str, str],
    keys: list[str],
    mode: str,
) -> None:
    temp = f"hafen_load_{uuid.uuid4().hex[:12]}"
    cur = conn.cursor()
    try:
        cur.adbc_ingest(temp, for_postgres_ingest(data), mode="create", temporary=True)
        columns = ", ".join(quote_ident(n) for n in names)
        values = ", ".join(f"{quote_ident(n)}::{cast_types[n]}" for n in names)
        cur.execute(
            f"INSERT INTO {quote_ident(target)} ({columns}) SELECT {values} FROM {temp}"
            + _conflict_clause(names, keys, mode, "EXCLUDED")
        )
        cur.execute(f"DROP TABLE {temp}")
        conn.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise
    finally:
        cur.close()


def _write_sqlite(
    conn: Any, data: pa.Table, target: str, names: list[str], keys: list[str], mode: str
) -> None:
    columns = ", ".join(quote_ident(n) for n in names)
    marks = ", ".join("?" for _ in names)
    sql = f"INSERT INTO {quote_ident(target)} ({columns}) VALUES ({marks})" + _conflict_clause(
        names, keys, mode, "excluded"
    )
    rows = to_sqlite_values(data)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(sql, rows)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
