"""Dataset fixtures: every dataset test runs on each storage backend, one conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

BACKENDS = ["local", "memory"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_url(backend: str, tmp_path) -> Callable[[str], str]:
    """Return a function giving a fresh dataset URL on the backend under test."""
    run = uuid.uuid4().hex[:8]

    def make(name: str = "ds") -> str:
        if backend == "local":
            return str(tmp_path / run / name)
        if backend == "memory":
            return f"memory://{run}/{name}"
        raise AssertionError(backend)

    return make


@pytest.fixture
def url(make_url: Callable[[str], str]) -> str:
    return make_url("ds")
