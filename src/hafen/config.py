"""Settings: defaults, then a ``hafen.toml``, then ``HAFEN_*`` environment variables.

No other module keeps global settings; they call :func:`get_settings`, which reads them once per
process and returns the same frozen :class:`Settings` afterwards. :func:`reload_settings` reads
them again, for a process that changed its environment or its ``hafen.toml``.

``hafen.toml`` is looked up at ``$HAFEN_CONFIG`` or in the working directory::

    scheduler = "tcp://10.0.0.5:8786"
    checkpoint_interval = 100

    [storage_options]
    account_name = "devstoreaccount1"
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from hafen.errors import ConfigError

__all__ = ["Settings", "get_settings", "parse_bytes", "parse_duration", "reload_settings"]

DEFAULT_CHECKPOINT_INTERVAL = 50
DEFAULT_COMMIT_RETRIES = 50
DEFAULT_GRACE_PERIOD = "1h"
DEFAULT_RETAIN_VERSIONS = 10
DEFAULT_LOG_RETENTION = "30d"


@dataclasses.dataclass(frozen=True)
class Settings:
    """hafen's settings; every field can be set as ``HAFEN_<FIELD>`` or in ``hafen.toml``."""

    scheduler: str | None = None
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    commit_retries: int = DEFAULT_COMMIT_RETRIES
    grace_period: str = DEFAULT_GRACE_PERIOD
    retain_versions: int = DEFAULT_RETAIN_VERSIONS
    # how long vacuum keeps the stubs of retired log entries before deleting them
    log_retention: str = DEFAULT_LOG_RETENTION
    memory_budget: str | None = None
    # rewrite plateau's metadata file after each commit (its cost grows with the dataset's files)
    plateau_view: bool = True
    # remember each dataset's last state in this process and read only the log entries since
    state_cache: bool = True
    # "auto": dictionary-encode a Parquet column only when a sample shows its dictionary would
    # at least halve a file's bytes of it; "always": every column, as Arrow does by default
    parquet_dictionary: str = "auto"
    workdir: str = "hafen-demo"
    # credentials, often: never in the settings' repr
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.checkpoint_interval < 1:
            raise ConfigError(f"checkpoint_interval must be >= 1, got {self.checkpoint_interval}")
        if self.commit_retries < 0:
            raise ConfigError(f"commit_retries must be >= 0, got {self.commit_retries}")
        parse_duration(self.grace_period)
        parse_duration(self.log_retention)
        if self.retain_versions < 1:
            raise ConfigError(f"retain_versions must be >= 1, got {self.retain_versions}")
        if self.parquet_dictionary not in ("auto", "always"):
            raise ConfigError(
                f"parquet_dictionary must be 'auto' or 'always', got {self.parquet_dictionary!r}"
            )
        if self.memory_budget is not None:
            parse_bytes(self.memory_budget)


def _coerce(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if kind.startswith("bool"):
        if raw.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
            raise ConfigError(f"HAFEN_{field.name.upper()} must be true or false, got {raw!r}")
        return raw.lower() in {"1", "true", "yes", "on"}
    if kind.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(
                f"HAFEN_{field.name.upper()} must be an integer, got {raw!r}"
            ) from None
    if kind.startswith("dict"):
        raise ConfigError(f"HAFEN_{field.name.upper()} cannot be set from the environment")
    return raw


#: The settings of this process, once read (see :func:`get_settings`).
_settings: Settings | None = None


def get_settings(env: dict[str, str] | None = None, toml_path: str | None = None) -> Settings:
    """Return the settings in force: defaults, then ``hafen.toml``, then ``HAFEN_*`` variables.

    The process reads them on the first call and returns the same frozen :class:`Settings`
    afterwards: a later change to the environment or to ``hafen.toml`` (or of the working
    directory) takes effect after :func:`reload_settings`, or in a new process.

    With either argument, the settings are computed from them now; the process's settings are
    neither used nor changed.

    Parameters
    ----------
    env
        Variables to read instead of ``os.environ``.
    toml_path
        The ``hafen.toml`` to read instead of ``$HAFEN_CONFIG`` or ``./hafen.toml``.

    Raises
    ------
    hafen.errors.ConfigError
        If a value is invalid, or ``hafen.toml`` cannot be parsed or names an unknown setting.

    Examples
    --------
    >>> get_settings(env={"HAFEN_CHECKPOINT_INTERVAL": "10"}).checkpoint_interval
    10
    """
    global _settings
    if env is not None or toml_path is not None:
        return _read_settings(env, toml_path)
    settings = _settings
    if settings is None:
        settings = _settings = _read_settings(None, None)
    return settings


def reload_settings() -> Settings:
    """Read the settings again, keep them for this process and return them.

    For a process that changed ``HAFEN_*`` variables or its ``hafen.toml`` after the first
    :func:`get_settings`. Processes started later (Dask workers, subprocesses) read their own.

    Examples
    --------
    >>> os.environ["HAFEN_RETAIN_VERSIONS"] = "20"  # doctest: +SKIP
    >>> reload_settings().retain_versions  # doctest: +SKIP
    20
    """
    global _settings
    _settings = None
    return get_settings()


def _read_settings(env: dict[str, str] | None, toml_path: str | None) -> Settings:
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    path = Path(toml_path or env.get("HAFEN_CONFIG") or "hafen.toml")
    if path.is_file():
        try:
            values.update(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {', '.join(unknown)}")
    for name, field in fields.items():
        raw = env.get(f"HAFEN_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(field, raw)
    return Settings(**values)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | int) -> float:
    """Return a duration in seconds from ``90``, ``"90s"``, ``"5m"``, ``"1h"`` or ``"2d"``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"not a duration: {value!r} (expected seconds or e.g. '30s', '1h')")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"a duration must be a finite number of seconds >= 0, got {value}")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ConfigError(f"not a duration: {value!r} (expected e.g. '30s', '5m', '1h')")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


def parse_bytes(value: str | int) -> int:
    """Return a size in bytes from ``1024``, ``"512MiB"``, ``"1GB"`` or ``"1 GiB"``."""
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"a size cannot be negative: {value}")
        return value
    match = _BYTES.match(value)
    if not match:
        raise ConfigError(f"not a size: {value!r} (expected e.g. '512MiB', '1GB')")
    number, unit = float(match.group(1)), match.group(2).lower()
    prefix = unit[:1] if unit[:1] in "kmgt" and unit else ""
    base = 1024 if "i" in unit else 1000
    power = " kmgt".index(prefix) if prefix else 0
    return int(number * base**power)
