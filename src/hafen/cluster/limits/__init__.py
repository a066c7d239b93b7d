"""Cluster-wide limits held on the Dask scheduler: concurrency slots, token-bucket rates, and
results or bytes of results alive (choke-holds).

- :mod:`._spec`: validation of limit names, settings and ``limits=`` annotations;
- :mod:`._bucket`: the token bucket behind a rate;
- :mod:`._limit`: one limit's state (slots, tokens, results alive and their bytes);
- :mod:`._ledger`: who holds and who waits, and who is granted in a round;
- :mod:`._progress`: whether a limit blocked by its results could see one freed;
- :mod:`._guard`: the automatic back-pressure guard (watermarks, which tasks produce data);
- :mod:`._plugin`: the scheduler extension that holds tasks and enacts the grants;
- :mod:`._metrics`: its state as Prometheus metrics on the scheduler's ``/metrics``;
- :mod:`._client`: the client API (:func:`set_limit`, :func:`limits`, :func:`lease`,
  :func:`remove_limit`);

Options are dask config keys ``hafen.limits.*`` and ``hafen.backpressure.*`` (see
``hafen/cluster/cluster.yaml``).
"""

from __future__ import annotations

from hafen.cluster.limits._bucket import TokenBucket
from hafen.cluster.limits._client import lease, limits, remove_limit, set_limit
from hafen.cluster.limits._plugin import (
    EXTENSION_NAME,
    HOLD_RESOURCE,
    LimitsExtension,
    install_limits,
)
from hafen.cluster.limits._spec import (
    ANNOTATION,
    LimitSpec,
    check_name,
    make_spec,
    parse_annotation,
    parse_memory,
    parse_rate,
)

__all__ = [
    "ANNOTATION",
    "EXTENSION_NAME",
    "HOLD_RESOURCE",
    "LimitSpec",
    "LimitsExtension",
    "TokenBucket",
    "check_name",
    "install_limits",
    "lease",
    "limits",
    "make_spec",
    "parse_annotation",
    "parse_memory",
    "parse_rate",
    "remove_limit",
    "set_limit",
]
