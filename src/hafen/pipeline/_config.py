"""The pipeline's configuration: what ``hafen demo`` fills in, and ``hafen run --config`` reads.

A ``pipeline.toml`` for real parts (every key optional except ``source.url``)::

    [source]
    url = "postgresql://user@db/retail"   # any SQLAlchemy URL, or a SQLite file path
    chunks = 16                           # extraction tasks for the sales table
    concurrency = 4                       # cluster-wide limit on the database's connections

    [datasets]
    root = "az://lake/retail"             # fsspec URL; the datasets go under it

    [cluster]
    scheduler = "tcp://10.0.0.5:8786"     # else HAFEN_SCHEDULER, else a local cluster
    n_workers = 2
    threads_per_worker = 1

    [model]
    horizon = 28
    holdout = 28
    max_iter = 50
    refit = false

    [synth]                               # generate a synthetic database at source.url first
    stores = 10
    products = 100
    days = 730
    seed = 0
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from hafen.errors import ConfigError
from hafen.pipeline._model import HOLDOUT, HORIZON, ModelParams

__all__ = ["DB_LIMIT", "PipelineConfig", "SynthParams", "load_config"]

#: The cluster-wide limit the extraction tasks hold one slot of each.
DB_LIMIT = "retail-db"
DEFAULT_CHUNKS = 8
DEFAULT_CONCURRENCY = 2


@dataclasses.dataclass(frozen=True)
class SynthParams:
    """The size of the synthetic database (``[synth]`` in ``pipeline.toml``) and its seed."""

    stores: int = 10
    products: int = 100
    days: int = 730
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Where the data comes from and goes, the cluster, and the model.

    ``datasets_root`` holds ``raw/{sales,promotions,products,stores,holidays}``, ``sales``,
    ``sales_by_store`` and ``forecasts``.
    """

    source_url: str
    datasets_root: str
    chunks: int = DEFAULT_CHUNKS
    concurrency: int = DEFAULT_CONCURRENCY
    scheduler: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1
    horizon: int = HORIZON
    holdout: int = HOLDOUT
    model: ModelParams = dataclasses.field(default_factory=ModelParams)
    synth: SynthParams | None = None

    def __post_init__(self) -> None:
        for name in ("chunks", "concurrency", "n_workers", "threads_per_worker"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.horizon != HORIZON or self.holdout != HOLDOUT:
            # the model's smallest lag is the horizon; other horizons need other lags
            raise ConfigError(f"horizon and holdout must be {HORIZON} days in this version")

    def dataset(self, name: str) -> str:
        """The URL of dataset ``name`` (``"sales"``, ``"raw/sales"``, ...)."""
        return f"{self.datasets_root.rstrip('/')}/{name}"


_SECTIONS: dict[str, dict[str, str]] = {
    "source": {"url": "source_url", "chunks": "chunks", "concurrency": "concurrency"},
    "datasets": {"root": "datasets_root"},
    "cluster": {
        "scheduler": "scheduler",
        "n_workers": "n_workers",
        "threads_per_worker": "threads_per_worker",
    },
    "model": {"horizon": "horizon", "holdout": "holdout"},
}


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read a ``pipeline.toml``; relative paths in it are relative to the file's folder.

    Raises
    ------
    ConfigError
        If the file cannot be read, or a section, key or value is unknown or invalid.
    """
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: {exc}") from exc
    known = {*_SECTIONS, "synth"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{file}: unknown sections {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    model_fields = {f.name for f in dataclasses.fields(ModelParams)}
    model: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: [{section}] must be a table")
        extra = set(keys) | (model_fields if section == "model" else set())
        bad = sorted(set(table) - extra)
        if bad:
            raise ConfigError(f"{file}: unknown keys {bad} in [{section}]")
        for key, value in table.items():
            if key in keys:
                values[keys[key]] = value
            else:
                model[key] = value
    if "source_url" not in values:
        raise ConfigError(f"{file}: [source] url is required")
    base = file.resolve().parent
    source = str(values["source_url"])
    if "://" not in source:  # a SQLite file, relative to the config's folder
        values["source_url"] = f"sqlite:///{base / source}"
    root = str(values.get("datasets_root", "datasets"))
    values["datasets_root"] = root if "://" in root else str(base / root)
    if "synth" in data:
        synth = data["synth"]
        bad = sorted(set(synth) - {f.name for f in dataclasses.fields(SynthParams)})
        if bad:
            raise ConfigError(f"{file}: unknown keys {bad} in [synth]")
        values["synth"] = SynthParams(**synth)
    try:
        return PipelineConfig(**values, model=ModelParams(**model))
    except TypeError as exc:
        raise ConfigError(f"{file}: {exc}") from exc
