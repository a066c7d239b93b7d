"""Settings: defaults, hafen.toml, HAFEN_* variables, and clear errors."""

from __future__ import annotations

import pytest

from hafen.config import get_settings, parse_bytes, parse_duration
from hafen.errors import ConfigError


def test_precedence(tmp_path):
    toml = tmp_path / "hafen.toml"
    toml.write_text('checkpoint_interval = 7\nscheduler = "tcp://a:1"\n[storage_options]\nx = 1\n')
    s = get_settings(env={"HAFEN_CHECKPOINT_INTERVAL": "9"}, toml_path=str(toml))
    assert s.checkpoint_interval == 9 and s.scheduler == "tcp://a:1"
    assert s.storage_options == {"x": 1}
    assert get_settings(env={}, toml_path=str(tmp_path / "none.toml")).checkpoint_interval == 50
    assert get_settings(env={"HAFEN_PLATEAU_VIEW": "false"}).plateau_view is False


@pytest.mark.parametrize(
    "env, toml, match",
    [
        ({"HAFEN_CHECKPOINT_INTERVAL": "x"}, "", "integer"),
        ({"HAFEN_CHECKPOINT_INTERVAL": "0"}, "", ">= 1"),
        ({"HAFEN_PLATEAU_VIEW": "maybe"}, "", "true or false"),
        ({}, "bogus = 1\n", "unknown settings bogus"),
        ({}, "checkpoint_interval = \n", "hafen.toml"),
        ({"HAFEN_GRACE_PERIOD": "soon"}, "", "duration"),
        ({"HAFEN_PARQUET_DICTIONARY": "never"}, "", "parquet_dictionary must be 'auto'"),
    ],
)
def test_errors_name_the_setting(tmp_path, env, toml, match):
    path = tmp_path / "hafen.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        get_settings(env=env, toml_path=str(path))


def test_units():
    assert parse_duration("90s") == 90 and parse_duration("5m") == 300 and parse_duration(2) == 2
    assert parse_duration("1h") == 3600 and parse_duration("250ms") == 0.25
    assert parse_bytes("1GiB") == 2**30 and parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes(10) == 10
    with pytest.raises(ConfigError):
        parse_bytes("lots")
