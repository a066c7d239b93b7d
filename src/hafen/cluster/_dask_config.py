"""hafen's defaults in dask config (``hafen.replication.*``, ``hafen.drain.*``).

The defaults live in ``resilience.yaml`` next to this module and are merged into dask config on
import, as distributed does with its own ``distributed.yaml``; users override them like any dask
setting. Readers validate what they get, so a bad value fails when an object is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

from hafen.config import parse_bytes, parse_duration
from hafen.errors import ConfigError

__all__ = ["config_bytes", "config_duration", "config_get"]

_DEFAULTS_FILE = Path(__file__).with_name("resilience.yaml")


def _load_defaults() -> dict[str, Any]:
    with _DEFAULTS_FILE.open() as f:
        defaults: dict[str, Any] = yaml.safe_load(f)
    dask.config.update_defaults(defaults)
    return defaults


_DEFAULTS = _load_defaults()


def config_get(key: str) -> Any:
    """Return dask config ``key``, falling back to ``resilience.yaml``.

    The fallback matters when something resets dask config to a snapshot taken before this
    module was imported (distributed's test utilities do).
    """
    default: Any = _DEFAULTS
    for part in key.split("."):
        default = default[part]
    return dask.config.get(key, default=default)


def config_duration(value: Any, *, name: str, allow_none: bool = False) -> float | None:
    """Validate a duration (seconds, or a string like ``"5m"``) and return it in seconds."""
    if value is None:
        if allow_none:
            return None
        raise ConfigError(f"{name} must be a duration, got None")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{name} must be a duration like '30s', got {value!r}")
    seconds = parse_duration(value)
    return seconds


def config_bytes(value: Any, *, name: str, allow_none: bool = False) -> int | None:
    """Validate a size (bytes, or a string like ``"64MiB"``) and return it in bytes."""
    if value is None:
        if allow_none:
            return None
        raise ConfigError(f"{name} must be a size, got None")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(f"{name} must be a size like '64MiB', got {value!r}")
    return parse_bytes(value)
