"""Prometheus metrics of the limits, served on the scheduler's existing ``/metrics`` endpoint.

distributed's ``/metrics`` handler writes ``prometheus_client.REGISTRY``; a collector registered
there is served with the scheduler's own metrics, as distributed's semaphore collector is. One
collector per process reports the most recently installed extension (a process normally runs one
scheduler; tests start several one after the other, as distributed's own collectors assume).
The collector knows the extension only by its ``info`` method (held weakly, so a closed scheduler
is not kept alive), so this module does not depend on the extension's.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import dask.config

#: What the collector reads: the ``info()`` of the limits extension.
Info = Callable[[], dict[str, dict[str, Any]]]

__all__ = ["register_metrics"]

SUBSYSTEM = "hafen_limits"

_collector: _LimitsCollector | None = None


class _LimitsCollector:
    def __init__(self) -> None:
        self.info: Callable[[], Info | None] = lambda: None

    def _name(self, name: str) -> str:
        namespace = dask.config.get("distributed.dashboard.prometheus.namespace")
        return "_".join(p for p in (namespace, SUBSYSTEM, name) if p)

    def describe(self) -> list[Any]:
        return []  # collected lazily; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        source = self.info()
        if source is None:
            return
        info = source()
        families: dict[str, Any] = {
            "concurrency": GaugeMetricFamily(
                self._name("concurrency"), "Slots of the limit (absent: no cap)", labels=["name"]
            ),
            "rate": GaugeMetricFamily(
                self._name("rate_per_second"),
                "Token-bucket rate of the limit, grants per second (absent: no rate)",
                labels=["name"],
            ),
            "results": GaugeMetricFamily(
                self._name("results"),
                "Results the limit allows alive (absent: no cap)",
                labels=["name"],
            ),
            "memory": GaugeMetricFamily(
                self._name("memory_bytes"),
                "Bytes of results the limit allows (absent: no cap)",
                labels=["name"],
            ),
            "in_use": GaugeMetricFamily(
                self._name("in_use"), "Slots held by running tasks and leases", labels=["name"]
            ),
            "alive": GaugeMetricFamily(
                self._name("alive"), "Results of the limit's tasks alive", labels=["name"]
            ),
            "alive_bytes": GaugeMetricFamily(
                self._name("alive_bytes"),
                "Bytes of the limit's results alive (running ones estimated)",
                labels=["name"],
            ),
            "overrides": CounterMetricFamily(
                self._name("overrides"),
                "Grants over results/memory because nothing could free them",
                labels=["name"],
            ),
            "waiting": GaugeMetricFamily(
                self._name("waiting"), "Tasks and leases waiting for the limit", labels=["name"]
            ),
            "granted": CounterMetricFamily(
                self._name("granted"), "Grants since the limit was created", labels=["name"]
            ),
            "longest_wait": GaugeMetricFamily(
                self._name("longest_wait_seconds"),
                "Longest current wait for the limit",
                labels=["name"],
            ),
        }
        for name, row in info.items():
            if row["concurrency"] is not None:
                families["concurrency"].add_metric([name], row["concurrency"])
            if row["rate_per_second"] is not None:
                families["rate"].add_metric([name], row["rate_per_second"])
            if row.get("results") is not None:
                families["results"].add_metric([name], row["results"])
            if row.get("memory") is not None:
                families["memory"].add_metric([name], row["memory"])
            families["in_use"].add_metric([name], row["in_use"])
            families["alive"].add_metric([name], row.get("alive", 0))
            families["alive_bytes"].add_metric([name], row.get("alive_bytes", 0))
            families["overrides"].add_metric([name], row.get("overrides", 0))
            families["waiting"].add_metric([name], row["waiting"])
            families["granted"].add_metric([name], row["granted"])
            families["longest_wait"].add_metric([name], row["longest_wait"])
        yield from families.values()


def register_metrics(info: Info) -> bool:
    """Serve the limits ``info()`` returns on ``/metrics``; False when prometheus_client is missing.

    ``info`` is the extension's bound ``info`` method (held weakly) or any callable returning the
    same shape (held strongly).
    """
    global _collector
    try:
        import prometheus_client
    except ModuleNotFoundError:  # pragma: no cover - a dependency of hafen
        return False
    if _collector is None:
        _collector = _LimitsCollector()
        prometheus_client.REGISTRY.register(_collector)
    if inspect.ismethod(info):
        _collector.info = weakref.WeakMethod(info)
    else:
        _collector.info = lambda: info
    return True
