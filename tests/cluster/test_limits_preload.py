"""``dask scheduler --preload hafen.cluster``: a stock scheduler and worker started from the
command line, as in production, get the limits without ``hafen.connect``."""

from __future__ import annotations

from collections.abc import Iterator

import dask
import pytest
from distributed import Client

import hafen
from hafen.testing import double, preloaded_cluster


@pytest.fixture(scope="module")
def preloaded_scheduler(tmp_path_factory) -> Iterator[str]:
    # the task functions come from hafen.testing, which the processes import like hafen itself
    with preloaded_cluster(tmp_path_factory.mktemp("preload"), nthreads=2) as address:
        yield address


def test_the_preload_installs_the_limits(preloaded_scheduler):
    with Client(preloaded_scheduler, set_as_default=False) as client:  # a plain client
        client.wait_for_workers(1, timeout=60)
        installed = client.run_on_scheduler(
            lambda dask_scheduler: sorted(
                name for name in dask_scheduler.extensions if name.startswith("hafen")
            )
        )
        assert "hafen_limits" in installed
        hafen.set_limit("preloaded", concurrency=1, client=client)
        with dask.annotate(limits="preloaded"):
            futures = client.map(double, range(5))
        assert client.gather(futures) == [0, 2, 4, 6, 8]
        assert hafen.limits(client=client)["preloaded"]["granted"] == 5


def test_connect_by_setting_to_a_preloaded_scheduler_keeps_its_state(
    preloaded_scheduler, monkeypatch
):
    monkeypatch.setenv("HAFEN_SCHEDULER", preloaded_scheduler)
    with Client(preloaded_scheduler, set_as_default=False) as plain:
        hafen.set_limit("kept", concurrency=3, client=plain)
    client = hafen.connect()  # installs again: must be harmless
    try:
        assert client.scheduler.address == preloaded_scheduler
        assert hafen.limits(client=client)["kept"]["concurrency"] == 3
        with dask.annotate(limits="kept"):
            assert client.submit(double, 21).result(timeout=30) == 42
    finally:
        client.close()


def test_a_scheduler_without_the_extension_says_so():
    from distributed import LocalCluster

    from hafen.errors import LimitError

    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
        pytest.raises(LimitError, match=r"no hafen limits extension.*--preload hafen\.cluster"),
    ):
        hafen.limits(client=client)
