"""A running server follows its datasets: new versions, vacuum, delete and recreate.

The server must reach the newest version within its refresh interval, also when vacuum removed
the log entries after the version it holds and when the dataset was deleted and recreated under
the same name (``hafen demo --fresh``) with fewer, as many or more versions than before; and a
lookup that fails on the version held is tried once more on the latest one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from _serve_data import PRODUCTS, forecasts_frame
from fastapi.testclient import TestClient

import hafen
from hafen.serve import create_app
from hafen.testing import poll_for

DEADLINE = 20.0  # seconds; the refresh interval below is 0.05 s
LOOKUP = {"store_id": 1, "product_id": 1}


def _poll(condition: Callable[[], bool], what: str) -> None:
    poll_for(condition, DEADLINE, what=what)


def _first_forecast(scale: float) -> float:
    return scale * (1 * 100 + 1 + 1 / 100)  # store 1, product 1, first day (see _serve_data)


def _write(root: Path, versions: int, scale: float) -> None:
    """``forecasts`` with ``versions`` versions, the newest one scaled by ``scale``."""
    url = str(root / "forecasts")
    layout = {"partition_on": ["store_id"], "indices": ["product_id"]}
    hafen.write_dataset(forecasts_frame(PRODUCTS, scale), url, mode="create", **layout)
    for _ in range(versions - 1):
        hafen.write_dataset(forecasts_frame(PRODUCTS, scale), url, mode="overwrite")


def _delete(root: Path) -> None:
    shutil.rmtree(root / "forecasts")
    (root / "forecasts.by-dataset-metadata.json").unlink(missing_ok=True)


def _serves(client: TestClient, version: int, scale: float) -> bool:
    """Whether every way of asking answers from ``version`` with values scaled by ``scale``."""
    fast = client.get("/forecasts", params=LOOKUP)  # the fast path and its body cache
    route = client.get("/forecasts", params={"store_id": 1})  # the route, its file lists
    detail = client.get("/datasets/forecasts")
    if not fast.status_code == route.status_code == detail.status_code == 200:
        return False
    first = next(row for row in route.json()["rows"] if row["product_id"] == 1)
    return (
        fast.json()["version"] == route.json()["version"] == detail.json()["version"] == version
        and fast.json()["rows"][0]["forecast"] == pytest.approx(_first_forecast(scale))
        and first["forecast"] == pytest.approx(_first_forecast(scale))
        and len(detail.json()["history"]) == version + 1
    )


@pytest.mark.parametrize("versions", [1, 2, 4], ids=["fewer", "as-many", "more"])
def test_a_dataset_deleted_and_recreated_is_served_anew(root, versions):
    # make_root wrote forecasts in two versions (0 and 1)
    with TestClient(create_app(str(root), refresh=0.05)) as client:
        _poll(lambda: _serves(client, 1, 1.0), "the first forecasts")  # caches warm
        registry = client.app.state.registry
        registry.stop()  # the whole change happens between two checks
        _delete(root)
        _write(root, versions, scale=3.0)
        registry.start()
        _poll(lambda: _serves(client, versions - 1, 3.0), "the recreated forecasts")


def test_a_dataset_recreated_while_checked_is_served_anew(root):
    """As ``hafen demo --fresh`` does it: the checks go on while the dataset is gone."""
    with TestClient(create_app(str(root), refresh=0.05)) as client:
        _poll(lambda: _serves(client, 1, 1.0), "the first forecasts")
        _delete(root)
        _poll(lambda: client.get("/forecasts", params=LOOKUP).status_code == 404, "a 404")
        answer = client.get("/datasets/forecasts")
        assert answer.status_code == 404 and answer.json()["error"] == "dataset_not_found"
        _write(root, 1, scale=2.0)
        _poll(lambda: _serves(client, 0, 2.0), "the recreated forecasts")


def test_the_newest_version_is_reached_after_vacuum_removed_log_entries(root):
    with TestClient(create_app(str(root), refresh=0.05)) as client:
        _poll(lambda: _serves(client, 1, 1.0), "the first forecasts")
        registry = client.app.state.registry
        registry.stop()  # the server still holds version 1 when its successors are vacuumed
        url = str(root / "forecasts")
        for scale in (2.0, 3.0, 4.0):
            ds = hafen.write_dataset(forecasts_frame(PRODUCTS, scale), url, mode="overwrite")
        report = ds.vacuum(retain_versions=1, grace_period=0)
        assert report.removed_versions == [0, 1, 2, 3] and report.removed_files
        registry.start()
        answer = client.get("/datasets/forecasts")
        assert answer.status_code == 200
        _poll(lambda: client.get("/datasets/forecasts").json()["version"] == 4, "version 4")
        fast = client.get("/forecasts", params=LOOKUP).json()
        assert fast["version"] == 4
        assert fast["rows"][0]["forecast"] == pytest.approx(_first_forecast(4.0))


@pytest.mark.parametrize("change", ["vacuum", "recreate"])
def test_a_lookup_failing_on_the_version_held_is_retried_on_the_latest(root, change):
    # the check never runs during the test: only the retry can move the server on
    app = create_app(str(root), refresh=3600)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/healthz").json()["datasets"]["forecasts"] == 1
        url = str(root / "forecasts")
        if change == "vacuum":  # version 1's files go, and the log entries up to version 2
            hafen.write_dataset(forecasts_frame(PRODUCTS, 2.0), url, mode="overwrite")
            ds = hafen.write_dataset(forecasts_frame(PRODUCTS, 3.0), url, mode="overwrite")
            assert ds.vacuum(retain_versions=1, grace_period=0).removed_files
            expected = 3
        else:
            _delete(root)
            _write(root, 1, scale=3.0)
            expected = 0
        for params in (LOOKUP, {"store_id": 1}):  # the fast path, then the route
            answer = client.get("/forecasts", params=params)
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == expected
            rows = [r for r in answer.json()["rows"] if r["product_id"] == 1]
            assert rows[0]["forecast"] == pytest.approx(_first_forecast(3.0))
        assert client.get("/healthz").json()["datasets"]["forecasts"] == expected
