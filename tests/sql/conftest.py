"""Fixtures for the SQL tests: a throwaway PostgreSQL server and SQLite databases.

The server is :class:`hafen.testing.PostgresServer` (the system's binaries, an unprivileged user,
a free loopback port); benchmarks and other test areas use it from there. The ``postgres``
fixture is session-scoped; each test that needs a clean database takes ``pg_url`` (a fresh
database per test, dropped afterwards).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cloudpickle
import pytest

from hafen.testing import PostgresServer, running_postgres, thread_cluster

if TYPE_CHECKING:
    from distributed import Client

# Task functions defined in test modules travel by value to worker processes.
if __name__ in sys.modules:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session; fails (never skips) if it cannot start."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """An in-process cluster (one worker, two threads) for the module's extracts and loads."""
    with thread_cluster(1, threads_per_worker=2) as client:
        yield client


@pytest.fixture
def pg_db(postgres: PostgresServer) -> Iterator[str]:
    """The name of a fresh, empty database, dropped after the test."""
    name = postgres.create_database()
    try:
        yield name
    finally:
        postgres.drop_database(name)


@pytest.fixture
def pg_url(postgres: PostgresServer, pg_db: str) -> str:
    """The URL (with password) of a fresh, empty database."""
    return postgres.url(pg_db)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a new SQLite database file."""
    return f"sqlite:///{tmp_path / 'test.db'}"
