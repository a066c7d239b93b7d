"""Masking secrets (hafen._secrets): every spelling of a known secret, and secrets by shape.

Passwords are generated with awkward characters between two markers that appear nowhere else,
so that finding a marker after masking means (part of) the secret leaked.
"""

from __future__ import annotations

import html
import json
import logging
import pickle
import re
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hafen._secrets import RedactingFilter, redact
from hafen.datasets._storage import map_storage_errors
from hafen.errors import SQLError, StorageError
from hafen.sql._url import map_db_errors, parse_url

HEAD, TAIL = "Zx9", "Q7w"
AWKWARD = [
    *" :@/?#[]%+&=;'\"\\,.~!$*()<>{}|^`\t\n",
    "%3a", "%3A", "%25", "%2B", "%20", "%ZZ", "+", "\\'", "''", "é", "€", "ß", "😀", "\u200b",
]  # fmt: skip

passwords = st.lists(
    st.sampled_from(AWKWARD) | st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    min_size=1,
    max_size=12,
).map(lambda parts: HEAD + "".join(parts) + TAIL)


def _hex_case(text: str, lower: bool) -> str:
    return re.sub(r"%[0-9A-Fa-f]{2}", lambda m: m.group(0).lower() if lower else m.group(0), text)


@st.composite
def spelled(draw: st.DrawFn, password: str) -> str:
    """``password`` as some text may spell it."""
    quoted = urllib.parse.quote(password, safe="")
    kind = draw(st.integers(0, 10))
    if kind == 0:
        return password
    if kind == 1:
        return quoted
    if kind == 2:
        return _hex_case(quoted, lower=True)
    if kind == 3:  # only some characters encoded, hex digits in either case
        keep = draw(st.lists(st.booleans(), min_size=len(password), max_size=len(password)))
        lower = draw(st.booleans())
        return "".join(
            c if k else _hex_case(urllib.parse.quote(c, safe=""), lower)
            for c, k in zip(password, keep, strict=True)
        )
    if kind == 4:
        return urllib.parse.quote_plus(password)
    if kind == 5:
        return json.dumps(password)[1:-1]
    if kind == 6:
        return repr(password)[1:-1]
    if kind == 7:  # libpq conninfo
        return password.replace("\\", "\\\\").replace("'", "\\'")
    if kind == 8:  # encoded twice
        return urllib.parse.quote(quoted, safe="")
    if kind == 9:
        return html.escape(password)
    return json.dumps(json.dumps(password))[2:-2]  # JSON inside JSON


@settings(deadline=None)  # the first use of a secret compiles its pattern
@given(data=st.data(), password=passwords)
def test_a_known_secret_is_masked_in_every_spelling(data, password):
    text = data.draw(spelled(password))
    template = data.draw(
        st.sampled_from(
            [
                "{}",
                "failed: invalid token: \"{}\" (at 'x')",
                "postgresql://u:{}@host:5432/db?sslmode=require",
                "connect('{}') -> timeout",
                "a{}b",
            ]
        )
    )
    masked = redact(template.format(text), [password])
    assert HEAD not in masked and TAIL not in masked, (text, masked)


PARAMETER_NAMES = ["password", "PASSWORD", "Password", "pwd", "PWD", "pass", "passwd",
                   "sslpassword", "sig", "AccountKey", "SharedAccessSignature", "sas_token",
                   "client_secret", "secret", "token", "key", "account_key"]  # fmt: skip


@settings(deadline=None)  # the first use of a secret compiles its pattern
@given(data=st.data(), password=passwords)
def test_secrets_of_known_shape_are_masked_without_knowing_them(data, password):
    name = data.draw(st.sampled_from(PARAMETER_NAMES))
    quoted = urllib.parse.quote(password, safe="")
    conninfo = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    text = data.draw(
        st.sampled_from(
            [
                f"postgresql://user:{quoted}@db.example:5432/shop",
                f"postgresql://user@db.example/shop?sslmode=require&{name}={quoted}&x=1",
                f"host=db port=5432 {name}={conninfo} dbname=shop",
                f"host=db {name} = {conninfo}",
                f"DefaultEndpointsProtocol=https;AccountName=acc;{name}={quoted};EndpointSuffix=x",
                f"https://acc.blob.core.windows.net/c/b?sv=2022-11-02&{name}={quoted}&se=2030",
                repr({"account_name": "acc", name: password, "anon": False}),
                json.dumps({"account_name": "acc", name: password}),
                f"AzureBlobFileSystem({name}={password!r}, account_name='acc')",
                f"Authorization: Bearer {HEAD}abcdefgh{TAIL}",
            ]
        )
    )
    masked = redact(text)
    assert HEAD not in masked and TAIL not in masked, (text, masked)
    assert "***" in masked


