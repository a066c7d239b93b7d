"""Incremental runs: ingest, run, ingest, run gives the datasets and forecasts one run over all
the data gives; late data for old days is picked up and re-forecasts only its store; a change to
a small table rebuilds what depends on it; a run with nothing new commits nothing; a run killed
(SIGKILL, in a subprocess) at any step and run again gives the same result again; the same on
PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from hafen.datasets import open_dataset
from hafen.pipeline import PipelineConfig, run_pipeline
from hafen.pipeline.synth import generate
from hafen.serve import Tenants
from hafen.serve._ingest import ingest_batch

DATASETS = ("raw/sales", "sales", "sales_by_store", "forecasts")
LATE_STORE = 2


def _rows(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[dict]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


class Customer:
    """A tenant fed from a synthetic retailer's database, batch by batch, in-process."""

    def __init__(
        self, home, source, name: str, database: str | None = None, promotions: str = "1 = 1"
    ) -> None:
        self.tenants = Tenants(home, database=database)
        self.tenants.add(name)
        self.tenant = self.tenants.get(name)
        self.conn = sqlite3.connect(source)
        self.cfg = PipelineConfig(
            source_url=self.tenant.source_url, datasets_root=self.tenant.datasets
        )
        for table in ("stores", "products", "holidays"):
            self.post(table, f"SELECT * FROM {table}")
        self.post("promotions", f"SELECT * FROM promotions WHERE {promotions}")

    def post(self, table: str, sql: str, params: tuple[Any, ...] = ()) -> int:
        rows = _rows(self.conn, sql, params)
        for start in range(0, len(rows), 5_000):
            ingest_batch(self.tenant, table, rows[start : start + 5_000], key=None, digest="")
        return len(rows)

    def versions(self) -> dict[str, int]:
        return {name: open_dataset(self.cfg.dataset(name)).version for name in DATASETS}

    def frame(self, name: str) -> pd.DataFrame:
        data = open_dataset(self.cfg.dataset(name)).read()
        keys = [c for c in ("store_id", "product_id", "date", "sale_id") if c in data.columns]
        return data.sort_values(keys).reset_index(drop=True)


@pytest.fixture(scope="module")
def retailer(tmp_path_factory):
    """A synthetic retailer: its database, the last day, and the cut one week before it."""
    root = tmp_path_factory.mktemp("retailer")
    info = generate(root / "source.sqlite", stores=3, products=6, days=200, seed=5)
    return root, info.end - dt.timedelta(days=7), info.end


# the late rows: store 2's sales of days 30 to 20 before the cut, held back from the first batch
LATE = "store_id = ? AND date BETWEEN ? AND ?"


def _late(cut: dt.date) -> tuple[Any, ...]:
    return (LATE_STORE, (cut - dt.timedelta(30)).isoformat(), (cut - dt.timedelta(20)).isoformat())


@pytest.fixture(scope="module")
def full(retailer, client, tmp_path_factory):
    """The same retailer's batches posted at once, and one (full) run over them."""
    root, _cut, _end = retailer
    b = Customer(tmp_path_factory.mktemp("full"), root / "source.sqlite", "b")
    b.post("sales", "SELECT * FROM sales")
    return b, run_pipeline(b.cfg, client=client)


def _same(a: Customer, b: Customer) -> None:
    for name in DATASETS:
        pd.testing.assert_frame_equal(a.frame(name), b.frame(name))


