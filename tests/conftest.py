"""Fixtures shared by the whole suite. Service fixtures live beside the tests that need them."""

from __future__ import annotations

import os

from _azurite import azurite  # noqa: F401 - the Azurite session fixture (datasets, pipeline)
from _moto import moto_s3  # noqa: F401 - moto's S3 server, a session fixture (datasets)

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