def test_what_is_not_secret_is_kept():
    text = "postgresql://user@db:5432/shop?sslmode=require: duplicate key value (id)=(5)"
    assert redact(text) == text
    assert redact("http://localhost:8000/datasets/forecasts") == (
        "http://localhost:8000/datasets/forecasts"
    )
    partitioned = "root/ds/table/key=5/token=x/0a1b.parquet: OSError: [Errno 5] I/O error"
    assert redact(partitioned) == partitioned  # Hive partitions named like secrets


@settings(deadline=None)  # the first use of a secret compiles its pattern
@given(password=passwords, name=st.sampled_from(["", "password", "PassWord", "pwd", "pass"]))
def test_database_urls_never_show_their_password(password, name):
    quoted = urllib.parse.quote(password, safe="")
    if name:
        url = f"postgresql://u@db.example:5432/shop?{name}={quoted}&sslmode=require"
    else:
        url = f"postgresql://u:{quoted}@db.example:5432/shop?sslmode=require"
    db = parse_url(url)
    for shown in (db.masked, db.public, repr(db), db.scrub(f"echo {url} {password}")):
        assert HEAD not in shown and TAIL not in shown, shown
    assert db.public.startswith("postgresql://u@db.example:5432/shop")
    assert pickle.loads(pickle.dumps(db)) == db  # tasks still receive it whole
    # a driver error echoing any spelling of the URL is masked
    with pytest.raises(SQLError) as info, map_db_errors(db, "connecting"):
        raise OSError(f'invalid URI: "{urllib.parse.unquote(url)}" ({password!r})')
    assert HEAD not in str(info.value) and TAIL not in str(info.value)
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_the_driver_receives_one_canonical_spelling():
    db = parse_url("postgresql://u:p@ss%3aword@db:5432/shop?options=-c%20x%3Dy")
    url = db.with_application_name("extract")
    assert url.startswith("postgresql://u:p%40ss%3Aword@db:5432/shop?options=-c%20x%3Dy&")
    assert "application_name=hafen-extract" in url
    assert db.password == "p@ss:word"


def test_malformed_urls_are_refused_without_their_password():
    for url in (
        f"postgresql://u:{HEAD}secret{TAIL}@[::1:5432/db",
        f"postgresql://u:{HEAD}\\'x\"y{TAIL}@[::1:5432/db",  # quotes, unencoded
        f"host=db password='{HEAD}x y{TAIL}' dbname=shop",
        f"mysql://u:{HEAD}pw{TAIL}@db/shop",
    ):
        with pytest.raises(SQLError) as info:
            parse_url(url)
        assert HEAD not in str(info.value) and TAIL not in str(info.value), str(info.value)


def test_storage_errors_mask_credentials_and_drop_the_raw_cause():
    secret = f"{HEAD}c2lnbmF0dXJl{TAIL}"
    with pytest.raises(StorageError) as info, map_storage_errors("container/ds/_hafen/log/1"):
        raise OSError(f"GET https://acc.blob.core.windows.net/c/x?sv=1&sig={secret} failed")
    assert secret not in str(info.value) and "sig=***" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(StorageError) as info, map_storage_errors("container/ds"):
        raise ValueError("plain failure")
    assert isinstance(info.value.__cause__, ValueError)  # kept when there is nothing to hide


def test_the_redacting_filter_masks_messages_arguments_and_tracebacks():
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("hafen.tests.secrets")
    logger.addFilter(RedactingFilter())
    logger.addHandler(Collect())
    logger.propagate = False
    try:
        try:
            raise RuntimeError(f"password={HEAD}a{TAIL}")
        except RuntimeError:
            logger.exception("connecting to %s", f"postgresql://u:{HEAD}b{TAIL}@h/db")
    finally:
        logger.handlers.clear()
        logger.filters.clear()
        logger.propagate = True
    assert records and "Traceback" in records[0]
    assert HEAD not in records[0] and TAIL not in records[0]


def test_settings_never_show_storage_credentials():
    from hafen.config import Settings

    settings = Settings(storage_options={"account_name": "acc", "account_key": f"{HEAD}k{TAIL}"})
    assert HEAD not in repr(settings) and TAIL not in repr(settings)
