"""Predicates on every op and type equal a plain pandas filter (property-based)."""

from __future__ import annotations

import datetime as dt
import operator
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hafen

N = 240
DAYS = [dt.date(2024, 3, 1) + dt.timedelta(days=i) for i in range(4)]
STAMPS = list(pd.date_range("2024-03-30 22:00", periods=6, freq="90min", tz="Europe/Berlin"))


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(42)
    ints = pd.array(rng.integers(-3, 4, N), dtype="Int64")
    ints[rng.random(N) < 0.15] = pd.NA
    floats = rng.normal(size=N).round(1)
    floats[rng.random(N) < 0.05] = -0.0  # equal to 0.0, told apart by Arrow's sets
    floats[rng.random(N) < 0.15] = np.nan
    strings = rng.choice(["ant", "bee", "cat", "dog"], N).astype(object)
    strings[rng.random(N) < 0.15] = None
    stamps = pd.Series(pd.DatetimeIndex(rng.choice(np.array(STAMPS, dtype=object), N)))
    stamps[rng.random(N) < 0.15] = pd.NaT
    region = rng.choice(["north", "south", "east"], N).astype(object)
    region[rng.random(N) < 0.2] = None
    day = pd.Series([DAYS[i] for i in rng.integers(0, len(DAYS), N)], dtype=object)
    day[rng.random(N) < 0.1] = None
    shop = pd.array(rng.integers(0, 3, N), dtype="Int64")
    shop[rng.random(N) < 0.1] = pd.NA
    return pd.DataFrame(
        {
            "day": day,  # partition, dates with nulls
            "shop": shop,  # partition, ints with nulls
            "region": region,  # partition, strings with nulls
            "n": ints,
            "x": floats,
            "s": strings,
            "ts": stamps,
            "cat": pd.Categorical(rng.choice(["lo", "mid", "hi"], N)),
        }
    )


VALUES = {
    "day": [*DAYS, dt.date(2024, 2, 1), None],
    "shop": [0, 1, 2, 5, None],
    "region": ["north", "south", "east", "west", None],
    "n": [-3, 0, 2, 9, None],
    "x": [-0.5, 0.0, -0.0, 0.3, 2.0],
    "s": ["ant", "bee", "cow", None],
    "ts": [*STAMPS[::2], pd.Timestamp("2024-01-01", tz="UTC")],
    "cat": ["lo", "hi", "none"],
}
ORDERED = {"day", "shop", "region", "n", "x", "s", "ts"}  # categoricals: equality and sets only


@st.composite
def literal(draw):
    column = draw(st.sampled_from(sorted(VALUES)))
    ops = ["==", "!=", "in", "not in"] + (["<", "<=", ">", ">="] if column in ORDERED else [])
    op = draw(st.sampled_from(ops))
    pool = VALUES[column]
    if op in ("in", "not in"):
        value = draw(st.lists(st.sampled_from(pool), max_size=3))
    else:
        candidates = pool if op in ("==", "!=") else [v for v in pool if v is not None]
        value = draw(st.sampled_from(candidates))
    return (column, op, value)


predicates_strategy = st.lists(st.lists(literal(), min_size=1, max_size=3), min_size=1, max_size=3)

COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def pandas_filter(df: pd.DataFrame, predicates) -> pd.DataFrame:
    """The reference: plain pandas, where comparisons with a missing value are False except !=."""
    mask = pd.Series(False, index=df.index)
    for conjunction in predicates:
        term = pd.Series(True, index=df.index)
        for column, op, value in conjunction:
            s = df[column].astype(object)
            missing = s.isna()
            if op in ("in", "not in"):
                wanted = [v for v in value if v is not None]
                hit = s.isin(wanted).fillna(False) | (missing & any(v is None for v in value))
                hit = hit.astype(bool) if op == "in" else ~hit.astype(bool)
            elif value is None:
                hit = missing if op == "==" else ~missing
            elif op == "==":
                hit = (~missing) & s.map(lambda a, v=value: a == v if a is not None else False)
            elif op == "!=":
                hit = missing | s.map(lambda a, v=value: a != v if a is not None else True)
            else:
                f = COMPARE[op]
                hit = (~missing) & s.map(
                    lambda a, v=value, f=f: bool(f(a, v)) if not pd.isna(a) else False
                )
            term &= hit.astype(bool)
        mask |= term
    return df[mask]


def canon(df: pd.DataFrame) -> list[tuple]:
    rows = df.astype(object).where(df.notna(), None)
    return sorted(map(tuple, rows[sorted(df.columns)].to_numpy()), key=repr)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The frame in two commits: indexed columns with nulls (strings, ints) and zeros of both
    signs (floats); the second commit's files sorted by ``n`` in small row groups."""
    df = frame()
    url = str(tmp_path_factory.mktemp("pred") / "ds")
    half = N // 2
    hafen.write_dataset(
        df.iloc[:half], url, partition_on=["day", "shop", "region"], indices=["s", "n", "x"]
    )
    ds = hafen.write_dataset(df.iloc[half:], url, mode="append", sort_by=["n"], row_group_size=4)
    return df, ds


