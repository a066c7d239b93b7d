"""Fixtures of the API tests; the data is made by _serve_data.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from _serve_data import make_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "datasets")
