"""Connecting to a cluster and installing hafen's scheduler-side extensions.

A local cluster that :func:`connect` starts runs its worker processes over ``hafen://``
(:data:`LOCAL_PROTOCOL`), the transport that keeps connections through network blips;
``connect(protocol="tcp")`` starts one over Dask's TCP instead. In-process clusters
(``processes=False``) keep Dask's in-process transport.

:data:`SCHEDULER_EXTENSIONS` is the one registry of installers: ``hafen.connect()`` runs them on
the scheduler it connects to, and ``dask scheduler --preload hafen.cluster`` runs them at start.
Each installer must be idempotent (installing twice is harmless), since both paths may run on the
same scheduler. To add an extension, append its installer here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hafen.cluster.limits import install_limits
from hafen.cluster.resilience import DrainOnSigterm, ForwardSigterm, install_resilience

if TYPE_CHECKING:
    from distributed import Client, Scheduler

__all__ = ["LOCAL_PROTOCOL", "SCHEDULER_EXTENSIONS", "connect", "install_scheduler_extensions"]

#: Transport of the process-based local clusters :func:`connect` starts.
LOCAL_PROTOCOL = "hafen"
#: Imported by every worker process of such a cluster: makes ``hafen://`` known there also where
#: hafen's package metadata (its ``distributed.comm.backends`` entry point) is not installed.
_COMM_PRELOAD = "hafen.cluster.comm"

#: Installers run on the scheduler, in order; each takes the Scheduler and must be idempotent.
SCHEDULER_EXTENSIONS: list[Callable[[Scheduler], Any]] = [
    install_limits,
    install_resilience,
]


def install_scheduler_extensions(scheduler: Scheduler) -> list[str]:
    """Install every hafen scheduler extension on ``scheduler`` (idempotent).

    Runs on the scheduler's event loop. Returns the names of the installers run.
    """
    for installer in SCHEDULER_EXTENSIONS:
        installer(scheduler)
    return [getattr(installer, "__name__", repr(installer)) for installer in SCHEDULER_EXTENSIONS]


def _install_remote(dask_scheduler: Scheduler) -> list[str]:
    return install_scheduler_extensions(dask_scheduler)


def connect(address: str | None = None, **cluster_kwargs: Any) -> Client:
    """Connect to a Dask cluster with hafen's scheduler extensions installed.

    Parameters
    ----------
    address
        Scheduler address. Defaults to the ``scheduler`` setting (``HAFEN_SCHEDULER``); when
        neither is given, a process-based ``LocalCluster`` is started and owned by the client,
        its connections over ``hafen://`` (``protocol="tcp"`` for Dask's TCP).
    **cluster_kwargs
        Passed to ``LocalCluster`` (``n_workers=``, ``threads_per_worker=``, ``protocol=``,
        ...); only without an address.

    Returns
    -------
    distributed.Client
        The client, also made the default client. Closing it closes a cluster it started.

    Raises
    ------
    hafen.errors.ConfigError
        If ``cluster_kwargs`` are given together with an address.

    Examples
    --------
    >>> client = hafen.connect(n_workers=2, threads_per_worker=4)  # doctest: +SKIP
    >>> hafen.set_limit("postgres", concurrency=4)  # doctest: +SKIP
    """
    from distributed import Client

    from hafen.config import get_settings
    from hafen.errors import ConfigError

    if address is None:
        address = get_settings().scheduler
    if address:
        if cluster_kwargs:
            raise ConfigError(
                f"connect(): cluster options {sorted(cluster_kwargs)} only apply without an "
                f"address, got address {address!r}"
            )
        client = Client(address)
    else:
        cluster_kwargs.setdefault("processes", True)
        if cluster_kwargs["processes"]:
            cluster_kwargs.setdefault("protocol", LOCAL_PROTOCOL)
            if str(cluster_kwargs["protocol"]).startswith(LOCAL_PROTOCOL):
                preload = cluster_kwargs.get("preload") or []
                preload = [preload] if isinstance(preload, str) else list(preload)
                if _COMM_PRELOAD not in preload:
                    cluster_kwargs["preload"] = [*preload, _COMM_PRELOAD]
        client = Client(**cluster_kwargs)
    try:
        client.run_on_scheduler(_install_remote)
        client.register_plugin(DrainOnSigterm())  # SIGTERM (preemption) drains a worker
        client.register_plugin(ForwardSigterm())  # ... also when it reaches the nanny
    except BaseException:
        client.close()
        raise
    return client