def test_incremental_runs_equal_one_full_run(retailer, full, client, tmp_path):
    root, cut, _end = retailer
    a = Customer(tmp_path / "a", root / "source.sqlite", "a", promotions="promo_id % 5 != 0")
    posted = a.post(
        "sales",
        f"SELECT * FROM sales WHERE date <= ? AND NOT ({LATE})",
        (cut.isoformat(), *_late(cut)),
    )
    first = run_pipeline(a.cfg, client=client)
    assert set(first.steps.values()) == {"rebuild"} and first.stages[0].rows == posted

    # one more week: sales, denormalized and by-store data are appended; every store is forecast
    # again, since the calendar moved
    week = a.post("sales", "SELECT * FROM sales WHERE date > ?", (cut.isoformat(),))
    second = run_pipeline(a.cfg, client=client)
    assert second.steps["raw/sales"] == second.steps["sales"] == "append"
    assert second.steps["sales_by_store"] == "append"
    assert second.steps["raw/stores"] == "skip" and second.stages[0].rows == week
    assert second.forecast_stores == [1, 2, 3]

    # late data for old days of one store: picked up, and only that store is forecast again
    late = a.post("sales", f"SELECT * FROM sales WHERE {LATE}", _late(cut))
    assert late > 0
    third = run_pipeline(a.cfg, client=client)
    assert third.steps["raw/sales"] == "append" and third.stages[0].rows == late
    assert third.forecast_stores == [LATE_STORE] and third.steps["forecasts"] == "append"

    # a small table changes (promotions held back until now): everything after it is rebuilt
    assert a.post("promotions", "SELECT * FROM promotions WHERE promo_id % 5 = 0") > 0
    fourth = run_pipeline(a.cfg, client=client)
    assert fourth.steps["raw/promotions"] == "rebuild" and fourth.steps["raw/sales"] == "skip"
    assert fourth.steps["sales"] == fourth.steps["forecasts"] == "rebuild"

    # nothing new: no dataset gets a version
    before = a.versions()
    idle = run_pipeline(a.cfg, client=client)
    assert set(idle.steps.values()) == {"skip"} and a.versions() == before

    # the same batches at once, one full run
    b, once = full
    _same(a, b)
    assert idle.store_metrics == once.store_metrics
    assert idle.ranges == once.ranges and idle.wape_model == once.wape_model


# A run in a subprocess that SIGKILLs itself at one point: in the middle of extracting the sales
# (one range staged), once raw/* are committed, once sales_by_store is committed, and with the
# forecasts staged but not committed.
KILLED_RUN = """
import os, signal, sys
from hafen.datasets._transaction import WriteTransaction
from hafen.pipeline import PipelineConfig, _stages, run_pipeline
from hafen.sql import _extract
from hafen.testing import thread_cluster

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[3]
if point == "extracting":
    _extract.staged = _extract.extract_range
    _extract.calls = []  # on the module: the task's function is pickled by value
    def extract_range(db, query, plan):
        _extract.calls.append(_extract.staged(db, query, plan))
        if "FROM sales" in query and len(_extract.calls) >= 2:
            die()  # one range of the sales staged, another staged or running
        return _extract.calls[-1]
    _extract.extract_range = extract_range
elif point == "extracted":
    _stages.denormalize = _stages.denormalize_files = die
elif point == "reshuffled":
    _stages.forecast = die
elif point == "writing":
    commit = WriteTransaction.commit
    def commit_or_die(self, *args, **kwargs):
        if self.storage.url.endswith("forecasts"):
            die()
        return commit(self, *args, **kwargs)
    WriteTransaction.commit = commit_or_die
cfg = PipelineConfig(source_url=sys.argv[1], datasets_root=sys.argv[2], chunks=4)
with thread_cluster(1, threads_per_worker=1) as client:
    run_pipeline(cfg, client=client)
"""


def test_a_killed_run_rerun_equals_one_full_run(retailer, full, client, tmp_path):
    root, cut, _end = retailer
    a = Customer(tmp_path / "a", root / "source.sqlite", "a")
    a.post("sales", "SELECT * FROM sales WHERE date <= ?", (cut.isoformat(),))
    run_pipeline(a.cfg, client=client)
    week = a.post("sales", "SELECT * FROM sales WHERE date > ?", (cut.isoformat(),))
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(KILLED_RUN))
    landed = []
    for point in ("extracting", "extracted", "reshuffled", "writing"):
        before = a.versions()
        done = subprocess.run(
            [sys.executable, str(script), a.cfg.source_url, a.cfg.datasets_root, point],
            env=os.environ,
            capture_output=True,
            timeout=300,
        )
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
        after = a.versions()
        landed.append([name for name in DATASETS if after[name] != before[name]])
    # each killed run got one step further, and committed nothing past its kill
    assert landed == [[], ["raw/sales"], ["sales", "sales_by_store"], []]
    assert open_dataset(a.cfg.dataset("raw/sales")).history(limit=1)[0]["rows_added"] == week
    last = run_pipeline(a.cfg, client=client)
    assert last.steps["raw/sales"] == last.steps["sales_by_store"] == "skip"
    assert last.forecast_stores == [1, 2, 3]
    _same(a, full[0])


