"""Forecast ranges: P10 <= P50 <= P90 on every row, and the P10-P90 interval's coverage of the
held-out days reported, near 80%, scored by pinball loss against the seasonal naive baseline's
empirical quantiles."""

from __future__ import annotations

import numpy as np

import hafen
from hafen.pipeline._model import pinball


def test_quantiles_are_ordered_on_every_row(demo_run):
    workdir, _ = demo_run
    frame = hafen.open_dataset(str(workdir / "datasets" / "forecasts")).read()
    assert len(frame) and not frame[["p10", "p50", "p90"]].isna().any().any()
    assert (frame["p10"] <= frame["p50"]).all() and (frame["p50"] <= frame["p90"]).all()
    assert (frame["p10"] >= 0).all()
    assert (frame["p90"] > frame["p10"]).mean() > 0.5  # a range, not a point


def test_interval_coverage_is_reported_and_near_80_percent(demo_run):
    _, result = demo_run
    ranges = result.ranges
    assert 0.65 <= ranges["coverage_model"] <= 0.92, ranges
    assert ranges["pinball_model"] > 0 and ranges["pinball_baseline"] > 0
    assert ranges["pinball_model"] < ranges["pinball_baseline"], ranges


def test_pinball_loss_by_hand():
    actual = np.array([10.0])
    q = np.array([[8.0, 10.0, 14.0]])  # P10 below by 2, P50 exact, P90 above by 4
    assert pinball(actual, q) == 0.1 * 2 + 0 + (1 - 0.9) * 4
