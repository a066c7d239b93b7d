"""The ``hafen.*`` dask config keys: every default has a schema, and bad values name their key.

As distributed tests ``distributed.yaml`` against ``distributed-schema.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import dask
import pytest

from hafen.cluster import _config
from hafen.cluster.comm import CommOptions
from hafen.cluster.limits import LimitsExtension, make_spec
from hafen.cluster.resilience import (
    DrainCoordinator,
    DrainOnSigterm,
    DrainWorkers,
    Replication,
    ResiliencePlugin,
    drain,
)
from hafen.errors import ConfigError


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted keys of the leaves of a YAML mapping."""
    for name, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def schema_leaves(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted keys the schema describes (nodes without ``properties``)."""
    for name, child in node["properties"].items():
        if "properties" in child:
            yield from schema_leaves(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


KEYS = sorted(leaves(_config.DEFAULTS))


def test_every_key_of_the_yaml_is_in_the_schema_and_back():
    assert KEYS, "cluster.yaml is empty"
    assert set(KEYS) == set(schema_leaves(_config.schema()))
    for key in KEYS:
        node = _config._schema_of(key)
        assert node.get("description"), f"{key} has no description in the schema"


def test_the_defaults_are_in_dask_config_and_valid():
    for key in KEYS:
        assert dask.config.get(key) == _config._default(key), key
        _config.option(key)  # raises if the default does not fit its schema


def test_the_defaults_validate_as_json_schema():
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis, a dev dependency
    validator = jsonschema_rs.validator_for(_config.schema())
    assert validator.is_valid(_config.DEFAULTS)
    assert not validator.is_valid({"hafen": {"drain": {"batch-keys": "many"}}})


def _resilience_plugin() -> None:
    ResiliencePlugin().install(SimpleNamespace())  # type: ignore[arg-type]


def _cost(ts: Any) -> float:
    return 0.0


#: For every key: a bad value, and how to build the object that reads the key.
BAD: dict[str, tuple[Any, Callable[[], Any]]] = {
    "hafen.limits.burst": (0, lambda: LimitsExtension(None)),  # type: ignore[arg-type]
    "hafen.limits.min-refresh-interval": (0, lambda: LimitsExtension(None)),  # type: ignore[arg-type]
    "hafen.backpressure.enabled": ("yes", lambda: LimitsExtension(None)),  # type: ignore[arg-type]
    "hafen.backpressure.high": ("lots", lambda: LimitsExtension(None)),  # type: ignore[arg-type]
    "hafen.backpressure.low": (0, lambda: LimitsExtension(None)),  # type: ignore[arg-type]
    "hafen.backpressure.window": (-1, lambda: LimitsExtension(None)),  # type: ignore[arg-type]
    "hafen.replication.replicas": (True, Replication),
    "hafen.replication.min-duration": ("soon", Replication),
    "hafen.replication.max-nbytes": ("big", Replication),
    "hafen.replication.memory-budget": (1.5, Replication),
    "hafen.replication.delay": (-1, _resilience_plugin),
    "hafen.replication.max-cost-depth": ("deep", Replication),
    "hafen.drain.timeout": ("soon", lambda: drain(None, ["tcp://127.0.0.1:1"])),  # type: ignore[arg-type]
    "hafen.drain.sigterm-timeout": ([25], DrainOnSigterm),
    "hafen.drain.batch-bytes": (0, lambda: DrainCoordinator(None, _cost)),  # type: ignore[arg-type]
    "hafen.drain.batch-keys": (0, lambda: DrainWorkers([], _cost)),
    "hafen.drain.retry-after": ("5 fortnights", lambda: DrainWorkers([], _cost)),
    "hafen.drain.poll-interval": (0, lambda: DrainCoordinator(None, _cost)),  # type: ignore[arg-type]
    "hafen.drain.remember": (None, lambda: DrainCoordinator(None, _cost)),  # type: ignore[arg-type]
    "hafen.comm.grace": (-1, CommOptions.from_config),
    "hafen.comm.buffer": ("lots", CommOptions.from_config),
    "hafen.comm.heartbeat": (0, CommOptions.from_config),
    "hafen.comm.link-timeout": ("never", CommOptions.from_config),
}


def test_every_key_has_a_bad_value_test():
    assert sorted(BAD) == KEYS


@pytest.mark.parametrize("key", KEYS)
def test_a_bad_value_fails_when_the_object_is_built_and_names_the_key(key):
    value, build = BAD[key]
    with dask.config.set({key: value}), pytest.raises(ConfigError) as info:
        build()
    assert key in str(info.value)
    assert repr(value) in str(info.value)


def test_a_bad_argument_names_the_argument_and_the_key():
    with pytest.raises(ConfigError, match=r"^replicas= \(dask config hafen\.replication\.replicas"):
        Replication(replicas=0)
    with pytest.raises(ConfigError, match=r"timeout= \(dask config hafen\.drain\.timeout\)"):
        drain(None, ["w"], timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"default_burst= \(dask config hafen\.limits\.burst"):
        make_spec("x", rate="1/s", default_burst=0)


@pytest.mark.parametrize(
    ("key", "value", "parsed"),
    [
        ("hafen.drain.timeout", "5m", 300.0),
        ("hafen.drain.timeout", 30, 30.0),
        ("hafen.drain.poll-interval", "50ms", 0.05),
        ("hafen.drain.batch-bytes", "64MiB", 64 * 2**20),
        ("hafen.drain.batch-bytes", "1kB", 1000),
        ("hafen.replication.min-duration", None, None),
        ("hafen.replication.max-nbytes", 1024, 1024),
        ("hafen.limits.burst", 3, 3),
    ],
)
def test_durations_and_sizes_are_parsed_as_dask_does(key, value, parsed):
    assert _config.option(key, value) == parsed
    with dask.config.set({key: value}):
        assert _config.option(key) == parsed


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hafen.drain.timeout", None),  # not nullable
        ("hafen.drain.timeout", float("inf")),
        ("hafen.drain.timeout", True),
        ("hafen.drain.poll-interval", "0s"),  # exclusive minimum
        ("hafen.drain.batch-bytes", 1.5),  # sizes are whole bytes
        ("hafen.drain.batch-bytes", "-5MiB"),
        ("hafen.limits.burst", 1.0),
    ],
)
def test_values_outside_the_schema_are_refused(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _config.option(key, value)


def test_the_replication_policy_is_configured_by_its_public_path():
    """What ``distributed.scheduler.active-memory-manager.policies`` lists for hafen's policy."""
    from distributed.utils import import_term  # how the AMM imports a configured policy

    assert import_term("hafen.cluster.resilience.Replication") is Replication
