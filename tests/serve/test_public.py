"""The API shows datasets by name and metadata: never a storage URL, a local path or a secret."""

from __future__ import annotations

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from hafen.datasets._dataset import storage_for
from hafen.datasets._write import stage_table
from hafen.datasets._write_dataset import commit_staged
from hafen.serve import create_app

SECRET = "Zx9-s3cr%40t-Q7w"


def _commit_with(url: str, parameters: dict[str, object]) -> None:
    """A commit recording ``parameters``, as extract and reshuffle record theirs."""
    storage = storage_for(url)
    table = pa.table({"id": pa.array([1, 2], pa.int64()), "v": [0.5, 1.5]})
    staged = stage_table(storage, table)
    commit_staged(storage, [staged], mode="append", parameters=parameters)


@pytest.fixture
def recorded(root):
    """Datasets whose commits recorded locations (and, written before hafen stopped recording
    them, a password), beside the forecasts and sales of the served root."""
    _commit_with(str(root / "by_store"), {"writer": "reshuffle", "source": str(root / "raw")})
    _commit_with(
        str(root / "raw"),
        {
            "source": f"postgresql://etl:{SECRET}@db.internal:5432/shop?sslmode=require",
            "query": f"SELECT * FROM sales -- password={SECRET}",
            "options": {"account_key": SECRET, "account_name": "acc"},
        },
    )
    _commit_with(str(root / "raw"), {"source": f"sqlite:///{root.parent}/retail.sqlite"})
    _commit_with(str(root / "elsewhere"), {"source": "/srv/private/data/sales"})
    return root


def test_answers_name_datasets_and_reveal_no_location_or_secret(recorded):
    root = recorded
    with TestClient(create_app(str(root), refresh=0)) as client:
        answers = [client.get("/datasets"), client.get("/healthz")]
        listed = answers[0].json()
        assert set(listed) == {"datasets"}  # no root
        names = {d["name"] for d in listed["datasets"]}
        assert names == {"forecasts", "sales_by_store", "by_store", "raw", "elsewhere"}
        assert all("url" not in d for d in listed["datasets"])
        details = {name: client.get(f"/datasets/{name}") for name in names}
        answers += details.values()
        answers.append(client.get("/datasets/nope"))
        answers.append(client.get("/forecasts", params={"store_id": 99}))
        answers.append(client.get("/openapi.json"))
    for answer in answers:
        for hidden in (str(root), str(root.parent), "/srv/private", SECRET, "Zx9", "Q7w"):
            assert hidden not in answer.text, (hidden, answer.request.url, answer.text)
    assert answers[-3].status_code == 404 and answers[-3].json()["dataset"] == "nope"

    def sources(name: str) -> list[object]:
        return [c["parameters"].get("source") for c in details[name].json()["history"]]

    assert sources("by_store") == ["raw"]  # a dataset under the root, by its name
    assert sources("raw") == ["sqlite:///retail.sqlite", "postgresql://db.internal:5432/shop"]
    assert sources("elsewhere") == ["sales"]  # anywhere else: its last part
    oldest = details["raw"].json()["history"][-1]["parameters"]
    assert oldest["options"] == {"account_key": "***", "account_name": "acc"}
    assert oldest["query"] == "SELECT * FROM sales -- password=***"
