"""The forecast model: gradient boosting on lag, calendar and promotion features, per store.

One model per store, trained in the task that reads that store's partition of
``sales_by_store``. Why per store rather than one global model: the data is partitioned by store,
so each task reads exactly one partition and needs nothing from the others (no shuffle of the
training data, memory bounded by the largest store, as many parallel tasks as stores), and stores
differ in level and trend, which a per-store model absorbs without store features. A store has
``products x days`` rows (70,000 at the default size), plenty for gradient boosting; products
share one model through their lags, rolling means, group and price.

Every lag is at least :data:`MIN_LAG` = 28 days, the horizon: the forecast for any of the next 28
days uses only observed history (a direct multi-horizon model, no recursion), and the held-out
evaluation window of 28 days is forecast exactly as the future is.

**Training cadence.** A model is trained on whole weeks (Monday to Sunday): on the days before
the last Monday on or before the held-out window's first day, so 0 to 6 days between the two are
neither trained on nor scored. A new day inside the week moves the held-out window and the
horizon but not the training data, and the fitted model forecasts them as it is; a new day that
starts a week retrains. Fitted models are kept (``forecast_models``, beside ``forecasts``)
under a fingerprint of exactly what they were trained on (the feature matrix, the targets, the
settings and scikit-learn's version): a task whose training data hashes to a kept fingerprint
predicts with that model instead of fitting the same one again. Fitting is deterministic, so a
run that reuses a model forecasts exactly what a run that fits it does.

The baseline is the seasonal naive forecast: the same weekday of the last observed week (if that
day is missing, the week before, up to four weeks back, else 0).

Ranges: P10, P50 and P90 per product and day are the point forecast plus the empirical quantiles
of its errors on the held-out window, scaled by ``sqrt(level)`` (counts spread more at higher
levels). They are scored split-conformally: each half of the held-out days (alternate days) is
widened by the other half's error quantiles, so the pinball loss and the P10-P90 coverage are
measured out of sample; the baseline gets the same from its own errors. The coverage so measured
lands near 80% at every data size by construction (the halves are exchangeable, and swapping
their roles averages out each one's sampling error): it checks that the calibration holds out of
sample, not how good the model is, which the pinball loss says. An interval of another width
moves it at once (tests/pipeline/test_quantiles.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import pickle
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "HOLDOUT",
    "HORIZON",
    "MIN_LAG",
    "QUANTILES",
    "QUANTILE_COLUMNS",
    "ModelParams",
    "StoreForecast",
    "as_days",
    "fingerprint",
    "forecast_store",
    "pinball",
    "seasonal_naive",
]

HORIZON = 28
HOLDOUT = 28
#: The quantiles forecast besides the point forecast, and their columns.
QUANTILES = (0.1, 0.5, 0.9)
QUANTILE_COLUMNS = ("p10", "p50", "p90")
MIN_LAG = 28
#: Fewer training rows than this and a store is forecast by the baseline.
MIN_TRAIN_ROWS = 50
LAGS = (28, 35, 42, 49, 364)
WINDOWS = (7, 28, 91)
FEATURES = [
    *(f"lag_{k}" for k in LAGS),
    *(f"mean_{w}" for w in WINDOWS),
    "dow",
    "doy_sin",
    "doy_cos",
    "month",
    "holiday",
    "discount",
    "group",
    "price",
]
CATEGORICAL = ["dow", "holiday", "group"]


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """Gradient boosting settings (scikit-learn's ``HistGradientBoostingRegressor``)."""

    # chosen on the synthetic data: 50 x 15 leaves reaches the WAPE of 100 x 31 leaves (0.52 on
    # two stores at the default size) in a third of the CPU time (0.9 s per store)
    max_iter: int = 50
    learning_rate: float = 0.2
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 40
    seed: int = 0
    #: Retrain on all history (held-out window included) before forecasting the future. Off by
    #: default: the evaluated model is the one that forecasts, and each store costs one fit.
    refit: bool = False


@dataclasses.dataclass
class StoreForecast:
    """What one store's task returns: forecasts of the horizon and held-out error sums, and the
    fitted models it forecast with (pickled, by :func:`fingerprint`)."""

    forecasts: pd.DataFrame  # store_id, product_id, date (Arrow date32), forecast, baseline
    metrics: dict[str, Any]
    models: dict[str, bytes] = dataclasses.field(default_factory=dict)
    #: How many of ``models`` were fitted by this task (the others were given to it).
    fitted: int = 0


def as_days(values: Any) -> np.ndarray:
    """Dates given as strings, ``date`` objects or timestamps, as ``datetime64[D]``.

    Arrow dates, ``date`` objects, ISO day strings and timestamps are converted by Arrow (no
    Python object per value); anything else (strings with a time part) by pandas.
    """
    with contextlib.suppress(pa.ArrowException):
        array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
        if not pa.types.is_null(array.type) and array.null_count == 0:
            if not pa.types.is_date32(array.type):
                array = array.cast(pa.date32())
            return np.asarray(array.to_numpy(zero_copy_only=False), dtype="datetime64[D]")
    series = pd.Series(values)
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        series = pd.to_datetime(series.astype(str), format="ISO8601")
    return series.to_numpy(dtype="datetime64[D]")


def seasonal_naive(y: np.ndarray, origin: int, steps: int) -> np.ndarray:
    """Repeat the last observed week after day index ``origin``, per row of ``y`` (P x T).

    Missing (NaN) reference days fall back a week at a time, up to four weeks, then to 0.
    """
    out = np.full((y.shape[0], steps), np.nan)
    for h in range(1, steps + 1):
        ref = origin - 6 + (h - 1) % 7
        value = np.full(y.shape[0], np.nan)
        for back in range(4):
            r = ref - 7 * back
            if r < 0:
                break
            value = np.where(np.isnan(value), y[:, r], value)
        out[:, h - 1] = np.nan_to_num(value, nan=0.0)
    return out


def _rolling_means(
    y: np.ndarray, windows: tuple[int, ...], lag: int, start: int = 0
) -> list[np.ndarray]:
    """For each window ``w``: the mean of the non-missing values in ``[t - lag - w + 1, t - lag]``,
    for every t from ``start`` on."""
    filled = np.nan_to_num(y)
    seen = (~np.isnan(y)).astype(np.float64)
    csum = np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(filled, axis=1)], axis=1)
    ccnt = np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(seen, axis=1)], axis=1)
    t = np.arange(start, y.shape[1])
    hi = np.clip(t - lag + 1, 0, y.shape[1])
    means = []
    for window in windows:
        lo = np.clip(t - lag - window + 1, 0, y.shape[1])
        total = csum[:, hi] - csum[:, lo]
        count = ccnt[:, hi] - ccnt[:, lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append(np.where(count > 0, total / np.maximum(count, 1), np.nan))
    return means


def _shift(y: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """``y`` ``k`` days back (NaN before the first day), for every day from ``start`` on."""
    n_days = y.shape[1]
    out = np.full((y.shape[0], n_days - start), np.nan)
    first = max(start, k)  # the first day with a value k days back
    if first < n_days:
        out[:, first - start :] = y[:, first - k : n_days - k]
    return out


def _features(
    y: np.ndarray,
    discount: np.ndarray,
    days: np.ndarray,
    holiday_code: np.ndarray,
    group_code: np.ndarray,
    price: np.ndarray,
    start: int = 0,
) -> dict[str, np.ndarray]:
    """Feature grids (products x days) for every cell of the days from ``start`` on (each cell
    the same whatever ``start``: a forecast with a kept model needs the last days only)."""
    n_products = y.shape[0]
    days = days[start:]
    doy = (days - days.astype("datetime64[Y]")).astype(np.int64)
    month = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dow = (days.astype(np.int64) + 3) % 7
    grid: dict[str, np.ndarray] = {}
    for k in LAGS:
        grid[f"lag_{k}"] = _shift(y, k, start)
    for w, mean in zip(WINDOWS, _rolling_means(y, WINDOWS, MIN_LAG, start), strict=True):
        grid[f"mean_{w}"] = mean
    ones = np.ones((n_products, 1))
    grid["dow"] = ones * dow[None, :]
    grid["doy_sin"] = ones * np.sin(2 * np.pi * doy / 365.25)[None, :]
    grid["doy_cos"] = ones * np.cos(2 * np.pi * doy / 365.25)[None, :]
    grid["month"] = ones * month[None, :]
    grid["holiday"] = ones * holiday_code[None, start:]
    grid["discount"] = discount[:, start:]
    grid["group"] = group_code[:, None] * np.ones((1, len(days)))
    grid["price"] = price[:, None] * np.ones((1, len(days)))
    return grid


def _matrix(grid: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    return np.column_stack([grid[name][mask] for name in FEATURES])


class _Model:
    """A fitted regressor and the feature columns it uses (those that vary in its training set)."""

    def __init__(self, regressor: Any, keep: np.ndarray) -> None:
        self.regressor = regressor
        self.keep = keep

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.regressor.predict(x[:, self.keep])


def _fit(x: np.ndarray, y: np.ndarray, params: ModelParams) -> _Model:
    from sklearn.ensemble import HistGradientBoostingRegressor

    # a feature with fewer than two distinct values (lag_364 on less than a year) cannot be binned
    keep = np.array([len(np.unique(col[~np.isnan(col)][:100_000])) >= 2 for col in x.T])
    categorical = [i for i, name in enumerate(np.asarray(FEATURES)[keep]) if name in CATEGORICAL]
    regressor = HistGradientBoostingRegressor(
        loss="poisson",
        max_iter=params.max_iter,
        learning_rate=params.learning_rate,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf,
        categorical_features=categorical or None,
        early_stopping=False,
        random_state=params.seed,
    )
    return _Model(regressor.fit(x[:, keep], y), keep)


def fingerprint(params: ModelParams, *inputs: Any) -> str:
    """A digest of everything a fit depends on: its ``inputs`` (the arrays the training rows'
    features and targets are made of), the settings, the code that makes and fits the feature
    matrix, and scikit-learn's version."""
    digest = hashlib.blake2b(_code_digest(), digest_size=16)
    digest.update(repr(dataclasses.astuple(params)).encode())
    for value in inputs:
        array = np.asarray(value)
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@functools.cache
def _code_digest() -> bytes:
    import marshal

    import sklearn

    digest = hashlib.blake2b(sklearn.__version__.encode(), digest_size=16)
    digest.update(repr((FEATURES, CATEGORICAL, LAGS, WINDOWS, MIN_LAG)).encode())
    for fn in (_features, _rolling_means, _shift, _matrix, _fit, forecast_store):
        digest.update(marshal.dumps(getattr(fn, "__wrapped__", fn).__code__))
    return digest.digest()


class _Fitter:
    """Fits models, or takes a kept one (pickled, by :func:`fingerprint`) for the same inputs."""

    def __init__(self, params: ModelParams, kept: Mapping[str, bytes]) -> None:
        self.params = params
        self.kept = kept
        self.used: dict[str, bytes] = {}
        self.fitted = 0

    def __call__(self, key: str, data: Callable[[], tuple[np.ndarray, np.ndarray]]) -> _Model:
        """The model for ``key`` (a :func:`fingerprint`), kept or fitted on ``data()``."""
        if key in self.kept:
            self.used[key] = self.kept[key]
            model: _Model = pickle.loads(self.kept[key])  # written by the pipeline
            return model
        model = _fit(*data(), self.params)
        self.used[key] = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        self.fitted += 1
        return model


def period_start(first_day: np.datetime64, index: int) -> int:
    """The day index (from ``first_day``) of the Monday on or before day ``index``."""
    day = int((first_day + index).astype("datetime64[D]").astype(np.int64))
    return index - (day + 3) % 7  # 1970-01-01 was a Thursday: (day + 3) % 7 is 0 on Mondays


P = ParamSpec("P")
R = TypeVar("R")


def _one_openmp_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with OpenMP held to one thread: the parallelism is one task per Dask thread.

    Nannies already set OMP_NUM_THREADS=1 in worker processes, but threads of an in-process
    cluster or of workers started otherwise would each start one OpenMP thread per core, and on
    a busy machine OpenMP's waiting threads made a fit about 4 times slower.
    """

    @functools.wraps(fn)
    def limited(*args: P.args, **kwargs: P.kwargs) -> R:
        with _openmp().limit(limits=1, user_api="openmp"):
            return fn(*args, **kwargs)

    return limited


@functools.cache
def _openmp() -> Any:
    """The process's thread pools, found once (finding them scans the loaded libraries: about
    10 ms, a third of a forecast that reuses its model)."""
    import sklearn.ensemble  # noqa: F401 - loads OpenMP first: limits apply to loaded libraries
    from threadpoolctl import ThreadpoolController  # installed with scikit-learn

    return ThreadpoolController()


def _scale(level: np.ndarray) -> np.ndarray:
    """The spread of a count around ``level``: Poisson-like, ``sqrt(level)``, at least 1."""
    return np.sqrt(np.clip(level, 1.0, None))


def _spread(actual: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The empirical quantiles (:data:`QUANTILES`) of the scaled errors ``actual - point``."""
    ok = ~np.isnan(actual) & ~np.isnan(point)
    if ok.sum() < 10:
        return np.zeros(len(QUANTILES))
    z = (actual[ok] - point[ok]) / _scale(point[ok])
    return np.quantile(z, QUANTILES)


def _quantiles(point: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``point`` widened by the scaled error quantiles ``z``: shape ``point.shape + (3,)``, never
    negative, ordered P10 <= P50 <= P90 (z is sorted and the clip keeps the order)."""
    point = np.clip(point, 0, None)
    return np.clip(point[..., None] + z * _scale(point)[..., None], 0, None)


def pinball(actual: np.ndarray, quantiles: np.ndarray) -> float:
    """The summed pinball loss of ``quantiles`` (last axis: :data:`QUANTILES`) for ``actual``."""
    diff = actual[..., None] - quantiles
    tau = np.asarray(QUANTILES)
    return float(np.maximum(tau * diff, (tau - 1) * diff).sum())


@_one_openmp_thread
def forecast_store(
    history: pd.DataFrame,
    *,
    store_id: int,
    products: pd.DataFrame,
    promotions: pd.DataFrame,
    holidays: pd.DataFrame,
    first_day: dt.date,
    last_day: dt.date,
    horizon: int = HORIZON,
    holdout: int = HOLDOUT,
    params: ModelParams | None = None,
    models: Mapping[str, bytes] | None = None,
) -> StoreForecast:
    """Evaluate on the held-out window, then forecast ``horizon`` days, for one store.

    Parameters
    ----------
    history
        The store's rows: ``product_id``, ``date``, ``qty`` (missing days have no rows).
    products
        Every product: ``product_id``, ``product_group``, ``price``.
    promotions
        The store's promotions: ``product_id``, ``start_date``, ``end_date``, ``discount``,
        including planned ones in the horizon.
    holidays
        ``date``, ``name`` over the history and the horizon.
    first_day, last_day
        The history's calendar (the same for every store, so missing days stay missing).
    models
        Models fitted before, pickled, by :func:`fingerprint`: one whose fingerprint matches
        the training data is used instead of fitting it again.

    Returns
    -------
    StoreForecast
        ``horizon`` rows per product, and the absolute errors of model and baseline on the
        ``holdout`` window, with the sum of actual sales there.
    """
    params = params or ModelParams()
    fit = _Fitter(params, models or {})
    products = products.sort_values("product_id").reset_index(drop=True)
    product_ids = products["product_id"].to_numpy(dtype=np.int64)
    n_hist = (last_day - first_day).days + 1
    n_days = n_hist + horizon
    start = np.datetime64(first_day, "D")
    days = start + np.arange(n_days)

    y = np.full((len(product_ids), n_days), np.nan)
    if len(history):
        row = np.searchsorted(product_ids, history["product_id"].to_numpy(dtype=np.int64))
        col = (as_days(history["date"]) - start).astype(np.int64)
        ok = (col >= 0) & (col < n_hist) & (row < len(product_ids))
        y[row[ok], col[ok]] = history["qty"].to_numpy(dtype=np.float64)[ok]

    discount = np.zeros((len(product_ids), n_days + 1))
    if len(promotions):
        p_row = np.searchsorted(product_ids, promotions["product_id"].to_numpy(dtype=np.int64))
        begin = np.clip((as_days(promotions["start_date"]) - start).astype(np.int64), 0, n_days)
        end = np.clip((as_days(promotions["end_date"]) - start).astype(np.int64) + 1, 0, n_days)
        value = promotions["discount"].to_numpy(dtype=np.float64)
        np.add.at(discount, (p_row, begin), value)
        np.add.at(discount, (p_row, end), -value)
    discount = np.round(np.cumsum(discount, axis=1)[:, :n_days], 4)

    names = sorted(set(holidays["name"])) if len(holidays) else []
    holiday_code = np.zeros(n_days)
    if len(holidays):
        h_col = (as_days(holidays["date"]) - start).astype(np.int64)
        ok = (h_col >= 0) & (h_col < n_days)
        codes = np.array([names.index(n) + 1 for n in holidays["name"]], dtype=np.float64)
        holiday_code[h_col[ok]] = codes[ok]
    group_names = sorted(set(products["product_group"]))
    group_code = np.array([group_names.index(g) for g in products["product_group"]], dtype=float)
    price = products["price"].to_numpy(dtype=np.float64)

    cut = n_hist - holdout
    features = (y, discount, days, holiday_code, group_code, price)
    scored_from = max(cut, 0)  # features of the days predicted (those of training: if it fits)
    grid = _features(*features, start=scored_from)
    t = np.broadcast_to(np.arange(n_days)[None, :], y.shape)
    observed = ~np.isnan(y)
    first_train = MIN_LAG + 7  # from the first day with a week of lagged history

    # 1. evaluation: train on the whole weeks before the held-out window, forecast it, compare
    # with the baseline
    train_end = period_start(start, cut)
    train = observed & (t >= first_train) & (t < train_end)
    held = observed & (t >= cut) & (t < n_hist)
    baseline = np.full(y.shape, np.nan)
    baseline[:, cut:n_hist] = seasonal_naive(y, cut - 1, holdout)
    naive = seasonal_naive(y, n_hist - 1, horizon)
    # the training rows' features and targets are made of these (lags and means look back)
    inputs = (y, discount, holiday_code[None, :], days[None, :])
    key = fingerprint(params, *(a[:, :train_end] for a in inputs), group_code, price)
    model = None
    if train.sum() >= MIN_TRAIN_ROWS:
        model = fit(key, lambda: (_matrix(_features(*features), train), y[train]))
    future = t >= n_hist
    predicted = np.full(y.shape, np.nan)
    if model is None:
        # too little history to learn from: the model is the baseline (said in the metrics)
        predicted[held] = baseline[held]
    else:
        # the held-out window and the future in one call (one pass of sklearn's preprocessing);
        # with refit, the future is predicted again below by the refitted model
        scored = held | future
        predicted[scored] = model.predict(_matrix(grid, scored[:, scored_from:]))
    actual = y[held]
    # ranges, split-conformal: on the held-out window, the quantiles of each half's scaled
    # errors widen the other half's forecasts (scored there, out of sample); the future's use
    # the whole window's. The baseline gets the same from its own errors.
    scores = {"model": [0.0, 0], "baseline": [0.0, 0]}
    window = np.arange(cut, n_hist)
    halves = (window[0::2], window[1::2])
    for calib, scored_days in (halves, halves[::-1]):
        for who, point in (("model", predicted), ("baseline", baseline)):
            z = _spread(y[:, calib], point[:, calib])
            ok = observed[:, scored_days]
            q = _quantiles(point[:, scored_days][ok], z)
            actual_half = y[:, scored_days][ok]
            scores[who][0] += pinball(actual_half, q)
            scores[who][1] += int(((actual_half >= q[:, 0]) & (actual_half <= q[:, -1])).sum())
    z_model = _spread(y[:, cut:n_hist], predicted[:, cut:n_hist])
    metrics = {
        "store_id": int(store_id),
        "holdout_rows": int(held.sum()),
        "train_rows": int(train.sum()),
        "model": "gradient boosting" if model else "seasonal naive (too little history)",
        "actual_sum": float(actual.sum()),
        "abs_error_model": float(np.abs(actual - predicted[held]).sum()),
        "abs_error_baseline": float(np.abs(actual - baseline[held]).sum()),
        "pinball_model": scores["model"][0],
        "pinball_baseline": scores["baseline"][0],
        "covered_model": scores["model"][1],
        "covered_baseline": scores["baseline"][1],
    }

    # 2. the future: its features only use history (lags >= 28), so the evaluated model can
    # forecast it as is; with refit, retrain on all history's whole weeks first
    if params.refit and model is not None:
        train_end = period_start(start, n_hist)
        train = observed & (t >= first_train) & (t < train_end)
        key = fingerprint(params, *(a[:, :train_end] for a in inputs), group_code, price, "refit")
        model = fit(key, lambda: (_matrix(_features(*features), train), y[train]))
        predicted[future] = model.predict(_matrix(grid, future[:, scored_from:]))
    forecast = naive if model is None else predicted[:, n_hist:]
    ranges = _quantiles(forecast, z_model).reshape(-1, len(QUANTILES))
    frame = pd.DataFrame(
        {
            "store_id": np.full(forecast.size, store_id, dtype=np.int64),
            "product_id": np.repeat(product_ids, horizon),
            # Arrow dates: no Python object per row
            "date": pd.arrays.ArrowExtensionArray(
                pa.array(np.tile(days[n_hist:], len(product_ids)), type=pa.date32())
            ),
            "forecast": np.round(np.clip(forecast, 0, None), 4).ravel(),
            "baseline": naive.ravel(),
            **{c: np.round(ranges[:, i], 4) for i, c in enumerate(QUANTILE_COLUMNS)},
        }
    )
    return StoreForecast(frame, metrics, fit.used, fit.fitted)
