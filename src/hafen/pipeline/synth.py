"""A synthetic retail database, deterministic by seed: the source of the reference pipeline.

Tables (any SQLAlchemy URL; SQLite by default)::

    stores(store_id, name, region, size)
    products(product_id, name, product_group, price)
    holidays(date, name)                              -- covers the history and the horizon
    promotions(promo_id, store_id, product_id, start_date, end_date, discount)
                                                      -- planned ones reach into the horizon
    sales(sale_id, date, store_id, product_id, qty)  -- one row per store x product x open day
    synth_meta(key, value)                            -- the parameters that generated it

Daily demand of a product in a store is a base level (product popularity x store size) times a
weekly profile of its product group, a yearly wave, a trend, a holiday effect and a promotion lift
(proportional to the discount), drawn from a Poisson-gamma (negative binomial) distribution.
Stock-outs zero out runs of days of a series; on missing days a store has no rows at all (closed,
or its data was lost), and every store is closed on Christmas day. ``sale_id`` grows with the
date, as in a transactional table, so ranges of it are ranges of days.

Generation is vectorized with numpy, one batch of stores at a time, so memory stays bounded by
the batch (about two million store x product x day cells), whatever the size.

>>> info = generate("retail.sqlite", stores=10, products=100, days=730)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from hafen.errors import ConfigError, SQLError

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_PRODUCTS",
    "DEFAULT_SEED",
    "DEFAULT_START",
    "DEFAULT_STORES",
    "HORIZON",
    "Database",
    "SynthInfo",
    "connect_url",
    "database_url",
    "generate",
    "holiday_calendar",
    "read_meta",
]

DEFAULT_STORES = 10
DEFAULT_PRODUCTS = 100
DEFAULT_DAYS = 730
DEFAULT_SEED = 0
DEFAULT_START = "2024-01-01"
#: Days past the history that planned promotions and holidays cover (the forecast horizon).
HORIZON = 28
#: Store x product x day cells generated per batch: bounds memory whatever the size.
BATCH_CELLS = 2_000_000

GROUPS = ["bakery", "dairy", "produce", "beverages", "snacks", "frozen", "household", "personal"]
REGIONS = ["north", "south", "east", "west"]
# Weekly profile per group, Monday first; weekends busier, beverages and snacks most.
_WEEKLY = np.array(
    [
        [0.95, 0.90, 0.92, 0.97, 1.10, 1.30, 0.86],
        [0.98, 0.94, 0.95, 0.99, 1.08, 1.22, 0.84],
        [0.92, 0.90, 0.93, 0.98, 1.12, 1.30, 0.85],
        [0.85, 0.82, 0.86, 0.95, 1.20, 1.45, 0.87],
        [0.86, 0.84, 0.87, 0.94, 1.18, 1.42, 0.89],
        [0.95, 0.93, 0.94, 0.97, 1.05, 1.25, 0.91],
        [1.00, 0.96, 0.96, 0.98, 1.02, 1.18, 0.90],
        [0.99, 0.97, 0.97, 0.99, 1.03, 1.15, 0.90],
    ]
)
# (month, day, name, demand multiplier); 0 means every store is closed (no rows).
_FIXED_HOLIDAYS = [
    (1, 1, "new_year", 0.55),
    (2, 14, "valentines", 1.25),
    (5, 1, "labour_day", 0.7),
    (10, 31, "halloween", 1.3),
    (12, 24, "christmas_eve", 1.8),
    (12, 25, "christmas", 0.0),
    (12, 31, "new_years_eve", 1.6),
]
_BLACK_FRIDAY = ("black_friday", 1.9)


@dataclasses.dataclass(frozen=True)
class SynthInfo:
    """What :func:`generate` wrote: sizes, the calendar, row counts and the time it took."""

    url: str
    stores: int
    products: int
    days: int
    seed: int
    start: dt.date
    rows: dict[str, int]
    seconds: float

    @property
    def end(self) -> dt.date:
        """The last day of history."""
        return self.start + dt.timedelta(days=self.days - 1)

    def parameters(self) -> dict[str, Any]:
        return {
            "stores": self.stores,
            "products": self.products,
            "days": self.days,
            "seed": self.seed,
            "start": self.start.isoformat(),
        }


def database_url(path_or_url: str | os.PathLike[str]) -> str:
    """Return a SQLAlchemy URL: plain paths become ``sqlite:///PATH``."""
    text = os.fspath(path_or_url)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).resolve()}"


