"""Tenants (one per customer) and their API keys.

A service home is a folder::

    HOME/tenants.sqlite          the registry: tenants and the SHA-256 of their keys
    HOME/tenants/NAME/db.sqlite  a tenant's relational database (SQLite, the default)
    HOME/tenants/NAME/datasets/  a tenant's dataset root (its forecasts among them)

With a PostgreSQL ``database`` URL, a tenant's database is its own schema ``tenant_NAME`` in that
database instead of a file. The registry itself is a SQLite file next to the tenants' data: it is
small, read once per request by key hash (an indexed lookup), written only by ``hafen tenants``,
and shared by the command line and every server process without a service to run; its
transactions make adding and revoking atomic.

A key is 256 random bits (``hfn_`` and 43 URL-safe characters), shown once by :meth:`Tenants.add`
and stored only as its SHA-256: a slow hash adds nothing against guessing a key with that much
entropy, and a fast one keeps authentication off the request's critical path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import re
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from hafen.errors import ConfigError

__all__ = ["KEY_PREFIX", "Tenant", "Tenants", "hash_key"]

KEY_PREFIX = "hfn_"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}", re.ASCII)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY, created TEXT NOT NULL, revoked TEXT
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name),
    created TEXT NOT NULL, revoked TEXT
);
"""


def hash_key(key: str) -> str:
    """The stored form of an API key (hex SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class Tenant:
    """One customer: its name, and where its database and datasets are."""

    name: str
    created: str
    revoked: str | None
    database: str  # a sqlite:/// URL, or the PostgreSQL URL of the shared database
    schema: str | None  # the PostgreSQL schema of its tables; None on SQLite
    datasets: str  # its dataset root

    @property
    def source_url(self) -> str:
        """The database URL the pipeline reads the tenant's tables from, unqualified: on
        PostgreSQL, with the tenant's schema as the connection's ``search_path``."""
        if self.schema is None:
            return self.database
        joiner = "&" if "?" in self.database else "?"
        return f"{self.database}{joiner}options=-csearch_path%3D{self.schema}"

    def table(self, name: str) -> str:
        """A table's name as the tenant's database spells it (``schema.table`` on PostgreSQL)."""
        return name if self.schema is None else f"{self.schema}.{name}"


class Tenants:
    """The tenants of a service home (see the module docstring).

    Parameters
    ----------
    home
        The service's folder; made if missing.
    database
        A PostgreSQL URL to keep tenants' tables in (a schema each); SQLite files when None.

    Examples
    --------
    >>> tenants = Tenants("hafen-service")  # doctest: +SKIP
    >>> key = tenants.add("acme")  # doctest: +SKIP
    >>> tenants.authenticate(key).name  # doctest: +SKIP
    'acme'
    """

    def __init__(self, home: str | os.PathLike[str], *, database: str | None = None) -> None:
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.database = database
        self._path = self.home / "tenants.sqlite"
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def _tenant(self, name: str, created: str, revoked: str | None) -> Tenant:
        folder = self.home / "tenants" / name
        if self.database is None:
            return Tenant(
                name,
                created,
                revoked,
                f"sqlite:///{folder / 'db.sqlite'}",
                None,
                str(folder / "datasets"),
            )
        return Tenant(
            name, created, revoked, self.database, f"tenant_{name}", str(folder / "datasets")
        )

    def add(self, name: str) -> str:
        """Create tenant ``name`` (its database and folders) and return its first API key.

        The key is not stored: only its hash is. Raises :class:`~hafen.errors.ConfigError` for a
        bad or taken name.
        """
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"tenant name {name!r}: lower-case letters, digits and '_', starting with a letter"
            )
        with self._connect() as conn:
            try:
                conn.execute("INSERT INTO tenants VALUES (?, ?, NULL)", (name, _now()))
            except sqlite3.IntegrityError:
                raise ConfigError(f"tenant {name!r} exists") from None
        tenant = self.get(name)
        Path(tenant.datasets).mkdir(parents=True, exist_ok=True)
        from hafen.serve._ingest import create_tables

        create_tables(tenant)
        return self.new_key(name)

    def new_key(self, name: str) -> str:
        """A further API key for tenant ``name``, returned once."""
        tenant = self.get(name)
        if tenant.revoked:
            raise ConfigError(f"tenant {name!r} is revoked")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, NULL)", (hash_key(key), name, _now())
            )
        return key

    def get(self, name: str) -> Tenant:
        """Tenant ``name``; :class:`~hafen.errors.ConfigError` if there is none."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT name, created, revoked FROM tenants WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise ConfigError(f"no tenant {name!r}")
        return self._tenant(*row)

    def list(self) -> list[Tenant]:
        """Every tenant, revoked ones too, by name."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT name, created, revoked FROM tenants ORDER BY name"
            ).fetchall()
        return [self._tenant(*row) for row in rows]

    def revoke(self, name: str) -> None:
        """Revoke tenant ``name`` and all its keys (its data stays)."""
        self.get(name)
        now = _now()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE tenants SET revoked = ? WHERE name = ? AND revoked IS NULL", (now, name)
            )
            conn.execute(
                "UPDATE api_keys SET revoked = ? WHERE tenant = ? AND revoked IS NULL", (now, name)
            )
            conn.execute("COMMIT")

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant of a valid, unrevoked key; None otherwise."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        with self._connect() as conn:
            row = conn.execute(
                "SELECT t.name, t.created, t.revoked FROM api_keys k JOIN tenants t "
                "ON t.name = k.tenant WHERE k.hash = ? AND k.revoked IS NULL AND t.revoked IS NULL",
                (hash_key(key),),
            ).fetchone()
        return None if row is None else self._tenant(*row)
