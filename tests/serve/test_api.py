"""The HTTP API with FastAPI's TestClient."""

from __future__ import annotations

import csv
import datetime as dt
import io
import threading

import pandas as pd
import pytest
from _serve_data import LAST, PRODUCTS, STORES, forecasts_frame, history_frame
from fastapi.testclient import TestClient

import hafen
from hafen.serve import create_app
from hafen.testing import poll_for


@pytest.fixture
def app(root):
    return create_app(str(root), refresh=0)


@pytest.fixture
def client(app):
    with TestClient(app) as client:
        yield client


def test_forecasts_of_one_store_and_product(client):
    r = client.get("/forecasts", params={"store_id": 2, "product_id": 7})
    assert r.status_code == 200
    body = r.json()
    assert (body["dataset"], body["version"], body["store_id"], body["product_id"]) == (
        "forecasts",
        1,
        2,
        7,
    )
    expected = forecasts_frame([7])
    expected = expected[expected["store_id"] == 2]
    assert [row["date"] for row in body["rows"]] == [d.isoformat() for d in expected["date"]]
    assert [row["forecast"] for row in body["rows"]] == pytest.approx(list(expected["forecast"]))
    assert {row["product_id"] for row in body["rows"]} == {7}


def test_all_products_of_a_store_and_a_date_range(client):
    r = client.get("/forecasts", params={"store_id": 3})
    assert r.status_code == 200
    assert len(r.json()["rows"]) == len(PRODUCTS) * 28
    start, end = LAST + dt.timedelta(days=3), LAST + dt.timedelta(days=5)
    r = client.get(
        "/forecasts",
        params={"store_id": 3, "product_id": 1, "from": start.isoformat(), "to": end.isoformat()},
    )
    assert [row["date"] for row in r.json()["rows"]] == [
        (start + dt.timedelta(days=i)).isoformat() for i in range(3)
    ]


def test_csv_on_accept_header(client):
    r = client.get(
        "/forecasts", params={"store_id": 1, "product_id": 2}, headers={"Accept": "text/csv"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 28
    assert rows[0]["date"] == (LAST + dt.timedelta(days=1)).isoformat()
    assert float(rows[0]["forecast"]) == pytest.approx(100 + 2 + 0.01)


def test_lookup_reads_one_file_via_partition_and_index(app, client):
    ds = hafen.open_dataset(str(app.state.registry.root) + "/forecasts")
    assert len(ds.files()) == 2 * len(STORES)  # two files per store
    lookup = app.state.lookup
    client.get("/forecasts", params={"store_id": 2, "product_id": 7})
    assert lookup.reads == 1  # the store's partition, then the product index: one file of six
    client.get("/forecasts", params={"store_id": 2, "product_id": 8})
    assert lookup.reads == 1  # same file, from the cache
    client.get("/forecasts", params={"store_id": 2, "product_id": 3})
    assert lookup.reads == 2  # the store's other file


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"store_id": 1, "from": "2025-07-10", "to": "2025-07-01"}, 400, "is after"),
        ({"store_id": 99}, 404, "no forecasts for store 99"),
        ({"store_id": 1, "product_id": 999}, 404, "product 999"),
        ({"store_id": "x"}, 422, "valid integer"),
        ({"store_id": -1}, 422, "greater than or equal"),
        ({}, 422, "Field required"),
        ({"store_id": 1, "from": "yesterday"}, 422, "valid date"),
    ],
)
def test_bad_parameters_are_clear_4xx(client, params, status, message):
    r = client.get("/forecasts", params=params)
    assert r.status_code == status
    assert message in r.text


def test_history(client):
    r = client.get("/history", params={"store_id": 1, "product_id": 1, "last": 5})
    assert r.status_code == 200
    rows = r.json()["rows"]
    assert [row["date"] for row in rows] == [
        (LAST - dt.timedelta(days=d)).isoformat() for d in range(4, -1, -1)
    ]
    assert client.get("/history", params={"store_id": 1, "product_id": 77}).status_code == 404
    assert client.get("/history", params={"store_id": 1}).status_code == 422


