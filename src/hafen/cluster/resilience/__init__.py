"""Resilience: fewer recomputations when workers die, leave or are told to stop.

- :mod:`._replication`: the Active Memory Manager policy that keeps extra copies of costly results;
- :mod:`._drain`: the scheduler side of a drain (an AMM policy and the ``hafen_drain`` handler);
- :mod:`._plugin`: the scheduler plugin that installs both and counts recomputations;
- :mod:`._client`: :func:`drain` and the counts, from a client;
- :mod:`._preemption`: worker and nanny plugins that turn SIGTERM into a drain;
- :mod:`._chaos`: runs a graph while faults hit the workers, and reports what it cost.

Options are dask config keys ``hafen.replication.*`` and ``hafen.drain.*`` (see
``hafen/cluster/cluster.yaml``).
"""

from __future__ import annotations

from hafen.cluster.resilience._chaos import (
    ChaosReport,
    Fault,
    FaultEvent,
    RunResult,
    costly_graph,
    run_chaos,
    same_output,
)
from hafen.cluster.resilience._client import DrainReport, drain, ensure_installed, resilience_counts
from hafen.cluster.resilience._drain import DrainCoordinator, DrainWorkers
from hafen.cluster.resilience._plugin import PLUGIN_NAME, ResiliencePlugin, install_resilience
from hafen.cluster.resilience._preemption import DrainOnSigterm, ForwardSigterm
from hafen.cluster.resilience._replication import (
    CopyFresh,
    Replication,
    find_replication,
    install_replication,
    recompute_cost,
    wanted_replicas,
)

__all__ = [
    "PLUGIN_NAME",
    "ChaosReport",
    "CopyFresh",
    "DrainCoordinator",
    "DrainOnSigterm",
    "DrainReport",
    "DrainWorkers",
    "Fault",
    "FaultEvent",
    "ForwardSigterm",
    "Replication",
    "ResiliencePlugin",
    "RunResult",
    "costly_graph",
    "drain",
    "ensure_installed",
    "find_replication",
    "install_replication",
    "install_resilience",
    "recompute_cost",
    "resilience_counts",
    "run_chaos",
    "same_output",
    "wanted_replicas",
]