def _sqlite_path(url: str) -> str | None:
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    return None


class Database:
    """A thin connection over SQLite (``sqlite3``, fast) or any other SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        path = _sqlite_path(url)
        self._path = path
        self._sqlite = sqlite3.connect(path) if path is not None else None
        self._adbc: Any = None  # SQLite's ADBC connection for bulk inserts, once one is made
        self._sa: Any = None
        if self._sqlite is None:
            import sqlalchemy

            self._sa = sqlalchemy.create_engine(url).connect()

    @property
    def is_sqlite(self) -> bool:
        return self._sqlite is not None

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return self._sqlite.execute(sql).fetchall()
        import sqlalchemy

        result = self._sa.execute(sqlalchemy.text(sql))
        return [tuple(r) for r in result] if result.returns_rows else []

    def insert(self, table: str, names: list[str], rows: list[tuple[Any, ...]]) -> None:
        if self._sqlite is not None:
            marks = ", ".join("?" * len(names))
            self._sqlite.executemany(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", rows
            )
            return
        import sqlalchemy

        marks = ", ".join(f":{n}" for n in names)
        stmt = sqlalchemy.text(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})")
        self._sa.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])

    def ingest(self, table: str, data: pa.Table) -> bool:
        """Append ``data`` to ``table`` through SQLite's ADBC driver (Arrow, no Python rows).

        Returns False, having done nothing, when that is not possible (another database, or no
        ``adbc-driver-sqlite``): the caller then inserts rows. Once used, every insert must come
        this way until :meth:`commit`: the two connections cannot both hold a write.
        """
        if self._path is None:
            return False
        if self._adbc is None:
            try:
                import adbc_driver_sqlite.dbapi as adbc_sqlite
            except ImportError:
                return False
            self._adbc = adbc_sqlite.connect(self._path)
        cursor = self._adbc.cursor()
        try:
            cursor.adbc_ingest(table, data, mode="append")
        finally:
            cursor.close()
        return True

    def commit(self) -> None:
        if self._adbc is not None:
            self._adbc.commit()
        (self._sqlite or self._sa).commit()

    def close(self) -> None:
        if self._adbc is not None:
            self._adbc.close()
        (self._sqlite or self._sa).close()


def connect_url(url: str) -> Database:
    """A connection to a SQLAlchemy URL: ``sqlite3`` directly for SQLite, else SQLAlchemy."""
    try:
        return Database(url)
    except Exception as exc:
        raise SQLError(f"cannot connect to {_redact(url)}: {exc}") from exc


def holiday_calendar(start: dt.date, days: int) -> pd.DataFrame:
    """The holidays between ``start`` and ``start + days - 1``: ``date``, ``name``, ``effect``."""
    end = start + dt.timedelta(days=days - 1)
    rows = []
    for year in range(start.year, end.year + 1):
        for month, day, name, effect in _FIXED_HOLIDAYS:
            rows.append((dt.date(year, month, day), name, effect))
        nov1 = dt.date(year, 11, 1)
        thursday = nov1 + dt.timedelta(days=(3 - nov1.weekday()) % 7 + 21)
        rows.append((thursday + dt.timedelta(days=1), *_BLACK_FRIDAY))
    frame = pd.DataFrame(rows, columns=["date", "name", "effect"])
    frame = frame[(frame["date"] >= start) & (frame["date"] <= end)]
    return frame.sort_values("date").reset_index(drop=True)


def _validate(stores: int, products: int, days: int) -> None:
    for name, value, low in (("stores", stores, 1), ("products", products, 1), ("days", days, 70)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def generate(
    url: str | os.PathLike[str] = "retail.sqlite",
    *,
    stores: int = DEFAULT_STORES,
    products: int = DEFAULT_PRODUCTS,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    start: str | dt.date = DEFAULT_START,
    replace: bool = True,
) -> SynthInfo:
    """Write a synthetic retail database to ``url`` (a SQLAlchemy URL or a SQLite file path).

    Parameters
    ----------
    url
        ``sqlite:///path``, ``postgresql://...`` or a plain path (SQLite).
    stores, products, days
        The size: ``stores x products`` series over ``days`` days of history (at least 70).
    seed
        The same seed and sizes give the same database, row for row.
    start
        The first day of history.
    replace
        Drop the tables first if they exist (else creating them fails).

    Returns
    -------
    SynthInfo

    Raises
    ------
    ConfigError
        If a size is invalid.
    SQLError
        If the database refuses the tables or rows.

    Examples
    --------
    >>> generate("retail.sqlite", stores=3, products=20, days=365).rows["sales"]  # doctest: +SKIP
    21780
    """
    _validate(stores, products, days)
    start_date = dt.date.fromisoformat(start) if isinstance(start, str) else start
    db_url = database_url(url)
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    total_days = days + HORIZON
    dates = np.arange(np.datetime64(start_date, "D"), np.datetime64(start_date, "D") + total_days)
    holidays = holiday_calendar(start_date, total_days)

    store_frame = pd.DataFrame(
        {
            "store_id": np.arange(1, stores + 1, dtype=np.int64),
            "name": [f"Store {i:04d}" for i in range(1, stores + 1)],
            "region": rng.choice(REGIONS, size=stores),
            "size": np.round(rng.lognormal(0.0, 0.35, size=stores), 3),
        }
    )
    group_of = rng.integers(0, len(GROUPS), size=products)
    product_frame = pd.DataFrame(
        {
            "product_id": np.arange(1, products + 1, dtype=np.int64),
            "name": [f"Product {i:05d}" for i in range(1, products + 1)],
            "product_group": np.asarray(GROUPS)[group_of],
            "price": np.round(rng.lognormal(1.0, 0.6, size=products), 2),
        }
    )
    # Per-series and per-group parameters, drawn once so they do not depend on batching.
    popularity = rng.lognormal(1.2, 0.8, size=products)
    trend = rng.normal(0.0, 0.12, size=(stores, products))  # per year
    yearly_amp = rng.uniform(0.05, 0.35, size=len(GROUPS))
    yearly_phase = rng.uniform(0, 365.25, size=len(GROUPS))
    promo_lift = rng.uniform(2.0, 5.0, size=len(GROUPS))
    series_seeds = rng.integers(0, 2**63 - 1, size=stores)

    effect = np.ones(total_days)
    day_index = (holidays["date"] - start_date).map(lambda d: d.days).to_numpy(dtype=np.int64)
    effect[day_index] = holidays["effect"].to_numpy()
    closed = effect == 0.0
    t = np.arange(total_days)
    doy = (dates - dates.astype("datetime64[Y]")).astype(np.int64)
    weekday = (dates.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    weekly = _WEEKLY[:, weekday][group_of]  # (products, total_days)
    yearly = 1.0 + yearly_amp[group_of, None] * np.sin(
        2 * np.pi * (doy[None, :] - yearly_phase[group_of, None]) / 365.25
    )
    seasonal = weekly * yearly * np.where(closed, 1.0, effect)[None, :]

    conn = connect_url(db_url)
    try:
        _create_tables(conn, replace=replace)
        _insert(conn, "stores", store_frame)
        _insert(conn, "products", product_frame)
        _insert(conn, "holidays", holidays[["date", "name"]])
        sales_rows = promo_rows = 0
        for lo, hi in _batches(stores, products * total_days):
            promos, sales = _generate_batch(
                lo,
                hi,
                stores=stores,
                products=products,
                days=days,
                dates=dates,
                t=t,
                closed=closed,
                seasonal=seasonal,
                popularity=popularity,
                size=store_frame["size"].to_numpy(),
                trend=trend,
                group_of=group_of,
                promo_lift=promo_lift,
                series_seeds=series_seeds,
                promo_offset=promo_rows,
            )
            _insert(conn, "promotions", promos)
            _insert(conn, "sales", sales)
            promo_rows += len(promos)
            sales_rows += len(sales)
        info = SynthInfo(
            url=db_url,
            stores=stores,
            products=products,
            days=days,
            seed=seed,
            start=start_date,
            rows={
                "stores": stores,
                "products": products,
                "holidays": len(holidays),
                "promotions": promo_rows,
                "sales": sales_rows,
            },
            seconds=0.0,
        )
        meta = pd.DataFrame(
            {"key": ["parameters"], "value": [json.dumps(info.parameters(), sort_keys=True)]}
        )
        _insert(conn, "synth_meta", meta)
        conn.commit()
    except Exception as exc:
        if isinstance(exc, ConfigError | SQLError):
            raise
        raise SQLError(
            f"writing the synthetic database to {_redact(db_url)} failed: {exc}"
        ) from exc
    finally:
        conn.close()
    return dataclasses.replace(info, seconds=time.perf_counter() - began)


def _batches(stores: int, cells_per_store: int) -> Iterator[tuple[int, int]]:
    per_batch = max(1, BATCH_CELLS // max(cells_per_store, 1))
    for lo in range(0, stores, per_batch):
        yield lo, min(stores, lo + per_batch)


def _generate_batch(
    lo: int,
    hi: int,
    *,
    stores: int,
    products: int,
    days: int,
    dates: np.ndarray,
    t: np.ndarray,
    closed: np.ndarray,
    seasonal: np.ndarray,
    popularity: np.ndarray,
    size: np.ndarray,
    trend: np.ndarray,
    group_of: np.ndarray,
    promo_lift: np.ndarray,
    series_seeds: np.ndarray,
    promo_offset: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Promotions and sales of stores ``lo .. hi-1`` (0-based), vectorized over the batch."""
    total_days = len(dates)
    n = hi - lo
    # One generator per store, so a store's data does not depend on the batch size.
    rngs = [np.random.default_rng(int(series_seeds[s])) for s in range(lo, hi)]

    # Promotions: the timeline is cut into 14-day slots; a series runs a promotion in a slot
    # with probability 0.12, starting 0-3 days in, lasting 3-10 days, so they never overlap.
    slots = -(-total_days // 14)
    discount = np.zeros((n, products, total_days))
    promo_parts = []
    for i, rng in enumerate(rngs):
        runs = rng.random((products, slots)) < 0.12
        offset = rng.integers(0, 4, size=(products, slots))
        length = rng.integers(3, 11, size=(products, slots))
        depth = rng.choice([0.1, 0.2, 0.3], size=(products, slots))
        p_idx, slot_idx = np.nonzero(runs)
        begin = slot_idx * 14 + offset[p_idx, slot_idx]
        finish = np.minimum(begin + length[p_idx, slot_idx], total_days) - 1
        keep = begin < total_days
        p_idx, begin, finish = p_idx[keep], begin[keep], finish[keep]
        d = depth[p_idx, slot_idx[keep]]
        # mark days begin..finish: difference array along days, then cumulative sum
        marks = np.zeros((products, total_days + 1))
        np.add.at(marks, (p_idx, begin), d)
        np.add.at(marks, (p_idx, finish + 1), -d)
        discount[i] = np.cumsum(marks, axis=1)[:, :total_days]
        promo_parts.append(
            pd.DataFrame(
                {
                    "store_id": np.full(len(p_idx), lo + i + 1, dtype=np.int64),
                    "product_id": p_idx.astype(np.int64) + 1,
                    "start_date": dates[begin],
                    "end_date": dates[finish],
                    "discount": d,
                }
            )
        )
    discount = np.round(discount, 2)
    promos = pd.concat(promo_parts, ignore_index=True)
    promos = promos.sort_values(["store_id", "start_date", "product_id"], kind="stable")
    promos.insert(0, "promo_id", np.arange(promo_offset + 1, promo_offset + len(promos) + 1))

    # Demand over the history only (the horizon is what the pipeline forecasts).
    hist = slice(0, days)
    years = t[hist] / 365.25
    mean = (
        popularity[None, :, None]
        * size[lo:hi, None, None]
        * seasonal[None, :, hist]
        * (1.0 + trend[lo:hi, :, None] * years[None, None, :]).clip(0.2)
        * (1.0 + promo_lift[group_of][None, :, None] * discount[:, :, hist])
    )
    qty = np.empty((n, products, days), dtype=np.int64)
    present = np.empty((n, days), dtype=bool)
    for i, rng in enumerate(rngs):
        gamma = rng.gamma(4.0, 0.25, size=(products, days))  # mean 1: overdispersion
        q = rng.poisson(mean[i] * gamma)
        # stock-outs: a run starts on 0.4% of days, lasts 2-7 days, sells nothing
        starts = rng.random((products, days)) < 0.004
        lengths = rng.integers(2, 8, size=(products, days))
        marks = np.zeros((products, days + 8), dtype=np.int64)
        p_idx, d_idx = np.nonzero(starts)
        np.add.at(marks, (p_idx, d_idx), 1)
        np.add.at(marks, (p_idx, d_idx + lengths[p_idx, d_idx]), -1)
        q[np.cumsum(marks, axis=1)[:, :days] > 0] = 0
        qty[i] = q
        # missing days: about 1% of a store's days have no rows at all; Christmas is closed
        present[i] = (rng.random(days) >= 0.01) & ~closed[hist]

    s_idx, p_idx, d_idx = np.nonzero(np.broadcast_to(present[:, None, :], qty.shape))
    store_id = s_idx.astype(np.int64) + lo + 1
    product_id = p_idx.astype(np.int64) + 1
    # sale_id grows with the day, then store, then product (gaps for missing rows)
    sale_id = (d_idx.astype(np.int64) * stores + (store_id - 1)) * products + product_id
    sales = pd.DataFrame(
        {
            "sale_id": sale_id,
            "date": dates[d_idx],
            "store_id": store_id,
            "product_id": product_id,
            "qty": qty[s_idx, p_idx, d_idx],
        }
    )
    return promos, sales.sort_values("sale_id", kind="stable", ignore_index=True)


_DDL = {
    "stores": "store_id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL, "
    "size REAL NOT NULL",
    "products": "product_id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
    "product_group TEXT NOT NULL, price REAL NOT NULL",
    "holidays": "date DATE PRIMARY KEY, name TEXT NOT NULL",
    "promotions": "promo_id INTEGER PRIMARY KEY, store_id INTEGER NOT NULL, "
    "product_id INTEGER NOT NULL, start_date DATE NOT NULL, end_date DATE NOT NULL, "
    "discount REAL NOT NULL",
    # BIGINT on other databases; on SQLite, INTEGER PRIMARY KEY is the rowid (no extra index)
    "sales": "sale_id INTEGER PRIMARY KEY, date DATE NOT NULL, store_id INTEGER NOT NULL, "
    "product_id INTEGER NOT NULL, qty INTEGER NOT NULL",
    "synth_meta": "key TEXT PRIMARY KEY, value TEXT NOT NULL",
}


def _create_tables(db: Database, *, replace: bool) -> None:
    if db.is_sqlite:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
    for table, columns in _DDL.items():
        if replace:
            db.execute(f"DROP TABLE IF EXISTS {table}")
        if not db.is_sqlite:
            columns = columns.replace("sale_id INTEGER", "sale_id BIGINT")
        db.execute(f"CREATE TABLE {table} ({columns})")
    db.commit()


def _insert(db: Database, table: str, frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    if db.ingest(table, _as_arrow(frame)):
        return
    columns = []
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            values = np.datetime_as_string(col.to_numpy(dtype="datetime64[D]"), unit="D")
            columns.append(values.tolist())
        elif col.dtype == object and len(col) and isinstance(col.iloc[0], dt.date):
            columns.append([d.isoformat() for d in col])
        else:
            columns.append(col.tolist())
    db.insert(table, list(frame.columns), list(zip(*columns, strict=True)))


def _as_arrow(frame: pd.DataFrame) -> pa.Table:
    """``frame`` with the values :func:`_insert` gives the database: dates as ISO text."""
    arrays = []
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            array = pa.array(col.to_numpy(dtype="datetime64[D]")).cast(pa.string())
        elif col.dtype == object and len(col) and isinstance(col.iloc[0], dt.date):
            array = pa.array(col, type=pa.date32()).cast(pa.string())
        else:
            array = pa.array(col)
            if pa.types.is_large_string(array.type):
                array = array.cast(pa.string())
        arrays.append(array)
    return pa.table(arrays, names=[str(c) for c in frame.columns])


def read_meta(url: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parameters a database was generated with, or None when it is not a synthetic one."""
    db_url = database_url(url)
    path = _sqlite_path(db_url)
    if path is not None and not Path(path).exists():
        return None
    try:
        conn = connect_url(db_url)
    except SQLError:
        return None
    try:
        rows = conn.execute("SELECT value FROM synth_meta WHERE key = 'parameters'")
    except Exception:
        return None
    finally:
        conn.close()
    return json.loads(rows[0][0]) if rows else None


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