def test_incremental_runs_on_postgresql(retailer, full, client, tmp_path, monkeypatch):
    """The same on a real PostgreSQL server, where batches insert side by side and the horizon
    is the oldest running transaction; with a store's files over the compaction threshold, the
    next run rewrites sales_by_store whole, one file per store."""
    from hafen.pipeline import _incremental
    from hafen.testing import running_postgres

    root, cut, _end = retailer
    with running_postgres() as server:
        url = server.url(server.create_database())
        a = Customer(tmp_path / "pg", root / "source.sqlite", "a", database=url)
        held_back = f"date <= ? AND NOT ({LATE})"
        a.post("sales", f"SELECT * FROM sales WHERE {held_back}", (cut.isoformat(), *_late(cut)))
        run_pipeline(a.cfg, client=client)
        a.post("sales", "SELECT * FROM sales WHERE date > ?", (cut.isoformat(),))
        second = run_pipeline(a.cfg, client=client)
        assert second.steps["raw/sales"] == second.steps["sales_by_store"] == "append"
        assert set(run_pipeline(a.cfg, client=client).steps.values()) == {"skip"}
        # every store's partition has 2 files now: at a threshold of 2, the next run compacts
        monkeypatch.setattr(_incremental, "COMPACT_FILES", 2)
        a.post("sales", f"SELECT * FROM sales WHERE {LATE}", _late(cut))
        third = run_pipeline(a.cfg, client=client)
        assert third.steps["sales"] == "append" and third.steps["sales_by_store"] == "rebuild"
        by_store = open_dataset(a.cfg.dataset("sales_by_store"))
        assert sorted(f.partition for f in by_store.files()) == [f"store_id={s}" for s in (1, 2, 3)]
    _same(a, full[0])  # row for row what SQLite and one full run gave


def _vacuum_everything(root: Path) -> None:
    """What a routine maintenance job does between runs, at its harshest: every dataset of the
    tenant keeps only its newest version, with no grace period."""
    for marker in sorted(root.rglob("_hafen")):
        open_dataset(str(marker.parent)).vacuum(retain_versions=1, grace_period=0)


def test_incremental_runs_with_vacuum_between_them_equal_one_full_run(
    retailer, full, client, tmp_path
):
    root, cut, _end = retailer
    a = Customer(tmp_path / "a", root / "source.sqlite", "a")
    a.post("sales", "SELECT * FROM sales WHERE date <= ? AND NOT (" + LATE + ")",
           (cut.isoformat(), *_late(cut)))  # fmt: skip
    run_pipeline(a.cfg, client=client)
    _vacuum_everything(Path(a.cfg.datasets_root))
    a.post("sales", "SELECT * FROM sales WHERE date > ?", (cut.isoformat(),))
    second = run_pipeline(a.cfg, client=client)
    assert second.steps["raw/sales"] == "append"
    _vacuum_everything(Path(a.cfg.datasets_root))
    a.post("sales", f"SELECT * FROM sales WHERE {LATE}", _late(cut))
    third = run_pipeline(a.cfg, client=client)
    assert third.steps["raw/sales"] == "append" and third.forecast_stores == [LATE_STORE]
    _vacuum_everything(Path(a.cfg.datasets_root))
    before = a.versions()
    idle = run_pipeline(a.cfg, client=client)
    assert set(idle.steps.values()) == {"skip"} and a.versions() == before
    _same(a, full[0])
