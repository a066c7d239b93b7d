"""``dask scheduler --preload hafen.cluster``: a stock scheduler and worker started from the
command line, as in production, get the limits without ``hafen.connect``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest
from distributed import Client

import hafen

DASK = str(Path(sys.executable).with_name("dask"))


def double(i: int) -> int:
    time.sleep(0.05)
    return 2 * i


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def preloaded_scheduler(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("preload")
    scheduler_file = tmp / "scheduler.json"
    # the task functions of this module are pickled by name: let the processes import it
    pythonpath = os.pathsep.join(
        filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
    )
    env = {**os.environ, "PYTHONPATH": pythonpath}
    scheduler_log = (tmp / "scheduler.log").open("w")
    worker_log = (tmp / "worker.log").open("w")
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--preload", "hafen.cluster", "--scheduler-file", str(scheduler_file),
         "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0", "--no-show"],
        stdout=subprocess.DEVNULL, stderr=scheduler_log, env=env,
    )  # fmt: skip
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            assert scheduler.poll() is None, (tmp / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen(
            [DASK, "worker", address, "--nthreads", "2", "--nworkers", "1", "--no-dashboard",
             "--memory-limit", "1GiB"],
            stdout=subprocess.DEVNULL, stderr=worker_log, env=env,
        )  # fmt: skip
        yield address
    finally:
        if worker is not None:
            _stop(worker)
        _stop(scheduler)
        scheduler_log.close()
        worker_log.close()


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
