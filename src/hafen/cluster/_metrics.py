"""Prometheus metrics of the limits, served on the scheduler's existing ``/metrics`` endpoint.

distributed's ``/metrics`` handler writes ``prometheus_client.REGISTRY``; a collector registered
there is served with the scheduler's own metrics, as distributed's semaphore collector is. One
collector per process reports the most recently installed extension (a process normally runs one
scheduler; tests start several one after the other, as distributed's own collectors assume).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dask.config

if TYPE_CHECKING:
    from hafen.cluster._limits import LimitsExtension

__all__ = ["register_metrics"]

SUBSYSTEM = "hafen_limits"

_collector: _LimitsCollector | None = None


class _LimitsCollector:
    def __init__(self) -> None:
        self.extension: weakref.ref[LimitsExtension] | None = None

    def _name(self, name: str) -> str:
        namespace = dask.config.get("distributed.dashboard.prometheus.namespace")
        return "_".join(p for p in (namespace, SUBSYSTEM, name) if p)

    def describe(self) -> list[Any]:
        return []  # collected lazily; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ext = self.extension() if self.extension is not None else None
        if ext is None:
            return
        info = ext.info()
        families: dict[str, Any] = {
            "concurrency": GaugeMetricFamily(
                self._name("concurrency"), "Slots of the limit (absent: no cap)", labels=["name"]
            ),
            "rate": GaugeMetricFamily(
                self._name("rate_per_second"),
                "Token-bucket rate of the limit, grants per second (absent: no rate)",
                labels=["name"],
            ),
            "in_use": GaugeMetricFamily(
                self._name("in_use"), "Slots held by running tasks and leases", labels=["name"]
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
            families["in_use"].add_metric([name], row["in_use"])
            families["waiting"].add_metric([name], row["waiting"])
            families["granted"].add_metric([name], row["granted"])
            families["longest_wait"].add_metric([name], row["longest_wait"])
        yield from families.values()


def register_metrics(extension: LimitsExtension) -> bool:
    """Serve ``extension``'s metrics on ``/metrics``; False when prometheus_client is missing."""
    global _collector
    try:
        import prometheus_client
    except ModuleNotFoundError:  # pragma: no cover - a dependency of hafen
        return False
    if _collector is None:
        _collector = _LimitsCollector()
        prometheus_client.REGISTRY.register(_collector)
    _collector.extension = weakref.ref(extension)
    return True
