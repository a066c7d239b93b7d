"""pipeline.toml loading, and the `hafen demo` / `hafen run` commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import hafen
from hafen.cli import main
from hafen.errors import ConfigError
from hafen.pipeline import load_config


def test_load_config_resolves_paths_and_reads_every_section(tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text(
        """
[source]
url = "retail.sqlite"
chunks = 4
concurrency = 3
[datasets]
root = "lake"
[cluster]
scheduler = "tcp://10.0.0.5:8786"
[model]
max_iter = 50
refit = true
[synth]
stores = 2
products = 5
days = 100
"""
    )
    cfg = load_config(path)
    assert cfg.source_url == f"sqlite:///{tmp_path / 'retail.sqlite'}"
    assert cfg.dataset("sales") == f"{tmp_path / 'lake'}/sales"
    assert (cfg.chunks, cfg.concurrency, cfg.scheduler) == (4, 3, "tcp://10.0.0.5:8786")
    assert cfg.model.max_iter == 50 and cfg.model.refit
    assert cfg.synth is not None and cfg.synth.stores == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[source]\nurl = 'x'\n[bogus]\n", "unknown sections"),
        ("[source]\nurl = 'x'\nchunk = 3\n", "unknown keys"),
        ("[datasets]\nroot = 'x'\n", "url is required"),
        ("[source]\nurl = 'x'\nchunks = 0\n", "chunks must be >= 1"),
        ("[source]\nurl = 'x'\n[model]\nhorizon = 14\n", "horizon"),
        ("[source\n", "pipeline.toml"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.slow
def test_demo_and_run_commands(tmp_path, client):
    address = client.scheduler.address
    runner = CliRunner()
    args = ["--stores", "2", "--products", "5", "--days", "80", "--json"]
    result = runner.invoke(
        main, ["demo", "--workdir", str(tmp_path / "w"), *args, "--scheduler", address]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["stages"][-1]["rows"] == 2 * 5 * 28
    assert summary["versions"]["forecasts"] == 0

    # other sizes in the same folder: refused, with what to do instead
    result = runner.invoke(
        main,
        ["demo", "--workdir", str(tmp_path / "w"), "--stores", "3", "--scheduler", address],
    )
    assert result.exit_code == 1
    assert "ConfigError" in result.output and "--fresh" in result.output

    config = tmp_path / "pipeline.toml"
    config.write_text(
        f"""
[source]
url = "{tmp_path / "w" / "retail.sqlite"}"
chunks = 2
[datasets]
root = "{tmp_path / "w" / "datasets"}"
[cluster]
scheduler = "{address}"
"""
    )
    result = runner.invoke(main, ["run", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    forecasts = hafen.open_dataset(str(tmp_path / "w" / "datasets" / "forecasts"))
    assert forecasts.version == 1 and forecasts.num_rows == 2 * 5 * 28
