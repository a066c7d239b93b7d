"""A database password never leaks, whatever its characters and however the URL spells it.

Property: for generated passwords with awkward characters (URL delimiters, ``%``-sequences,
quotes, backslashes, spaces, non-ASCII) set on a real PostgreSQL role, and URLs spelling them in
every way a user may (percent-encoded in either case, only in part, as a ``?password=``
parameter, a libpq conninfo string, a URL the parser refuses), the password appears in none of:
the exception of a failed connect or extract, the log records of every logger at every level
(Dask's workers run in this process), the commit log on storage, and the API's answers.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

import hafen
from hafen.errors import SQLError
from hafen.serve import create_app

ROLE = "hafen_secret_role"
# Both ends of every password are markers that appear nowhere else: finding one in an output
# means (part of) the password leaked, whatever spelling it was in.
HEAD, TAIL = "Zx9", "Q7w"
AWKWARD = [
    *" :@/?#[]%+&=;'\"\\,.~!$*()<>{}|^`",
    "%3a", "%3A", "%25", "%2B", "%20", "%ZZ", "%", "+", "\\'", "''", "é", "€", "ß", "😀",
]  # fmt: skip

bodies = st.lists(
    st.sampled_from(AWKWARD) | st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    min_size=1,
    max_size=10,
).map("".join)


def _quote_lower(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), urllib.parse.quote(text, safe=""))


def _partial(text: str, raw: list[bool]) -> str:
    """Percent-encode what a URL's userinfo needs encoded, and of the rest what ``raw`` says."""
    out = []
    for i, c in enumerate(text):
        must = c in "@:/?#[]%& " or not c.isascii()  # also valid in a query
        keep = raw[i % len(raw)] if raw else False
        out.append(urllib.parse.quote(c, safe="") if must or not keep else c)
    return "".join(out)


def _conninfo_value(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _spellings(password: str, used: str) -> set[str]:
    quoted = urllib.parse.quote(password, safe="")
    return {
        password,
        quoted,
        _quote_lower(password),
        urllib.parse.quote_plus(password),
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=False)[1:-1],
        repr(password)[1:-1],
        used,
        HEAD,
        TAIL,
    }


class _Records(logging.Handler):
    """Every record of every logger, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot be formatted must not pass unseen
            self.lines.append(f"unformattable record {record.msg!r} {record.args!r}: {exc}")


@pytest.fixture
def all_logs() -> Iterator[_Records]:
    handler = _Records()
    loggers = [logging.getLogger(), logging.getLogger("distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


@pytest.fixture
def secret_db(postgres, pg_db) -> Iterator[str]:
    """A database with table ``t`` (ids 1 to 6) that role ROLE may read."""
    admin = postgres.url(pg_db)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 6) AS i")
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
        conn.execute(sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(ROLE)))
    yield admin


def _set_password(admin: str, password: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(password))
        )


def _stored_text(root: Path) -> str:
    """Every file hafen wrote under ``root`` but the data (log, checkpoints, plateau's view)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".parquet")
    return "\n".join(p.read_text(errors="replace") for p in files)


def test_a_password_appears_in_no_message_log_commit_or_answer(
    postgres, pg_db, secret_db, tmp_path, client, all_logs
):
    host, port = "127.0.0.1", postgres.port
    counter = iter(range(10_000))

    @given(body=bodies, raw=st.lists(st.booleans(), max_size=8), spelling=st.integers(0, 3))
    @example(body="p@ss@word", raw=[], spelling=0)  # libpq would split at the first @
    @example(body="%3a%ZZ+ '\\", raw=[True], spelling=3)
    @example(body="€ %3A:é/", raw=[True, False], spelling=2)
    @example(body="\\'", raw=[True], spelling=2)  # quotes left unencoded
    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(body: str, raw: list[bool], spelling: int) -> None:
        password = HEAD + body + TAIL
        _set_password(secret_db, password)
        quoted = urllib.parse.quote(password, safe="")
        spelled = [quoted, _quote_lower(password), _partial(password, raw), quoted][spelling]
        base = f"{host}:{port}/{pg_db}"
        if spelling == 3:  # a libpq query parameter, which libpq decodes (but not +)
            url = f"postgresql://{ROLE}@{base}?sslmode=disable&password={spelled}"
        else:
            url = f"postgresql://{ROLE}:{spelled}@{base}"
        n = next(counter)
        root = tmp_path / f"example-{n}"
        all_logs.lines.clear()
        outputs: list[str] = []

        # a successful extract: the commit log and the API
        ds = hafen.extract(url, "t", str(root / "t"), split_on="id", chunks=2, client=client)
        assert ds.num_rows == 6  # the URL reached the server with the right password
        outputs.append(_stored_text(root))
        with TestClient(create_app(str(root), refresh=0)) as api:
            for path in ("/datasets", "/datasets/t", "/healthz"):
                answer = api.get(path)
                assert answer.status_code == 200, answer.text
                outputs.append(answer.text)
            assert str(root) not in "".join(outputs[1:])  # nor where the datasets are

        # an extract whose ranges fail on the workers
        failing = "SELECT id + 0 * (1 / (id - 5)) AS id FROM t"
        with pytest.raises(SQLError, match="division by zero") as info:
            hafen.extract(
                url, failing, str(root / "f"), split_on="id", chunks=2, bounds=(1, 6),
                retries=0, client=client,
            )  # fmt: skip
        outputs.append(f"{info.value!s} {info.value!r}")

        # connections that fail: a wrong password, spellings libpq or the parser refuse
        wrong = url.replace(spelled, spelled + "x", 1)
        failures = [
            wrong,
            f"postgresql://{ROLE}@{base}?PASSWORD={spelled}",
            f"postgresql://{ROLE}:{spelled}@[::1:{port}/{pg_db}",  # an unclosed bracket
            f"host={host} port={port} password={_conninfo_value(password)} dbname={pg_db}",
        ]
        for bad in failures:
            with pytest.raises(SQLError) as info:
                hafen.extract(bad, "t", str(root / "g"), client=client)
            outputs.append(f"{info.value!s} {info.value!r}")
        # the workers' reports of the failed ranges are among the records, and debug ones too
        assert any("division by zero" in line for line in all_logs.lines)
        assert any(" DEBUG " in line for line in all_logs.lines)
        outputs.extend(all_logs.lines)

        text = "\n".join(outputs)
        for secret in _spellings(password, spelled):
            assert secret not in text, (secret, password, url)

    check()
