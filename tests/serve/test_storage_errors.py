"""Failing storage and damaged datasets under a running app: a status and a JSON reason.

Storage failing is a 503 with ``Retry-After``; a missing dataset a 404; a damaged index or data
file a 500 that names the dataset and the problem; never a bare 500, and never a storage path.
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _serve_data import PRODUCTS, forecasts_frame, history_frame
from fastapi.testclient import TestClient
from fsspec.implementations.memory import MemoryFileSystem

import hafen
from hafen.serve import create_app
from hafen.serve._lookup import Lookup
from hafen.testing import poll_for

LOOKUP = {"store_id": 1, "product_id": 3}
REQUESTS: list[tuple[str, dict[str, object]]] = [
    ("/forecasts", LOOKUP),  # the fast path first, then the route
    ("/forecasts", {"store_id": 2}),
    ("/history", LOOKUP),
    ("/datasets/forecasts", {}),
]


def _poll(condition: Callable[[], bool], what: str) -> None:
    poll_for(condition, 20, what=what)


def _check_error(answer, status: int, error: str, hidden: list[str]) -> dict[str, object]:
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["error"] == error and body["detail"], body
    for text in hidden:
        assert text not in answer.text, (text, answer.text)
    return body


class FailingMemory:
    """Makes every operation of the in-memory filesystem under ``prefix`` fail with EIO."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
        self.failing = False
        self.calls = 0
        for method in ("info", "ls", "_open", "cat_file", "find"):
            original = getattr(MemoryFileSystem, method)
            monkeypatch.setattr(MemoryFileSystem, method, self._wrap(original, prefix))

    def _wrap(self, original, prefix):
        def method(fs, path, *args, **kwargs):
            if self.failing and str(path).lstrip("/").startswith(prefix):
                self.calls += 1
                raise OSError(errno.EIO, "Input/output error", str(path))
            return original(fs, path, *args, **kwargs)

        return method


@pytest.fixture
def memory_root() -> Iterator[str]:
    name = f"serve-{uuid.uuid4().hex[:12]}"
    root = f"memory://{name}/datasets"
    layout = {"partition_on": ["store_id"], "indices": ["product_id"]}
    hafen.write_dataset(forecasts_frame(PRODUCTS[:5]), f"{root}/forecasts", **layout)
    hafen.write_dataset(forecasts_frame(PRODUCTS[5:]), f"{root}/forecasts", mode="append")
    hafen.write_dataset(history_frame(), f"{root}/sales_by_store", **layout)
    try:
        yield root
    finally:
        MemoryFileSystem().rm(f"/{name}", recursive=True)


def test_storage_failing_is_a_503_with_retry_after_and_recovers(memory_root, monkeypatch):
    storage = FailingMemory(monkeypatch, memory_root.split("://", 1)[1])
    hidden = [memory_root, memory_root.split("://", 1)[1]]
    with TestClient(create_app(memory_root, refresh=0.05)) as client:
        storage.failing = True
        for path, params in REQUESTS:
            answer = client.get(path, params=params)
            body = _check_error(answer, 503, "storage_unavailable", hidden)
            assert answer.headers["retry-after"] == "5"
            assert body["dataset"] == path.rsplit("/", 1)[-1].replace("history", "sales_by_store")
        assert storage.calls
        # what the server holds is still listed, and it says it is up
        assert client.get("/healthz").json()["datasets"] == {"forecasts": 1, "sales_by_store": 0}
        assert {d["name"] for d in client.get("/datasets").json()["datasets"]} == {
            "forecasts",
            "sales_by_store",
        }
        # the checks went on failing in the background, without stopping
        calls = storage.calls
        _poll(lambda: storage.calls > calls, "another failed check")
        storage.failing = False
        for path, params in REQUESTS:
            _poll(lambda p=path, q=params: client.get(p, params=q).status_code == 200, path)
        # and new versions are followed again
        hafen.write_dataset(
            forecasts_frame(PRODUCTS, 2.0), f"{memory_root}/forecasts", mode="overwrite"
        )
        _poll(lambda: client.get("/forecasts", params=LOOKUP).json()["version"] == 2, "v2")


