"""Rows per second posted through the ingest API, against a bulk insert of the same rows.

For each database (SQLite, and PostgreSQL started by :func:`hafen.testing.running_postgres`):

- **api**: the multi-tenant service (``hafen serve HOME --tenants``, uvicorn, one process) with
  ``--clients`` concurrent clients (threads, one HTTP connection each) posting disjoint JSON
  batches of ``--batch`` sales rows to ``/v1/sales`` with an ``Idempotency-Key``;
- **bulk**: the same rows into the same table of a fresh tenant in one transaction, through the
  ingest's own insert without HTTP, parsing or validation: ``executemany`` on SQLite, ADBC's
  binary COPY on PostgreSQL (the physical limit for the database through its Python driver).

The contenders take turns, ``--rounds`` times each, each round on a fresh tenant; the median
and range of the rates are reported. Usage::

    .venv/bin/python benchmarks/ingest.py --rows 200000 --clients 20 --rounds 3

``--sequence-cost``: on PostgreSQL only, what the ingest sequence number (the watermark of
incremental runs, taken under a row lock per tenant) costs: ``--clients`` threads insert the
batches through the ingest code in-process (no HTTP), with the sequence as it is, against the
same with ``next_seq`` replaced by a constant (no counter row, no lock), in turns.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hafen.serve import Tenants
from hafen.serve._ingest import TABLES, _as_table, _Db
from hafen.testing import free_port, running_postgres, wait_listening


def _stores_products(n_stores: int, n_products: int) -> tuple[list[dict], list[dict]]:
    stores = [
        {"store_id": s, "name": f"s{s}", "region": "north", "size": 1.0} for s in range(n_stores)
    ]
    products = [
        {"product_id": p, "name": f"p{p}", "product_group": "dairy", "price": 1.0}
        for p in range(n_products)
    ]
    return stores, products


def _sales(rows: int, n_stores: int, n_products: int) -> list[dict[str, Any]]:
    return [
        {
            "sale_id": i,
            "date": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}",
            "store_id": i % n_stores,
            "product_id": (i // n_stores) % n_products,
            "qty": i % 9,
        }
        for i in range(rows)
    ]


def _post(port: int, key: str, path: str, body: bytes, idem: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(
            "POST",
            path,
            body,
            {
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Idempotency-Key": idem,
            },
        )
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {data[:300]!r}")
        return json.loads(data)
    finally:
        conn.close()


def _prepare(
    home: Path, database: str | None, name: str, dims: tuple[list, list]
) -> tuple[Any, str]:
    tenants = Tenants(home, database=database)
    key = tenants.add(name)
    tenant = tenants.get(name)
    from hafen.serve._ingest import ingest_batch

    for table, rows in zip(("stores", "products"), dims, strict=True):
        ingest_batch(tenant, table, rows, key=None, digest="")
    return tenant, key


def _in_threads(items: list[Any], clients: int, work: Any) -> float:
    """Seconds for ``clients`` threads to call ``work`` on every item; the first error raised."""
    todo = list(items)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                item = todo.pop()
            try:
                work(item)
            except BaseException as exc:
                errors.append(exc)
                return

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - began


def run_api(port: int, key: str, sales: list[dict], clients: int, batch: int) -> float:
    bodies = [json.dumps(sales[i : i + batch]).encode() for i in range(0, len(sales), batch)]
    seconds = _in_threads(
        list(enumerate(bodies)),
        clients,
        lambda item: _post(port, key, "/v1/sales", item[1], f"b-{item[0]}"),
    )
    return len(sales) / seconds


def run_bulk(tenant: Any, sales: list[dict]) -> float:
    """The same rows in one transaction through the ingest's own insert (``executemany`` on
    SQLite, binary COPY on PostgreSQL), without HTTP, parsing or validation."""
    began = time.perf_counter()
    table = TABLES["sales"]
    rows = [
        (r["sale_id"], dt.date.fromisoformat(r["date"]), r["store_id"], r["product_id"], r["qty"])
        for r in sales
    ]
    db = _Db(tenant)
    try:
        db.begin()
        db.insert(table, _as_table(table, rows), db.next_seq())
        db.commit()
    finally:
        db.close()
    return len(sales) / (time.perf_counter() - began)


def count(tenant: Any) -> int:
    db = _Db(tenant)
    try:
        return int(db.execute(f"SELECT count(*) FROM {db.name('sales')}")[0][0])
    finally:
        db.rollback()
        db.close()


def bench(database: str | None, label: str, args: argparse.Namespace) -> dict[str, Any]:
    dims = _stores_products(10, 100)
    sales = _sales(args.rows, 10, 100)
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        Tenants(home, database=database)
        port = free_port()
        command = ["serve", str(home), "--tenants", "--port", str(port)]
        if database:
            command += ["--database", database]
        server = subprocess.Popen(
            [sys.executable, "-c", "from hafen.cli import main; main()", *command]
        )
        try:
            wait_listening(port, server, timeout=60, what="hafen serve --tenants")
            rates: dict[str, list[float]] = {"api": [], "bulk": []}
            for r in range(args.rounds):
                for contender in ("api", "bulk"):  # in turns
                    tenant, key = _prepare(home, database, f"{contender}_{r}", dims)
                    if contender == "api":
                        rate = run_api(port, key, sales, args.clients, args.batch)
                    else:
                        rate = run_bulk(tenant, sales)
                    assert count(tenant) == len(sales), (contender, count(tenant))
                    rates[contender].append(rate)
                    print(f"{label} round {r} {contender}: {rate:,.0f} rows/s", flush=True)
        finally:
            server.terminate()
            server.wait(30)
    out = {
        c: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v}
        for c, v in rates.items()
    }
    out["ratio"] = out["api"]["median"] / out["bulk"]["median"]
    return out


def run_threads(tenant: Any, sales: list[dict], clients: int, batch: int) -> float:
    from hafen.serve._ingest import ingest_batch

    batches = [sales[i : i + batch] for i in range(0, len(sales), batch)]
    seconds = _in_threads(
        batches, clients, lambda rows: ingest_batch(tenant, "sales", rows, key=None, digest="")
    )
    return len(sales) / seconds


def sequence_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Rows per second with the ingest sequence against without it, in turns (PostgreSQL)."""
    dims = _stores_products(10, 100)
    sales = _sales(args.rows, 10, 100)
    rates: dict[str, list[float]] = {"sequence": [], "no_sequence": []}
    real = _Db.next_seq
    with running_postgres() as pg, tempfile.TemporaryDirectory() as scratch:
        database = pg.url(pg.create_database())
        for r in range(args.rounds):
            for contender in rates:
                tenant, _ = _prepare(Path(scratch), database, f"{contender}_{r}", dims)
                _Db.next_seq = real if contender == "sequence" else lambda self: 0  # type: ignore[method-assign]
                try:
                    rate = run_threads(tenant, sales, args.clients, args.batch)
                finally:
                    _Db.next_seq = real  # type: ignore[method-assign]
                assert count(tenant) == len(sales)
                rates[contender].append(rate)
                print(f"round {r} {contender}: {rate:,.0f} rows/s", flush=True)
    return {
        c: {"median": statistics.median(v), "min": min(v), "max": max(v)} for c, v in rates.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--sequence-cost", action="store_true")
    args = parser.parse_args()
    if args.sequence_cost:
        outcome = {"args": vars(args), "load": os.getloadavg(), "results": sequence_cost(args)}
        print(json.dumps(outcome, indent=2))
        return
    results = {"sqlite": bench(None, "sqlite", args)}
    if not args.skip_postgres:
        with running_postgres() as pg:
            results["postgresql"] = bench(pg.url(pg.create_database()), "postgresql", args)
    text = json.dumps({"args": vars(args), "load": os.getloadavg(), "results": results}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
