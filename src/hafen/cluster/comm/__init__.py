"""The ``hafen://`` transport: Dask connections that survive network blips, and a chaos proxy.

- :mod:`._session`: the session layer's rules (numbering, acknowledgements, resume), no I/O;
- :mod:`._wire`: what goes on a TCP link;
- :mod:`._channel`: a session driven over successive links on the event loop;
- :mod:`._backend`: the Dask comm backend (:class:`HafenBackend`: connector, listener, comm);
- :mod:`._proxy`: :class:`Proxy`, a loopback TCP proxy that severs or blackholes connections;
- :mod:`._cluster`: :class:`ProxiedCluster`, scheduler and workers in processes, each worker
  behind proxies, for network faults.

Dask finds the backend by the ``hafen`` scheme through the ``distributed.comm.backends`` entry
point of hafen's package metadata; importing this module also registers it (in
``distributed.comm.registry.backends``, where Dask keeps the backends it has loaded), for
processes that run hafen without its metadata installed. ``hafen.cluster`` imports this module,
so ``--preload hafen.cluster`` registers it too.

Options are dask config keys ``hafen.comm.*`` (see ``hafen/cluster/cluster.yaml``).
"""

from __future__ import annotations

from distributed.comm import registry

from hafen.cluster.comm._backend import (
    PREFIX,
    SCHEME,
    HafenBackend,
    HafenComm,
    HafenConnector,
    HafenListener,
)
from hafen.cluster.comm._channel import CommOptions
from hafen.cluster.comm._cluster import ProxiedCluster, ProxiedWorker
from hafen.cluster.comm._proxy import Proxy, ProxyStats
from hafen.cluster.comm._session import SessionClosedError, SessionRefusedError

__all__ = [
    "PREFIX",
    "SCHEME",
    "CommOptions",
    "HafenBackend",
    "HafenComm",
    "HafenConnector",
    "HafenListener",
    "ProxiedCluster",
    "ProxiedWorker",
    "Proxy",
    "ProxyStats",
    "SessionClosedError",
    "SessionRefusedError",
    "register",
]


def register() -> None:
    """Make ``hafen://`` addresses known to Dask in this process (idempotent)."""
    if not isinstance(registry.backends.get(SCHEME), HafenBackend):
        registry.backends[SCHEME] = HafenBackend()


register()
