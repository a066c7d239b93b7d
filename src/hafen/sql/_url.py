"""Database URLs, connections, and the one place where database errors become hafen errors.

Two dialects: ``sqlite:///relative.db`` / ``sqlite:////absolute.db`` (the embedded default, through
the standard library) and ``postgresql://user:password@host:port/db`` (through ADBC's libpq
driver, ``pip install 'hafen[postgres]'``). SQLAlchemy-style driver suffixes
(``postgresql+psycopg://``) are accepted and ignored.

Secrets never reach a message or the commit log. A password may come in the userinfo
(``postgresql://user:pa%40ss@host/db``) or in the query (``?password=``, any case, also ``pass``
and ``pwd``); :attr:`DatabaseURL.secrets` holds every value it may mean, and
:meth:`DatabaseURL.scrub` masks them in any spelling (see :func:`hafen._secrets.redact`), along
with anything shaped like a credential. :attr:`DatabaseURL.masked` is the URL with ``***`` for
them, for messages; :attr:`DatabaseURL.public` is the URL without them, for what is recorded.
The URL handed to the driver spells the userinfo in one canonical encoding, so that a driver
that echoes it never shows a spelling the masking does not know.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import urllib.parse
from collections.abc import Iterator
from typing import Any

from hafen._secrets import is_secret_key, redact
from hafen.errors import HafenError, SQLError

__all__ = ["DatabaseURL", "connect", "map_db_errors", "parse_url", "quote_ident"]

#: ``application_name`` of the connections hafen opens, per operation (PostgreSQL).
APPLICATION_NAMES = {
    "extract": "hafen-extract",
    "load": "hafen-load",
    "meta": "hafen",
    "ingest": "hafen-ingest",
}
#: Seconds to wait for a connection, and for a locked SQLite database.
CONNECT_TIMEOUT = 30
SQLITE_BUSY_TIMEOUT = 120.0

_POSTGRES_SCHEMES = {"postgresql", "postgres"}


@dataclasses.dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL; picklable, so tasks receive it as is."""

    url: str
    dialect: str  # "sqlite" | "postgresql"
    password: str | None = None
    path: str | None = None  # sqlite: the database file
    secrets: tuple[str, ...] = ()  # every value a password in the URL may stand for

    def __repr__(self) -> str:  # never the password, wherever Dask or a log prints the object
        return f"DatabaseURL({self.masked!r})"

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``."""
        return self.scrub(self.url)

    @property
    def public(self) -> str:
        """The URL without credentials (no password, no secret query parameter): what hafen
        records, in the commit log for instance."""
        return public_url(self.url)

    def scrub(self, text: str) -> str:
        """``text`` with the password (in any spelling) and anything like a secret masked."""
        return redact(text, (self.password, *self.secrets))

    def with_application_name(self, operation: str) -> str:
        """The PostgreSQL URL with ``application_name`` (unless it names one) and a timeout.

        The query is kept as written (libpq reads ``+`` as itself, not as a space); the two
        parameters are appended, percent-encoded.
        """
        parts = urllib.parse.urlsplit(self.url)
        names = {pair.split("=", 1)[0] for pair in parts.query.split("&") if pair}
        extra = {"application_name": APPLICATION_NAMES[operation]}
        extra["connect_timeout"] = str(CONNECT_TIMEOUT)
        added = [
            f"{name}={urllib.parse.quote(value, safe='')}"
            for name, value in extra.items()
            if name not in names
        ]
        query = "&".join([parts.query, *added] if parts.query else added)
        return urllib.parse.urlunsplit(parts._replace(query=query))


_PASSWORD_PARAMETERS = frozenset({"password", "pass", "pwd", "passwd", "sslpassword"})


def _query_secrets(query: str) -> list[str]:
    """The values of password parameters in a query, as libpq and as a form decoder read them."""
    found = []
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        decoded = urllib.parse.unquote_plus(name).strip().lower()
        if decoded in _PASSWORD_PARAMETERS or is_secret_key(decoded):
            found += [value, urllib.parse.unquote(value), urllib.parse.unquote_plus(value)]
    return [v for v in found if v]


def _canonical_netloc(parts: urllib.parse.SplitResult, password: str | None) -> str:
    """The netloc with user and password each percent-encoded the one way ``quote`` does."""
    netloc = parts.netloc
    if "@" not in netloc:
        return netloc
    userinfo, host = netloc.rsplit("@", 1)
    user = urllib.parse.unquote(userinfo.split(":", 1)[0])
    spelled = urllib.parse.quote(user, safe="")
    if password is not None:
        spelled += ":" + urllib.parse.quote(password, safe="")
    return f"{spelled}@{host}"


def _guess_password(url: str) -> str | None:
    """What may be a password in a URL that cannot be parsed (more rather than less)."""
    rest = url.split("://", 1)[-1]
    if "@" not in rest:
        return None
    _, colon, password = rest.rsplit("@", 1)[0].partition(":")
    return password if colon else None


def public_url(url: str) -> str:
    """``url`` without a password in its userinfo and without secret query parameters."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}@{host}" if user else host
        kept = [
            pair
            for pair in parts.query.split("&")
            if pair and not is_secret_key(urllib.parse.unquote_plus(pair.split("=", 1)[0]))
        ]
        cleaned = urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="&".join(kept)))
    except ValueError:
        cleaned = url
    return redact(cleaned)


