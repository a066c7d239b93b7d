"""load: upsert twice, replace and new tables without partial results, clear errors."""

from __future__ import annotations

import sqlite3

import psycopg
import pyarrow as pa
import pytest

import hafen
from hafen.errors import ConfigError, SchemaError, SQLError


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'load.db'}"
    return request.getfixturevalue("pg_url")


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def _tables(url: str) -> list[str]:
    if url.startswith("sqlite"):
        return [r[0] for r in _query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    return [r[0] for r in _query(url, sql)]


def _dataset(tmp_path, name: str, ids: list[int], tag: str, files: int = 3) -> str:
    url = str(tmp_path / name)
    step = max(1, len(ids) // files)
    for i in range(0, len(ids), step):
        part = ids[i : i + step]
        table = pa.table(
            {
                "id": pa.array(part, pa.int64()),
                "name": [f"{tag}{x}" for x in part],
                "qty": pa.array([x * 0.5 for x in part]),
            }
        )
        hafen.write_dataset(table, url, mode="append")
    return url


def test_upsert_twice_gives_the_same_table(db, tmp_path, client):
    first = _dataset(tmp_path, "a", list(range(300)), "a")
    assert hafen.load(first, db, table="items", mode="upsert", key=["id"], client=client) == 300
    snapshot = sorted(_query(db, "SELECT id, name, qty FROM items"))
    hafen.load(first, db, table="items", mode="upsert", key=["id"], client=client)
    assert sorted(_query(db, "SELECT id, name, qty FROM items")) == snapshot
    # An upsert of new values for some keys updates them and adds the new keys.
    second = _dataset(tmp_path, "b", list(range(250, 350)), "b", files=2)
    hafen.load(second, db, table="items", mode="upsert", key=["id"], client=client, limit=1)
    rows = dict((i, n) for i, n in _query(db, "SELECT id, name FROM items"))
    assert len(rows) == 350
    assert rows[10] == "a10" and rows[260] == "b260" and rows[349] == "b349"
    assert _tables(db) == ["items"]


def test_append_and_replace(db, tmp_path, client):
    url = _dataset(tmp_path, "a", list(range(100)), "a")
    hafen.load(url, db, table="t", client=client)
    hafen.load(url, db, table="t", mode="append", client=client)
    assert _query(db, "SELECT count(*) FROM t") == [(200,)]
    hafen.load(url, db, table="t", mode="replace", key=["id"], client=client)
    assert _query(db, "SELECT count(*), count(DISTINCT id) FROM t") == [(100, 100)]
    assert _tables(db) == ["t"]


def test_partitioned_dataset_loads_its_partition_columns(tmp_path, client):
    url = str(tmp_path / "parts")
    table = pa.table({"day": ["a", "b", "c", "a"], "id": [1, 2, 3, 4], "v": [0.5, 1.5, 2.5, 3.5]})
    hafen.write_dataset(table, url, partition_on=["day"])
    db = f"sqlite:///{tmp_path / 'p.db'}"
    assert hafen.load(url, db, table="p", mode="upsert", key=["id"], client=client) == 4
    assert sorted(_query(db, "SELECT day, id, v FROM p")) == sorted(
        zip(*[table.column(n).to_pylist() for n in ("day", "id", "v")], strict=True)
    )


def test_failed_replace_keeps_the_old_table_and_leaves_nothing(db, tmp_path, client):
    good = _dataset(tmp_path, "good", list(range(50)), "g")
    hafen.load(good, db, table="t", client=client)
    # Duplicate keys: the staging table's primary key refuses the second chunk.
    bad = _dataset(tmp_path, "bad", [1, 2, 3, 1, 2, 3], "b", files=2)
    with pytest.raises(SQLError, match="nothing was changed"):
        hafen.load(bad, db, table="t", mode="replace", key=["id"], client=client)
    assert _query(db, "SELECT count(*) FROM t") == [(50,)]
    assert _tables(db) == ["t"]


def test_failed_load_into_a_new_table_creates_nothing(db, tmp_path, client):
    bad = _dataset(tmp_path, "bad", [1, 2, 3, 1, 2, 3], "b", files=2)
    with pytest.raises(SQLError):
        hafen.load(bad, db, table="fresh", mode="append", key=["id"], client=client)
    assert _tables(db) == []


def test_type_mismatch_and_missing_columns_are_clear(db, tmp_path, client):
    _query(db, "CREATE TABLE t (id BIGINT PRIMARY KEY, name INTEGER, qty DOUBLE PRECISION)")
    url = _dataset(tmp_path, "a", list(range(10)), "a")
    with pytest.raises(SchemaError, match=r"column 'name': the dataset has string, the table has"):
        hafen.load(url, db, table="t", client=client)
    _query(db, "CREATE TABLE u (id BIGINT PRIMARY KEY, qty DOUBLE PRECISION)")
    with pytest.raises(SchemaError, match=r"columns \['name'\] are not in the table"):
        hafen.load(url, db, table="u", client=client)
    _query(db, "CREATE TABLE v (id BIGINT, name TEXT, qty DOUBLE PRECISION)")
    with pytest.raises(SchemaError, match="needs a unique index or primary key"):
        hafen.load(url, db, table="v", mode="upsert", key=["id"], client=client)
    assert all(_query(db, f"SELECT count(*) FROM {t}") == [(0,)] for t in ("t", "u", "v"))
    assert sorted(_tables(db)) == ["t", "u", "v"]


def test_bad_arguments(tmp_path, postgres):
    url = _dataset(tmp_path, "a", list(range(10)), "a")
    with pytest.raises(ConfigError, match="needs key"):
        hafen.load(url, "sqlite:///x.db", table="t", mode="upsert")
    with pytest.raises(ConfigError, match="mode must be"):
        hafen.load(url, "sqlite:///x.db", table="t", mode="merge")
    with pytest.raises(SQLError, match="unsupported database URL") as info:
        hafen.load(url, "oracle://scott:tiger-pw@db/x", table="t")
    assert "tiger-pw" not in str(info.value)
    bad = postgres.url("postgres", password="Wrong-pw-77")
    with pytest.raises(SQLError, match="password authentication failed") as info:
        hafen.load(url, bad, table="t")
    assert "Wrong-pw-77" not in str(info.value)
    with pytest.raises(SchemaError, match=r"key columns \['nope'\]"):
        hafen.load(url, "sqlite:///x.db", table="t", mode="upsert", key=["nope"])


def test_cli_extract_and_load(tmp_path):
    from click.testing import CliRunner

    from hafen.cli import main

    src = tmp_path / "src.db"
    con = sqlite3.connect(src)
    con.execute("CREATE TABLE s (id INTEGER, v TEXT)")
    con.executemany("INSERT INTO s VALUES (?, ?)", [(i, f"v{i}") for i in range(20)])
    con.commit()
    con.close()
    runner = CliRunner()
    ds = str(tmp_path / "ds")
    result = runner.invoke(
        main, ["extract", f"sqlite:///{src}", "s", ds, "--split-on", "id", "--chunks", "3",
               "--limit", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "20 rows" in result.output
    dst = f"sqlite:///{tmp_path / 'dst.db'}"
    args = ["load", ds, dst, "--table", "d", "--mode", "upsert", "--key", "id"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert _query(dst, "SELECT count(*) FROM d") == [(20,)]
    result = runner.invoke(main, ["extract", f"sqlite:///{src}", "nosuch", ds])
    assert result.exit_code == 1
    assert "SQLError" in result.output and "does not exist" in result.output
