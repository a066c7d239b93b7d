"""Settings: defaults, hafen.toml, HAFEN_* variables, read once per process, and clear errors."""

from __future__ import annotations

import os

import pytest

from hafen.config import get_settings, parse_bytes, parse_duration, reload_settings
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


# monkeypatch.setitem(os.environ, ...) below changes the environment the way a process does,
# without the re-read that this suite's monkeypatch.setenv adds (tests/conftest.py).


def test_read_once_per_process(monkeypatch):
    first = get_settings()
    assert get_settings() is first
    monkeypatch.setitem(os.environ, "HAFEN_RETAIN_VERSIONS", "20")
    assert get_settings() is first and get_settings().retain_versions == 10


def test_reload_reads_the_environment_and_the_toml_again(tmp_path, monkeypatch):
    first = get_settings()
    monkeypatch.setitem(os.environ, "HAFEN_RETAIN_VERSIONS", "20")
    reloaded = reload_settings()
    assert reloaded.retain_versions == 20 and get_settings() is reloaded is not first
    toml = tmp_path / "hafen.toml"
    toml.write_text("checkpoint_interval = 7\n")
    monkeypatch.setitem(os.environ, "HAFEN_CONFIG", str(toml))
    assert get_settings().checkpoint_interval == 50  # not read again
    assert reload_settings().checkpoint_interval == 7
    toml.write_text("checkpoint_interval = 8\n")
    assert get_settings().checkpoint_interval == 7
    assert reload_settings().checkpoint_interval == 8


def test_explicit_arguments_bypass_the_process_settings(tmp_path):
    cached = get_settings()
    assert get_settings(env={"HAFEN_RETAIN_VERSIONS": "30"}).retain_versions == 30
    toml = tmp_path / "hafen.toml"
    toml.write_text("retain_versions = 40\n")
    assert get_settings(toml_path=str(toml)).retain_versions == 40
    path = str(toml)
    assert get_settings(env={}, toml_path=path) is not get_settings(env={}, toml_path=path)
    assert get_settings() is cached and cached.retain_versions == 10


def test_a_bad_value_raises_until_it_is_fixed(monkeypatch):
    monkeypatch.setitem(os.environ, "HAFEN_CHECKPOINT_INTERVAL", "0")
    with pytest.raises(ConfigError, match=">= 1"):
        reload_settings()
    with pytest.raises(ConfigError, match=">= 1"):
        get_settings()  # nothing half-read is kept
    monkeypatch.setitem(os.environ, "HAFEN_CHECKPOINT_INTERVAL", "5")
    assert reload_settings().checkpoint_interval == 5


def test_the_suites_monkeypatch_reloads(monkeypatch):
    monkeypatch.setenv("HAFEN_RETAIN_VERSIONS", "7")
    assert get_settings().retain_versions == 7
    monkeypatch.delenv("HAFEN_RETAIN_VERSIONS")
    assert get_settings().retain_versions == 10
