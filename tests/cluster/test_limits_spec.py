"""Validation of limit names, rates, sizes and annotations (no cluster needed)."""

from __future__ import annotations

import dask
import pytest

from hafen.cluster.limits import make_spec, parse_annotation, parse_rate
from hafen.errors import ConfigError, LimitError


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [
        ("20/s", 20.0),
        ("100/min", 100 / 60),
        ("5/h", 5 / 3600),
        ("1/30s", 1 / 30),
        ("2 / minute", 2 / 60),
        ("10/ms", 10_000.0),
        ("3/d", 3 / 86400),
        (7, 7.0),
        (0.5, 0.5),
    ],
)
def test_rates(rate, per_second):
    assert parse_rate(rate) == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("20", "invalid rate '20'"),
        ("20/fortnight", "invalid rate"),
        ("-1/s", "invalid rate"),
        ("0/s", "must be positive"),
        ("1/0s", "period must be positive"),
        (0, "must be positive"),
        (float("inf"), "positive and finite"),
        (True, "must be like"),
        ([20], "must be like"),
    ],
)
def test_bad_rates(rate, message):
    with pytest.raises(LimitError, match=message):
        parse_rate(rate)


def test_specs():
    spec = make_spec("postgres", concurrency=4, rate="20/s")
    assert (spec.concurrency, spec.rate, spec.rate_text, spec.burst) == (4, 20.0, "20/s", 1)
    assert make_spec("paused", concurrency=0).concurrency == 0
    assert make_spec("api", rate=2, burst=5).to_dict() == {
        "concurrency": None,
        "rate": "2/s",
        "rate_per_second": 2.0,
        "burst": 5,
    }
    # without burst=: dask config hafen.limits.burst (1: no burst), or the scheduler's default
    assert make_spec("x", concurrency=1).burst == dask.config.get("hafen.limits.burst") == 1
    assert make_spec("x", rate="1/s", default_burst=3).burst == 3
    with dask.config.set({"hafen.limits.burst": 4}):
        assert make_spec("x", rate="1/s").burst == 4
    with (
        dask.config.set({"hafen.limits.burst": 0}),
        pytest.raises(ConfigError, match=r"hafen\.limits\.burst"),
    ):
        make_spec("x", rate="1/s")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", 1), "invalid limit name ''"),
        (("-x", 1), "invalid limit name"),
        (("a b", 1), "invalid limit name 'a b'"),
        (("x" * 129, 1), "invalid limit name"),
        ((3, 1), "must be a string"),
        (("x", -1), "concurrency must be >= 0, got -1"),
        (("x", True), "concurrency must be an integer"),
        (("x", "4"), "concurrency must be an integer"),
        (("x", None, None), "give concurrency=, rate= or both"),
        (("x", 1, None, 2), "burst= only applies together with rate="),
        (("x", None, "1/s", 0), "burst must be >= 1"),
    ],
)
def test_bad_specs(args, message):
    with pytest.raises(LimitError, match=message):
        make_spec(*args)


def test_annotations():
    assert parse_annotation("db") == ("db",)
    assert parse_annotation(["db", "api", "db"]) == ("db", "api")
    assert parse_annotation({"b", "a"}) == ("a", "b")
    for bad, message in [
        (5, "must be a limit name or a list"),
        ({"db": 2}, "must be a limit name or a list"),
        ([], "names no limit"),
        (["ok", 1], "must be a string"),
        (["bad name"], "invalid limit name"),
    ]:
        with pytest.raises(LimitError, match=message):
            parse_annotation(bad)
