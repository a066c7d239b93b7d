"""Database URLs, connections, and the one place where database errors become hafen errors.

Two dialects: ``sqlite:///relative.db`` / ``sqlite:////absolute.db`` (the embedded default, through
the standard library) and ``postgresql://user:password@host:port/db`` (through ADBC's libpq
driver, ``pip install 'hafen[postgres]'``). SQLAlchemy-style driver suffixes
(``postgresql+psycopg://``) are accepted and ignored.

Secrets never reach a message: :meth:`DatabaseURL.scrub` replaces the password (plain or
percent-encoded) in any text, and :attr:`DatabaseURL.masked` is the URL with ``***`` for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import urllib.parse
from collections.abc import Iterator
from typing import Any

from hafen.errors import HafenError, SQLError

__all__ = ["DatabaseURL", "connect", "map_db_errors", "parse_url", "quote_ident"]

#: ``application_name`` of the connections hafen opens, per operation (PostgreSQL).
APPLICATION_NAMES = {"extract": "hafen-extract", "load": "hafen-load", "meta": "hafen"}
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

    def __repr__(self) -> str:  # never the password, wherever Dask or a log prints the object
        return f"DatabaseURL({self.masked!r})"

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``."""
        return self.scrub(self.url)

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the password replaced by ``***``."""
        if self.password:
            for secret in {self.password, urllib.parse.quote(self.password, safe="")}:
                text = text.replace(secret, "***")
        return text

    def with_application_name(self, operation: str) -> str:
        """The PostgreSQL URL with ``application_name`` (unless it names one) and a timeout."""
        parts = urllib.parse.urlsplit(self.url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        query.setdefault("application_name", APPLICATION_NAMES[operation])
        query.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def parse_url(url: str | DatabaseURL) -> DatabaseURL:
    """Parse a database URL, or raise :class:`SQLError` saying which forms are accepted."""
    if isinstance(url, DatabaseURL):
        return url
    if not isinstance(url, str) or "://" not in url:
        shown = url if isinstance(url, str) else type(url).__name__
        raise SQLError(
            f"not a database URL: {shown!r}; expected sqlite:///path/to/file.db or "
            "postgresql://user:password@host:port/database"
        )
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower().split("+", 1)[0]
    password = urllib.parse.unquote(parts.password) if parts.password else None
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path
        path = path.split("?", 1)[0]
        if not path or path == ":memory:":
            raise SQLError(
                f"{url!r}: hafen needs an SQLite database file (tasks open their own "
                "connections), e.g. sqlite:///data/shop.db"
            )
        return DatabaseURL(url, "sqlite", None, path)
    if scheme in _POSTGRES_SCHEMES:
        normalized = urllib.parse.urlunsplit(parts._replace(scheme="postgresql"))
        if not parts.hostname and "host=" not in parts.query:
            masked = DatabaseURL(url, "postgresql", password).masked
            raise SQLError(f"{masked!r}: a PostgreSQL URL needs a host")
        return DatabaseURL(normalized, "postgresql", password)
    masked = DatabaseURL(url, scheme, password).masked
    raise SQLError(
        f"unsupported database URL {masked!r}: hafen supports sqlite:/// and postgresql://"
    )


def quote_ident(name: str) -> str:
    """Quote an identifier for both dialects (``a.b`` stays two parts)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


@contextlib.contextmanager
def map_db_errors(db: DatabaseURL, what: str) -> Iterator[None]:
    """Turn any driver error inside the block into :class:`SQLError` naming the masked URL."""
    try:
        yield
    except HafenError as exc:
        if db.password and db.password in str(exc):
            raise type(exc)(db.scrub(str(exc))) from None
        raise
    except Exception as exc:  # drivers raise many unrelated classes
        if not _is_driver_error(exc):
            raise
        message = db.scrub(" ".join(str(exc).split()))
        raise SQLError(f"{db.masked}: {what} failed: {message}") from None


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
