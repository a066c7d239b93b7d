"""The stages' building blocks, against straightforward pandas versions of the same computation.

- denormalization by lookups equals the merges it replaced (also on the fallback path for ids
  too large to pack into one integer key);
- a forecast task's arguments carry its own store's files only, so they do not grow with the
  number of stores (at 500 stores the whole dataset in every task made the stage quadratic);
- dates in every form the sources give them convert without Python objects per row, to the same
  days as pandas.
"""

from __future__ import annotations

import datetime as dt
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import hafen
from hafen.pipeline import _stages
from hafen.pipeline._model import ModelParams, StoreForecast, as_days, forecast_store

DAY0 = dt.date(2024, 3, 1)


def _dimensions(tmp_path, *, big_ids: bool = False) -> tuple[_stages.Dimensions, pd.DataFrame]:
    """Small dimension datasets and a raw sales partition shaped like the extracted ones."""
    offset = 2**40 if big_ids else 0
    products = pd.DataFrame(
        {
            "product_id": np.array([1, 2, 3, 5]) + offset,  # product 4 is missing: a null join
            "name": ["a", "b", "c", "e"],
            "product_group": ["dairy", "bakery", "dairy", "snacks"],
            "price": [1.5, 2.0, 0.5, 3.25],
        }
    )
    stores = pd.DataFrame(
        {"store_id": np.array([1, 2]) + offset, "name": ["x", "y"], "region": ["north", "south"]}
    ).assign(size=[1.0, 2.5])
    holidays = pd.DataFrame(
        # two names on one day: the last one counts (as a dict built from the rows would)
        {"date": ["2024-03-02", "2024-03-04", "2024-03-04"], "name": ["h1", "h2", "h3"]}
    )
    promotions = pd.DataFrame(
        {
            "promo_id": [1, 2, 3, 4],
            "store_id": np.array([1, 1, 2, 1]) + offset,
            "product_id": np.array([1, 2, 1, 2]) + offset,
            "start_date": ["2024-02-25", "2024-03-03", "2024-03-01", "2024-03-04"],
            "end_date": ["2024-03-02", "2024-03-10", "2024-03-01", "2024-03-05"],
            "discount": [0.1, 0.2, 0.3, 0.4],  # promotion 4 overrides 2 on two days
        }
    )
    root = tmp_path / ("big" if big_ids else "small")
    dims = _stages.Dimensions(
        stores=hafen.write_dataset(stores, str(root / "stores")),
        products=hafen.write_dataset(products, str(root / "products")),
        holidays=hafen.write_dataset(holidays, str(root / "holidays")),
        promotions=hafen.write_dataset(
            promotions, str(root / "promotions"), partition_on=["store_id"]
        ),
    )
    rng = np.random.default_rng(3)
    n = 200
    part = pd.DataFrame(
        {
            "sale_id": np.arange(n),
            "date": [(DAY0 + dt.timedelta(days=int(d))).isoformat() for d in rng.integers(0, 7, n)],
            "store_id": rng.integers(1, 3, n) + offset,
            "product_id": rng.integers(1, 6, n) + offset,
            "qty": rng.integers(0, 9, n),
        }
    )
    return dims, part


def _by_merges(part: pd.DataFrame, dims: _stages.Dimensions) -> pd.DataFrame:
    """The denormalization as pandas merges and a loop over promotions: the reference."""
    frame = part.assign(date=pd.to_datetime(part["date"]).dt.date)
    frame = frame.merge(
        dims.products.read(columns=["product_id", "product_group", "price"]),
        on="product_id",
        how="left",
    ).merge(
        dims.stores.read(columns=["store_id", "region", "size"]).rename(
            columns={"size": "store_size"}
        ),
        on="store_id",
        how="left",
    )
    discount = np.zeros(len(frame))
    for promo in dims.promotions.read().sort_values("promo_id").itertuples():
        start = dt.date.fromisoformat(promo.start_date)
        end = dt.date.fromisoformat(promo.end_date)
        hit = (
            (frame["store_id"] == promo.store_id)
            & (frame["product_id"] == promo.product_id)
            & (frame["date"] >= start)
            & (frame["date"] <= end)
        )
        discount[hit.to_numpy()] = promo.discount  # a later promotion wins, as in the stage
    names = {dt.date.fromisoformat(d): n for d, n in dims.holidays.read().itertuples(index=False)}
    frame["discount"] = discount
    frame["holiday"] = [names.get(d) for d in frame["date"]]
    return frame


