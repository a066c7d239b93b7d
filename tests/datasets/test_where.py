"""``--where`` text is parsed, not split (issue 13, item 6): quotes, parentheses, SQL's forms,
and hostile input either map exactly onto DNF predicates or raise a PredicateError naming the
part at fault."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hafen.datasets._coerce import Numeral
from hafen.datasets._predicates import parse_predicates
from hafen.errors import PredicateError


def quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # what the previous parser accepted
        (
            "store_id in (1, 2) and date >= 2024-01-02",
            [[("store_id", "in", [1, 2]), ("date", ">=", "2024-01-02")]],
        ),
        (
            "a >= 3 and b in (1, 2) or c == 'x'",
            [[("a", ">=", 3), ("b", "in", [1, 2])], [("c", "==", "x")]],
        ),
        ("a = 1", [[("a", "==", 1)]]),
        ("a not in [1, 2]", [[("a", "not in", [1, 2])]]),
        ("a == null", [[("a", "==", None)]]),
        ("a != none", [[("a", "!=", None)]]),
        ("flag == true OR flag = FALSE", [[("flag", "==", True)], [("flag", "==", False)]]),
        ('s == "double"', [[("s", "==", "double")]]),
        ("a.b = 1", [[("a.b", "==", 1)]]),
        ("x = 2.5", [[("x", "==", Numeral("2.5"))]]),
        ("x = -7", [[("x", "==", -7)]]),
        ("x < -1.5e3", [[("x", "<", Numeral("-1.5e3"))]]),
        # quotes are not separators
        ("name == 'a or name == b'", [[("name", "==", "a or name == b")]]),
        ("name in ('x, y')", [[("name", "in", ["x, y"])]]),
        ("name in ('x', 'y, z', ')')", [[("name", "in", ["x", "y, z", ")"])]]),
        ("name = 'it''s'", [[("name", "==", "it's")]]),
        ("name = ''", [[("name", "==", "")]]),
        ("name = ' and '", [[("name", "==", " and ")]]),
        ("name = 'München ✓ 東京'", [[("name", "==", "München ✓ 東京")]]),
        ("städte = 'Zürich'", [[("städte", "==", "Zürich")]]),
        # SQL's forms
        ("a <> 1", [[("a", "!=", 1)]]),
        ("a IS NULL", [[("a", "==", None)]]),
        ("a is not null and b IS NULL", [[("a", "!=", None), ("b", "==", None)]]),
        ("a NOT IN ('x', null)", [[("a", "not in", ["x", None])]]),
        ("NOT a IN (1)", [[("a", "not in", [1])]]),
        ("a in ()", [[("a", "in", [])]]),
        ("1 < a", [[("a", ">", 1)]]),
        ("'x' = name", [[("name", "==", "x")]]),
        ("a between 1 and 3", [[("a", ">=", 1), ("a", "<=", 3)]]),
        ('"my column" = 1', [[("my column", "==", 1)]]),
        ('"select" = 1 and "a""b" = 2', [[("select", "==", 1), ('a"b', "==", 2)]]),
        ("d = '2024-01-01'", [[("d", "==", "2024-01-01")]]),
        ("d = DATE '2024-01-01'", [[("d", "==", "2024-01-01")]]),
        ("ts < TIMESTAMP '2024-01-01 10:00'", [[("ts", "<", "2024-01-01 10:00")]]),
        (
            "ts < '2024-01-01 10:00:00.000001+01:00'",
            [[("ts", "<", "2024-01-01 10:00:00.000001+01:00")]],
        ),
        # parentheses and AND over OR
        ("((a = 1))", [[("a", "==", 1)]]),
        (
            "a = 1 and (b = 2 or c = 3)",
            [[("a", "==", 1), ("b", "==", 2)], [("a", "==", 1), ("c", "==", 3)]],
        ),
        (
            "(a = 1 or a = 2) and (b = 1 or (b = 2 and c = 3))",
            [
                [("a", "==", 1), ("b", "==", 1)],
                [("a", "==", 1), ("b", "==", 2), ("c", "==", 3)],
                [("a", "==", 2), ("b", "==", 1)],
                [("a", "==", 2), ("b", "==", 2), ("c", "==", 3)],
            ],
        ),
        ("a = 1 or b = 2 and c = 3", [[("a", "==", 1)], [("b", "==", 2), ("c", "==", 3)]]),
        ("a = 1 -- a comment", [[("a", "==", 1)]]),
    ],
)
def test_conditions_map_onto_dnf(text, expected):
    got = parse_predicates(text)
    assert got == expected
    assert [[type(v) for *_, v in c] for c in got] == [[type(v) for *_, v in c] for c in expected]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("name ==", "'=='"),  # incomplete: once read as name == "="
        ("a = 1 and", "'and'"),
        ("(a = 1", "'('"),
        ("a = 1)", "')'"),
        ("a = f(1)", "F(1)"),
        ("upper(name) = 'X'", "UPPER(name)"),
        ("a + 1 = 2", "a + 1"),
        ("a = b + 1", "b + 1"),
        ("a = b", "compares two columns"),
        ("a < b", "'b'"),
        ("name like 'x%'", "LIKE"),
        ("not a = 1", "NOT"),
        ("not (a = 1 or b = 2)", "NOT"),
        ("a in (select 1)", "IN"),
        ("a is true", "IS NULL"),
        ("a", "'a'"),
        ("1 = 1", "'1 = 1'"),
        ("a = 'x", "quote is not closed"),
        ("a = 'it\\'s'", "quote is not closed"),  # backslash does not escape in SQL
        ("a = 1; drop table t", "'drop'"),
        ("a = 1 b", "'b'"),
        ("select = 1", '"select"'),
        ("ts >= 2024-01-01T10:00", "'T10'"),
        ("a = 2024 - 01 - 01", "2024 - 01 - 01"),
        ("a ≠ 1", "'≠'"),
        ('^`(""e AS */>:CAST(2024-01-01é\n?', "cannot read"),  # the parser's own ValueError
        ("", "empty"),
        ("   \n\t", "empty"),
    ],
)
def test_what_cannot_be_mapped_is_an_error_naming_it(text, named):
    with pytest.raises(PredicateError) as info:
        parse_predicates(text)
    assert named in str(info.value), str(info.value)


def test_distribution_is_bounded():
    ok = " and ".join(f"(c{i} = 1 or c{i} = 2)" for i in range(10))  # 1024 AND-lists
    assert len(parse_predicates(ok)) == 1024
    with pytest.raises(PredicateError, match="more than 1024 alternatives"):
        parse_predicates(ok + " and (z = 1 or z = 2)")


def test_very_long_input():
    ors = " or ".join(f"a = {i}" for i in range(5000))
    assert parse_predicates(ors) == [[("a", "==", i)] for i in range(5000)]
    ands = " and ".join(f"a{i} = {i}" for i in range(3000))
    assert parse_predicates(ands) == [[(f"a{i}", "==", i) for i in range(3000)]]
    big = "a in (" + ", ".join(quoted(str(i) * 3) for i in range(20000)) + ")"
    assert len(parse_predicates(big)[0][0][2]) == 20000
    assert parse_predicates("s = " + quoted("x' or 'y" * 10000)) == [
        [("s", "==", "x' or 'y" * 10000)]
    ]
    with pytest.raises(PredicateError, match="nested too deeply"):
        parse_predicates("(" * 500 + "a = 1" + ")" * 500)


text_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(value=text_values, values=st.lists(text_values, max_size=5))
def test_any_text_survives_quoting(value, values):
    text = f"name = {quoted(value)} or name not in ({', '.join(map(quoted, values))})"
    assert parse_predicates(text) == [[("name", "==", value)], [("name", "not in", values)]]


TOKENS = [
    *"ab =!<>()[],'\"-.1e_;*+`@$:?{}#%&|^~\\/\n\x00é",
    *(" and ", " or ", " not ", " in ", " is ", " null ", " between ", " like ", " AS "),
    *("2024-01-01", "select", "x.y", "DATE ", "CAST(", "INTERVAL ", "0x1F", "1e400", "--", "/*"),
]


@settings(max_examples=500, deadline=None)
@given(text=st.lists(st.sampled_from(TOKENS), max_size=20).map("".join) | st.text(max_size=30))
def test_hostile_input_is_parsed_or_refused(text):
    """Never an exception but PredicateError, and whatever is accepted is well-formed DNF."""
    try:
        parsed = parse_predicates(text)
    except PredicateError:
        return
    assert parsed and all(parsed)
    for conjunction in parsed:
        for column, op, value in conjunction:
            assert isinstance(column, str) and column
            assert op in ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
            assert isinstance(value, list) == (op in ("in", "not in"))
