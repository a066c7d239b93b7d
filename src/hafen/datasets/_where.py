"""Reading a ``--where`` condition (SQL syntax) into DNF predicates.

The text is parsed by sqlglot, a maintained SQL parser, as one SQL condition; its tree is then
mapped onto predicates in disjunctive normal form, AND being distributed over OR. Only what
maps exactly is accepted: comparisons of a column with a value (``= == != <> < <= > >=``),
``[NOT] IN (...)``, ``IS [NOT] NULL``, ``BETWEEN``, ``AND``, ``OR`` and parentheses. Anything
else (functions, arithmetic, comparisons of two columns, ``LIKE``, ``NOT`` of a condition, an
incomplete text) is a :class:`PredicateError` naming the part at fault.
"""

from __future__ import annotations

import re
from typing import Any, TypeGuard, cast

import sqlglot
import sqlglot.expressions as exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Tokenizer

from hafen.datasets._coerce import Numeral
from hafen.errors import PredicateError

__all__ = ["MAX_AND_LISTS", "parse_predicates"]

MAX_AND_LISTS = 1024  # distributing AND over OR may multiply AND-lists up to this many
_SHOWN = 60  # characters of the text or of a part of it shown in an error

_COMPARISONS: dict[type[exp.Expression], str] = {
    exp.EQ: "==",
    exp.NEQ: "!=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_MIRRORED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}")
_TIME_TYPES = {
    exp.DataType.Type.DATE,
    exp.DataType.Type.DATETIME,
    exp.DataType.Type.TIMESTAMP,
    exp.DataType.Type.TIMESTAMPTZ,
}

Term = tuple[str, str, Any]


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "...")


def _part(node: exp.Expression) -> str:
    try:
        return _shown(node.sql())
    except RecursionError:
        return f"a {type(node).__name__}"


def parse_predicates(text: str) -> list[list[Term]]:
    """Parse a SQL condition into DNF predicates (see :func:`.parse_predicates` in _predicates)."""
    if not isinstance(text, str) or not text.strip():
        raise PredicateError(f'the condition is empty ({text!r}); write e.g. "store_id = 1"')
    deep = f"cannot read {_shown(text)}: parentheses nested too deeply"
    try:
        tree = cast(exp.Expression, sqlglot.parse_one(text, into=exp.Condition))
    except ParseError as exc:
        raise PredicateError(_parse_error(text, exc)) from None
    except TokenError:
        raise PredicateError(
            f"cannot read {_shown(text)}: a quote is not closed (inside '...' write a quote as '')"
        ) from None
    except RecursionError:
        raise PredicateError(deep) from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        # the parser's own failure on text far from a condition
        raise PredicateError(f"cannot read {_shown(text)}: {exc}; {_EXAMPLE}") from None
    try:
        return [list(c) for c in _dnf(tree, text)]
    except RecursionError:
        raise PredicateError(deep) from None


def _parse_error(text: str, exc: ParseError) -> str:
    first = exc.errors[0] if exc.errors else {}
    description = str(first.get("description", exc))
    near = str(first.get("highlight", "")).strip()
    if description.startswith("Required keyword"):
        what = f"nothing follows {near!r}" if near else "it is incomplete"
    elif description.startswith("Expecting )"):
        what = f"a '(' is not closed before {near!r}"
    elif near:
        col = first.get("col")  # where the token ends, 1-based
        at = f" at character {col - len(near) + 1}" if isinstance(col, int) else ""
        what = f"unexpected {near!r}{at}"
        if near.upper() in Tokenizer.KEYWORDS:
            what += f' (quote a column named like an SQL word: "{near}")'
    else:
        what = description
    return f"cannot read {_shown(text)}: {what}; {_EXAMPLE}"


_EXAMPLE = (
    "write e.g. \"store_id in (1, 2) and date >= 2024-01-01 and ts < '2024-01-02 10:00' and "
    "name = 'it''s'\""
)


