"""What every command shares: one ``--scheduler`` option and one way to choose the cluster."""

from __future__ import annotations

from collections.abc import Iterator

import click
import dask
import pytest
from click.testing import CliRunner

import hafen
from hafen.cli import main
from hafen.cli._common import SCHEDULER_HELP, cluster_client
from hafen.errors import ConfigError
from hafen.testing import free_port, thread_cluster


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield f"{prefix}{name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with thread_cluster(1, threads_per_worker=1) as client:
        yield client.scheduler.address


def test_every_cluster_command_takes_the_same_scheduler_option():
    chosen = {}
    for name, command in _commands(main):
        for param in command.params:
            if "--scheduler" in getattr(param, "opts", []) or param.name == "scheduler":
                assert param.opts == ["--scheduler"] and param.name == "scheduler", name
                assert isinstance(param, click.Option) and param.help == SCHEDULER_HELP, name
                assert param.metavar == "ADDRESS", name
                chosen[name] = param
    assert set(chosen) == {"chaos", "demo", "extract", "limits", "load", "reshuffle"}


def test_the_option_then_the_setting_then_a_local_cluster(address, monkeypatch):
    monkeypatch.delenv("HAFEN_SCHEDULER", raising=False)
    with cluster_client(address) as client:
        assert client is not None and client.scheduler.address == address
    with cluster_client(None) as client:
        assert client is None  # the library call picks its own cluster
    with (
        pytest.raises(ConfigError, match="no scheduler: pass --scheduler"),
        cluster_client(None, required=True),
    ):
        pass
    local = {"processes": False, "n_workers": 1, "dashboard_address": ":0"}
    with cluster_client(None, local=local) as client:
        assert client is not None and client.scheduler.address != address
        assert client.cluster is not None  # started for the command, closed with it
    monkeypatch.setenv("HAFEN_SCHEDULER", address)
    for kwargs in ({}, {"local": local}, {"required": True}, {"install": False}):
        with cluster_client(None, **kwargs) as client:
            assert client is not None and client.scheduler.address == address, kwargs


def test_an_unreachable_scheduler_is_one_line(monkeypatch):
    monkeypatch.delenv("HAFEN_SCHEDULER", raising=False)
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(main, ["reshuffle", "a", "b", "--scheduler", nowhere])
    assert result.exit_code == 1
    assert f"cannot reach the scheduler at {nowhere}" in result.output
    assert "Traceback" not in result.output


def test_commands_find_the_scheduler_in_the_setting(address, monkeypatch):
    with hafen.connect(address) as client:
        hafen.set_limit("by-env", concurrency=2, client=client)
    monkeypatch.setenv("HAFEN_SCHEDULER", address)
    result = CliRunner().invoke(main, ["limits"])
    assert result.exit_code == 0, result.output
    assert f"Limits on {address}" in result.output and "by-env" in result.output
