"""Predicates in disjunctive normal form: validation, Arrow expressions, and file pruning.

A predicate is a list of AND-lists of ``(column, op, value)`` literals; a row matches when any
AND-list matches. The semantics are those of a pandas filter: ``==``, ``<``, ``<=``, ``>``,
``>=`` and ``in`` never match a null, while ``!=`` and ``not in`` do (pandas' ``NaN != x`` is
True), unless None is among the values of ``in`` (it then matches nulls) or ``not in`` (it then
leaves them out). ``("c", "==", None)`` matches nulls, ``("c", "!=", None)`` non-nulls.

Literals compare exactly (see :mod:`hafen.datasets._coerce`): ``("id", "==", 1.5)`` matches no
integer, ``("id", "<", 1.5)`` the ids up to 1, and a literal of another kind is refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hafen.datasets._coerce import Inexact, coerce
from hafen.errors import PredicateError

__all__ = ["OPS", "Literal", "normalize_predicates", "parse_predicates", "to_expression"]

OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
_SET_OPS = ("in", "not in")


@dataclass(frozen=True)
class Literal:
    """One ``(column, op, value)`` term, its value coerced to the column's type."""

    column: str
    op: str
    value: Any  # a Python scalar, or a tuple of them for set ops; None means null

    def matches(self, actual: Any) -> bool:
        """Evaluate the literal on one (partition) value with pandas semantics."""
        if self.op == "in":
            return any(_equal(actual, v) for v in self.value)
        if self.op == "not in":  # a null is in the values when None is among them
            return not any(_equal(actual, v) for v in self.value)
        if self.value is None:
            return (actual is None) == (self.op == "==")
        if actual is None:
            return self.op == "!="
        if self.op == "==":
            return _equal(actual, self.value)
        if self.op == "!=":
            return not _equal(actual, self.value)
        a, b = _comparable(actual), _comparable(self.value)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[self.op]


def _comparable(value: Any) -> Any:
    if isinstance(value, dt.datetime | pd.Timestamp):
        return pd.Timestamp(value)
    return value


def _equal(actual: Any, value: Any) -> bool:
    if actual is None or value is None:
        return actual is None and value is None
    return bool(_comparable(actual) == _comparable(value))


def _value_type(type_: pa.DataType) -> pa.DataType:
    return type_.value_type if pa.types.is_dictionary(type_) else type_


def _literal(column: str, op: str, value: Any, type_: pa.DataType) -> Literal:
    """The literal ``(column, op, value)`` on exact values of the column's type.

    A value no value of the type equals (1.5 on an integer column, 300 on int8) is rewritten on
    its neighbours: ``==`` becomes ``in ()`` (nothing), ``!=`` ``not in ()`` (everything, nulls
    too), ``< 1.5`` and ``<= 1.5`` become ``<= 1``, ``> 1.5`` and ``>= 1.5`` become ``>= 2``;
    set members that no value equals are dropped. A zero of a float column is the set of both
    zeros (``== 0.0`` becomes ``in (0.0, -0.0)``). Every path (Arrow, partition values,
    statistics, indices) then sees exact values only, and they all agree.
    """
    if op in _SET_OPS:
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            raise PredicateError(
                f"predicate on column {column!r}: {op!r} needs a list of values, got {value!r}"
            )
        members = (coerce(column, v, type_) for v in value)
        exact = tuple(v for v in members if not isinstance(v, Inexact))
        return Literal(column, op, _both_zeros(exact, type_))
    coerced = coerce(column, value, type_)
    if coerced is None and op not in ("==", "!="):
        raise PredicateError(f"predicate on column {column!r}: {op!r} cannot compare with null")
    if op in ("==", "!=") and _float_zero(coerced, type_):  # as a set: see _both_zeros
        return Literal(column, "in" if op == "==" else "not in", (0.0, -0.0))
    if not isinstance(coerced, Inexact):
        return Literal(column, op, coerced)
    if op == "==":
        return Literal(column, "in", ())
    if op == "!=":
        return Literal(column, "not in", ())
    if op in ("<", "<="):
        bound = coerced.below
        return Literal(column, "<=", bound) if bound is not None else Literal(column, "in", ())
    bound = coerced.above
    return Literal(column, ">=", bound) if bound is not None else Literal(column, "in", ())


def _both_zeros(values: tuple[Any, ...], type_: pa.DataType) -> tuple[Any, ...]:
    """``values`` with -0.0 added beside 0.0 and 0.0 beside -0.0 on a float column.

    The two zeros are equal, but Arrow's set lookup (``is_in``, which filters ``in`` and reads
    an index) tells them apart; a set holding both matches either.
    """
    if not any(_float_zero(v, type_) for v in values):
        return values
    return (*(v for v in values if not _float_zero(v, type_)), 0.0, -0.0)


def _float_zero(value: Any, type_: pa.DataType) -> bool:
    return isinstance(value, float) and value == 0 and pa.types.is_floating(_value_type(type_))


