"""No Dask task of a writer reads hafen's settings: the client reads them once, when the write
transaction starts, and passes what the tasks need (storage, layout, Parquet choices) as
arguments. A result must not depend on a worker's working directory or environment.

Proven on an in-process cluster with ``get_settings`` refusing to run on a worker thread, for
each writer that stages in tasks (``write_ddf``, ``reshuffle``, ``extract``) and for ``load``.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

import hafen
import hafen.config


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    c = hafen.connect(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def refused(monkeypatch) -> list[str]:
    """``get_settings`` raises in a task (and records it), wherever a module imported it."""
    from distributed import get_worker

    original = hafen.config.get_settings
    calls: list[str] = []

    def get_settings(*args, **kwargs):
        try:
            worker = get_worker()
        except ValueError:  # not in a task: the client
            return original(*args, **kwargs)
        calls.append(worker.address)
        raise AssertionError("a task read hafen's settings")

    for name, module in list(sys.modules.items()):
        if name.startswith("hafen") and getattr(module, "get_settings", None) is original:
            monkeypatch.setattr(module, "get_settings", get_settings)
    return calls


def _tasks_read_settings() -> object:
    return hafen.config.get_settings()


def test_the_guard_catches_a_task_that_reads_the_settings(client, refused):
    with pytest.raises(AssertionError, match="read hafen's settings"):
        client.submit(_tasks_read_settings, pure=False).result()
    assert len(refused) == 1
    assert hafen.config.get_settings() is not None  # the client still may


def test_writers_and_load_read_no_settings_in_tasks(tmp_path, client, refused):
    frame = pd.DataFrame(
        {"id": range(600), "k": [i % 3 for i in range(600)], "v": [i % 7 for i in range(600)]}
    )
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(frame, npartitions=3)
    written = hafen.write_ddf(ddf, str(tmp_path / "a"), partition_on=["k"], indices=["v"])
    shuffled = hafen.reshuffle(written, str(tmp_path / "b"), ["v"], num_buckets=2, indices=["id"])

    db = tmp_path / "db.sqlite"
    con = sqlite3.connect(db)
    frame.to_sql("t", con, index=False)
    con.close()
    extracted = hafen.extract(
        f"sqlite:///{db}", "t", str(tmp_path / "c"), split_on="id", chunks=3, client=client
    )
    loaded = hafen.load(shuffled, f"sqlite:///{db}", table="t2", client=client)

    assert refused == []
    for ds in (written, shuffled, extracted):
        assert sorted(ds.read()["id"]) == list(range(600))
    assert loaded == 600
