"""The ingest API: every kind of bad row refused with the row named and nothing inserted; JSON,
CSV and Parquet bodies; a batch posted twice, or 8 times at once, inserts once; a body cut off
mid-way or over the limit inserts nothing; 20 concurrent clients posting disjoint batches all
land, counted exactly -- on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from hafen.serve import create_service
from hafen.testing import PostgresServer, running_postgres

STORES = [{"store_id": s, "name": f"s{s}", "region": "north", "size": 1.5} for s in (1, 2)]
PRODUCTS = [
    {"product_id": p, "name": f"p{p}", "product_group": "dairy", "price": 2.0} for p in (1, 2, 3)
]


def _sale(i: int, **changes: object) -> dict[str, object]:
    return {"sale_id": i, "date": "2025-01-01", "store_id": 1, "product_id": 2, "qty": 3} | changes


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, tmp_path):
    database = None
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")
        database = server.url(server.create_database())
    app = create_service(tmp_path / "home", database=database, max_body=200_000)
    key = app.tenants.add("acme")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        for table, rows in (("stores", STORES), ("products", PRODUCTS)):
            assert client.post(f"/v1/{table}", json=rows).status_code == 200
        yield app, client


def _count(app, table: str) -> int:
    from hafen.serve._ingest import _Db

    db = _Db(app.tenants.get("acme"))
    try:
        return int(db.execute(f"SELECT count(*) FROM {db.name(table)}")[0][0])
    finally:
        db.rollback()
        db.close()


BAD_ROWS = [
    (_sale(10, qty=-1), "qty", "negative"),
    (_sale(10, qty="three"), "qty", "integer"),
    (_sale(10, qty=1.5), "qty", "integer"),
    (_sale(10, date="2025-02-30"), "date", "date"),
    (_sale(10, store_id=99), "store_id", "no existing store"),
    (_sale(10, product_id=99), "product_id", "no existing product"),
    (_sale(1), "sale_id", "already exists"),
    ({k: v for k, v in _sale(10).items() if k != "qty"}, "qty", "required"),
    (_sale(10, colour="red"), "colour", "not a column"),
    (_sale(10, qty=None), "qty", "required"),
    ("not an object", None, "not an object"),
]


def test_bad_rows_are_named_and_nothing_is_inserted(service):
    app, client = service
    assert client.post("/v1/sales", json=[_sale(1)]).status_code == 200
    for bad, column, words in BAD_ROWS:
        batch = [_sale(20), _sale(21), bad, _sale(22)]
        response = client.post("/v1/sales", json=batch)
        assert response.status_code == 422, (bad, response.text)
        (error,) = response.json()["rows"]
        assert error["row"] == 2 and error["column"] == column and words in error["error"]
    twice = client.post("/v1/sales", json=[_sale(30), _sale(30)])
    assert twice.json()["rows"] == [
        {"row": 1, "column": "sale_id", "error": "repeats a key of this batch"}
    ]
    promo = {
        "promo_id": 1,
        "store_id": 1,
        "product_id": 1,
        "start_date": "2025-01-05",
        "end_date": "2025-01-01",
        "discount": 0.2,
    }
    assert "before" in client.post("/v1/promotions", json=[promo]).json()["rows"][0]["error"]
    bad_discount = promo | {"end_date": "2025-01-09", "discount": 1.5}
    assert (
        client.post("/v1/promotions", json=[bad_discount]).json()["rows"][0]["column"] == "discount"
    )
    assert (
        client.post(
            "/v1/sales", content=b"[{", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert (
        client.post("/v1/sales", content=b"x", headers={"content-type": "image/png"}).status_code
        == 415
    )
    assert client.post("/v1/nonsense", json=[]).status_code == 422
    assert _count(app, "sales") == 1 and _count(app, "promotions") == 0


def test_csv_and_parquet_bodies(service):
    app, client = service
    csv = "sale_id,date,store_id,product_id,qty\n5,2025-01-02,1,1,4\n6,2025-01-02,2,3,0\n"
    response = client.post("/v1/sales", content=csv, headers={"content-type": "text/csv"})
    assert response.json()["inserted"] == 2
    bad = csv.replace("5,2025", "7,2025").replace("6,2025-01-02,2,3,0", "8,2025-01-02,2,3,-4")
    refused = client.post("/v1/sales", content=bad, headers={"content-type": "text/csv"})
    assert refused.json()["rows"] == [{"row": 1, "column": "qty", "error": "must not be negative"}]
    holidays = pa.table({"date": pa.array([pa.scalar(19000, pa.date32()).as_py()]), "name": ["x"]})
    buffer = io.BytesIO()
    pq.write_table(holidays, buffer)
    parquet = {"content-type": "application/vnd.apache.parquet"}
    assert (
        client.post("/v1/holidays", content=buffer.getvalue(), headers=parquet).status_code == 200
    )
    assert client.post("/v1/holidays", content=b"PAR1junk", headers=parquet).status_code == 422
    assert _count(app, "sales") == 2 and _count(app, "holidays") == 1


def test_idempotent_batches_insert_once(service):
    app, client = service
    batch = [_sale(i) for i in range(100, 110)]
    first = client.post("/v1/sales", json=batch, headers={"Idempotency-Key": "b-1"})
    again = client.post("/v1/sales", json=batch, headers={"Idempotency-Key": "b-1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    other = client.post("/v1/sales", json=batch[:3], headers={"Idempotency-Key": "b-1"})
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    assert _count(app, "sales") == 10

    async def post_8():
        transport = httpx2.ASGITransport(app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as c:
            headers = dict(client.headers) | {"Idempotency-Key": "b-2"}
            batch2 = [_sale(i) for i in range(200, 300)]
            return await asyncio.gather(
                *(c.post("/v1/sales", json=batch2, headers=headers) for _ in range(8))
            )

    answers = asyncio.run(post_8())
    assert [a.status_code for a in answers] == [200] * 8
    assert {a.text for a in answers} == {answers[0].text}
    assert sum("idempotent-replayed" not in a.headers for a in answers) == 1
    assert _count(app, "sales") == 110


def test_twenty_concurrent_clients_all_land(service):
    app, client = service

    async def post_all():
        transport = httpx2.ASGITransport(app)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://t", headers=dict(client.headers)
        ) as c:
            batches = [
                [_sale(1000 + n * 50 + i, store_id=1 + n % 2) for i in range(50)] for n in range(20)
            ]
            return await asyncio.gather(*(c.post("/v1/sales", json=b) for b in batches))

    answers = asyncio.run(post_all())
    assert [a.status_code for a in answers] == [200] * 20
    assert _count(app, "sales") == 1000
    # every batch took its own ingest sequence number, and the database says a number up to
    # which every batch has landed: the watermark of incremental runs
    from hafen.pipeline._incremental import source_sequence
    from hafen.serve._ingest import _Db

    tenant = app.tenants.get("acme")
    db = _Db(tenant)
    try:
        groups = db.execute(
            f"SELECT hafen_seq, count(*), min(sale_id) % 50 FROM {db.name('sales')} "
            "GROUP BY hafen_seq ORDER BY hafen_seq"
        )
    finally:
        db.rollback()
        db.close()
    assert [tuple(int(v) for v in g)[1:] for g in groups] == [(50, 0)] * 20
    horizon = source_sequence(tenant.source_url)
    assert horizon is not None and horizon.number >= int(groups[-1][0])
    if db.sqlite:  # the counter: the stores and products took 1 and 2
        assert [int(g[0]) for g in groups] == list(range(3, 23)) and horizon.number == 22


def test_body_over_the_limit_or_cut_off_inserts_nothing(service):
    app, client = service
    big = [_sale(i) for i in range(5000)]  # well over 200 kB
    assert client.post("/v1/sales", json=big).status_code == 413

    def chunks():  # streamed without a content-length: refused once past the limit
        yield b"["
        for i in range(5000):
            yield (b"," if i else b"") + str(_sale(i)).replace("'", '"').encode()
        yield b"]"

    assert client.post("/v1/sales", content=chunks()).status_code == 413

    async def cut_off() -> list[dict]:
        sent: list[dict] = []
        messages = [
            {  # complete rows, as CSV: only the cut tells it from a whole batch
                "type": "http.request",
                "body": b"sale_id,date,store_id,product_id,qty\n5,2025-01-02,1,1,4\n",
                "more_body": True,
            },
            {"type": "http.disconnect"},
        ]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        auth = client.headers["authorization"].encode()
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/sales",
            "raw_path": b"/v1/sales",
            "query_string": b"",
            "headers": [(b"authorization", auth), (b"content-type", b"text/csv")],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("t", 80),
            "client": ("c", 1),
            "root_path": "",
        }
        await app(scope, receive, send)
        return sent

    sent = asyncio.run(cut_off())
    assert _count(app, "sales") == 0
    assert sent[0]["status"] == 400


def test_a_pooled_server_connection_is_tried_before_reuse(monkeypatch):
    """An idle PostgreSQL connection is reused only if it still answers (a server restarted
    meanwhile would fail the next batches); a SQLite one only while its file is the same."""
    from hafen.serve import _ingest

    class Cursor:
        def execute(self, sql):
            assert sql == "SELECT 1"

        def fetchall(self):
            return [(1,)]

        def close(self):
            pass

    class Conn:
        def __init__(self, answers: bool) -> None:
            self.answers, self.closed = answers, False

        def cursor(self):
            if not self.answers:
                raise OSError("server closed the connection")
            return Cursor()

        def rollback(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(_ingest._Pool, "FRESH", 0.0)  # every idle connection is tried
    pool = _ingest._Pool()
    dead, live = Conn(False), Conn(True)
    pool.give("pg", None, live)
    pool.give("pg", None, dead)
    assert pool.take("pg", None) is live and dead.closed and not live.closed
    assert pool.take("pg", None) is None
    replaced = Conn(True)
    pool.give("file.sqlite", (1, 2), replaced)
    assert pool.take("file.sqlite", (1, 3)) is None and replaced.closed


PROMOTION = {
    "promo_id": 1,
    "store_id": 1,
    "product_id": 2,
    "start_date": "2025-01-01",
    "end_date": "2025-01-09",
    "discount": 0.25,
}
JSON_BATCHES = {  # plainly valid batches: read straight into Arrow
    "sales": [_sale(i) for i in range(5)],
    "stores": STORES,
    "products": [*PRODUCTS, {"product_id": 4, "name": "é", "product_group": "x", "price": 3}],
    "holidays": [{"date": "2025-12-25", "name": "Christmas"}],
    "promotions": [PROMOTION, PROMOTION | {"promo_id": 2, "discount": 0}],
}
JSON_ODD = [  # anything else is left to the row path, which converts or names the row
    ("sales", [_sale(1, qty=1.0)]),
    ("sales", [_sale(1, qty="3")]),
    ("sales", [_sale(1, qty=True)]),
    ("sales", [_sale(1, qty=None)]),
    ("sales", [_sale(1, qty=-1)]),
    ("sales", [_sale(1, qty=2**63)]),
    ("sales", [_sale(1, qty=-(2**63))]),
    ("sales", [_sale(1, colour="red")]),
    ("sales", [{k: v for k, v in _sale(1).items() if k != "qty"}]),
    ("sales", [_sale(1, date="")]),
    ("sales", [_sale(1, date="2025-02-30")]),
    ("sales", [_sale(1, date="2025-1-2")]),
    ("sales", [_sale(1, date={"day": 1})]),
    ("sales", [_sale(1), _sale(1)]),
    ("sales", [_sale(1), None]),
    ("sales", [_sale(1), 5]),
    ("sales", []),
    ("stores", [STORES[0] | {"name": ""}]),
    ("stores", [STORES[0] | {"name": 5}]),
    ("stores", [STORES[0] | {"size": 0}]),
    ("promotions", [PROMOTION | {"end_date": "2024-12-31"}]),
    ("promotions", [PROMOTION | {"discount": 1}]),
]


def test_json_read_into_arrow_agrees_with_the_row_path():
    import json

    from hafen.serve._ingest import TABLES, _columnar, _json_columns

    bodies = [(t, json.dumps(rows).encode()) for t, rows in JSON_BATCHES.items()]
    bodies.append(("sales", json.dumps(JSON_BATCHES["sales"], indent=2).encode()))
    bodies.append(("sales", json.dumps([_sale(i) for i in range(15_000)]).encode()))  # > 1 MB
    for table, body in bodies:
        read = _json_columns(TABLES[table], body)
        columnar = _columnar(TABLES[table], json.loads(body))
        assert read is not None and columnar is not None, table
        assert read.equals(columnar[0]), table
    odd = [(t, json.dumps(rows).encode()) for t, rows in JSON_ODD]
    odd += [
        ("sales", b'[{"sale_id": 1, "sale_id": 2, "date": "2025-01-01", "store_id": 1}]'),
        (
            "sales",
            b'[{"sale_id": 1, "date": "2025-01-01", "store_id": 1, "product_id": 2, "qty": NaN}]',
        ),
        ("sales", b'{"rows": ' + json.dumps([_sale(1)]).encode() + b"}"),
        ("sales", json.dumps([_sale(1)]).encode() + b" trailing"),
        ("sales", b"[{"),
    ]
    for table, body in odd:
        assert _json_columns(TABLES[table], body) is None, body
