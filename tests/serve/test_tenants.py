"""Tenants and keys: keys shown once and stored hashed, Bearer auth on every endpoint but
/healthz, 401 for a wrong or revoked key, 404 (never 403) for another tenant's resources, not a
byte of another tenant's data in any answer, and 429 with Retry-After past a key's rate."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import hafen
from hafen.cli import main
from hafen.errors import ConfigError
from hafen.serve import Tenants, create_service

# the same store and product ids in both tenants; the values tell them apart
STORES = [1, 2]
PRODUCTS = [1, 2, 3]
MARK = {"acme": 111.25, "bolt": 987654.5}


def _fill(root: str, mark: float, *, extra: str | None = None) -> None:
    day = dt.date(2025, 7, 1)
    forecasts = pd.DataFrame(
        [
            (s, p, day + dt.timedelta(days=h), mark + h, mark)
            for s in STORES
            for p in PRODUCTS
            for h in range(3)
        ],
        columns=["store_id", "product_id", "date", "forecast", "baseline"],
    )
    hafen.write_dataset(
        forecasts, f"{root}/forecasts", partition_on=["store_id"], indices=["product_id"]
    )
    history = pd.DataFrame(
        [
            (s, p, day - dt.timedelta(days=d), int(mark))
            for s in STORES
            for p in PRODUCTS
            for d in range(3)
        ],
        columns=["store_id", "product_id", "date", "qty"],
    )
    hafen.write_dataset(
        history, f"{root}/sales_by_store", partition_on=["store_id"], indices=["product_id"]
    )
    if extra:
        hafen.write_dataset(history, f"{root}/{extra}")


@pytest.fixture
def service(tmp_path):
    app = create_service(tmp_path / "home", refresh=0)
    keys = {name: app.tenants.add(name) for name in MARK}
    for name, mark in MARK.items():
        _fill(app.tenants.get(name).datasets, mark, extra=f"only_{name}")
    with TestClient(app) as client:
        yield app, client, keys


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_shown_once_and_stored_hashed(tmp_path):
    tenants = Tenants(tmp_path / "home")
    key = tenants.add("acme")
    other = tenants.new_key("acme")
    assert key != other and len(key) > 40
    stored = b"".join(p.read_bytes() for p in (tmp_path / "home").glob("tenants.sqlite*"))
    assert key.encode() not in stored and other.encode() not in stored
    assert tenants.authenticate(key).name == "acme"
    assert tenants.authenticate(key + "x") is None
    with pytest.raises(ConfigError, match="exists"):
        tenants.add("acme")
    with pytest.raises(ConfigError, match="tenant name"):
        tenants.add("../etc")
    tenants.revoke("acme")
    assert tenants.authenticate(key) is None and tenants.authenticate(other) is None
    assert [t.revoked is not None for t in tenants.list()] == [True]


ENDPOINTS = [
    ("GET", "/forecasts?store_id=1&product_id=2"),
    ("GET", "/forecasts?store_id=2"),
    ("GET", "/history?store_id=1&product_id=3"),
    ("GET", "/datasets"),
    ("GET", "/datasets/forecasts"),
    ("GET", "/datasets/sales_by_store"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/stores"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_but_healthz_needs_a_valid_key(service, method, path):
    app, client, keys = service
    for headers in ({}, _auth("hfn_wrong"), {"Authorization": f"Basic {keys['acme']}"}):
        response = client.request(method, path, headers=headers, json=[])
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.request(method, path, headers=_auth(keys["acme"]), json=[]).status_code == 200
    app.tenants.revoke("acme")
    assert client.request(method, path, headers=_auth(keys["acme"]), json=[]).status_code == 401
    assert client.get("/healthz").status_code == 200


def test_the_page_is_a_shell_that_names_nothing_and_asks_for_the_key(service):
    """``GET /`` answers without a key (a browser cannot send one when it navigates): the same
    bytes for everyone, no tenant, data or path in them; it sends the key as a Bearer header,
    keeps it out of URLs and cookies, and may contact this origin only."""
    from hafen.serve._page import PAGE

    app, client, keys = service
    anonymous = client.get("/")
    assert anonymous.status_code == 200 and anonymous.text == PAGE
    assert client.get("/", headers=_auth(keys["bolt"])).content == anonymous.content
    for secret in (*MARK, *(str(m) for m in MARK.values()), str(app.tenants.home)):
        assert secret not in anonymous.text
    assert '"Bearer " + key' in PAGE and "cookie" not in PAGE.lower()
    assert "sessionStorage" in PAGE and "key=" not in PAGE
    policy = anonymous.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert anonymous.headers["cache-control"] == "no-store"
    # everything the page fetches needs the key
    for path in ("/history?store_id=1&product_id=1&last=120", "/forecasts?store_id=1"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=_auth(keys["acme"])).status_code == 200


def test_a_key_reaches_its_own_tenant_only(service, tmp_path):
    _app, client, keys = service
    for me, other in (("acme", "bolt"), ("bolt", "acme")):
        headers = _auth(keys[me])
        seen = []
        for method, path in ENDPOINTS:
            response = client.request(method, path, headers=headers, json=[])
            assert response.status_code == 200, (path, response.text)
            seen.append(response.text)
        forecasts = client.get("/forecasts?store_id=1&product_id=2", headers=headers).json()
        assert {r["baseline"] for r in forecasts["rows"]} == {MARK[me]}
        history = client.get("/history?store_id=1&product_id=2", headers=headers).json()
        assert {r["qty"] for r in history["rows"]} == {int(MARK[me])}
        # the other tenant's own dataset does not exist for this key: 404, as any unknown name
        theirs = client.get(f"/datasets/only_{other}", headers=headers)
        unknown = client.get("/datasets/only_nobody", headers=headers)
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.text.replace(other, "nobody") == unknown.text
        assert client.get(f"/datasets/only_{me}", headers=headers).status_code == 200
        names = [d["name"] for d in client.get("/datasets", headers=headers).json()["datasets"]]
        assert sorted(names) == sorted(["forecasts", "sales_by_store", f"only_{me}"])
        text = "\n".join(seen)
        assert str(MARK[other]) not in text and str(int(MARK[other])) not in text
        assert other not in text
        assert str(tmp_path) not in text and keys[me] not in text


def test_rate_limit_answers_429_with_retry_after(tmp_path):
    app = create_service(tmp_path / "home", rate=0.01, burst=3)
    key, other = app.tenants.add("acme"), app.tenants.add("bolt")
    with TestClient(app) as client:
        statuses = [client.get("/datasets", headers=_auth(key)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = client.get("/datasets", headers=_auth(key))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert client.get("/datasets", headers=_auth(other)).status_code == 200  # per key
        assert client.get("/healthz").status_code == 200


def test_tenants_command(tmp_path):
    runner = CliRunner()
    home = str(tmp_path / "home")
    added = runner.invoke(main, ["tenants", "add", "acme", "--home", home])
    assert added.exit_code == 0, added.output
    key = added.output.strip().splitlines()[-1]
    assert Tenants(home).authenticate(key).name == "acme"
    listed = runner.invoke(main, ["tenants", "ls", "--home", home])
    assert "acme" in listed.output and "active" in listed.output and key not in listed.output
    assert runner.invoke(main, ["tenants", "revoke", "acme", "--home", home]).exit_code == 0
    assert "revoked" in runner.invoke(main, ["tenants", "ls", "--home", home]).output
    assert Tenants(home).authenticate(key) is None
    refused = runner.invoke(main, ["tenants", "add", "acme", "--home", home])
    assert refused.exit_code != 0 and "exists" in refused.output
