"""extract: equality with a plain SELECT, the connection limit, retries, failures, errors."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterator

import adbc_driver_postgresql.dbapi as adbc_pg
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hafen
from hafen.errors import DatasetExistsError, LimitError, SchemaError, SQLError
from hafen.testing import thread_cluster

APP = "hafen-extract"


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    """An in-process cluster with more threads than the limits under test."""
    with thread_cluster(1, threads_per_worker=4) as c:
        yield c


def _pg(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def _pg_arrow(url: str, sql: str) -> pa.Table:
    with adbc_pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def _sorted(table: pa.Table, key: str = "id") -> pa.Table:
    return table.sort_by(key).combine_chunks()


# --- equality with a plain SELECT -----------------------------------------------------------


@pytest.mark.slow
def test_sqlite_million_rows_equal_select(tmp_path, client):
    path = tmp_path / "big.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, v DOUBLE, s TEXT, d DATE)")
    con.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999999) "
        "INSERT INTO big SELECT i, i * 0.5, 's' || (i % 1000), "
        "date('2020-01-01', '+' || (i % 365) || ' days') FROM n"
    )
    con.commit()
    rows = con.execute("SELECT id, v, s, d FROM big ORDER BY id").fetchall()
    con.close()
    ds = hafen.extract(
        f"sqlite:///{path}", "big", str(tmp_path / "ds"), split_on="id", chunks=8, client=client
    )
    got = _sorted(ds.read_arrow())
    assert got.num_rows == len(rows) == 1_000_000
    ids, vs, ss, ds_ = zip(*rows, strict=True)
    assert got.column("id").equals(pa.chunked_array([pa.array(ids, pa.int64())]))
    assert got.column("v").equals(pa.chunked_array([pa.array(vs, pa.float64())]))
    assert got.column("s").equals(pa.chunked_array([pa.array(ss, pa.string())]))
    assert got.column("d").equals(pa.chunked_array([pa.array(ds_).cast(pa.date32())]))
    # the driver's batches are not the files' row groups (its default is 1,024 rows)
    for f in ds.files():
        meta = pq.read_metadata(str(tmp_path / "ds" / f.path))
        assert meta.num_rows == 125_000 and meta.row_group(0).num_rows >= 65_536


@pytest.mark.slow
def test_postgres_million_rows_equal_select(pg_url, tmp_path, client):
    _pg(
        pg_url,
        "CREATE TABLE big AS SELECT i::bigint AS id, (i * 0.5)::float8 AS v, "
        "'s' || (i % 1000) AS s, DATE '2020-01-01' + (i % 365) AS d, "
        "(i % 97)::numeric(10, 2) AS n, "
        "TIMESTAMPTZ '2020-01-01 00:00+00' + i * interval '1 second' AS ts "
        "FROM generate_series(0, 999999) AS i",
    )
    ds = hafen.extract(pg_url, "big", str(tmp_path / "ds"), split_on="id", chunks=8, client=client)
    expected = _sorted(_pg_arrow(pg_url, "SELECT id, v, s, d, n::text AS n, ts FROM big"))
    expected = expected.set_column(4, "n", expected.column("n").cast(pa.decimal128(10, 2)))
    got = _sorted(ds.read_arrow())
    assert got.num_rows == 1_000_000
    assert got.schema.field("n").type == pa.decimal128(10, 2)
    assert got.select(["id", "v", "s", "d", "n", "ts"]).equals(expected.select(got.schema.names))


# --- the connection limit -------------------------------------------------------------------


class ConnectionWatcher:
    """Polls pg_stat_activity for the extraction's running queries; records the most at once.

    Only ``state = 'active'`` counts: a connection the extraction has closed can stay listed
    (idle) for a moment while its backend process exits, and on a loaded machine that moment
    overlaps the next range's connection, although no two queries of a limit-2 run ever overlap.
    """

    def __init__(self, url: str, application_name: str = APP) -> None:
        self.url = url
        self.application_name = application_name
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = %s AND state = 'active'",
                    (self.application_name,),
                ).fetchone()
                self.peak = max(self.peak, count)
                self.samples += 1
                time.sleep(0.005)

    def __enter__(self) -> ConnectionWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_limit_2_with_32_chunks_never_more_than_2_connections(pg_url, tmp_path, client):
    _pg(
        pg_url,
        "CREATE TABLE t AS SELECT i AS id, i * 2 AS v FROM generate_series(1, 32000) AS i",
    )
    hafen.set_limit("pg-test-2", concurrency=2, client=client)
    # Each range sleeps 50 ms in the database, so ranges that ran together would be seen.
    query = "SELECT t.* FROM t, (SELECT pg_sleep(0.05)) AS s"
    with ConnectionWatcher(pg_url) as watcher:
        ds = hafen.extract(
            pg_url, query, str(tmp_path / "ds"), split_on="id", chunks=32, limit="pg-test-2",
            client=client,
        )  # fmt: skip
    assert ds.num_rows == 32000
    assert ds.history()[0]["parameters"]["ranges"] == 32
    assert watcher.samples > 10
    assert 1 <= watcher.peak <= 2
    info = hafen.limits(client=client)["pg-test-2"]
    assert info["granted"] >= 32 and info["in_use"] == 0


def test_integer_limit_makes_a_temporary_limit(sqlite_db, tmp_path, client):
    ds = hafen.extract(sqlite_db, "t", str(tmp_path / "ds"), split_on="id", limit=1, client=client)
    assert ds.num_rows == 101
    assert not [n for n in hafen.limits(client=client) if n.startswith("hafen-sql-")]


def test_unknown_limit_is_refused(sqlite_db, tmp_path, client):
    with pytest.raises(LimitError, match="no-such-limit"):
        hafen.extract(sqlite_db, "t", str(tmp_path / "ds"), limit="no-such-limit", client=client)


# --- failures -------------------------------------------------------------------------------


def test_killed_connection_is_retried_without_duplicates_or_gaps(pg_url, tmp_path, client):
    _pg(pg_url, "CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 40000) AS i")
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 30
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while time.monotonic() < deadline and not killed:
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                    "AND state = 'active' AND query LIKE '%%pg_sleep%%' LIMIT 1",
                    (APP,),
                ).fetchone()
                if row is not None:
                    (ok,) = conn.execute("SELECT pg_terminate_backend(%s)", row).fetchone()
                    if ok:
                        killed.append(row[0])
                time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    query = "SELECT t.id FROM t, (SELECT pg_sleep(0.3)) AS s"
    ds = hafen.extract(
        pg_url,
        query,
        str(tmp_path / "ds"),
        split_on="id",
        chunks=4,
        retries=2,
        limit=2,
        client=client,
    )
    thread.join(35)
    assert killed, "the watcher never saw a range running"
    ids = ds.read_arrow().column("id").to_pylist()
    assert len(ids) == 40000
    assert sorted(ids) == list(range(1, 40001))
    assert ds.version == 0 and len(ds.history()) == 1
    # The killed attempt removed what it had staged: only committed files are on disk.
    on_disk = {p.name for p in (tmp_path / "ds" / "table").rglob("*.parquet")}
    assert on_disk == {f.path.rsplit("/", 1)[-1] for f in ds.files()}


def test_persistent_failure_leaves_the_dataset_unchanged(postgres, pg_url, tmp_path, client):
    _pg(pg_url, "CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 1000) AS i")
    url = str(tmp_path / "ds")
    before = hafen.extract(pg_url, "t", url, split_on="id", chunks=4, client=client)
    # The range holding id 900 divides by zero on every attempt.
    bad = "SELECT id + 0 * (1 / (id - 900)) AS id FROM t"
    with pytest.raises(SQLError, match="division by zero") as info:
        hafen.extract(
            pg_url, bad, url, split_on="id", chunks=4, bounds=(1, 1000), retries=1, client=client
        )
    assert "nothing committed" in str(info.value)
    assert postgres.password not in str(info.value)
    after = hafen.open_dataset(url)
    assert after.version == before.version
    assert after.read_arrow().equals(before.read_arrow())
    files = {p.name for p in (tmp_path / "ds" / "table").rglob("*.parquet")}
    assert files == {f.path.rsplit("/", 1)[-1] for f in before.files()}


# --- ranges ---------------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path) -> str:
    path = tmp_path / "small.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER, d DATE, ts TIMESTAMP, tz TIMESTAMPTZ, s TEXT)")
    rows = []
    for i in range(100):
        day = dt.date(2020, 1, 1) + dt.timedelta(days=i)
        stamp = dt.datetime(2020, 1, 1) + dt.timedelta(hours=7 * i)
        rows.append(
            (
                i,
                day.isoformat(),
                stamp.strftime("%Y-%m-%d %H:%M:%S"),
                stamp.strftime("%Y-%m-%d %H:%M:%S+00:00"),
                f"s{i % 3}",
            )
        )
    rows.append((None, None, None, None, "null-row"))
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("column", "bounds"),
    [
        ("id", None),
        ("id", (10, 20)),
        ("d", None),
        ("d", (dt.date(2020, 2, 1), dt.date(2020, 2, 10))),
        ("ts", None),
        ("tz", (dt.datetime(2020, 1, 5, tzinfo=dt.UTC), dt.datetime(2020, 1, 9, tzinfo=dt.UTC))),
    ],
)
def test_ranges_cover_every_row_once(sqlite_db, tmp_path, client, column, bounds):
    ds = hafen.extract(
        sqlite_db, "t", str(tmp_path / "ds"), split_on=column, chunks=7, bounds=bounds,
        client=client,
    )  # fmt: skip
    assert ds.history()[0]["parameters"]["ranges"] == 7
    got = ds.read_arrow()
    assert sorted(got.column("s").to_pylist()) == sorted(
        [f"s{i % 3}" for i in range(100)] + ["null-row"]
    )
    ids = [i for i in got.column("id").to_pylist() if i is not None]
    assert sorted(ids) == list(range(100))


def test_partition_on_indices_and_modes(sqlite_db, tmp_path, client):
    url = str(tmp_path / "ds")
    ds = hafen.extract(
        sqlite_db, "SELECT id, s FROM t WHERE id IS NOT NULL", url, split_on="id", chunks=3,
        partition_on=["s"], indices=["id"], mode="create", client=client,
    )  # fmt: skip
    assert ds.partition_on == ["s"] and ds.indices == ["id"]
    assert sorted(p["s"] for p in ds.partitions()) == ["s0", "s1", "s2"]
    assert ds.read(predicates=[[("id", "==", 42)]])["id"].tolist() == [42]
    with pytest.raises(DatasetExistsError):
        hafen.extract(sqlite_db, "SELECT id, s FROM t", url, mode="create", client=client)
    again = hafen.extract(
        sqlite_db, "SELECT id, s FROM t WHERE id IS NOT NULL", url, mode="overwrite", client=client
    )
    assert again.num_rows == 100


def test_empty_result_creates_an_empty_dataset(sqlite_db, tmp_path, client):
    ds = hafen.extract(
        sqlite_db, "SELECT id, s FROM t WHERE id > 1000", str(tmp_path / "ds"), split_on="id",
        client=client,
    )  # fmt: skip
    assert ds.num_rows == 0 and ds.schema.names == ["id", "s"]


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://u:pw-secret@host/db", "unsupported database URL"),
        ("not a url", "not a database URL"),
        ("sqlite:///:memory:", "database file"),
        ("sqlite:////no/such/dir/x.db", "cannot open the SQLite database"),
    ],
)
def test_bad_urls_give_clear_errors(tmp_path, url, match):
    with pytest.raises(SQLError, match=match) as info:
        hafen.extract(url, "t", str(tmp_path / "ds"))
    assert "pw-secret" not in str(info.value)


def test_wrong_password_is_not_shown(postgres, tmp_path):
    url = postgres.url("postgres", password="wrong-Secret-123")
    with pytest.raises(SQLError, match="password authentication failed") as info:
        hafen.extract(url, "t", str(tmp_path / "ds"))
    assert "wrong-Secret-123" not in str(info.value)
    assert "***" in str(info.value)


def test_unknown_table_and_column(pg_url, sqlite_db, tmp_path):
    for url in (pg_url, sqlite_db):
        with pytest.raises(SQLError, match="table 'nosuch' does not exist"):
            hafen.extract(url, "nosuch", str(tmp_path / "ds"))
    with pytest.raises(SQLError, match="does not exist"):
        hafen.extract(pg_url, "SELECT * FROM nosuch", str(tmp_path / "ds"))
    with pytest.raises(SchemaError, match="split_on column 'nope'"):
        hafen.extract(sqlite_db, "t", str(tmp_path / "ds"), split_on="nope")
    with pytest.raises(SchemaError, match="must be an integer, date or timestamp"):
        hafen.extract(sqlite_db, "t", str(tmp_path / "ds"), split_on="s")
    assert not (tmp_path / "ds").exists()


def test_unsupported_type_names_the_column(pg_url, tmp_path):
    with pytest.raises(SchemaError, match=r"column 'u'.*uuid.*::text"):
        hafen.extract(pg_url, "SELECT gen_random_uuid() AS u", str(tmp_path / "ds"))


def test_mismatch_with_the_dataset_is_refused_before_reading(sqlite_db, tmp_path, client):
    url = str(tmp_path / "ds")
    hafen.extract(sqlite_db, "SELECT id, s FROM t", url, client=client)
    with pytest.raises(SchemaError, match="'s'"):
        hafen.extract(sqlite_db, "SELECT id, id AS s FROM t", url, client=client)
    assert hafen.open_dataset(url).version == 0
