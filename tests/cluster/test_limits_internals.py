"""The scheduler internals the limits rely on (see ``hafen.cluster.limits._plugin``'s docstring).

hafen holds limited tasks with Dask's own machinery rather than a fork: a resource no worker has
parks them in ``no-worker``. If a Dask upgrade changes any of what that rests on, a test here
fails by name, before the behavioural tests fail in more puzzling ways.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import dask
import distributed
from distributed import Scheduler, SchedulerPlugin
from distributed.scheduler import SchedulerState, TaskState
from distributed.utils_test import gen_cluster
from packaging.version import Version

from hafen.cluster import install_scheduler_extensions
from hafen.cluster.limits import EXTENSION_NAME, HOLD_RESOURCE
from hafen.testing import async_poll_for


def test_distributed_is_the_pinned_version():
    version = Version(distributed.__version__)
    assert Version("2026.7.0") <= version < Version("2026.9"), version


def test_the_transitions_used_exist():
    table = Scheduler._TRANSITIONS_TABLE
    for edge in [
        ("released", "waiting"),  # where a task is held (hook on -> waiting)
        ("waiting", "no-worker"),  # where it waits
        ("no-worker", "released"),  # how a grant sends it on: released -> waiting -> Dask's
        ("no-worker", "erred"),  # how a rejected task fails
        ("waiting", "processing"),  # ... placement, or queued/no-worker as without a limit
        ("waiting", "queued"),
        ("queued", "processing"),
        ("processing", "released"),  # retries and dead workers free the slot through here
        ("processing", "memory"),
        ("processing", "erred"),
    ]:
        assert edge in table, edge
    # a grant asks for no-worker -> waiting, which the scheduler takes through released
    assert ("no-worker", "waiting") not in table
    assert '"released" not in (start, finish)' in inspect.getsource(Scheduler._transition)


def test_plugin_and_state_interfaces():
    params = inspect.signature(SchedulerPlugin.transition).parameters
    assert list(params)[:4] == ["self", "key", "start", "finish"]
    for hook in ("remove_worker", "remove_client"):
        assert hook in vars(SchedulerPlugin)
    attrs = ("annotations", "resource_restrictions", "loose_restrictions", "priority")
    loaders = ("waiting_on", "dependents", "nbytes", "prefix")  # the guard's loaders
    for attr in attrs + loaders:
        assert attr in TaskState.__slots__ or hasattr(TaskState, attr), attr
    assert "self.rootish_tg_threshold =" in inspect.getsource(SchedulerState.__init__)
    assert inspect.get_annotations(SchedulerState)["unrunnable"] == "dict[TaskState, float]"
    for name in ("valid_workers", "is_rootish", "adaptive_target", "transition", "transitions"):
        assert callable(getattr(Scheduler, name)), name


def test_unrunnable_is_what_adaptive_and_the_timeout_check_read():
    adaptive = inspect.getsource(Scheduler.adaptive_target)
    assert "self.unrunnable" in adaptive  # held tasks count as demand
    check = inspect.getsource(Scheduler._check_unrunnable_task_timeouts)
    assert "self.unrunnable.items()" in check
    assert "break" in check  # relies on insertion order: refreshed entries go last
    refresh = inspect.getsource(Scheduler._refresh_no_workers_since)
    assert "self.running" in refresh


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_a_held_task_waits_in_no_worker_until_granted(c, s, a):
    install_scheduler_extensions(s)
    ext = s.extensions[EXTENSION_NAME]
    ext.set_limit(name="paused", concurrency=0)
    with dask.annotate(limits="paused"):
        # loose restrictions would let a task run anywhere; holding must switch them off
        future = c.submit(inc, 1, workers=["127.0.0.1:1"], allow_other_workers=True, key="held")
    await async_poll_for(
        lambda: "held" in s.tasks and s.tasks["held"].state == "no-worker", what="held"
    )
    ts = s.tasks["held"]
    assert ts in s.unrunnable
    assert ts.resource_restrictions == {HOLD_RESOURCE: 1}
    assert ts.loose_restrictions is False
    assert s.valid_workers(ts) == set()
    assert s.is_rootish(ts) is False
    # Later work under another limit is granted and runs meanwhile: grant rounds ran after the
    # task was held, and left it where it was; the worker never heard of it.
    ext.set_limit(name="open", concurrency=1)
    with dask.annotate(limits="open"):
        assert await c.submit(inc, 10, key="later") == 11
    assert ts.state == "no-worker" and "held" not in a.state.tasks

    ext.set_limit(name="paused", concurrency=1)
    assert await future == 2
    assert ts.resource_restrictions is None  # the task's own restrictions are back
    assert ts.worker_restrictions == {"tcp://127.0.0.1:1"} and ts.loose_restrictions is True
    assert ext.info()["paused"]["granted"] == 1


def inc(x: int) -> int:
    return x + 1


def test_the_cluster_package_never_imports_datasets():
    code = (
        "import sys, hafen.cluster, hafen.cluster.limits._plugin, hafen.cluster.limits._client, "
        "hafen.cluster.resilience._chaos, hafen.testing; "
        "bad = sorted(m for m in sys.modules if m.startswith('hafen.datasets')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
