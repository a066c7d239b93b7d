"""A landed delete holds no matching row, also when a writer appended some meanwhile (issue 13,
item 7).

The concurrent commit is injected deterministically: from a second handle on the same storage,
after the delete has planned (read its files, staged its rewrites) and before its commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pandas as pd
import pytest

import hafen
from hafen.datasets import _actions, _commit, _logstore
from hafen.errors import ConflictError

D1, D2, D3 = (dt.date(2024, 1, i) for i in (1, 2, 3))
P = [[("id", "==", 5)]]


def rows(day: dt.date, ids: range) -> pd.DataFrame:
    return pd.DataFrame({"day": [day] * len(ids), "id": list(ids), "qty": [1.0] * len(ids)})


@pytest.fixture
def url(tmp_path) -> str:
    url = str(tmp_path / "ds")
    hafen.write_dataset(rows(D1, range(10)), url, partition_on=["day"])  # id 5 is in D1 only
    hafen.write_dataset(rows(D2, range(10, 20)), url, mode="append")
    return url


def race(monkeypatch, concurrent: Callable[[], object]) -> None:
    """Run ``concurrent`` once, right before the next commit attempt of this process."""
    real, pending = _commit.commit, [concurrent]

    def commit(*args, **kwargs):
        if pending:
            pending.pop()()  # its own commit passes straight through
        return real(*args, **kwargs)

    monkeypatch.setattr(_commit, "commit", commit)


def entry(url: str, version: int) -> _actions.Commit:
    return _logstore.read_commit(hafen.open_dataset(url).storage, version)


@pytest.mark.parametrize("day", [D2, D3], ids=["other partition", "new partition"])
def test_a_concurrent_append_of_matching_rows_is_a_conflict(url, monkeypatch, day):
    ds = hafen.open_dataset(url)
    race(monkeypatch, lambda: hafen.write_dataset(rows(day, range(5, 7)), url, mode="append"))
    with pytest.raises(ConflictError, match="may hold rows it deletes"):
        ds.delete(P)
    latest = hafen.open_dataset(url)
    assert latest.version == ds.version + 1  # the append landed, the delete did not
    assert entry(url, latest.version).operation == "append"
    assert sorted(latest.read(predicates=P)["day"]) == sorted([D1, day])
    on_disk = {i.path for i in latest.storage.walk("table") if i.path.endswith(".parquet")}
    assert on_disk == {f.path for f in latest.files()}  # the delete's rewrite was discarded


@pytest.mark.parametrize("day", [D2, D3], ids=["other partition", "new partition"])
def test_with_retry_the_delete_is_replanned_on_the_fresh_version(url, monkeypatch, day):
    ds = hafen.open_dataset(url)
    race(monkeypatch, lambda: hafen.write_dataset(rows(day, range(5, 7)), url, mode="append"))
    new = ds.delete(P, on_conflict="retry")
    assert new.version == ds.version + 2
    assert entry(url, new.version).read_version == ds.version + 1  # planned on the append
    at_v = hafen.open_dataset(url, version=new.version)
    assert at_v.read(predicates=P).empty
    assert sorted(at_v.read()["id"]) == sorted([*range(5), *range(6, 20), 6])


@pytest.mark.parametrize(
    "concurrent",
    [
        pytest.param(lambda url: rows(D3, range(100, 110)), id="stats cannot match"),
        pytest.param(lambda url: rows(D2, range(6, 9)), id="other partition, stats cannot match"),
    ],
)
def test_a_concurrent_append_that_cannot_match_does_not_conflict(url, monkeypatch, concurrent):
    ds = hafen.open_dataset(url)
    race(monkeypatch, lambda: hafen.write_dataset(concurrent(url), url, mode="append"))
    new = ds.delete(P)
    assert new.version == ds.version + 2
    assert entry(url, new.version).read_version == ds.version  # the version it was planned on
    at_v = hafen.open_dataset(url, version=new.version)
    assert at_v.read(predicates=P).empty
    assert len(at_v.read()) == 20 - 1 + len(concurrent(url))


def test_a_delete_on_a_partition_column_conflicts_only_in_that_partition(url, monkeypatch):
    ds = hafen.open_dataset(url)
    race(monkeypatch, lambda: hafen.write_dataset(rows(D2, range(5, 7)), url, mode="append"))
    new = ds.delete([[("day", "==", D1)]])  # D2 cannot hold a row of D1
    assert hafen.open_dataset(url, version=new.version).read(predicates=[[("day", "==", D1)]]).empty
    ds = hafen.open_dataset(url)
    race(monkeypatch, lambda: hafen.write_dataset(rows(D2, range(50, 52)), url, mode="append"))
    with pytest.raises(ConflictError):
        ds.delete([[("day", "==", D2)]])


def test_a_concurrent_overwrite_adding_matching_rows_elsewhere_is_a_conflict(url, monkeypatch):
    ds = hafen.open_dataset(url)
    race(monkeypatch, lambda: hafen.write_dataset(rows(D2, range(4, 6)), url, mode="overwrite"))
    with pytest.raises(ConflictError):
        ds.delete(P)


@pytest.mark.parametrize(("day", "conflict"), [(D1, True), (D2, False), (D3, False)])
def test_overwrite_keeps_its_semantics(url, monkeypatch, day, conflict):
    """An overwrite conflicts with a concurrent change of its partitions only, whatever rows."""
    ds = hafen.open_dataset(url)
    race(monkeypatch, lambda: hafen.write_dataset(rows(day, range(5, 7)), url, mode="append"))
    replacement = rows(D1, range(30, 33))
    if conflict:
        with pytest.raises(ConflictError):
            hafen.write_dataset(replacement, url, mode="overwrite")
        return
    new = hafen.write_dataset(replacement, url, mode="overwrite")
    assert new.version == ds.version + 2
    assert entry(url, new.version).read_version == ds.version
    assert sorted(new.read(predicates=[[("day", "==", D1)]])["id"]) == [30, 31, 32]
