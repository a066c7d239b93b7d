"""What the Dask functions share: argument checks, the cluster's shape, and running task lists."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from hafen.config import Settings, get_settings, parse_bytes
from hafen.errors import ConfigError, SchemaError

__all__ = [
    "ClusterShape",
    "as_column_list",
    "check_columns",
    "cluster_shape",
    "compute",
    "to_pandas",
]

#: Used when neither ``memory_budget``, ``HAFEN_MEMORY_BUDGET`` nor a worker memory limit is known.
DEFAULT_MEMORY_BUDGET = "1GiB"


def as_column_list(name: str, columns: Sequence[str] | str | None) -> list[str]:
    """Return ``columns`` as a list; a bare string is refused (it is almost always a mistake)."""
    if columns is None:
        return []
    if isinstance(columns, str):
        raise ConfigError(f"{name} must be a list of column names, got the string {columns!r}")
    out = list(columns)
    if not all(isinstance(c, str) for c in out):
        raise ConfigError(f"{name} must be a list of column names, got {out!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{name} names a column twice: {out}")
    return out


def check_columns(kind: str, columns: Sequence[str], available: Sequence[str]) -> None:
    """Raise :class:`SchemaError` naming the ``columns`` that are not in ``available``."""
    unknown = [c for c in columns if c not in available]
    if unknown:
        raise SchemaError(
            f"{kind} columns {unknown} are not in the data (it has {', '.join(available)})"
        )


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Convert one Arrow table to pandas the same way for data and for ``meta``."""
    return table.to_pandas()


@dataclass(frozen=True)
class ClusterShape:
    """What a memory plan needs to know about the workers."""

    memory_limit: int | None  # the smallest worker memory limit, None when unknown
    threads_per_worker: int  # the largest number of tasks one worker runs at once
    workers: int
    distributed: bool


def _current_client() -> Any:
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_client()
    except ValueError:
        return None


def cluster_shape() -> ClusterShape:
    """Describe the workers of the default Dask client, or of the local scheduler without one."""
    client = _current_client()
    if client is not None:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        if workers:
            limits = [w.get("memory_limit") or 0 for w in workers.values()]
            known = [m for m in limits if m > 0]
            return ClusterShape(
                memory_limit=min(known) if known else None,
                threads_per_worker=max(w.get("nthreads", 1) for w in workers.values()),
                workers=len(workers),
                distributed=True,
            )
    import dask

    threads = dask.config.get("num_workers", None) or os.cpu_count() or 1
    return ClusterShape(None, int(threads), 1, distributed=False)


def resolve_budget(
    memory_budget: str | int | None, shape: ClusterShape, settings: Settings | None = None
) -> int:
    """Return the per-worker memory budget in bytes.

    ``memory_budget`` first, then the ``memory_budget`` setting (``HAFEN_MEMORY_BUDGET``; of
    ``settings`` when given, else read now), then the workers' memory limit, then
    :data:`DEFAULT_MEMORY_BUDGET`. An explicit budget above a worker's memory limit is lowered
    to that limit.
    """
    if memory_budget is None:
        memory_budget = (get_settings() if settings is None else settings).memory_budget
    explicit = memory_budget
    if explicit is not None:
        budget = parse_bytes(explicit)
        if shape.memory_limit is not None:
            budget = min(budget, shape.memory_limit)
    elif shape.memory_limit is not None:
        budget = shape.memory_limit
    else:
        budget = parse_bytes(DEFAULT_MEMORY_BUDGET)
    return budget


def compute(tasks: Sequence[Any]) -> list[Any]:
    """Compute a list of delayed objects with the default scheduler; return their results."""
    import dask

    if not tasks:
        return []
    return list(dask.compute(*tasks))