def _has_sales_dtypes(frame: pd.DataFrame) -> bool:
    """The dtypes a partition of ``sales`` gets from its schema (what write_ddf's meta says)."""
    typed = _stages._to_table(frame, _stages._schema_of_sales())
    return frame.dtypes.to_dict() == typed.dtypes.to_dict()


@pytest.mark.parametrize("big_ids", [False, True], ids=["packed-keys", "merge-fallback"])
def test_denormalize_matches_the_merges(tmp_path, big_ids):
    dims, part = _dimensions(tmp_path, big_ids=big_ids)
    got = _stages.denormalize_part(part, dims)
    want = _by_merges(part, dims)
    assert list(got.columns) == _stages._schema_of_sales().names
    assert _has_sales_dtypes(got)
    assert [d for d in got["date"]] == list(want["date"])
    for column in ("store_id", "product_id", "qty", "sale_id"):
        assert (got[column].to_numpy() == want[column].to_numpy()).all(), column
    for column in ("product_group", "region", "holiday"):
        assert got[column].isna().tolist() == want[column].isna().tolist(), column
        present = got[column].notna().to_numpy()
        assert list(got[column][present]) == list(want[column][present]), column
    for column in ("price", "store_size", "discount"):
        assert np.allclose(got[column], want[column], equal_nan=True), column
    assert got["product_group"].isna().any()  # product 4 is not in products
    assert (got["discount"] > 0).any() and set(got["holiday"].dropna()) == {"h1", "h3"}


def test_denormalize_of_an_empty_partition_has_the_schema(tmp_path):
    dims, part = _dimensions(tmp_path)
    empty = _stages.denormalize_part(part.iloc[:0], dims)
    assert len(empty) == 0
    assert _has_sales_dtypes(empty)


def _by_store(tmp_path, stores: int) -> hafen.Dataset:
    frame = pd.DataFrame(
        {
            "store_id": np.repeat(np.arange(1, stores + 1), 6),
            "product_id": np.tile(np.repeat([1, 2], 3), stores),
            "date": np.tile([DAY0 + dt.timedelta(days=d) for d in range(3)] * 2, stores),
            "qty": np.arange(6 * stores),
        }
    )
    return hafen.write_dataset(
        frame,
        str(tmp_path / f"by_store_{stores}"),
        partition_on=["store_id"],
        indices=["product_id"],
    )


def test_forecast_task_arguments_do_not_grow_with_the_number_of_stores(tmp_path):
    few = _stages.files_by_store(_by_store(tmp_path, 2))
    many = _stages.files_by_store(_by_store(tmp_path, 60))
    assert sorted(few) == [1, 2] and sorted(many) == list(range(1, 61))
    assert all(len(s.files) == 1 for s in many.values())
    size_few = len(pickle.dumps(few[1]))
    size_many = len(pickle.dumps(many[1]))
    assert size_many < 1.2 * size_few  # was: every store's files in every task


def test_store_files_read_exactly_that_stores_rows(tmp_path):
    ds = _by_store(tmp_path, 5)
    for store, files in _stages.files_by_store(ds).items():
        got = files.read(["product_id", "date", "qty"])
        want = ds.read(
            columns=["product_id", "date", "qty"], predicates=[[("store_id", "==", store)]]
        )
        assert sorted(got["qty"]) == sorted(want["qty"])
        assert {d for d in got["date"]} == {DAY0 + dt.timedelta(days=d) for d in range(3)}


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(["2024-03-01", "2024-12-31"]),
        pd.Series([dt.date(2024, 3, 1), dt.date(2024, 12, 31)]),
        pd.Series(["2024-03-01 00:00:00", "2024-12-31 00:00:00"]),  # text with a time: pandas
        pd.Series(pd.to_datetime(["2024-03-01 13:00", "2024-12-31 00:00"])),
        pa.chunked_array([pa.array([dt.date(2024, 3, 1), dt.date(2024, 12, 31)])]),
        pd.Series(pa.array([dt.date(2024, 3, 1), dt.date(2024, 12, 31)]), dtype="date32[pyarrow]"),
    ],
    ids=["iso-text", "date-objects", "text-with-time", "timestamps", "arrow", "arrow-dtype"],
)
def test_as_days_of_every_date_form(values):
    got = as_days(values)
    assert got.dtype == np.dtype("datetime64[D]")
    assert got.tolist() == [dt.date(2024, 3, 1), dt.date(2024, 12, 31)]