def parse_url(url: str | DatabaseURL) -> DatabaseURL:
    """Parse a database URL, or raise :class:`SQLError` saying which forms are accepted."""
    if isinstance(url, DatabaseURL):
        return url
    if not isinstance(url, str) or "://" not in url:
        shown = redact(url) if isinstance(url, str) else type(url).__name__
        raise SQLError(
            f"not a database URL: {shown!r}; expected sqlite:///path/to/file.db or "
            "postgresql://user:password@host:port/database"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        raw_password = parts.password
    except ValueError as exc:  # an unclosed IPv6 bracket, for one
        shown = redact(url, [_guess_password(url)])
        raise SQLError(f"not a valid database URL {shown!r}: {exc}") from None
    password = urllib.parse.unquote(raw_password) if raw_password else None
    secrets = tuple(dict.fromkeys([*([raw_password] if raw_password else []),
                                   *_query_secrets(parts.query)]))  # fmt: skip
    scheme = parts.scheme.lower().split("+", 1)[0]
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path
        path = path.split("?", 1)[0]
        if not path or path == ":memory:":
            raise SQLError(
                f"{redact(url)!r}: hafen needs an SQLite database file (tasks open their own "
                "connections), e.g. sqlite:///data/shop.db"
            )
        return DatabaseURL(url, "sqlite", None, path, secrets)
    if scheme in _POSTGRES_SCHEMES:
        netloc = _canonical_netloc(parts, password)
        normalized = urllib.parse.urlunsplit(parts._replace(scheme="postgresql", netloc=netloc))
        db = DatabaseURL(normalized, "postgresql", password, None, secrets)
        if not parts.hostname and "host=" not in parts.query:
            raise SQLError(f"{db.scrub(url)!r}: a PostgreSQL URL needs a host")
        return db
    masked = DatabaseURL(url, scheme, password, None, secrets).masked
    raise SQLError(
        f"unsupported database URL {masked!r}: hafen supports sqlite:/// and postgresql://"
    )


def quote_ident(name: str) -> str:
    """Quote an identifier for both dialects (``a.b`` stays two parts)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


@contextlib.contextmanager
def map_db_errors(db: DatabaseURL, what: str) -> Iterator[None]:
    """Turn any driver error inside the block into :class:`SQLError` naming the masked URL.

    No error leaves the block with a secret in its message: one that would is raised again
    with the secret masked (and without the original as its context).
    """
    try:
        yield
    except HafenError as exc:
        text = str(exc)
        if db.scrub(text) != text:
            raise type(exc)(db.scrub(text)) from None
        raise
    except Exception as exc:  # drivers raise many unrelated classes
        text = db.scrub(str(exc))  # before the whitespace is changed: that is a spelling too
        shown = " ".join(text.split())
        if _is_driver_error(exc):
            raise SQLError(f"{db.masked}: {what} failed: {shown}") from None
        if text != str(exc):
            raise SQLError(f"{db.masked}: {what} failed: {type(exc).__name__}: {shown}") from None
        raise


def _is_driver_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error | OSError):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(("adbc_driver", "psycopg", "pyarrow"))


def connect(db: DatabaseURL, operation: str, *, create: bool = False) -> Any:
    """Open a DB-API connection (autocommit off) for ``operation`` ("extract", "load", "meta").

    SQLite files must exist unless ``create``; a missing file is an error, not a new database.
    """
    with map_db_errors(db, "connecting"):
        if db.dialect == "sqlite":
            assert db.path is not None
            mode = "rwc" if create else "rw"
            target = urllib.parse.quote(db.path)
            try:
                conn = sqlite3.connect(
                    f"file:{target}?mode={mode}",
                    uri=True,
                    timeout=SQLITE_BUSY_TIMEOUT,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.OperationalError as exc:
                raise SQLError(
                    f"{db.masked}: cannot open the SQLite database {db.path!r} ({exc})"
                ) from None
            return conn
        try:
            import adbc_driver_postgresql.dbapi as pg
        except ImportError:
            raise SQLError(
                "PostgreSQL needs the ADBC driver: pip install 'hafen[postgres]'"
            ) from None
        return pg.connect(db.with_application_name(operation))
