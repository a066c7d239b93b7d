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

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = [
    "SCHEDULER_EXTENSIONS",
    "connect",
    "dask_setup",
    "install_scheduler_extensions",
    "lease",
    "limits",
    "remove_limit",
    "set_limit",
]


def dask_setup(scheduler: Scheduler, *args: Any, **kwargs: Any) -> None:
    """Preload hook: ``dask scheduler --preload hafen.cluster`` installs hafen's extensions."""
    install_scheduler_extensions(scheduler)