def test_datasets_list_and_detail(client):
    r = client.get("/datasets")
    assert r.status_code == 200
    names = {d["name"]: d for d in r.json()["datasets"]}
    assert set(names) == {"forecasts", "sales_by_store"}
    assert names["forecasts"]["partition_on"] == ["store_id"]
    assert names["forecasts"]["indices"] == ["product_id"]
    r = client.get("/datasets/forecasts", params={"history": 5})
    assert r.status_code == 200
    detail = r.json()
    assert detail["version"] == 1
    assert [c["name"] for c in detail["schema"]] == [
        "store_id",
        "product_id",
        "date",
        "forecast",
        "baseline",
    ]
    assert detail["partitions"] == [{"store_id": s} for s in STORES]
    assert detail["partitions_total"] == 3
    assert [h["version"] for h in detail["history"]] == [1, 0]
    assert client.get("/datasets/nope").status_code == 404


def test_healthz_docs_and_page(client):
    r = client.get("/healthz")
    assert r.json() == {
        "status": "ok",
        "version": hafen.__version__,
        "datasets": {"forecasts": 1, "sales_by_store": 0},
    }
    assert client.get("/openapi.json").json()["paths"].keys() >= {
        "/forecasts",
        "/history",
        "/datasets",
        "/datasets/{name}",
        "/healthz",
    }
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<svg" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")


def test_new_commits_are_served_without_restart(root):
    app = create_app(str(root), refresh=0.2)
    with TestClient(app) as client:
        before = client.get("/forecasts", params={"store_id": 1, "product_id": 1}).json()
        hafen.write_dataset(
            forecasts_frame(PRODUCTS, scale=2.0), str(root / "forecasts"), mode="overwrite"
        )
        seen = []

        def served_a_new_version() -> bool:
            seen[:] = [client.get("/forecasts", params={"store_id": 1, "product_id": 1}).json()]
            return bool(seen[0]["version"] != before["version"])

        poll_for(served_a_new_version, 10, what="the new version served")
        after = seen[0]
        assert after["version"] == before["version"] + 1
        assert after["rows"][0]["forecast"] == pytest.approx(2 * before["rows"][0]["forecast"])
        # a dataset created after start-up is found too
        hafen.write_dataset(forecasts_frame([1]), str(root / "late"))
        poll_for(
            lambda: "late" in client.get("/healthz").json()["datasets"],
            10,
            what="the new dataset served",
        )
        assert "late" in client.get("/healthz").json()["datasets"]


def test_a_single_dataset_url_is_served(root):
    with TestClient(create_app(str(root / "forecasts"))) as client:
        assert client.get("/healthz").json()["datasets"] == {"forecasts": 1}
        r = client.get("/forecasts", params={"store_id": 1, "product_id": 1})
        assert r.status_code == 200
        assert client.get("/history", params={"store_id": 1, "product_id": 1}).status_code == 404


@pytest.mark.parametrize(
    "params",
    [
        {"store_id": 2, "product_id": 7},
        {"store_id": 1, "product_id": 3, "from": "2025-07-05", "to": "2025-07-09"},
        {"store_id": 3, "product_id": 10, "to": "2025-07-02"},
    ],
)
def test_fast_path_answers_exactly_as_the_route(root, params):
    with (
        TestClient(create_app(str(root))) as fast,
        TestClient(create_app(str(root), fast_path=False)) as slow,
    ):
        a, b = fast.get("/forecasts", params=params), slow.get("/forecasts", params=params)
    assert a.status_code == b.status_code == 200
    assert a.content == b.content
    assert a.headers["content-type"] == b.headers["content-type"] == "application/json"


def test_fast_path_leaves_everything_else_to_the_route(root):
    with TestClient(create_app(str(root))) as client:
        # each of these goes on to FastAPI, which answers as the route does
        assert client.get("/forecasts", params={"store_id": 1}).status_code == 200
        assert client.get("/forecasts", params={"store_id": 1, "product_id": 99}).status_code == 404
        r = client.get("/forecasts", params={"store_id": "01x", "product_id": 1})
        assert r.status_code == 422
        r = client.get(
            "/forecasts",
            params={"store_id": 1, "product_id": 1, "from": "2025-08-01", "to": "2025-07-01"},
        )
        assert r.status_code == 400
        r = client.get(
            "/forecasts", params={"store_id": 1, "product_id": 1}, headers={"Accept": "text/csv"}
        )
        assert r.headers["content-type"].startswith("text/csv")


