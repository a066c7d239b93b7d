"""Literals compare exactly, on every path a literal takes, or are refused (issue 13, item 4).

The same values sit in a partition column (``p``: partition pruning and the whole-partition
shortcut of deletes), an indexed column (``k``: index lookups) and a plain one (``n``: file
statistics, Parquet row-group statistics and the Arrow filter); each literal must select the
same rows on all three, and those of an exact reference computed with fractions.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import hafen
from hafen.datasets._coerce import Numeral
from hafen.errors import PredicateError


def _id(value) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


INTS = [-4, -1, 0, 1, 2, 3, 7, None]
SCHEMA = pa.schema(
    [
        ("p", pa.int64()),
        ("k", pa.int64()),
        ("n", pa.int64()),
        ("i8", pa.int8()),
        ("u64", pa.uint64()),
        ("f", pa.float64()),
        ("f32", pa.float32()),
        ("dec", pa.decimal128(10, 2)),
        ("d", pa.date32()),
        ("ts", pa.timestamp("us")),
        ("s", pa.string()),
        ("b", pa.bool_()),
    ]
)
BIG = 2**53
ROWS = {
    "i8": [-128, -1, 0, 1, 127, 5, None, 2],
    "u64": [0, 1, 2**63, 2**64 - 1, 7, None, 3, 2**63 + 2],
    "f": [0.5, 1.0, float(BIG), float(BIG + 2), -2.5, 0.1, None, 1e300],
    "f32": [0.5, float(np.float32(0.1)), 16777216.0, 16777218.0, -1.0, None, 2.0, 3.0],
    "dec": [Decimal(x) if x else None for x in ["1.50", "9.99", "-3.00", "10.00", None, "0.01"]]
    + [Decimal("99999999.99"), Decimal("2.00")],
    "d": [dt.date(2024, 1, i) for i in (1, 2, 3, 4, 2, 3)] + [None, dt.date(2024, 1, 1)],
    "ts": [pd.Timestamp("2024-01-01") + pd.Timedelta(i, "us") for i in (0, 1, 2, 3, 0)]
    + [None, pd.Timestamp("2024-01-02"), pd.Timestamp("2023-12-31 23:59:59.999999")],
    "s": ["1", "a", "b", None, "1.5", "", "ä", "z"],
    "b": [True, False, None, True, False, True, False, True],
}


def table() -> pa.Table:
    data = {"p": INTS, "k": INTS, "n": INTS, **ROWS}
    return pa.table(data, schema=SCHEMA)


def write(url: str) -> hafen.Dataset:
    t = table()
    hafen.write_dataset(t.slice(0, 4), url, partition_on=["p"], indices=["k"])
    return hafen.write_dataset(t.slice(4), url, mode="append")  # two files per stats


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write(str(tmp_path_factory.mktemp("exact") / "ds"))


def _key(x):
    """A value as an exact number or instant (a date being its midnight)."""
    if isinstance(x, bool):
        return x
    if isinstance(x, int | Decimal | np.integer):
        return Fraction(int(x)) if isinstance(x, np.integer) else Fraction(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isinf(x) else Fraction(float(x))
    if isinstance(x, dt.date):
        return pd.Timestamp(x)
    return x


COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def reference(values: list, op: str, literal) -> list[int]:
    """Row numbers matching, by exact comparison with pandas' null semantics."""
    out = []
    for i, a in enumerate(values):
        if op in ("in", "not in"):
            hit = a is not None and any(_key(a) == _key(v) for v in literal)
            hit = hit if op == "in" else not hit
        elif a is None:
            hit = op == "!="
        else:
            hit = COMPARE[op](_key(a), _key(literal))
        if hit:
            out.append(i)
    return out


def rows(ds: hafen.Dataset, predicates) -> list[int]:
    got = ds.read_arrow(columns=["u64", "s"], predicates=predicates)
    # "s" and "u64" together identify a row of the table
    ident = {(u, s): i for i, (u, s) in enumerate(zip(ROWS["u64"], ROWS["s"], strict=True))}
    found = zip(got["u64"].to_pylist(), got["s"].to_pylist(), strict=True)
    return sorted(ident[(u, s)] for u, s in found)


OPS = ["==", "!=", "<", "<=", ">", ">="]
INT_LITERALS = [
    1.5,  # the issue: truncated to 1
    -0.5,
    1.0,
    Decimal("1.5"),
    Decimal("2"),
    np.float64(2.5),
    np.int8(3),
    2**63,  # beyond int64
    -(2**63) - 1,
    1e20,
    math.inf,
    -math.inf,
    Numeral("2.5"),
]


