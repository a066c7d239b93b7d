"""A small demo run, shared by the pipeline tests: 4 stores x 15 products x 400 days.

The cluster is in-process (threads), which starts in a fraction of the time of worker processes;
the demo's own command starts a process-based one (tested once, in test_config_cli.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hafen.pipeline import SynthParams, demo
from hafen.testing import thread_cluster

SMALL = SynthParams(stores=4, products=15, days=400, seed=7)


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with thread_cluster(2, threads_per_worker=1) as client:
        yield client


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, client: object) -> tuple[Path, object]:
    """The demo run once in a fresh work folder: (workdir, PipelineResult)."""
    workdir = tmp_path_factory.mktemp("demo")
    result = demo(workdir, synth=SMALL, client=client)
    return workdir, result