@pytest.mark.parametrize("tz", [None, "Europe/Berlin"])
def test_dates_stored_as_timestamps_are_served_as_days(tmp_path, tz):
    frame = forecasts_frame(PRODUCTS[:2])
    frame["date"] = pd.to_datetime(frame["date"])
    if tz:
        frame["date"] = frame["date"].dt.tz_localize(tz)
    history = history_frame()
    history["date"] = pd.to_datetime(history["date"]) + pd.Timedelta(hours=13)  # not midnight
    hafen.write_dataset(frame, str(tmp_path / "forecasts"), partition_on=["store_id"])
    hafen.write_dataset(history, str(tmp_path / "sales_by_store"), partition_on=["store_id"])
    day = LAST + dt.timedelta(days=2)
    with TestClient(create_app(str(tmp_path))) as client:
        for params in (
            {"store_id": 1, "product_id": 2},
            {"store_id": 1, "product_id": 2, "from": day.isoformat(), "to": day.isoformat()},
        ):
            r = client.get("/forecasts", params=params)
            assert r.status_code == 200, r.text
            dates = [row["date"] for row in r.json()["rows"]]
            assert (
                dates[0] == (day if "from" in params else LAST + dt.timedelta(days=1)).isoformat()
            )
            r = client.get("/forecasts", params=params, headers={"Accept": "text/csv"})
            assert r.status_code == 200 and dates[0] in r.text.splitlines()[1]
        r = client.get("/history", params={"store_id": 1, "product_id": 2, "to": LAST.isoformat()})
        assert r.status_code == 200, r.text
        assert r.json()["rows"][-1]["date"] == LAST.isoformat()


def test_new_versions_are_looked_for_off_the_request_path(root, monkeypatch):
    from hafen.datasets import Dataset
    from hafen.serve import Registry

    checked_in: list[str] = []
    latest = Dataset.latest

    failed: list[bool] = []

    def recording(self):
        checked_in.append(threading.current_thread().name)
        if not failed:
            failed.append(True)
            raise RuntimeError("a storage hiccup")  # the thread goes on to the next round
        return latest(self)

    monkeypatch.setattr(Dataset, "latest", recording)
    registry = Registry(str(root), refresh=0.1)
    registry.start()
    try:
        before = registry.get("forecasts").version
        hafen.write_dataset(forecasts_frame([1]), str(root / "forecasts"), mode="append")
        poll_for(
            lambda: registry.get("forecasts").version != before, 10, what="the new version seen"
        )
        assert registry.get("forecasts").version == before + 1
        assert checked_in and set(checked_in) == {"hafen-serve-refresh"}
    finally:
        registry.stop()
    assert not any(t.name == "hafen-serve-refresh" for t in threading.enumerate())
    # without the thread, a request checks for itself
    checked_in.clear()

    def a_request_checked() -> bool:  # once the refresh interval has passed: only that one
        registry.get("forecasts")
        return bool(checked_in)

    poll_for(a_request_checked, 10, what="a request checked")
    assert checked_in == [threading.current_thread().name]


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_a_damaged_product_index_costs_a_scan_not_an_error(root, damage):
    """The index only narrows the files to read: without it the answer is the same."""
    from pathlib import Path

    from hafen.errors import HafenWarning

    params = {"store_id": 2, "product_id": 7}
    with TestClient(create_app(str(root), refresh=0, fast_path=False)) as client:
        expected = client.get("/forecasts", params=params).json()
    ds = hafen.open_dataset(str(root / "forecasts"))
    for part in ds.state.index_parts:
        path = Path(ds.storage.full(part.path))
        if damage == "missing":
            path.unlink()
        else:
            path.write_bytes(b"PAR1 this is not an index PAR1")
    for fast_path in (True, False):
        with TestClient(create_app(str(root), refresh=0, fast_path=fast_path)) as client:
            with pytest.warns(HafenWarning, match="reading without the index on 'product_id'"):
                r = client.get("/forecasts", params=params)
            assert r.status_code == 200, r.text
            assert r.json() == expected