@pytest.mark.parametrize("column", ["p", "k", "n"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("literal", INT_LITERALS, ids=_id)
def test_numbers_on_integer_columns_compare_exactly(dataset, column, op, literal):
    assert rows(dataset, [[(column, op, literal)]]) == reference(INTS, op, literal)


@pytest.mark.parametrize("column", ["p", "k", "n"])
@pytest.mark.parametrize("op", ["in", "not in"])
@pytest.mark.parametrize(
    "literal", [[1.5], [1.5, 2], [1.0, 3.5, 2**70], [-0.5, None], [math.inf]], ids=_id
)
def test_sets_of_numbers_on_integer_columns_compare_exactly(dataset, column, op, literal):
    expected = reference(INTS, op, [v for v in literal if v is not None])
    if None in literal:  # nulls are members of the set
        nulls = [i for i, a in enumerate(INTS) if a is None]
        expected = (
            sorted(set(expected) | set(nulls)) if op == "in" else sorted(set(expected) - set(nulls))
        )
    assert rows(dataset, [[(column, op, literal)]]) == expected


CASES = (
    [("i8", v) for v in (300, -300, 127, 127.5, -128.5, 2**80)]
    + [("u64", v) for v in (-1, 2**64, 2**63 + 1, 2**64 - 1, 2**63 + 2, -0.5, 2.0**64)]
    + [
        ("f", v)
        for v in (BIG + 1, BIG, BIG + 2, BIG + 3, 3**40, 10**400, -(10**400), Decimal("0.1"), 0.1)
    ]
    + [("f32", v) for v in (16777217, 16777216, np.float32(0.1), 0.5, Decimal("0.5"), 2**200)]
    + [
        ("dec", v)
        for v in (
            Decimal("9.99"),
            Decimal("9.995"),
            Decimal("1.5"),
            9.5,
            10,
            10**9,
            -(10**9),
            Decimal("1e-30"),
            Numeral("9.99"),
        )
    ]
    + [
        ("d", v)
        for v in (
            dt.date(2024, 1, 2),
            dt.datetime(2024, 1, 2),
            dt.datetime(2024, 1, 2, 12),
            pd.Timestamp("2024-01-02 00:00:00.000000001"),
            "2024-01-02",
            "2024-01-02 12:00",
        )
    ]
    + [
        ("ts", v)
        for v in (
            pd.Timestamp("2024-01-01 00:00:00.000001"),
            pd.Timestamp("2024-01-01 00:00:00.0000015"),  # between two microseconds
            pd.Timestamp("2023-12-31 23:59:59.9999995"),
            dt.date(2024, 1, 2),
            np.datetime64("2024-01-01T00:00:00.000002500"),
            "2024-01-01 00:00:00.000002",
        )
    ]
)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("column", "literal"), CASES, ids=_id)
def test_literals_compare_exactly_on_every_type(dataset, column, op, literal):
    expected = reference(ROWS[column], op, _as_reference(literal))
    assert rows(dataset, [[(column, op, literal)]]) == expected, (column, op, literal)


def _as_reference(literal):
    if isinstance(literal, str):
        return pd.Timestamp(literal)
    if isinstance(literal, np.datetime64):
        return pd.Timestamp(literal)
    return literal


@pytest.mark.parametrize(
    ("column", "literal"),
    [
        ("n", "1"),  # text on a number column
        ("n", True),  # a bool is not a number
        ("n", float("nan")),
        ("n", Decimal("NaN")),
        ("f", np.nan),
        ("f", "0.5"),
        ("s", 1),  # numbers on a text column
        ("s", 1.5),
        ("s", dt.date(2024, 1, 1)),
        ("b", 1),
        ("d", 5),
        ("d", "yesterday-ish"),
        ("d", pd.Timestamp("2024-01-01", tz="UTC")),
        ("ts", 5),  # would be 5 ns after the epoch
        ("ts", 1.5),
        ("ts", pd.Timestamp("2024-01-01", tz="UTC")),
        ("dec", 9.99),  # not exactly a decimal: Decimal("9.99") says what is meant
        ("dec", "9.99"),
        ("f32", 0.1),  # not exactly a float32: numpy.float32(0.1) says what is meant
    ],
    ids=_id,
)
@pytest.mark.parametrize("op", ["==", "<", "in"])
def test_literals_of_another_kind_are_refused(dataset, column, literal, op):
    value = [literal] if op == "in" else literal
    with pytest.raises(PredicateError) as info:
        dataset.read(predicates=[[(column, op, value)]])
    message = str(info.value)
    assert repr(column) in message and repr(literal) in message, message
    assert str(dataset.schema.field(column).type) in message, message


def test_null_literals_keep_their_meaning(dataset):
    nulls = [i for i, a in enumerate(INTS) if a is None]
    for null in (None, pd.NA, pd.NaT, np.datetime64("NaT")):
        assert rows(dataset, [[("n", "==", null)]]) == nulls
        assert rows(dataset, [[("n", "!=", null)]]) == sorted(set(range(len(INTS))) - set(nulls))


def test_files_are_never_pruned_by_a_truncated_literal(dataset):
    """Partition, index and statistics pruning keep every file holding a matching row."""
    for column in ("p", "k", "n"):
        for op, literal in (("<", 1.5), (">", 1.5), (">=", -0.5), ("<=", 2**63), ("!=", 1.5)):
            kept = {f.path for f in dataset.files([[(column, op, literal)]])}
            for f in dataset.files():
                data = pd.read_parquet(dataset.storage.full(f.path))
                if column == "p":  # a partition column is not in the file
                    continue
                hits = [
                    v for v in data[column].dropna() if COMPARE[op](Fraction(int(v)), _key(literal))
                ]
                assert not hits or f.path in kept, (column, op, literal, f.path)


@pytest.mark.parametrize("column", ["p", "k", "n"])
@pytest.mark.parametrize(
    ("op", "literal"),
    [("==", 1.5), ("!=", 1.5), ("<", 1.5), (">=", 1.5), ("in", [1.5, 2.5]), ("not in", [1.5])],
)
def test_delete_removes_exactly_the_matching_rows(tmp_path, column, op, literal):
    ds = write(str(tmp_path / "ds"))
    after = ds.delete([[(column, op, literal)]])
    doomed = set(reference(INTS, op, literal))
    assert rows(after, None) == sorted(set(range(len(INTS))) - doomed)
    if not doomed:
        assert after.version == ds.version  # nothing matched, nothing committed
    assert rows(after, [[(column, op, literal)]]) == []


ZEROS = [0.0, -0.0, 1.5, None, -0.0, 2.0]


@pytest.mark.parametrize("column", ["p", "k", "n"])
@pytest.mark.parametrize(
    ("op", "literal"),
    [(op, z) for op in ("==", "!=") for z in (0.0, -0.0)]
    + [(op, v) for op in ("in", "not in") for v in ([0.0], [-0.0], [-0.0, 1.5])],
    ids=_id,
)
def test_negative_zero_equals_zero_on_every_path(tmp_path, column, op, literal):
    """-0.0 == 0.0, also for ``in`` (Arrow's set lookup tells them apart, and Arrow's scanner
    skips a row group of zeros, whose statistics are -0.0 to 0.0, for ``in [0.0]``) and for an
    index: in a partition column (``p``), an indexed one (``k``) and a plain one (``n``), read
    as a lookup, as batches through the scanner, and deleted."""
    t = pa.table({c: ZEROS for c in ("p", "k", "n")} | {"i": range(len(ZEROS))})
    url = str(tmp_path / "ds")
    hafen.write_dataset(t.slice(0, 3), url, partition_on=["p"], indices=["k"])
    ds = hafen.write_dataset(t.slice(3), url, mode="append")
    predicates = [[(column, op, literal)]]
    got = ds.read_arrow(columns=["i"], predicates=predicates)
    assert sorted(got["i"].to_pylist()) == reference(ZEROS, op, literal)
    batches = ds.scan_batches(["i"], predicates=predicates)
    assert sorted(i for b in batches for i in b["i"].to_pylist()) == reference(ZEROS, op, literal)
    after = ds.delete([[(column, op, literal)]])
    kept = sorted(after.read_arrow(columns=["i"])["i"].to_pylist())
    assert kept == sorted(set(range(len(ZEROS))) - set(reference(ZEROS, op, literal)))


@pytest.mark.parametrize("zeros", [[0.0], [-0.0], [0.0, None], [-0.0, None]], ids=_id)
def test_a_file_of_zeros_is_not_skipped_by_in_zero(tmp_path, zeros):
    """Parquet's statistics of a row group holding only zeros are -0.0 to 0.0, and Arrow's
    scanner then skipped the group for ``in [0.0]`` (and for ``in [-0.0]`` on -0.0 values)."""
    url = str(tmp_path / "ds")
    hafen.write_dataset(pa.table({"x": pa.array(zeros, pa.float64())}), url)
    ds = hafen.write_dataset(pa.table({"x": [1.0, 2.0]}), url, mode="append")
    for value in (0.0, -0.0):
        predicates = [[("x", "in", [value])]]
        assert sum(b.num_rows for b in ds.scan_batches(predicates=predicates)) == 1, value
        assert ds.read_arrow(predicates=predicates).num_rows == 1, value