def test_a_server_started_while_storage_fails_answers_503_until_it_is_back(
    memory_root, monkeypatch
):
    storage = FailingMemory(monkeypatch, memory_root.split("://", 1)[1])
    storage.failing = True
    with TestClient(create_app(memory_root, refresh=0.05)) as client:
        for path, params in [("/datasets", {}), ("/healthz", {}), *REQUESTS]:
            answer = client.get(path, params=params)
            _check_error(answer, 503, "storage_unavailable", [memory_root])
            assert answer.headers["retry-after"] == "5"
        storage.failing = False
        _poll(lambda: client.get("/healthz").status_code == 200, "the datasets found")
        assert client.get("/healthz").json()["datasets"] == {"forecasts": 1, "sales_by_store": 0}
        for path, params in REQUESTS:
            assert client.get(path, params=params).status_code == 200, path


def _files(root: Path, pattern: str) -> list[Path]:
    found = sorted(root.glob(pattern))
    assert found, pattern
    return found


@pytest.mark.parametrize(
    ("damage", "error", "says"),
    [
        ("index", "dataset_damaged", "an index file cannot be read"),
        # with checksums in the log, a damaged data file is named as such
        ("data", "dataset_damaged", "a data file does not match its checksum"),
        ("data-middle", "dataset_damaged", "a data file does not match its checksum"),
        ("data-removed", "dataset_damaged", "a data file it refers to is missing"),
    ],
)
def test_a_damaged_file_is_named_without_its_path(root, damage, error, says):
    with TestClient(create_app(str(root), refresh=0.05)) as client:
        assert client.get("/datasets/forecasts").status_code == 200
        store = root / "forecasts" / "table" / "store_id=1"
        if damage == "index":
            for index in _files(root / "forecasts", "_hafen/indices/product_id/*.parquet"):
                index.write_bytes(b"not parquet")
        elif damage == "data":
            for f in _files(store, "*.parquet"):
                f.write_bytes(b"x" * f.stat().st_size)
        elif damage == "data-middle":  # the footer is fine, a page is not
            for f in _files(store, "*.parquet"):
                data = f.read_bytes()
                f.write_bytes(data[:100] + b"\0" * 200 + data[300:])
        else:
            for f in _files(store, "*.parquet"):
                f.unlink()
        # without a product the index is not read
        for params in (LOOKUP,) if damage == "index" else (LOOKUP, {"store_id": 1}):
            body = _check_error(
                client.get("/forecasts", params=params), 500, error, [str(root), "/tmp"]
            )
            assert body["dataset"] == "forecasts"
            assert says in body["detail"] and "'forecasts'" in body["detail"]
        # the other stores and datasets are still served
        assert client.get("/forecasts", params={"store_id": 2}).status_code == 200
        assert client.get("/history", params=LOOKUP).status_code == 200


def test_a_damaged_commit_log_is_named_without_its_path(root):
    for entry in _files(root / "forecasts", "_hafen/log/*.json"):
        entry.write_text("{not json")
    (root / "forecasts" / "_hafen" / "_last_checkpoint").unlink(missing_ok=True)
    from hafen.datasets._logstore import clear_state_cache

    clear_state_cache()  # as a server started after the damage
    with TestClient(create_app(str(root), refresh=0.05)) as client:
        for path, params in REQUESTS[:2] + REQUESTS[3:]:
            body = _check_error(
                client.get(path, params=params), 500, "dataset_damaged", [str(root), "/tmp"]
            )
            assert "its commit log cannot be read" in body["detail"]
        assert client.get("/history", params=LOOKUP).status_code == 200
        listed = [d["name"] for d in client.get("/datasets").json()["datasets"]]
        assert listed == ["sales_by_store"]


def test_no_such_dataset_is_a_404(root):
    with TestClient(create_app(str(root / "forecasts"), refresh=0.05)) as client:
        body = _check_error(client.get("/datasets/nope"), 404, "dataset_not_found", [str(root)])
        assert body["dataset"] == "nope"
        _check_error(client.get("/history", params=LOOKUP), 404, "dataset_not_found", [str(root)])
        _check_error(client.get("/forecasts", params={"store_id": 99}), 404, "no_rows", [])
        _check_error(client.get("/no/such/path"), 404, "not_found", [])


def test_an_unexpected_failure_is_a_json_500(root, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError(f"a bug near {root}")

    monkeypatch.setattr(Lookup, "rows", broken)
    with TestClient(create_app(str(root), refresh=0), raise_server_exceptions=False) as client:
        body = _check_error(
            client.get("/forecasts", params={"store_id": 1}), 500, "internal_error", [str(root)]
        )
        assert "RuntimeError" in body["detail"]
