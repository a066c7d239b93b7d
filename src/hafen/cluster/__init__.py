"""Dask extensions: cluster-wide limits held on the scheduler (and, in sibling modules,
replication and drain).

Load on any scheduler with ``dask scheduler --preload hafen.cluster``: :func:`dask_setup` installs
every hafen scheduler extension, as :func:`connect` does for the scheduler it connects to.
This package never imports :mod:`hafen.datasets`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hafen.cluster._client import lease, limits, remove_limit, set_limit
from hafen.cluster._connect import SCHEDULER_EXTENSIONS, connect, install_scheduler_extensions
from hafen.cluster._drain import DrainReport, drain

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = [
    "SCHEDULER_EXTENSIONS",
    "DrainReport",
    "connect",
    "dask_setup",
    "drain",
    "install_scheduler_extensions",
    "lease",
    "limits",
    "remove_limit",
    "set_limit",
]


def dask_setup(scheduler: Scheduler, *args: Any, **kwargs: Any) -> Any:
    """Preload hook: ``dask scheduler --preload hafen.cluster`` installs hafen's extensions.

    ``dask worker --preload hafen.cluster --preload-nanny hafen.cluster`` installs the worker
    side instead: SIGTERM (a preemption notice) drains the worker before it exits.
    """
    from distributed import Nanny, Worker

    if isinstance(scheduler, Worker):
        from hafen.cluster._preemption import DrainOnSigterm

        return scheduler.plugin_add(DrainOnSigterm())
    if isinstance(scheduler, Nanny):
        from hafen.cluster._preemption import ForwardSigterm

        return scheduler.plugin_add(ForwardSigterm())
    install_scheduler_extensions(scheduler)
    return None