def _one_store(days: int = 140, products: int = 6) -> dict[str, object]:
    rng = np.random.default_rng(0)
    first = dt.date(2024, 1, 1)
    last = first + dt.timedelta(days=days - 1)
    grid = pd.MultiIndex.from_product([range(1, products + 1), range(days)]).to_frame(
        index=False, name=["product_id", "day"]
    )
    history = pd.DataFrame(
        {
            "product_id": grid["product_id"],
            "date": [first + dt.timedelta(days=int(d)) for d in grid["day"]],
            "qty": rng.poisson(5 + 3 * (grid["day"] % 7 == 5)),
        }
    )
    return {
        "history": history,
        "store_id": 1,
        "products": pd.DataFrame(
            {
                "product_id": range(1, products + 1),
                "product_group": ["a", "b"] * (products // 2),
                "price": np.linspace(1, 3, products),
            }
        ),
        "promotions": pd.DataFrame(
            {"product_id": [1], "start_date": ["2024-02-01"], "end_date": ["2024-02-05"]}
        ).assign(discount=0.2),
        "holidays": pd.DataFrame({"date": ["2024-01-01"], "name": ["new_year"]}),
        "first_day": first,
        "last_day": last,
    }


@pytest.mark.parametrize("refit", [False, True])
def test_forecast_store_gives_every_product_and_day_as_arrow_dates(refit):
    args = _one_store()
    result = forecast_store(**args, params=ModelParams(refit=refit))  # type: ignore[arg-type]
    frame = result.forecasts
    assert frame["date"].dtype == pd.ArrowDtype(pa.date32())
    last = args["last_day"]
    assert set(frame["date"]) == {last + dt.timedelta(days=h) for h in range(1, 29)}  # type: ignore[operator]
    assert len(frame) == 6 * 28 and frame["forecast"].notna().all()
    assert result.metrics["model"] == "gradient boosting"
    assert result.metrics["abs_error_model"] < result.metrics["abs_error_baseline"]
    # the held-out window is scored by the evaluated model whether or not the future is refit
    other = forecast_store(**args, params=ModelParams(refit=not refit))  # type: ignore[arg-type]
    assert other.metrics["abs_error_model"] == result.metrics["abs_error_model"]


def test_forecast_store_fits_on_one_openmp_thread(monkeypatch):
    """The parallelism is one task per Dask thread; OpenMP threads on top oversubscribe."""
    from threadpoolctl import threadpool_info

    from hafen.pipeline import _model

    seen: list[int] = []
    real = _model._fit

    def fit(*args, **kwargs):
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp")
        return real(*args, **kwargs)

    monkeypatch.setattr(_model, "_fit", fit)
    forecast_store(**_one_store(), params=ModelParams())  # type: ignore[arg-type]
    assert seen and set(seen) == {1}


def test_a_new_day_inside_the_training_week_predicts_with_the_kept_model():
    """Models train on whole weeks: a day that does not start a week forecasts with the model
    kept from the day before, exactly as fitting it again would; a day that starts one fits."""
    from hafen.pipeline._model import period_start

    def run(days: int, models: dict[str, bytes] | None = None) -> StoreForecast:
        args = _one_store(days=150)  # the first `days` of it
        last = args["first_day"] + dt.timedelta(days=days - 1)  # type: ignore[operator]
        history = args["history"]
        args.update(history=history[history["date"] <= last], last_day=last)  # type: ignore[index]
        return forecast_store(**args, models=models)  # type: ignore[arg-type]

    def moves(days: int) -> bool:  # whether one more day moves the training week's end
        start = np.datetime64("2024-01-01")
        return period_start(start, days - 28) != period_start(start, days + 1 - 28)

    same = next(d for d in range(130, 140) if not moves(d))
    before = run(same)
    assert before.fitted == 1 and len(before.models) == 1
    kept, fresh = run(same + 1, before.models), run(same + 1)
    assert kept.fitted == 0 and fresh.fitted == 1 and set(kept.models) == set(fresh.models)
    pd.testing.assert_frame_equal(kept.forecasts, fresh.forecasts)
    assert kept.metrics == fresh.metrics

    starts = next(d for d in range(130, 140) if moves(d))
    assert run(starts + 1, run(starts).models).fitted == 1
