"""``hafen demo --storage az://...`` and the API over it, on Azurite, by configuration alone.

The only Azure-specific inputs are the ones a user gives: ``AZURE_STORAGE_CONNECTION_STRING``
in the environment and the datasets' URL. The cluster is in-process (threads) to keep the test
lean; the command connects to it with ``--scheduler``, as it would to a real cluster.
"""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import hafen
from hafen.cli import main
from hafen.serve import create_app
from hafen.testing import thread_cluster


@pytest.mark.slow
def test_demo_and_api_on_azure(azurite, tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    root = azurite.url(f"demo-{uuid.uuid4().hex[:8]}/datasets")
    workdir = tmp_path / "demo"
    with thread_cluster(2, threads_per_worker=1) as client:
        args = ["demo", "--workdir", str(workdir), "--stores", "2", "--products", "4"]
        args += ["--days", "70", "--scheduler", client.scheduler.address, "--json"]
        result = CliRunner().invoke(main, [*args, "--storage", root])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert not (workdir / "datasets").exists()  # only the SQLite source is local
    rows = {stage["name"]: stage["rows"] for stage in summary["stages"]}
    for name in ("sales", "sales_by_store", "forecasts"):
        ds = hafen.open_dataset(f"{root}/{name}")
        assert ds.version == summary["versions"][name] == 0
        assert ds.storage.protocol == "az"
    assert hafen.open_dataset(f"{root}/forecasts").num_rows == rows["write forecasts"] > 0
    assert hafen.open_dataset(f"{root}/sales_by_store").num_rows == rows["reshuffle"] > 0

    forecasts = hafen.open_dataset(f"{root}/forecasts").read()
    store, product = (int(v) for v in forecasts[["store_id", "product_id"]].iloc[0])
    with TestClient(create_app(root)) as api:
        response = api.get("/forecasts", params={"store_id": store, "product_id": product})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == 0 and len(body["rows"]) == 28
        assert api.get("/healthz").status_code == 200
