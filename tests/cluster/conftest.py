"""Fixtures for the cluster tests, wrapping :mod:`hafen.testing` (which never imports pytest).

Task functions that run on worker processes live in :mod:`hafen.testing` (or are only used on
in-process ``gen_cluster`` clusters); workers import them by name, stand-alone ``dask`` processes
too, without ``PYTHONPATH`` edits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

# hafen's dask config defaults (hafen.*) are in dask config before any test module imports
# distributed.utils_test, whose snapshot gen_cluster restores after every test.
import hafen.cluster  # noqa: F401
from hafen.testing import TaskLog, process_cluster


@pytest.fixture(scope="module")
def client_2x4() -> Iterator[Client]:
    """A process-based LocalCluster, 2 workers x 4 threads, with hafen's extensions."""
    with process_cluster(2, threads_per_worker=4) as client:
        yield client


@pytest.fixture
def task_log(tmp_path: Path) -> TaskLog:
    """A fresh :class:`~hafen.testing.TaskLog`; ``task_log.task`` writes to it from workers."""
    return TaskLog(tmp_path / "tasks.log")
