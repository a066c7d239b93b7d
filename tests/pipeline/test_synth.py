"""The synthetic retail database: deterministic, sized as asked, with the promised patterns."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from hafen.errors import ConfigError
from hafen.pipeline import synth


def _dump(path) -> dict[str, pd.DataFrame]:
    with sqlite3.connect(path) as conn:
        return {
            t: pd.read_sql(f"SELECT * FROM {t} ORDER BY 1, 2", conn)
            for t in ("stores", "products", "holidays", "promotions", "sales")
        }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "retail.sqlite"
    info = synth.generate(path, stores=3, products=30, days=400, seed=1)
    return path, info, _dump(path)


def test_sizes_and_row_counts(small):
    _, info, tables = small
    assert len(tables["stores"]) == 3 and len(tables["products"]) == 30
    assert info.rows == {name: len(frame) for name, frame in tables.items()}
    sales = tables["sales"]
    assert sales["date"].nunique() <= 400
    assert sales["date"].min() == "2024-01-01"
    assert sales["sale_id"].is_unique
    # missing days: each store lacks some days entirely (about 1%, plus Christmas)
    per_store = sales.groupby("store_id")["date"].nunique()
    assert (per_store < 400).all() and (per_store > 380).all()
    assert not (sales["date"] == "2024-12-25").any()
    # a store x product x open day has exactly one row
    assert not sales.duplicated(["date", "store_id", "product_id"]).any()


def test_sale_ids_grow_with_the_date(small):
    sales = small[2]["sales"].sort_values("sale_id")
    assert sales["date"].is_monotonic_increasing


def test_deterministic_by_seed_and_independent_of_batching(small, tmp_path, monkeypatch):
    _, _, tables = small
    monkeypatch.setattr(synth, "BATCH_CELLS", 1)  # one store per batch
    again = tmp_path / "again.sqlite"
    synth.generate(again, stores=3, products=30, days=400, seed=1)
    for name, frame in _dump(again).items():
        pd.testing.assert_frame_equal(frame, tables[name], check_like=False)
    other = tmp_path / "other.sqlite"
    synth.generate(other, stores=3, products=30, days=400, seed=2)
    assert not _dump(other)["sales"]["qty"].equals(tables["sales"]["qty"])


def test_seasonality_promotions_stockouts(small):
    tables = small[2]
    sales = tables["sales"].copy()
    sales["dow"] = pd.to_datetime(sales["date"]).dt.day_of_week
    by_dow = sales.groupby("dow")["qty"].mean()
    assert by_dow[5] > 1.1 * by_dow[[1, 2]].mean()  # Saturdays sell more than mid-week
    promos = tables["promotions"]
    promo_days = {
        (r.store_id, r.product_id, d.strftime("%Y-%m-%d"))
        for r in promos.itertuples()
        for d in pd.date_range(r.start_date, r.end_date)
    }
    on = [
        (s, p, d) in promo_days
        for s, p, d in zip(sales["store_id"], sales["product_id"], sales["date"], strict=True)
    ]
    sales["on_promo"] = on
    means = sales.groupby("on_promo")["qty"].mean()
    assert means[True] > 1.3 * means[False]
    # planned promotions reach into the 28-day horizon after the history
    assert promos["end_date"].max() > sales["date"].max()
    # stock-outs: runs of at least two zero days on series that otherwise sell
    series = sales.sort_values("date").groupby(["store_id", "product_id"])["qty"]
    runs = series.apply(lambda q: int(np.max(np.convolve(q.to_numpy() == 0, [1, 1]) == 2)))
    assert runs.sum() > 0


def test_invalid_sizes_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="days must be"):
        synth.generate(tmp_path / "x.sqlite", stores=1, products=1, days=10)
    with pytest.raises(ConfigError, match="stores must be"):
        synth.generate(tmp_path / "x.sqlite", stores=0, products=1, days=100)


def test_meta_records_the_parameters(small, tmp_path):
    path, info, _ = small
    assert synth.read_meta(path) == info.parameters()
    assert synth.read_meta(tmp_path / "missing.sqlite") is None


def test_any_sqlalchemy_url(tmp_path):
    # SQLAlchemy comes with the postgres extra (the test environment's); SQLite needs none
    url = f"sqlite+pysqlite:///{tmp_path / 'sa.sqlite'}"
    info = synth.generate(url, stores=2, products=5, days=100, seed=3)
    direct = tmp_path / "direct.sqlite"
    synth.generate(direct, stores=2, products=5, days=100, seed=3)
    with sqlite3.connect(tmp_path / "sa.sqlite") as a, sqlite3.connect(direct) as b:
        qa = a.execute("SELECT SUM(qty), COUNT(*) FROM sales").fetchone()
        qb = b.execute("SELECT SUM(qty), COUNT(*) FROM sales").fetchone()
    assert qa == qb and qa[1] == info.rows["sales"]


def _typed_dump(path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows with the SQLite storage class of each value (text dates stay text)."""
    out = {}
    with sqlite3.connect(path) as conn:
        for table in ("stores", "products", "holidays", "promotions", "sales", "synth_meta"):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            types = ", ".join(f"typeof({c})" for c in cols)
            out[table] = conn.execute(
                f"SELECT {', '.join(cols)}, {types} FROM {table} ORDER BY 1"
            ).fetchall()
    return out


def test_bulk_ingest_writes_the_same_database_as_row_inserts(small, tmp_path, monkeypatch):
    """SQLite files are written through ADBC (Arrow batches); the values and their storage
    classes are those the row-by-row inserts write (the fallback without the driver)."""
    path, _, _ = small
    calls: list[str] = []
    real = synth.Database.ingest

    def ingest(self, table, data):
        calls.append(table)
        return real(self, table, data)

    monkeypatch.setattr(synth.Database, "ingest", ingest)
    bulk = tmp_path / "bulk.sqlite"
    synth.generate(bulk, stores=3, products=30, days=400, seed=1)
    assert "sales" in calls
    monkeypatch.setattr(synth.Database, "ingest", lambda self, table, data: False)
    rows = tmp_path / "rows.sqlite"
    synth.generate(rows, stores=3, products=30, days=400, seed=1)
    assert _typed_dump(bulk) == _typed_dump(rows)
    assert _typed_dump(bulk) == _typed_dump(path)