def read(ds: hafen.Dataset, predicates, how: str) -> pd.DataFrame:
    """The rows matching: as a table (a lookup reads row groups; others Arrow's scanner), or
    as batches (always Arrow's scanner)."""
    if how == "read":
        return ds.read(predicates=predicates)
    batches = list(ds.scan_batches(predicates=predicates))
    return pa.Table.from_batches(batches, schema=ds.schema).to_pandas()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(predicates=predicates_strategy, how=st.sampled_from(["read", "batches"]))
def test_predicates_equal_pandas(dataset, predicates, how):
    df, ds = dataset
    got = read(ds, predicates, how)
    expected = pandas_filter(df, predicates)
    assert canon(got) == canon(expected), predicates


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(predicates=predicates_strategy)
def test_delete_equals_pandas(dataset, tmp_path_factory, predicates):
    """A delete keeps exactly the rows pandas does not match (whole files dropped by their
    partition values, others rewritten), and its index still finds every row kept."""
    df, ds = dataset
    url = str(tmp_path_factory.mktemp("delete") / "ds")
    shutil.copytree(ds.url, url)
    after = hafen.open_dataset(url).delete(predicates)
    kept = df.drop(pandas_filter(df, predicates).index)
    assert canon(after.read()) == canon(kept), predicates
    lookup = [[("s", "in", ["ant", "bee"])], [("n", "==", 0)], [("x", "==", 0.0)]]
    assert canon(after.read(predicates=lookup)) == canon(pandas_filter(kept, lookup))


@pytest.mark.parametrize(
    "predicates",
    [
        [[("n", "==", -3), ("region", "not in", [None])]],
        [[("x", "==", -0.3), ("region", "not in", [None, "east"])]],
        [[("n", "==", -3), ("region", "not in", ["east"])]],
    ],
)
def test_a_lookup_with_not_in_null_on_a_partition_column_leaves_out_its_null_partition(
    dataset, predicates
):
    """A data-column lookup beside ``not in [None, ...]`` on a partition column: the null
    partition's rows are left out (they were returned when a file's partition was decided
    by the literal alone), and kept when None is not among the values."""
    df, ds = dataset
    assert canon(ds.read(predicates=predicates)) == canon(pandas_filter(df, predicates))


def test_every_op_appears():
    from hafen.datasets._predicates import OPS

    assert set(OPS) == {"==", "!=", "<", "<=", ">", ">=", "in", "not in"}


def test_naive_timestamp_against_aware_column_is_an_error(dataset):
    _, ds = dataset
    with pytest.raises(hafen.errors.PredicateError, match="'ts'"):
        ds.read(predicates=[[("ts", ">", pd.Timestamp("2024-03-31"))]])


@pytest.mark.parametrize("tz", [None, "Europe/Berlin"])
@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_nanosecond_timestamps_are_not_truncated(tmp_path, tz, op):
    """A literal between two rows a few nanoseconds apart, and files pruned by statistics."""
    base = pd.Timestamp("2024-01-01", tz=tz)
    df = pd.DataFrame(
        {
            "k": [1, 1, 2, 2],
            "ts": [base, base + pd.Timedelta(500, "ns"), base + pd.Timedelta(1, "s"), base],
        }
    )
    url = str(tmp_path / "ds")
    hafen.write_dataset(df.iloc[:2], url, partition_on=["k"])
    hafen.write_dataset(df.iloc[2:], url, mode="append")  # two versions: stats prune files
    value = base + pd.Timedelta(200, "ns")
    got = hafen.open_dataset(url).read(predicates=[[("ts", op, value)]])
    compare = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le}
    compare |= {">": operator.gt, ">=": operator.ge}
    expected = df[compare[op](df["ts"], value)]
    assert sorted(got["ts"]) == sorted(expected["ts"])


@pytest.mark.parametrize(
    "predicates",
    [[[("region", "not in", [None])]], [[("region", "not in", [None, "east"])]]],
)
def test_delete_not_in_null_keeps_the_null_partition(tmp_path, predicates):
    """``not in`` with None among its values never matches a null partition value, so a delete
    keeps that partition's rows (the whole partition was dropped as matching)."""
    df = frame()
    ds = hafen.write_dataset(df, str(tmp_path / "ds"), partition_on=["day", "shop", "region"])
    kept = ds.delete(predicates).read()
    expected = df.drop(pandas_filter(df, predicates).index)
    assert canon(kept) == canon(expected)
    assert kept["region"].isna().sum() == df["region"].isna().sum() > 0
