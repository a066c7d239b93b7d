"""Test-only scheduler preload: every task of the vendored tests runs under one hafen limit.

Used when ``HAFEN_UPSTREAM_LIMIT=N`` (see ``conftest.py``): a limit named ``upstream`` with ``N``
slots is set on every test scheduler, and a plugin annotates each task submitted with
``limits="upstream"`` before the scheduler first moves it, exactly as ``dask.annotate`` would.
Dask's own assertions on placement, balance and stealing then run against limited tasks.
"""

from __future__ import annotations

import os
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

NAME = "upstream"


class LimitEverything(SchedulerPlugin):
    """Annotates every new task with ``limits=NAME`` in the scheduler's update_graph hook."""

    name = "hafen-upstream-limit-all"

    def update_graph(self, scheduler: Any, *, tasks: list[Any], **kwargs: Any) -> None:
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is not None and ts.run_spec is not None and ts.state == "released":
                ts.annotations = {**(ts.annotations or {}), "limits": NAME}


def dask_setup(scheduler: Any) -> None:
    from hafen.cluster import install_scheduler_extensions
    from hafen.cluster.limits import EXTENSION_NAME

    install_scheduler_extensions(scheduler)
    concurrency = int(os.environ["HAFEN_UPSTREAM_LIMIT"])
    scheduler.extensions[EXTENSION_NAME].set_limit(name=NAME, concurrency=concurrency)
    scheduler.add_plugin(LimitEverything(), name=LimitEverything.name)
