"""Exact coercion of a predicate's literal to the type of its column.

A literal is compared with a column's values exactly, as a number, an instant or a text, never
after a lossy cast: ``("id", "==", 1.5)`` matches no integer and ``("id", "<", 1.5)`` matches
the ids up to 1. :func:`coerce` returns the value of the column's type equal to the literal;
when there is none, an :class:`Inexact` holding the nearest values of the type below and above
it (the caller rewrites the comparison on those); and it raises :class:`PredicateError` for a
literal of another kind (text on a number column, a number on a timestamp column) or of no
clear meaning (NaN; a binary float that is not exactly a value of a decimal or a narrower float
column, where exact comparison would silently miss the number the float was written as).

Dates and timestamps compare as instants, a date being its midnight (as in SQL).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from hafen.errors import PredicateError

__all__ = ["Inexact", "Numeral", "coerce"]


class Numeral(decimal.Decimal):
    """A number as written in text (``--where "price >= 9.99"``), not yet of any binary type.

    Against a float column it stands for the nearest value of the column's width, as the float
    the text would be read as; against integer and decimal columns it is compared exactly.
    """

    __slots__ = ()


@dataclass(frozen=True)
class Inexact:
    """No value of the column's type equals the literal; these are the nearest ones."""

    below: Any  # the largest value of the type below the literal; None when there is none
    above: Any  # the smallest value above it; None when there is none


def _kind_error(column: str, value: Any, t: pa.DataType) -> PredicateError:
    return PredicateError(
        f"predicate on column {column!r}: {value!r} ({type(value).__name__}) cannot be compared "
        f"with the column's {t} values"
    )


def _invalid(column: str, value: Any, t: pa.DataType, why: object) -> PredicateError:
    return PredicateError(f"predicate on column {column!r}: {value!r} is not a valid {t} ({why})")


def coerce(column: str, value: Any, type_: pa.DataType) -> Any:
    """Return ``value`` as a Python scalar of ``type_``, None for a null, or an :class:`Inexact`.

    Raises :class:`PredicateError` naming the column, the value and the type when the value
    cannot be compared with the column's values exactly.
    """
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    t = type_.value_type if pa.types.is_dictionary(type_) else type_
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)  # .item() would give nanoseconds as an int
        if value is pd.NaT:
            return None
    elif isinstance(value, np.generic):
        value = value.item()
    if (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, decimal.Decimal) and value.is_nan()
    ):
        raise PredicateError(
            f"predicate on column {column!r}: {value!r} ({type(value).__name__}) is NaN, which "
            f"equals nothing, not even NaN; use None to select the column's null {t} values"
        )
    if pa.types.is_integer(t):
        return _coerce_integer(column, value, t)
    if pa.types.is_floating(t):
        return _coerce_float(column, value, t)
    if pa.types.is_decimal(t):
        return _coerce_decimal(column, value, t)
    if pa.types.is_boolean(t):
        if not isinstance(value, bool):
            raise _kind_error(column, value, t)
        return value
    if pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t):
        if not isinstance(value, str):
            raise _kind_error(column, value, t)
        return value
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or _is_binary_view(t):
        if not isinstance(value, bytes | bytearray | memoryview):
            raise _kind_error(column, value, t)
        return bytes(value)
    if pa.types.is_date(t):
        return _coerce_date(column, value, t)
    if pa.types.is_timestamp(t):
        return _coerce_timestamp(column, value, t)
    return _coerce_other(column, value, t)


def _is_string_view(t: pa.DataType) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(t))


def _is_binary_view(t: pa.DataType) -> bool:
    check = getattr(pa.types, "is_binary_view", None)
    return bool(check and check(t))


# -- numbers ---------------------------------------------------------------------------------