def normalize_predicates(
    predicates: Sequence[Sequence[Sequence[Any]]] | None, schema: pa.Schema
) -> list[list[Literal]] | None:
    """Validate ``predicates`` against ``schema`` and coerce their values; None means no filter.

    Raises :class:`PredicateError` naming the column, operator or value at fault.
    """
    if predicates is None:
        return None
    if isinstance(predicates, tuple) or not isinstance(predicates, Sequence):
        raise PredicateError(
            "predicates must be a list of AND-lists of (column, op, value), e.g. "
            "[[('date', '>=', d0), ('store_id', 'in', [1, 2])]]"
        )
    result: list[list[Literal]] = []
    for conjunction in predicates:
        if isinstance(conjunction, tuple) or not isinstance(conjunction, Sequence):
            raise PredicateError(
                f"predicates must be a list of AND-lists of (column, op, value); the term "
                f"{conjunction!r} stands where an AND-list belongs (wrap it: [[...]])"
            )
        if not conjunction:
            raise PredicateError("an AND-list of predicates is empty")
        literals = []
        for term in conjunction:
            if not isinstance(term, Sequence) or isinstance(term, str) or len(term) != 3:
                raise PredicateError(f"a predicate must be (column, op, value), got {term!r}")
            column, op, value = term
            if op not in OPS:
                raise PredicateError(
                    f"predicate on column {column!r}: unknown operator {op!r}; "
                    f"use one of {', '.join(OPS)}"
                )
            index = schema.get_field_index(column) if isinstance(column, str) else -1
            if index < 0:
                raise PredicateError(
                    f"predicate on unknown column {column!r}; the dataset has "
                    + ", ".join(schema.names)
                )
            literals.append(_literal(column, op, value, schema.field(index).type))
        result.append(literals)
    if not result:
        raise PredicateError("predicates are an empty list; pass None for no filter")
    return result


def _literal_expression(lit: Literal, type_: pa.DataType) -> pc.Expression:
    field = pc.field(lit.column)
    t = _value_type(type_)
    if lit.op in _SET_OPS:
        values = [v for v in lit.value if v is not None]
        has_null = len(values) != len(lit.value)
        member = field.isin(pa.array(values, type=t)) if values else pc.scalar(False)
        if has_null:
            member = member | field.is_null()
        if lit.op == "in":
            return member
        return ~member | field.is_null() if not has_null else ~member
    if lit.value is None:
        return field.is_null() if lit.op == "==" else field.is_valid()
    scalar = pa.scalar(lit.value, type=t)
    expr = {
        "==": field == scalar,
        "!=": field != scalar,
        "<": field < scalar,
        "<=": field <= scalar,
        ">": field > scalar,
        ">=": field >= scalar,
    }[lit.op]
    if lit.op == "!=":
        expr = expr | field.is_null()
    return expr


def to_expression(predicates: list[list[Literal]], schema: pa.Schema) -> pc.Expression:
    """Return the Arrow expression of normalized ``predicates``.

    A comparison with a null yields null, which a filter drops like False; since DNF has no
    negation outside the literals, that is exactly pandas' semantics.
    """
    disjunction = None
    for conjunction in predicates:
        expr = None
        for lit in conjunction:
            term = _literal_expression(lit, schema.field(lit.column).type)
            expr = term if expr is None else expr & term
        disjunction = expr if disjunction is None else disjunction | expr
    assert disjunction is not None
    return disjunction


def could_match(
    conjunction: list[Literal], partition: dict[str, Any], stats: dict[str, Any]
) -> bool:
    """Whether a file with these partition values and column statistics may hold matching rows.

    ``stats`` maps a column to ``(min, max, null_count)``; absent columns are unknown.
    """
    for lit in conjunction:
        if lit.column in partition:
            if not lit.matches(partition[lit.column]):
                return False
            continue
        stat = stats.get(lit.column)
        if stat is None:
            continue
        lo, hi, nulls = stat
        if lo is None or hi is None:
            continue
        if lit.value is None or lit.op in ("!=", "not in"):
            continue
        try:
            lo, hi = _comparable(lo), _comparable(hi)
            if lit.op == "in":
                if not any(
                    v is not None and lo <= _comparable(v) <= hi for v in lit.value
                ) and not (nulls and any(v is None for v in lit.value)):
                    return False
                continue
            v = _comparable(lit.value)
            if (
                (lit.op == "==" and not lo <= v <= hi)
                or (lit.op == "<" and not lo < v)
                or (lit.op == "<=" and not lo <= v)
                or (lit.op == ">" and not hi > v)
                or (lit.op == ">=" and not hi >= v)
            ):
                return False
        except TypeError:
            continue
    return True


def parse_predicates(text: str) -> list[list[tuple[str, str, Any]]]:
    """Parse a condition in SQL syntax into DNF predicates (the ``--where`` of the CLI).

    ``"store_id in (1, 2) and date >= 2024-01-01 or name = 'it''s'"`` gives
    ``[[("store_id", "in", [1, 2]), ("date", ">=", "2024-01-01")], [("name", "==", "it's")]]``.
    Comparisons are ``= == != <> < <= > >=``, ``[NOT] IN (...)`` (or ``[...]``), ``IS [NOT]
    NULL`` (``== None`` / ``!= None``) and ``BETWEEN``, joined by ``AND``, ``OR`` and
    parentheses (AND is distributed over OR, up to a bound). Values are numbers, ``'text'``
    (``''`` is a quote inside it; ``"text"`` on the value side is text too), ``true``, ``false``,
    ``null``, and dates as ``2024-01-01`` or ``'2024-01-01'``; times must be quoted. Column
    names may be quoted as ``"my column"``, which a column named like an SQL word
    (``"select"``) needs. A number with a fraction or an exponent is a :class:`Numeral`: the
    nearest value of a float column, exact against integer and decimal columns.

    Raises :class:`PredicateError` naming the part it cannot map (functions, arithmetic,
    comparisons of two columns, ``LIKE``, ``NOT`` of a condition, incomplete text).
    """
    from hafen.datasets._where import parse_predicates as parse  # sqlglot: only when used

    return parse(text)
