"""The ``hafen.*`` dask config keys of hafen's Dask extensions: defaults, schema, validation.

As distributed does with ``distributed.yaml`` and ``distributed-schema.yaml``: the defaults live
in ``cluster.yaml`` and are merged into dask config with ``dask.config.update_defaults`` when this
module is imported; ``cluster-schema.yaml`` (JSON Schema) describes and constrains every key.
Users override them like any dask setting.

Objects read their options through :func:`option`, when they are built (as distributed's
``ActiveMemoryManagerExtension`` does): a constructor argument wins, else the dask config key;
either way the value is checked against the key's schema, durations are parsed with
``dask.utils.parse_timedelta`` and sizes with ``dask.utils.parse_bytes``, and a bad value raises
:class:`~hafen.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import enum
import functools
import math
from pathlib import Path
from typing import Any

import dask.config
import yaml
from dask.utils import parse_bytes, parse_timedelta

from hafen.errors import ConfigError

__all__ = ["DEFAULTS", "UNSET", "check", "option", "schema"]

_DEFAULTS_FILE = Path(__file__).with_name("cluster.yaml")
_SCHEMA_FILE = Path(__file__).with_name("cluster-schema.yaml")


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: Marks an argument that was not given: :func:`option` then reads dask config. (An enum member,
#: so it survives pickling: a plugin built on a client is unpickled on the scheduler.)
UNSET: Any = _Unset.UNSET


def _load_defaults() -> dict[str, Any]:
    with _DEFAULTS_FILE.open() as f:
        defaults: dict[str, Any] = yaml.safe_load(f)
    dask.config.update_defaults(defaults)
    return defaults


#: The contents of ``cluster.yaml``, merged into dask config on import.
DEFAULTS = _load_defaults()


@functools.cache
def schema() -> dict[str, Any]:
    """The contents of ``cluster-schema.yaml`` (read once, on first use)."""
    with _SCHEMA_FILE.open() as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


def _default(key: str) -> Any:
    node: Any = DEFAULTS
    for part in key.split("."):
        node = node[part]
    return node


def _schema_of(key: str) -> dict[str, Any]:
    node: dict[str, Any] = schema()
    for part in key.split("."):
        node = node["properties"][part]
    return node


def option(key: str, value: Any = UNSET, *, argument: str | None = None) -> Any:
    """Return ``value``, or dask config ``key`` when it is :data:`UNSET`, validated and parsed.

    Parameters
    ----------
    key
        A ``hafen.*`` key of ``cluster.yaml``, e.g. ``"hafen.drain.timeout"``.
    value
        What the caller was given; :data:`UNSET` reads dask config (falling back to
        ``cluster.yaml`` when something reset dask config to a snapshot taken before this module
        was imported, as distributed's test utilities do).
    argument
        The name of the argument ``value`` came from, for the error message.

    Returns
    -------
    Any
        ``None`` where the schema allows it; seconds (float) for a duration, bytes (int) for a
        size; the value itself otherwise.

    Raises
    ------
    hafen.errors.ConfigError
        If the value does not match the key's schema; the message names the key.
    """
    if value is UNSET:
        value = dask.config.get(key, default=_default(key))
        where = f"dask config {key}"
    elif argument is not None:
        where = f"{argument}= (dask config {key})"
    else:
        where = key
    return check(_schema_of(key), value, where=where)


def check(node: dict[str, Any], value: Any, *, where: str) -> Any:
    """Check ``value`` against one schema ``node`` and return it parsed (see :func:`option`)."""
    types = node["type"] if isinstance(node["type"], list) else [node["type"]]
    if value is None:
        if "null" in types:
            return None
        raise ConfigError(f"{where}: expected {_describe(node)}, got None")
    fmt = node.get("format")
    parsed = value
    if isinstance(value, str) and "string" in types and fmt in ("timedelta", "bytes"):
        try:
            if fmt == "timedelta":
                parsed = parse_timedelta(value, default="seconds")
            else:
                parsed = parse_bytes(value)
        except (KeyError, ValueError, TypeError, AttributeError):
            raise ConfigError(f"{where}: expected {_describe(node)}, got {value!r}") from None
    elif not any(_is(value, t) for t in types):
        raise ConfigError(f"{where}: expected {_describe(node)}, got {value!r}")
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):
        minimum = node.get("minimum")
        above = node.get("exclusiveMinimum")
        if (
            not math.isfinite(parsed)
            or (minimum is not None and parsed < minimum)
            or (above is not None and parsed <= above)
        ):
            raise ConfigError(f"{where}: expected {_describe(node)}, got {value!r}")
        if fmt == "timedelta":
            parsed = float(parsed)
    return parsed


def _is(value: Any, json_type: str) -> bool:
    if isinstance(value, bool):
        return json_type == "boolean"
    if json_type == "integer":
        return isinstance(value, int)
    if json_type == "number":
        return isinstance(value, int | float)
    if json_type == "string":
        return isinstance(value, str)
    return False


def _describe(node: dict[str, Any]) -> str:
    types = node["type"] if isinstance(node["type"], list) else [node["type"]]
    fmt = node.get("format")
    if fmt == "timedelta":
        what = "a duration (seconds, or a string like '30s')"
    elif fmt == "bytes":
        what = "a size (bytes, or a string like '64MiB')"
    else:
        what = " or ".join(f"{'an' if t == 'integer' else 'a'} {t}" for t in types if t != "null")
    if "minimum" in node:
        what += f" >= {node['minimum']}"
    if "exclusiveMinimum" in node:
        what += f" > {node['exclusiveMinimum']}"
    if "null" in types:
        what += ", or null"
    return what
