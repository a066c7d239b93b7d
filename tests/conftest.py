"""Fixtures shared by the whole suite: thin wrappers over :mod:`hafen.testing`, which starts the
services (Azurite, moto's S3 server; PostgreSQL in ``tests/sql/conftest.py``) and never imports
pytest, so benchmarks use the same helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hafen.testing import Azurite, MotoS3, running_azurite, running_moto_s3

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
