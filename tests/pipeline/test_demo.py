"""The demo end to end, checked against computations made independently from the database."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import hafen
from hafen.pipeline import SynthParams, demo, print_summary, summary_dict

SMALL = SynthParams(stores=4, products=15, days=400, seed=7)  # as in conftest.py

pytestmark = pytest.mark.slow


def _db(workdir) -> sqlite3.Connection:
    return sqlite3.connect(workdir / "retail.sqlite")


def _sales(workdir) -> pd.DataFrame:
    with _db(workdir) as conn:
        frame = pd.read_sql("SELECT date, store_id, product_id, qty FROM sales", conn)
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame


def test_row_counts_of_every_stage_match_the_database(demo_run):
    workdir, result = demo_run
    sales = _sales(workdir)
    with _db(workdir) as conn:
        promotions = conn.execute("SELECT COUNT(*) FROM promotions").fetchone()[0]
    root = workdir / "datasets"
    assert hafen.open_dataset(str(root / "raw/sales")).num_rows == len(sales)
    assert hafen.open_dataset(str(root / "raw/promotions")).num_rows == promotions
    assert hafen.open_dataset(str(root / "sales")).num_rows == len(sales)
    by_store = hafen.open_dataset(str(root / "sales_by_store"))
    assert by_store.num_rows == len(sales)
    rows = {s.name: s.rows for s in result.stages}
    assert rows["extract"] == rows["denormalize"] == rows["reshuffle"] == len(sales)
    # per store, the reshuffled partition holds exactly that store's rows
    expected = sales.groupby("store_id").size().to_dict()
    got = by_store.read(columns=["store_id"]).groupby("store_id").size().to_dict()
    assert got == expected
    assert {p["store_id"] for p in by_store.partitions()} == set(expected)
    assert by_store.indices == ["product_id"]


def test_denormalized_rows_carry_the_joined_attributes(demo_run):
    workdir, _ = demo_run
    with _db(workdir) as conn:
        products = pd.read_sql("SELECT product_id, product_group, price FROM products", conn)
        stores = pd.read_sql("SELECT store_id, region FROM stores", conn)
        promos = pd.read_sql("SELECT * FROM promotions", conn)
    sales = hafen.open_dataset(str(workdir / "datasets/sales")).read()
    check = sales.merge(products, on="product_id", suffixes=("", "_db")).merge(
        stores, on="store_id", suffixes=("", "_db")
    )
    assert len(check) == len(sales)
    assert (check["product_group"] == check["product_group_db"]).all()
    assert np.allclose(check["price"], check["price_db"])
    assert (check["region"] == check["region_db"]).all()
    # discount: from the promotion covering that store, product and day, else 0
    promo = promos.iloc[len(promos) // 2]
    day = dt.date.fromisoformat(promo["start_date"])
    row = sales[
        (sales["store_id"] == promo["store_id"])
        & (sales["product_id"] == promo["product_id"])
        & (sales["date"] == day)
    ]
    if len(row):  # the day may be a missing day of that store
        assert row["discount"].iloc[0] == pytest.approx(promo["discount"])
    assert (sales["discount"] == 0).mean() > 0.5
    christmas_eve = sales[sales["date"] == dt.date(2024, 12, 24)]
    assert set(christmas_eve["holiday"]) == {"christmas_eve"}


def test_forecasts_cover_every_store_product_and_day(demo_run):
    workdir, result = demo_run
    sales = _sales(workdir)
    last = sales["date"].max()
    forecasts = hafen.open_dataset(str(workdir / "datasets/forecasts"))
    assert forecasts.partition_on == ["store_id"]
    assert forecasts.indices == ["product_id"]
    frame = forecasts.read()
    expected = {
        (s, p, last + dt.timedelta(days=h))
        for s in range(1, SMALL.stores + 1)
        for p in range(1, SMALL.products + 1)
        for h in range(1, 29)
    }
    got = set(zip(frame["store_id"], frame["product_id"], frame["date"], strict=True))
    assert got == expected
    assert len(frame) == len(expected)  # no duplicates
    assert (frame["forecast"] >= 0).all() and frame["forecast"].notna().all()
    assert result.stages[-1].rows == len(expected)


def _independent_baseline_wape(sales: pd.DataFrame) -> float:
    """Seasonal naive on the last 28 days, computed from the database rows alone."""
    first, last = sales["date"].min(), sales["date"].max()
    cut = last - dt.timedelta(days=27)
    qty = {(r.store_id, r.product_id, r.date): r.qty for r in sales.itertuples()}
    err = total = 0.0
    for r in sales[sales["date"] >= cut].itertuples():
        h = (r.date - cut).days + 1
        ref = cut - dt.timedelta(days=7) + dt.timedelta(days=(h - 1) % 7)
        value = 0.0
        for back in range(4):
            day = ref - dt.timedelta(days=7 * back)
            if day < first:
                break
            if (r.store_id, r.product_id, day) in qty:
                value = qty[(r.store_id, r.product_id, day)]
                break
        err += abs(r.qty - value)
        total += r.qty
    return err / total


def test_model_beats_the_seasonal_naive_baseline(demo_run):
    workdir, result = demo_run
    sales = _sales(workdir)
    held_out = sales[sales["date"] > sales["date"].max() - dt.timedelta(days=28)]
    assert result.holdout_rows == len(held_out)
    assert result.wape_baseline == pytest.approx(_independent_baseline_wape(sales), rel=1e-9)
    assert result.wape_model < 0.9 * result.wape_baseline


def test_summary_reports_stages_accuracy_memory_and_slots(demo_run):
    _, result = demo_run
    assert [s.name for s in result.stages] == [
        "extract",
        "denormalize",
        "reshuffle",
        "forecast",
        "write forecasts",
    ]
    assert all(s.seconds > 0 for s in result.stages)
    assert 1 <= result.db_slots_max <= result.db_concurrency
    assert result.peak_memory["client"] > 0
    buffer = io.StringIO()
    print_summary(result, Console(file=buffer, width=160))
    text = buffer.getvalue()
    for needle in ("extract", "reshuffle", "WAPE", "Peak memory", "slots used at most"):
        assert needle in text
    data = summary_dict(result)
    assert data["versions"]["forecasts"] == result.versions["forecasts"]


def test_rerun_adds_one_version_and_duplicates_nothing(demo_run, client):
    workdir, first = demo_run
    before = {
        name: hafen.open_dataset(str(workdir / "datasets" / name))
        for name in ("raw/sales", "sales", "sales_by_store", "forecasts")
    }
    second = demo(workdir, synth=SMALL, client=client)
    assert second.synth_seconds is None  # the database was reused
    for name, old in before.items():
        new = hafen.open_dataset(str(workdir / "datasets" / name))
        assert new.version == old.version + 1, name
        assert new.num_rows == old.num_rows, name
    # deterministic: the same data and seed give the same forecasts
    a = before["forecasts"].read().sort_values(["store_id", "product_id", "date"])
    b = hafen.open_dataset(str(workdir / "datasets/forecasts")).read()
    b = b.sort_values(["store_id", "product_id", "date"])
    assert np.allclose(a["forecast"].to_numpy(), b["forecast"].to_numpy())
    assert second.wape_model == pytest.approx(first.wape_model)
