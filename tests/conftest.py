"""Fixtures shared by the whole suite: thin wrappers over :mod:`hafen.testing`, which starts the
services (Azurite, moto's S3 server; PostgreSQL in ``tests/sql/conftest.py``) and never imports
pytest, so benchmarks use the same helpers.

hafen reads its settings once per process (:func:`hafen.config.get_settings`). Every test starts
with them read afresh, and ``monkeypatch`` here also re-reads them whenever it changes a
``HAFEN_*`` variable or the working directory, and when it undoes its changes: a test sets
``monkeypatch.setenv("HAFEN_...", ...)`` at any point and hafen sees it from then on. A test that
changes ``os.environ`` by other means calls :func:`hafen.config.reload_settings` itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from hafen.config import reload_settings
from hafen.errors import ConfigError
from hafen.testing import Azurite, MotoS3, running_azurite, running_moto_s3

# Dask's own tests, vendored, run with their own configuration: `make dask-tests`
# (tests/upstream/README.md).
collect_ignore = ["upstream"]

# Tests must not pick up a developer's hafen.toml or HAFEN_* settings, nor reach a real Azure
# account through AZURE_STORAGE_* or AWS through AWS_* (Azure and S3 tests set their own, per test,
# with monkeypatch).
# HAFEN_CHECKER_* are knobs of the concurrency checker's tests, not settings: they stay.
for _key in [k for k in os.environ if k.startswith(("HAFEN_", "AZURE_STORAGE_", "AWS_"))]:
    if not _key.startswith("HAFEN_CHECKER_"):
        del os.environ[_key]
os.environ["HAFEN_CONFIG"] = os.devnull


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A running Azurite blob service with the container ``hafen-tests``; fails if it cannot.

    Installs the pinned Azurite into ``.cache/azurite`` when it is missing (as
    ``scripts/test-deps.sh`` does).
    """
    with running_azurite() as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A running moto S3 server; fails (never skips) if it cannot start."""
    with running_moto_s3() as server:
        yield server


def _reload_settings() -> None:
    # An invalid value is the test's to see: the next get_settings() raises it where it is used.
    with contextlib.suppress(ConfigError):
        reload_settings()


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """The settings of the suite's environment before each test, and again after it."""
    _reload_settings()
    yield
    _reload_settings()


class SettingsMonkeyPatch(pytest.MonkeyPatch):
    """pytest's ``monkeypatch``, after whose changes hafen's settings are read again."""

    def setenv(self, name: str, value: str, prepend: str | None = None) -> None:
        super().setenv(name, value, prepend)
        if name.startswith("HAFEN_"):
            _reload_settings()

    def delenv(self, name: str, raising: bool = True) -> None:
        super().delenv(name, raising)
        if name.startswith("HAFEN_"):
            _reload_settings()

    def chdir(self, path: str | os.PathLike[str]) -> None:  # ./hafen.toml is another file
        super().chdir(path)
        _reload_settings()

    def undo(self) -> None:
        super().undo()
        _reload_settings()


@pytest.fixture
def monkeypatch() -> Iterator[pytest.MonkeyPatch]:
    """pytest's ``monkeypatch`` (same name, same methods), keeping hafen's settings current."""
    patch = SettingsMonkeyPatch()
    yield patch
    patch.undo()
