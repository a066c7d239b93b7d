"""hafen: production-grade data pipelines on Dask.

The public API of ``../shared/DESIGN.md``; each name is imported on first use, so that
``import hafen`` (and the command line) stays fast and pulls in Dask only when needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hafen._version import __version__

_EXPORTS: dict[str, str] = {
    # datasets
    "Dataset": "hafen.datasets",
    "open_dataset": "hafen.datasets",
    "write_dataset": "hafen.datasets",
    # datasets on Dask
    "read_ddf": "hafen.dask",
    "write_ddf": "hafen.dask",
    "reshuffle": "hafen.dask",
    # cluster extensions
    "connect": "hafen.cluster",
    "set_limit": "hafen.cluster",
    "remove_limit": "hafen.cluster",
    "lease": "hafen.cluster",
    "limits": "hafen.cluster",
    "drain": "hafen.cluster",
    # relational databases
    "extract": "hafen.sql",
    "load": "hafen.sql",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ resolves names
    from hafen.cluster import connect, drain, lease, limits, remove_limit, set_limit  # noqa: F401
    from hafen.dask import read_ddf, reshuffle, write_ddf  # noqa: F401
    from hafen.datasets import Dataset, open_dataset, write_dataset  # noqa: F401
    from hafen.sql import extract, load  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hafen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
