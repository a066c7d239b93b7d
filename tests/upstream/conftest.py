"""Dask's own tests, run with hafen's scheduler extensions preloaded on every test scheduler.

The modules here are distributed's tests, vendored (see ``README.md``: where from, which version,
and the documented patch). This conftest is distributed's own (its fixtures, ``--runslow``, the
resource-leak plugin) plus hafen's preload: before anything else, ``hafen.cluster`` is added to
``distributed.scheduler.preload`` both in dask config and in the snapshot that distributed's test
utilities restore before every cluster (``utils_test.original_config``), so every ``Scheduler``
these tests start -- ``gen_cluster``, ``gen_test``, ``LocalCluster``, a bare ``Scheduler()`` --
runs ``hafen.cluster.dask_setup``, which installs the limits, back-pressure and resilience
extensions as ``dask scheduler --preload hafen.cluster`` does.

Environment:

- ``HAFEN_UPSTREAM_PRELOAD=0``: run without hafen (the baseline the results are compared with);
- ``HAFEN_UPSTREAM_LIMIT=N``: also put every task under one limit of ``N`` slots
  (``_hafen_limit_all.py``), to check that limited tasks keep Dask's placement.

``test_hafen_preloaded.py`` checks that the preload took.
"""

from __future__ import annotations

import os

import dask.config
import pytest

try:
    import faulthandler
except ImportError:  # pragma: no cover
    pass
else:
    faulthandler.enable()

import distributed.utils_test as _utils_test

# Make all of distributed's fixtures available, as its own conftest does.
from distributed.utils_test import *  # noqa: F403

PRELOAD = os.environ.get("HAFEN_UPSTREAM_PRELOAD", "1") != "0"
LIMIT = os.environ.get("HAFEN_UPSTREAM_LIMIT")


def _preloads() -> list[str]:
    preloads = ["hafen.cluster"] if PRELOAD else []
    if LIMIT:
        preloads.append("_hafen_limit_all")
    return preloads


def _install_preloads() -> None:
    preloads = _preloads()
    if not preloads:
        return
    new = {"distributed": {"scheduler": {"preload": preloads}}}
    for config in (dask.config.config, _utils_test.original_config):
        dask.config.update(config, new, priority="new")


_install_preloads()

# distributed's TLS test certificates live beside its tests, which its wheel does not ship; they
# are vendored here with the tests.
_utils_test.certs_dir = os.path.dirname(os.path.abspath(__file__))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run slow tests")


#: Tests that cannot hold with every task under a limit, and why (README.md, "Limit mode").
LIMIT_MODE_SKIPS = {
    "test_steal.py::test_reschedule_concurrent_requests_deadlock": (
        "asserts that Scheduler._reschedule puts the task back on a worker within the same "
        "call; under a limit the rescheduled task gives its slot back and is granted again on "
        "the next turn of the event loop"
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="need --runslow option to run")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "ws" in item.fixturenames:
            item.add_marker(pytest.mark.workerstate)
        reason = LIMIT_MODE_SKIPS.get(item.nodeid.split("/")[-1])
        if LIMIT and reason:
            item.add_marker(pytest.mark.skip(reason=f"limit mode: {reason}"))


pytest_plugins = ["distributed.pytest_resourceleaks"]
