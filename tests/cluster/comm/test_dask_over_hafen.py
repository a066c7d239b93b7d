"""Dask over ``hafen://``: a process cluster whose every connection is a hafen session.

``hafen.connect()`` starts its process clusters over hafen:// by default: the scheduler, two
worker processes and two clients talk only ``hafen://``: graphs, batched streams, RPCs,
worker-to-worker transfers of large results, a P2P shuffle, the dashboard.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
from distributed import Client

from hafen.testing import process_cluster


@pytest.fixture(scope="module")
def hafen_client() -> Iterator[Client]:
    with process_cluster(2) as client:  # hafen.connect()'s default
        yield client


def _comm_types(dask_scheduler: Any) -> list[str]:
    return sorted({type(bs.comm).__name__ for bs in dask_scheduler.stream_comms.values()})


def _make(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**63, size=n, dtype=np.int64)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


def test_every_address_and_stream_is_hafen(hafen_client):
    info = hafen_client.scheduler_info()
    assert info["address"].startswith("hafen://")
    assert all(w.startswith("hafen://") for w in info["workers"])
    assert hafen_client.run_on_scheduler(_comm_types) == ["HafenComm"]
    assert type(hafen_client.scheduler_comm.comm).__name__ == "HafenComm"


def test_a_graph_runs(hafen_client):
    parts = [dask.delayed(pow)(i, 2) for i in range(200)]
    assert dask.delayed(sum)(parts).compute() == sum(i * i for i in range(200))


def test_a_large_result_moves_between_workers_intact(hafen_client):
    a, b = sorted(hafen_client.scheduler_info()["workers"])
    data = hafen_client.submit(_make, 12_500_000, 7, workers=[a], pure=False)  # 100 MB
    digest = hafen_client.submit(_digest, data, workers=[b], allow_other_workers=False)
    assert digest.result() == _digest(_make(12_500_000, 7))
    # The digest ran on b, so the 100 MB crossed over hafen://. (Whether b still holds its copy
    # afterwards is the Active Memory Manager's business: it may drop either replica.)
    assert hafen_client.who_has([digest])[digest.key] == (b,)


def test_a_second_client_connects_by_address(hafen_client):
    with Client(hafen_client.scheduler.address) as other:
        assert other.submit(sum, [1, 2, 3]).result() == 6


def test_a_p2p_shuffle_runs(hafen_client):
    import dask.dataframe as dd

    df = pd.DataFrame({"k": np.arange(20_000) % 97, "v": np.arange(20_000)})
    ddf = dd.from_pandas(df, npartitions=8)
    with dask.config.set({"dataframe.shuffle.method": "p2p"}):
        out = ddf.shuffle("k").compute()
    assert sorted(out["v"]) == list(range(20_000))


def test_the_dashboard_starts(hafen_client):
    link = hafen_client.dashboard_link.replace("/status", "/health")
    with urllib.request.urlopen(link, timeout=30) as response:
        assert response.read() == b"ok"
