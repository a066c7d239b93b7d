"""PostgreSQL into a dataset: ``hafen.extract`` against connectorx and chunked ``pandas.read_sql``.

One run, one throwaway PostgreSQL server (:class:`hafen.testing.PostgresServer`, from the
system's binaries, as the tests start it, unless ``--db-url`` names one), one table of 5 million
rows x 8 columns (bigint, two integers, date, timestamp, integer, double precision, text). Every
contender uses the same number of connections (``--connections``, default 4) and ends with the
same dataset (Parquet files committed by ``hafen``), so the figures compare the whole path,
database to dataset:

- hafen: ``hafen.extract(split_on="id", chunks=connections or 4 x connections,
  limit=connections)`` on an in-process cluster (1 worker x connections threads): ADBC's libpq
  driver (binary COPY decoded in C into Arrow batches) streaming into staged Parquet files, one
  commit. The first row is the anchor of the ratios.
- connectorx: ``cx.read_sql(partition_on="id", partition_num=connections, return_type="arrow")``,
  then ``hafen.write_dataset`` of the table (also reported without the write).
- pandas: ``pandas.read_sql(chunksize=100_000)`` over SQLAlchemy + psycopg, one range per
  connection in a thread each, concatenated, then ``hafen.write_dataset``.

Then, single connection, reading 1 million rows into Arrow, the candidate drivers for hafen:
ADBC (chosen), connectorx, psycopg 3 ``COPY ... TO STDOUT (FORMAT csv)`` parsed by
``pyarrow.csv``, psycopg 3 ``COPY ... (FORMAT binary)`` decoded row by row by psycopg.

Results are rows per second and ratios to hafen, printed as a table.

Run: ``.venv/bin/python benchmarks/sql.py`` (about 4 minutes on 2 busy cores;
``--rows 1000000`` for a quick look).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

import hafen
from hafen.testing import PostgresServer

DEFAULT_ROWS = 5_000_000
DEFAULT_CONNECTIONS = 4
DRIVER_ROWS = 1_000_000
TABLE = "sales"
CREATE = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} AS
SELECT i::bigint AS id,
       (i % 500)::int AS store_id,
       (i % 20000)::int AS product_id,
       DATE '2020-01-01' + (i % 1500) AS day,
       TIMESTAMP '2020-01-01' + i * interval '1 second' AS sold_at,
       (i % 13)::int AS qty,
       (i % 10000) / 100.0::float8 AS price,
       'channel-' || (i % 7) AS channel
FROM generate_series(1, %(rows)s) AS i;
ALTER TABLE {TABLE} ADD PRIMARY KEY (id);
"""
# Sets hint bits and the visibility map, so that the first contender does not pay for them.
VACUUM = f"VACUUM (ANALYZE) {TABLE}"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run_hafen(url: str, target: str, connections: int, chunks: int, client: Any) -> int:
    ds = hafen.extract(
        url, TABLE, target, split_on="id", chunks=chunks, limit=connections, client=client,
        mode="overwrite",
    )  # fmt: skip
    return ds.num_rows


def run_connectorx(url: str, target: str | None, connections: int) -> int:
    import connectorx as cx

    table = cx.read_sql(
        url, f"SELECT * FROM {TABLE}", partition_on="id", partition_num=connections,
        return_type="arrow",
    )  # fmt: skip
    if target is not None:
        hafen.write_dataset(table, target, mode="overwrite")
    return table.num_rows


def run_pandas(url: str, target: str, connections: int, rows: int) -> int:
    from sqlalchemy import create_engine

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    edges = [1 + rows * i // connections for i in range(connections + 1)]

    def read(i: int) -> pd.DataFrame:
        sql = f"SELECT * FROM {TABLE} WHERE id >= {edges[i]} AND id < {edges[i + 1]}"
        with engine.connect() as conn:
            return pd.concat(pd.read_sql(sql, conn, chunksize=100_000), ignore_index=True)

    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        frames = list(pool.map(read, range(connections)))
    df = pd.concat(frames, ignore_index=True)
    hafen.write_dataset(df, target, mode="overwrite")
    engine.dispose()
    return len(df)


# --- single-connection driver candidates ----------------------------------------------------


def driver_adbc(url: str, query: str) -> int:
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query)
        return sum(b.num_rows for b in cur.fetch_record_batch())


def driver_connectorx(url: str, query: str) -> int:
    import connectorx as cx

    return cx.read_sql(url, query, return_type="arrow").num_rows


def driver_copy_csv(url: str, query: str) -> int:
    import psycopg

    buffer = io.BytesIO()
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(f"COPY ({query}) TO STDOUT (FORMAT csv, HEADER)") as copy,
    ):
        for data in copy:
            buffer.write(data)
    buffer.seek(0)
    return pacsv.read_csv(buffer).num_rows


