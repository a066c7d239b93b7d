"""The fast path's bodies (prepared files, cached bodies) against the FastAPI route's."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import pyarrow as pa
import pytest
from _serve_data import PRODUCTS, forecasts_frame
from fastapi.testclient import TestClient

import hafen
from hafen.serve import create_app

DAY0 = dt.date(2025, 7, 1)
SCHEMA = pa.schema(
    [
        ("store_id", pa.int64()),
        ("product_id", pa.int32()),
        ("date", pa.date32()),
        ("forecast", pa.float32()),
        ("baseline", pa.float64()),
    ]
)
# values whose JSON text is easy to get wrong: exponents, negative zero, NaN, null, float32
AWKWARD = [0.0, -0.0, 1e-7, 123456789.125, 1e22, 0.1, float("nan"), None, 2.5, 1 / 3]


def _awkward_table(seed: int, stores: list[int], products: list[int], days: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = list(itertools.product(stores, products, range(days)))
    order = rng.permutation(len(rows))  # files not sorted: the sort must be the route's
    rows = [rows[i] for i in order]
    forecast = [AWKWARD[rng.integers(len(AWKWARD))] for _ in rows]
    baseline = [AWKWARD[rng.integers(len(AWKWARD))] for _ in rows]
    return pa.table(
        {
            "store_id": [s for s, _, _ in rows],
            "product_id": [p for _, p, _ in rows],
            "date": [DAY0 + dt.timedelta(days=d) for _, _, d in rows],
            "forecast": forecast,
            "baseline": baseline,
        },
        schema=SCHEMA,
    )


@pytest.fixture
def awkward_root(tmp_path):
    """Stores 1-3; store 1 in one file, stores 2-3 in three files (appends), whose (product,
    day) rows overlap across files, so ties must come out in the route's order."""
    url = str(tmp_path / "datasets" / "forecasts")
    hafen.write_dataset(
        _awkward_table(0, [1, 2, 3], [1, 2, 3, 4], 6),
        url,
        partition_on=["store_id"],
        indices=["product_id"],
    )
    hafen.write_dataset(_awkward_table(1, [2, 3], [3, 4, 5], 4), url, mode="append")
    hafen.write_dataset(_awkward_table(2, [3, 2], [1, 5, 6], 3), url, mode="append")
    return tmp_path / "datasets"


QUERIES = [
    "",
    "&from=2025-07-03",
    "&to=2025-07-02",
    "&from=2025-07-02&to=2025-07-04",
    "&from=2025-07-04&to=2025-07-04",
    "&from=2025-08-01",  # after every row: 200 with no rows
    "&to=2025-06-01",
]


def test_fast_path_is_byte_identical_to_the_route(awkward_root):
    fast = create_app(str(awkward_root), refresh=0)
    with TestClient(create_app(str(awkward_root), refresh=0, fast_path=False)) as route:
        answered = 0
        for store, product, extra in itertools.product(range(1, 5), range(1, 8), QUERIES):
            query = f"store_id={store}&product_id={product}{extra}"
            body = fast.answer(query.encode())
            reference = route.get("/forecasts?" + query)
            if reference.status_code == 404:
                assert body is None, query  # unknown store or product: the route's 404
                continue
            assert reference.status_code == 200
            assert body == reference.content, query
            answered += 1
    assert answered >= 3 * 5 * len(QUERIES)  # most combinations exist
    # and through HTTP, the headers too
    with TestClient(fast) as client, TestClient(create_app(str(awkward_root))) as other:
        a = client.get("/forecasts?store_id=3&product_id=4&from=2025-07-02")
        b = other.get("/forecasts?store_id=3&product_id=4&from=2025-07-02")
    assert a.content == b.content and a.headers == b.headers


def test_bodies_are_cached_and_emptied_by_a_new_version(root):
    app = create_app(str(root), refresh=0)
    bodies = app.state.bodies
    query = b"store_id=1&product_id=1"
    first = app.answer(query)
    assert app.answer(query) is first  # the cached body
    assert (bodies.hits, bodies.misses) == (1, 1)
    hafen.write_dataset(
        forecasts_frame(PRODUCTS, scale=2.0), str(root / "forecasts"), mode="overwrite"
    )
    with TestClient(app) as client:
        r = client.get("/forecasts?" + query.decode())
    assert r.json()["version"] == 2  # not the cached body of version 1
    assert r.json()["rows"][0]["forecast"] == pytest.approx(2 * (100 + 1 + 0.01))
    assert (bodies.hits, bodies.misses) == (1, 2)
    with TestClient(create_app(str(root), fast_path=False)) as route:
        assert r.content == route.get("/forecasts?" + query.decode()).content


def test_body_cache_is_bounded(root):
    app = create_app(str(root), refresh=0, body_cache_bytes=8000)
    for store, product in itertools.product([1, 2, 3], PRODUCTS):
        assert app.answer(f"store_id={store}&product_id={product}".encode()) is not None
    bodies = app.state.bodies
    assert 0 < len(bodies._bodies) < 30
    assert bodies._bodies_size <= 8000