def _real(value: Any) -> Fraction | float | None:
    """The exact value of a number (a float only for the infinities); None for a non-number."""
    if isinstance(value, bool):
        return None  # a bool is an int to Python, not a number to a predicate
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return value if math.isinf(value) else Fraction(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_infinite() else Fraction(value)
    return None


def _on_grid(q: Fraction | float, lo: int, hi: int, make: Any) -> Any:
    """``q`` as ``make(n)`` for an integer ``n`` in ``[lo, hi]``, or the nearest such values."""
    if isinstance(q, float):  # an infinity: beyond every value of the type
        return Inexact(make(hi), None) if q > 0 else Inexact(None, make(lo))
    if q.denominator == 1 and lo <= q <= hi:
        return make(int(q))
    below, above = math.ceil(q) - 1, math.floor(q) + 1  # the integers next to q
    return Inexact(
        make(min(below, hi)) if below >= lo else None,
        make(max(above, lo)) if above <= hi else None,
    )


def _coerce_integer(column: str, value: Any, t: pa.DataType) -> Any:
    q = _real(value)
    if q is None:
        raise _kind_error(column, value, t)
    bits = t.bit_width
    if pa.types.is_unsigned_integer(t):
        return _on_grid(q, 0, 2**bits - 1, int)
    return _on_grid(q, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, int)


def _coerce_decimal(column: str, value: Any, t: pa.DataType) -> Any:
    q = _real(value)
    if q is None:
        raise _kind_error(column, value, t)
    scale, limit = t.scale, 10**t.precision - 1
    steps = q if isinstance(q, float) else q * Fraction(10) ** scale
    if isinstance(value, float) and not isinstance(steps, float) and steps.denominator != 1:
        raise PredicateError(
            f"predicate on column {column!r}: the float {value!r} is not exactly a {t} "
            f"(it is {decimal.Decimal(value)}); pass decimal.Decimal({str(value)!r}) to compare "
            "with the decimal it was written as"
        )

    def make(n: int) -> decimal.Decimal:
        return decimal.Decimal((int(n < 0), tuple(int(d) for d in str(abs(n))), -scale))

    return _on_grid(steps, -limit, limit, make)


_FLOAT_TYPES: dict[int, type[np.floating[Any]]] = {16: np.float16, 32: np.float32, 64: np.float64}


def _compare(x: float, q: Fraction) -> int:
    """-1, 0 or 1 as the float ``x`` (possibly infinite) is below, equal to or above ``q``."""
    if math.isinf(x):
        return 1 if x > 0 else -1
    fx = Fraction(x)
    return (fx > q) - (fx < q)


def _coerce_float(column: str, value: Any, t: pa.DataType) -> Any:
    kind = _FLOAT_TYPES[t.bit_width]
    if isinstance(value, Numeral):  # text: the float of the column's width it would be read as
        with np.errstate(over="ignore"):
            return float(kind(float(value)))
    q = _real(value)
    if q is None:
        raise _kind_error(column, value, t)
    if isinstance(q, float):
        return q  # an infinity is a value of every float type
    try:
        nearest = float(q)
    except OverflowError:
        nearest = math.inf if q > 0 else -math.inf
    with np.errstate(over="ignore"):
        r = kind(nearest)
    side = _compare(float(r), q)
    if side == 0:
        return float(r)
    if isinstance(value, float):
        raise PredicateError(
            f"predicate on column {column!r}: the float {value!r} is not exactly a {t} value; "
            f"pass numpy.{kind.__name__}({value!r}) to compare with the nearest one"
        )
    up, down = kind(math.inf), kind(-math.inf)
    below, above = (r, np.nextafter(r, up)) if side < 0 else (np.nextafter(r, down), r)
    while _compare(float(above), q) < 0:  # rounding twice can land a step off
        below, above = above, np.nextafter(above, up)
    while _compare(float(below), q) > 0:
        below, above = np.nextafter(below, down), below
    return Inexact(float(below), float(above))


# -- dates and times -------------------------------------------------------------------------


def _timestamp(column: str, value: Any, t: pa.DataType) -> pd.Timestamp:
    if not isinstance(value, str | dt.date | pd.Timestamp):  # a datetime is a date
        raise _kind_error(column, value, t)
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _invalid(column, value, t, exc) from exc
    if stamp is pd.NaT:
        raise _invalid(column, value, t, "not a time")
    return stamp


def _coerce_date(column: str, value: Any, t: pa.DataType) -> Any:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass  # maybe a time of day: compared with the dates' midnights below
    stamp = _timestamp(column, value, t)
    if stamp.tzinfo is not None:
        raise PredicateError(
            f"predicate on column {column!r}: {value!r} is time zone aware, the column's {t} "
            "values are not"
        )
    day = stamp.date()
    if stamp == pd.Timestamp(day):
        return day
    return Inexact(day, day + dt.timedelta(days=1) if day < dt.date.max else None)


_UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _coerce_timestamp(column: str, value: Any, t: pa.DataType) -> Any:
    stamp = _timestamp(column, value, t)
    if (stamp.tzinfo is None) != (t.tz is None):
        raise PredicateError(
            f"predicate on column {column!r}: {value!r} is "
            f"{'naive' if stamp.tzinfo is None else 'time zone aware'}, the column's {t} values "
            f"are {'naive' if t.tz is None else f'in time zone {t.tz}'}"
        )
    # a pandas Timestamp, not a datetime: it keeps nanoseconds
    stamp = stamp if t.tz is None else stamp.tz_convert(t.tz)
    try:
        ns = stamp.as_unit("ns").value
    except (ValueError, OverflowError) as exc:
        raise _invalid(column, value, t, exc) from exc
    step = _UNIT_NS[t.unit]
    if ns % step == 0:
        return stamp

    def make(n: int) -> pd.Timestamp:
        out = pd.Timestamp(n * step, unit="ns", tz="UTC" if t.tz is not None else None)
        return out if t.tz is None else out.tz_convert(t.tz)

    return Inexact(make(ns // step), make(ns // step + 1))


def _coerce_other(column: str, value: Any, t: pa.DataType) -> Any:
    try:
        result = pa.scalar(value, type=t).as_py()
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        raise _invalid(column, value, t, exc) from exc
    if result != value:
        raise PredicateError(
            f"predicate on column {column!r}: {value!r} ({type(value).__name__}) is not exactly "
            f"a {t} value (it would be {result!r})"
        )
    return result