def driver_copy_binary(url: str, query: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM ({query}) AS q LIMIT 0")
        types = [c.type_code for c in cur.description]
        names = [c.name for c in cur.description]
        with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(types)
            rows = list(copy.rows())
    columns = list(zip(*rows, strict=True))
    return pa.table([pa.array(c) for c in columns], names=names).num_rows


def in_turns(
    methods: list[tuple[str, Callable[[], int]]], rounds: int, rows: int
) -> dict[str, list[float]]:
    """Seconds of every run of each method, in turns ``rounds`` times, the order rotating each
    round; each run must give ``rows`` rows."""
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    for r in range(rounds):
        for name, method in methods[r % len(methods) :] + methods[: r % len(methods)]:
            seconds, got = timed(method)
            assert got == rows, (name, got)
            times[name].append(seconds)
            print(f"  round {r + 1}: {name}: {seconds:.2f} s", flush=True)
    return times


def spread(times: list[float]) -> str:
    """``median (min-max)`` of ``times``."""
    return f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--db-url", default=None, help="an existing database (default: start one)")
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument(
        "--rounds", "--repeat", type=int, default=3, help="rounds in turns (at least 3)"
    )
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: one or two runs are noise on a shared machine")
    warnings.simplefilter("ignore")

    server = None
    if args.db_url is None:
        server = PostgresServer().start()
        url = server.url(server.create_database("bench"))
    else:
        url = args.db_url
    work = Path(tempfile.mkdtemp(prefix="hafen-bench-sql-"))
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            seconds, _ = timed(lambda: conn.execute(CREATE.replace("%(rows)s", str(args.rows))))
            conn.execute(VACUUM)
        print(f"table {TABLE}: {args.rows:,} rows x 8 columns, created in {seconds:.1f} s")
        n = args.connections
        client = hafen.connect(
            processes=False, n_workers=1, threads_per_worker=n, dashboard_address=":0"
        )
        # Warm up: imports, the scheduler extension, first connections of every driver.
        small = f"SELECT * FROM {TABLE} WHERE id <= 1000"
        hafen.extract(url, small, str(work / "warm"), limit=n, client=client)
        driver_connectorx(url, small)
        methods: list[tuple[str, Callable[[], int]]] = [
            (
                "hafen.extract (chunks = connections)",
                lambda: run_hafen(url, str(work / "h"), n, n, client),
            ),
            (
                "hafen.extract (chunks = 4 x connections)",
                lambda: run_hafen(url, str(work / "h"), n, 4 * n, client),
            ),
            ("connectorx + write_dataset", lambda: run_connectorx(url, str(work / "c"), n)),
            ("connectorx (read only)", lambda: run_connectorx(url, None, n)),
        ]
        if not args.skip_pandas:
            methods.append(
                ("pandas.read_sql chunked + write_dataset",
                 lambda: run_pandas(url, str(work / "p"), n, args.rows))
            )  # fmt: skip
        try:
            runs = in_turns(methods, args.rounds, args.rows)
        finally:
            client.close()
        anchor = statistics.median(runs[methods[0][0]])
        print(
            f"\nwhole path, {n} connections each; seconds: median (range) of {args.rounds} rounds"
        )
        print(f"{'method':<42} {'seconds':>16} {'rows/s':>12} {'time / hafen':>14}")
        for name, times in runs.items():
            seconds = statistics.median(times)
            print(
                f"{name:<42} {spread(times):>16} {args.rows / seconds:12,.0f} "
                f"{seconds / anchor:14.2f}"
            )

        query = f"SELECT * FROM {TABLE} WHERE id <= {min(DRIVER_ROWS, args.rows)}"
        drivers = [
            ("ADBC postgresql (hafen's choice)", driver_adbc),
            ("connectorx", driver_connectorx),
            ("psycopg COPY csv -> pyarrow.csv", driver_copy_csv),
            ("psycopg COPY binary (rows)", driver_copy_binary),
        ]
        driver_runs = in_turns(
            [(name, lambda fn=fn: fn(url, query)) for name, fn in drivers],
            args.rounds,
            min(DRIVER_ROWS, args.rows),
        )
        print(f"\ndrivers, one connection, {min(DRIVER_ROWS, args.rows):,} rows into Arrow")
        print(f"{'driver':<42} {'seconds':>16} {'rows/s':>12} {'ratio to ADBC':>18}")
        base = statistics.median(driver_runs[drivers[0][0]])
        for name, times in driver_runs.items():
            seconds = statistics.median(times)
            rate = min(DRIVER_ROWS, args.rows) / seconds
            print(f"{name:<42} {spread(times):>16} {rate:12,.0f} {seconds / base:18.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