def _unwrap(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _operands(node: exp.Expression, kind: type[exp.Expression]) -> list[exp.Expression]:
    """The operands of a chain of ``kind`` (AND or OR), left to right, without recursion."""
    out, stack = [], [node]
    while stack:
        current = _unwrap(stack.pop())
        if isinstance(current, kind):
            stack.append(current.expression)
            stack.append(current.this)
        else:
            out.append(current)
    return out


def _dnf(node: exp.Expression, text: str) -> list[tuple[Term, ...]]:
    node = _unwrap(node)
    if isinstance(node, exp.Or):
        return [c for operand in _operands(node, exp.Or) for c in _dnf(operand, text)]
    if isinstance(node, exp.And):
        result: list[tuple[Term, ...]] = [()]
        for operand in _operands(node, exp.And):
            alternatives = _dnf(operand, text)
            size = len(result) * len(alternatives)
            if size > max(MAX_AND_LISTS, len(result) + len(alternatives)):
                raise PredicateError(
                    f"{_shown(text)} has more than {MAX_AND_LISTS} alternatives once AND is "
                    "distributed over OR; write a set with IN (...) instead"
                )
            result = [a + b for a in result for b in alternatives]
        return result
    if isinstance(node, exp.Between):
        column = _column(node.this, node)
        return [
            ((column, ">=", _value(node.args["low"])), (column, "<=", _value(node.args["high"])))
        ]
    return [(_term(node),)]


def _term(node: exp.Expression) -> Term:
    op = _COMPARISONS.get(type(node))
    if op is not None:
        return _comparison(node, op)
    if isinstance(node, exp.In):
        return _membership(node, "in")
    if isinstance(node, exp.Is):
        return _is_null(node, "==")
    if isinstance(node, exp.Not):
        inner = _unwrap(node.this)
        if isinstance(inner, exp.In):
            return _membership(inner, "not in")
        if isinstance(inner, exp.Is):
            return _is_null(inner, "!=")
        raise PredicateError(
            f"cannot use NOT before {_part(inner)}; write the negation with != or NOT IN"
        )
    if isinstance(node, exp.Like | exp.ILike):
        raise PredicateError(f"{_part(node)}: LIKE is not supported; compare with = or IN")
    raise PredicateError(
        f"cannot read {_part(node)} as a comparison of a column with a value (ops: = == != <> "
        "< <= > >= IN, NOT IN, IS NULL, IS NOT NULL)"
    )


def _is_column(node: exp.Expression) -> TypeGuard[exp.Column]:
    return isinstance(node, exp.Column) and all(isinstance(p, exp.Identifier) for p in node.parts)


def _column(node: exp.Expression, whole: exp.Expression) -> str:
    column = _unwrap(node)
    if not _is_column(column):
        raise PredicateError(f"{_part(whole)}: {_part(column)} is not a column name")
    return ".".join(p.name for p in column.parts)


def _text_in_double_quotes(node: exp.Expression) -> TypeGuard[exp.Column]:
    """``"abc"`` where a value belongs: text, as the previous parser read it."""
    return _is_column(node) and len(node.parts) == 1 and node.parts[0].args.get("quoted") is True


def _comparison(node: exp.Expression, op: str) -> Term:
    left, right = _unwrap(node.this), _unwrap(node.expression)
    if _is_column(left) and (not _is_column(right) or _text_in_double_quotes(right)):
        return (_column(left, node), op, _value(right))
    if _is_column(right) and not _is_column(left):
        return (_column(right, node), _MIRRORED[op], _value(left))
    if _is_column(left) and _is_column(right):
        if _column(right, node).lower() == "none":
            return (_column(left, node), op, None)
        raise PredicateError(
            f"{_part(node)} compares two columns, which predicates cannot; if "
            f"{_part(right)} is text, quote it: '{right.sql()}'"
        )
    raise PredicateError(
        f"{_part(node)} does not compare a column with a value (functions and arithmetic are "
        "not supported)"
    )


def _membership(node: exp.In, op: str) -> Term:
    for unsupported in ("query", "unnest", "field"):
        if node.args.get(unsupported) is not None:
            raise PredicateError(f"{_part(node)}: {op.upper()} takes a list of values only")
    return (_column(node.this, node), op, [_value(v) for v in node.expressions])


def _is_null(node: exp.Is, op: str) -> Term:
    if not isinstance(node.expression, exp.Null):
        raise PredicateError(f"{_part(node)}: only IS NULL and IS NOT NULL are supported")
    return (_column(node.this, node), op, None)


def _value(node: exp.Expression) -> Any:
    node = _unwrap(node)
    if isinstance(node, exp.Literal):
        return node.this if node.is_string else _number(node.this)
    if isinstance(node, exp.Neg):
        inner = _unwrap(node.this)
        if isinstance(inner, exp.Literal) and not inner.is_string:
            return _number(inner.this, negative=True)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if _text_in_double_quotes(node):
        return node.parts[0].name
    if isinstance(node, exp.Column) and _column(node, node).lower() == "none":
        return None
    if isinstance(node, exp.Sub):
        date = _unquoted_date(node)
        if date is not None:
            return date
    if isinstance(node, exp.Cast) and node.to.this in _TIME_TYPES:
        inner = _unwrap(node.this)
        if isinstance(inner, exp.Literal) and inner.is_string:
            return inner.this  # DATE '2024-01-01', TIMESTAMP '2024-01-01 10:00'
    if isinstance(node, exp.Column):
        raise PredicateError(
            f"{_part(node)} is a column where a value belongs; quote text: '{node.sql()}'"
        )
    raise PredicateError(
        f"{_part(node)} is not a value (functions and arithmetic are not supported): write "
        "numbers, 'text', true, false, null, or dates as 2024-01-01 or '2024-01-01 10:00'"
    )


def _number(text: str, *, negative: bool = False) -> int | Numeral:
    signed = "-" + text if negative else text
    return int(signed) if text.isdigit() else Numeral(signed)


def _unquoted_date(node: exp.Sub) -> str | None:
    """``2024-01-01`` written without quotes, which SQL reads as two subtractions."""
    inner = node.this
    if not isinstance(inner, exp.Sub):
        return None
    parts = [inner.this, inner.expression, node.expression]
    if not all(isinstance(p, exp.Literal) and not p.is_string for p in parts):
        return None
    text = "-".join(p.this for p in parts)
    starts = [p.meta.get("start") for p in parts]
    ends = [p.meta.get("end") for p in parts]
    known = None not in starts and None not in ends
    if known and any(starts[i + 1] != ends[i] + 2 for i in range(2)):
        return None  # 2024 - 01 - 01 with spaces is arithmetic
    return text if _DATE.fullmatch(text) else None
