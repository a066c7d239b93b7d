"""Masking secrets: the one place that knows how a credential can be spelled in text.

Every message hafen builds from a database URL, a storage option or a backend's error passes
through :func:`redact`, which masks secrets in two ways:

- **By shape**, without knowing them: the password of a URL's userinfo
  (``scheme://user:PASSWORD@host``); the value of a secret-named parameter (:data:`SECRET_KEYS`,
  in any case) written ``name=value`` -- a URL query (``?password=``), a libpq conninfo string
  (``password='it''s'``), an Azure connection string (``AccountKey=...;``), a SAS token
  (``sig=``) -- or as a printed mapping entry (``'account_key': '...'``, ``"token": "..."``);
  and a bearer token.
- **By value**, for the secrets the caller knows (a database URL's password): every spelling of
  each one, matched character by character, so that a value encoded in part, in the other case
  or twice is masked too -- raw, percent-encoded (``%3a`` or ``%3A``, also ``%253A``), ``+`` for
  a space, escaped by ``repr``, JSON or libpq (``\\'``, ``\\u00e9``, ``\\x0a``), or as an HTML
  entity.

Masking after the fact is the second line: where hafen can, it does not record a secret at all
(the commit log keeps a database URL without its credentials, see
:attr:`hafen.sql._url.DatabaseURL.public`).

:class:`RedactingFilter` applies :func:`redact` to log records (message, arguments and the
formatted traceback); :func:`get_logger` returns a logger that has it.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable

__all__ = ["MASK", "SECRET_KEYS", "RedactingFilter", "get_logger", "is_secret_key", "redact"]

MASK = "***"

#: Parameter names whose values are secrets (compared without regard to case).
SECRET_KEYS = frozenset(
    {
        # databases (libpq's password and sslpassword, ODBC's pwd, common spellings)
        "password",
        "passwd",
        "pass",
        "pwd",
        "sslpassword",
        # Azure: connection strings, SAS tokens, service principals, storage_options
        "accountkey",
        "account_key",
        "sharedaccesskey",
        "sharedaccesssignature",
        "sas_token",
        "sig",
        "signature",
        "client_secret",
        "connection_string",
        "credential",
        "credentials",
        # S3 and generic tokens and keys (s3fs' key/secret/token)
        "secret",
        "secret_key",
        "secret_access_key",
        "aws_secret_access_key",
        "aws_session_token",
        "session_token",
        "security_token",
        "token",
        "access_token",
        "refresh_token",
        "auth_token",
        "id_token",
        "api_key",
        "apikey",
        "key",
        "private_key",
    }
)


def is_secret_key(name: str) -> bool:
    """Whether a parameter or option called ``name`` holds a secret."""
    return name.strip().lower().replace("-", "_") in SECRET_KEYS


_KEYS = "|".join(sorted((re.escape(k) for k in SECRET_KEYS), key=len, reverse=True))
_QUOTED = r"""'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?"""
# name=value: a query, conninfo or connection-string parameter, or a keyword argument's repr;
# not after a "/" (a Hive partition such as table/key=5/ is a path, not a secret)
_PARAMETER = re.compile(
    rf"(?i)(?:^|(?<=[\s?&;,(\[{{'\"]))(?P<name>{_KEYS})(?P<eq>\s*=\s*)"
    rf"(?P<value>{_QUOTED}|[^\s&;#'\"<>]+)"
)
# 'name': value -- a printed dict or JSON object
_ENTRY = re.compile(
    rf"(?i)(?P<q>['\"])(?P<name>{_KEYS})(?P=q)(?P<eq>\s*:\s*)"
    rf"(?P<value>b?(?:{_QUOTED})|[^,}}\s]+)"
)
# scheme://user:PASSWORD@host -- the password up to the last @ before the path
_USERINFO = re.compile(
    r"(?i)(?P<head>[a-z][a-z0-9+.\-]*://[^\s/?#@:'\"<>]*:)(?P<value>[^\s/?#<>]*)"
    r"(?=@[^\s/?#@'\"<>]*(?:[/?#\s'\"<>]|$))"
)
_BEARER = re.compile(r"(?i)(?P<head>\bbearer\s+)(?P<value>[A-Za-z0-9._~+/=\-]{8,})")


def _masked_value(match: re.Match[str]) -> str:
    value = match.group("value")
    if value in ("", MASK):
        return match.group(0)
    quote = value[:1] if value[:1] in "'\"" else (value[:2] if value[:2] in ("b'", 'b"') else "")
    if quote:
        return match.group(0)[: match.start("value") - match.start(0)] + quote + MASK + quote[-1]
    return match.group(0)[: match.start("value") - match.start(0)] + MASK


def _hex(byte: int) -> str:
    """``%3a`` and ``%3A`` alike: each hex letter in either case."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{byte:02x}")


def _hex_digits(number: int, width: int) -> str:
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{number:0{width}x}")


_NAMED_ESCAPES = {"\n": "n", "\t": "t", "\r": "r", "\b": "b", "\f": "f", "\0": "0"}
_HTML = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "#0*39|#[xX]0*27|apos"}


def _char(c: str) -> str:
    """A pattern matching character ``c`` in any of the spellings hafen may meet."""
    utf8 = c.encode("utf-8")
    spellings = {
        re.escape(c),
        "".join("%" + _hex(b) for b in utf8),  # percent-encoded
        "".join("%25" + _hex(b) for b in utf8),  # percent-encoded twice
    }
    code = ord(c)
    if c == " ":
        spellings.add(r"\+")  # form encoding
    if c.isspace():
        spellings.add(r"\s")  # whitespace normalized by a message
    if code < 0x100:
        spellings.add(r"\\x" + _hex_digits(code, 2))  # repr
    if code < 0x10000:
        spellings.add(r"\\u" + _hex_digits(code, 4))  # JSON, repr
    else:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        spellings.add(r"\\u" + _hex_digits(high, 4) + r"\\+u" + _hex_digits(low, 4))
        spellings.add(r"\\U" + _hex_digits(code, 8))
    if c in _NAMED_ESCAPES:
        spellings.add(r"\\" + _NAMED_ESCAPES[c])
    if c in _HTML:
        spellings.add(f"&(?:{_HTML[c]});")
    spellings.add(f"&#0*{code};")
    alternatives = "|".join(sorted(spellings, key=len, reverse=True))
    # any number of backslashes before it: escaped by repr, JSON or libpq, maybe twice
    return rf"\\*(?:{alternatives})"


@functools.lru_cache(maxsize=256)
def _value_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    values = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not values:
        return None
    return re.compile("|".join("".join(_char(c) for c in value) for value in values))


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with secrets replaced by ``***``: those of known shape, and ``secrets``.

    >>> redact("postgresql://u:p%40ss@db/x?sslpassword=a%2Bb")
    'postgresql://u:***@db/x?sslpassword=***'
    >>> redact("invalid token: p%40Ss", ["p@Ss"])
    'invalid token: ***'
    """
    if not isinstance(text, str):
        text = str(text)
    pattern = _value_pattern(tuple(sorted({s for s in secrets if s})))
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for shape in (_USERINFO, _PARAMETER, _ENTRY, _BEARER):
        text = shape.sub(_masked_value, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in a record's message and traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: show what there is
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message, self.secrets), ()
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = redact(text, self.secrets), None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a :class:`RedactingFilter` (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