def test_index_is_not_read_once_the_partition_is_prepared(root, monkeypatch):
    app = create_app(str(root), refresh=0)
    lookup = app.state.lookup
    calls = []
    files = lookup.files
    monkeypatch.setattr(lookup, "files", lambda *a: calls.append(a) or files(*a))
    app.answer(b"store_id=2&product_id=7")  # two files in the partition: the index says which
    assert len(calls) == 1 and lookup.reads == 1
    app.answer(b"store_id=2&product_id=2")  # the other file, through the index again
    assert len(calls) == 2 and lookup.reads == 2
    body = app.answer(b"store_id=2&product_id=9")  # both prepared: they say which
    assert len(calls) == 2 and lookup.reads == 2
    with TestClient(create_app(str(root), fast_path=False)) as route:
        assert body == route.get("/forecasts?store_id=2&product_id=9").content


def test_what_the_fast_path_cannot_render_goes_to_the_route(tmp_path):
    url = str(tmp_path / "forecasts")
    table = pa.table(
        {
            "store_id": [1, 1, 2],
            "product_id": [1, 1, 1],
            "date": [DAY0, DAY0 + dt.timedelta(days=1), DAY0],
            "forecast": [1.0, math.inf, 2.0],
            "baseline": [0.5, 0.5, 0.5],
        }
    )
    hafen.write_dataset(table, url, partition_on=["store_id"], indices=["product_id"])
    app = create_app(url)
    assert app.answer(b"store_id=1&product_id=1") is None  # infinity: not JSON, the route's call
    assert app.answer(b"store_id=1&product_id=1&to=2025-07-01") is not None  # without it
    assert app.answer(b"store_id=2&product_id=1") is not None
    assert app.answer(b"store_id=3&product_id=1") is None  # unknown store: the route's 404
    # integer forecasts are not rendered by the fast path (it writes floats); the route does
    other = str(tmp_path / "other" / "forecasts")
    whole = table.set_column(3, "forecast", pa.array([1, 2, 3]))
    hafen.write_dataset(whole, other, partition_on=["store_id"], indices=["product_id"])
    app = create_app(other)
    assert app.answer(b"store_id=1&product_id=1") is None
    with TestClient(app) as client:
        r = client.get("/forecasts?store_id=1&product_id=1")
    assert r.status_code == 200 and [row["forecast"] for row in r.json()["rows"]] == [1, 2]


def test_a_date_range_leaves_out_rows_without_a_date(tmp_path):
    """A row whose date is null is in no range (the route failed with a 500 on it)."""
    url = str(tmp_path / "forecasts")
    days = [DAY0, None, DAY0 + dt.timedelta(days=1)]
    table = pa.table(
        {
            "store_id": [1, 1, 1],
            "product_id": [1, 1, 1],
            "date": pa.array(days, pa.date32()),
            "forecast": [1.0, 2.0, 3.0],
            "baseline": [0.5, 0.5, 0.5],
        }
    )
    hafen.write_dataset(table, url, partition_on=["store_id"], indices=["product_id"])
    for fast_path in (True, False):
        with TestClient(create_app(url, fast_path=fast_path)) as client:
            for query, forecasts in [
                ("", [1.0, 3.0, 2.0]),
                ("&from=2025-07-02", [3.0]),
                ("&to=2025-07-01", [1.0]),
            ]:
                r = client.get("/forecasts?store_id=1&product_id=1" + query)
                assert r.status_code == 200, (fast_path, query, r.text)
                assert [row["forecast"] for row in r.json()["rows"]] == forecasts, query


ODD_QUERIES = [
    "store_id=1&product_id=2&from=20250701",  # basic ISO form: Python reads it as a date
    "store_id=1&product_id=2&to=2025-W27-2",  # an ISO week date
    "store_id=%D9%A1&product_id=2",  # an Arabic-Indic digit one
    "store_id=01&product_id=002",
    "store_id=1&product_id=2&from=2025-07-01T00:00:00",
    "store_id=1&product_id=2&from=",  # blank: a 422 from the route, not "no bound"
    "store_id=1&product_id=2&store_id=1",
    "store_id=1&product_id=2&extra=1",
    "store_id=+1&product_id=2",
    "store_id=1&product_id=2&from=2025-07-01&to=2025-07-01",
]


@pytest.mark.parametrize("query", ODD_QUERIES)
def test_any_query_is_answered_as_the_route_answers_it(root, query):
    with (
        TestClient(create_app(str(root))) as fast,
        TestClient(create_app(str(root), fast_path=False)) as route,
    ):
        a, b = fast.get("/forecasts?" + query), route.get("/forecasts?" + query)
    assert (a.status_code, a.content) == (b.status_code, b.content)
