"""A worker SIGKILLed mid-reshuffle: Dask recomputes, and the result is still exact and atomic.

The worker is killed right after a task finished but before it reported its result (see
``HoldOnce``): its side effects are on storage, its result is lost, and Dask runs it again on
another worker. For a map task that means pieces written twice under the same names; for a
reduce task, files staged twice. Neither may duplicate a row or reach the commit twice.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from _ddf_checks import HoldOnce, check_reshuffled

import hafen

pytestmark = pytest.mark.slow


def _kill_when_held(flag: str, stop: threading.Event, killed: list[str]) -> None:
    while not stop.is_set():
        try:
            with open(flag) as fh:
                text = fh.read()
        except FileNotFoundError:
            text = ""
        if " " not in text:
            time.sleep(0.02)
            continue
        pid, key = text.split(" ", 1)
        os.kill(int(pid), signal.SIGKILL)
        killed.append(key)
        return


def _reshuffle_killing_one_worker(client, src: str, dst: str, phase: str, flag: str):
    stop = threading.Event()
    killed: list[str] = []
    client.register_plugin(HoldOnce(f"hafen-reshuffle-{phase}", flag))  # replaces the last one
    killer = threading.Thread(target=_kill_when_held, args=(flag, stop, killed))
    killer.start()
    try:
        out = hafen.reshuffle(
            src, dst, ["store_id"], num_buckets=2, sort_by=["product_id"], indices=["qty"]
        )
    finally:
        stop.set()
        killer.join()
    assert killed and f"hafen-reshuffle-{phase}" in killed[0], killed
    return out


def _check(out, sales, dst: str) -> None:
    # exact: every row once, in the right file, sorted; atomic: one version
    check_reshuffled(out, sales, ["store_id"], 2, ["qty"], ["product_id"])
    assert [h["version"] for h in out.history()] == [0]
    assert not os.path.exists(os.path.join(dst, "_hafen", "scratch"))


def test_a_worker_killed_in_either_phase(tmp_path, src, sales):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        # map phase: the lost task's pieces are rewritten under the same names
        dst = str(tmp_path / "after-split")
        out = _reshuffle_killing_one_worker(client, src, dst, "split", str(tmp_path / "f1"))
        _check(out, sales, dst)

        # reduce phase: the lost task's staged files stay uncommitted (vacuum removes them)
        dst = str(tmp_path / "after-build")
        out = _reshuffle_killing_one_worker(client, src, dst, "build", str(tmp_path / "f2"))
        _check(out, sales, dst)
        on_disk = {
            os.path.relpath(os.path.join(d, n), dst)
            for d, _, names in os.walk(os.path.join(dst, "table"))
            for n in names
            if n.endswith(".parquet")
        }
        assert on_disk > {f.path for f in out.files()}
