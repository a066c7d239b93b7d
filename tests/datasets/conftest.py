"""Dataset fixtures: every dataset test runs on each storage backend, one conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

BACKENDS = ["local", "memory", "azure", "s3"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_url(
    backend: str, tmp_path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], str]:
    """Return a function giving a fresh dataset URL on the backend under test.

    On Azure the URL is ``az://hafen-tests/<run>/<name>`` on the session's Azurite, and the
    credentials come, as in production, from ``AZURE_STORAGE_CONNECTION_STRING`` (set for this
    test only). On S3 it is ``s3://<bucket>/<run>/<name>`` on the session's moto server, with a
    bucket per test and the credentials and endpoint in ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` and ``AWS_ENDPOINT_URL``.
    """
    run = uuid.uuid4().hex[:8]
    if backend == "azure":
        server = request.getfixturevalue("azurite")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string)
    if backend == "s3":
        moto = request.getfixturevalue("moto_s3")
        for variable, value in moto.environment.items():
            monkeypatch.setenv(variable, value)
        bucket = moto.bucket()

    def make(name: str = "ds") -> str:
        if backend == "local":
            return str(tmp_path / run / name)
        if backend == "memory":
            return f"memory://{run}/{name}"
        if backend == "azure":
            return server.url(f"{run}/{name}")
        if backend == "s3":
            return f"s3://{bucket}/{run}/{name}"
        raise AssertionError(backend)

    return make


@pytest.fixture
def url(make_url: Callable[[str], str]) -> str:
    return make_url("ds")
