"""Dask extensions: cluster-wide limits held on the scheduler, and resilience.

- :mod:`hafen.cluster.limits`: concurrency and rate limits, their client API and metrics;
- :mod:`hafen.cluster.resilience`: replication, drain, SIGTERM (preemption) drain, chaos;
- :mod:`hafen.cluster.comm`: the ``hafen://`` transport (a Dask comm backend that keeps
  connections through network blips) and the chaos proxy; importing this package registers it;
- ``_connect.py``: :func:`connect` and the registry of scheduler extensions;
- ``_config.py``, ``cluster.yaml``, ``cluster-schema.yaml``: the ``hafen.*`` dask config keys.

Load on any scheduler with ``dask scheduler --preload hafen.cluster``: :func:`dask_setup` installs
every hafen scheduler extension, as :func:`connect` does for the scheduler it connects to.
This package never imports :mod:`hafen.datasets`.

``hafen.cluster.limits`` is the function :func:`limits` (as in ``hafen.limits``); the package of
the same name is reached with ``from hafen.cluster.limits import ...``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hafen.cluster._connect import SCHEDULER_EXTENSIONS, connect, install_scheduler_extensions
from hafen.cluster.comm import register as _register_comm
from hafen.cluster.limits import lease, limits, remove_limit, set_limit
from hafen.cluster.resilience import DrainReport, drain

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

_register_comm()  # the hafen:// comm backend, also where hafen's entry points are not installed


def dask_setup(scheduler: Scheduler, *args: Any, **kwargs: Any) -> Any:
    """Preload hook: ``dask scheduler --preload hafen.cluster`` installs hafen's extensions.

    ``dask worker --preload hafen.cluster --preload-nanny hafen.cluster`` installs the worker
    side instead: SIGTERM (a preemption notice) drains the worker before it exits.
    """
    from distributed import Nanny, Worker

    if isinstance(scheduler, Worker):
        from hafen.cluster.resilience import DrainOnSigterm

        return scheduler.plugin_add(DrainOnSigterm())
    if isinstance(scheduler, Nanny):
        from hafen.cluster.resilience import ForwardSigterm

        return scheduler.plugin_add(ForwardSigterm())
    install_scheduler_extensions(scheduler)
    return None
