"""``hafen reshuffle`` on the command line."""

from __future__ import annotations

import pytest
from _ddf_checks import check_reshuffled
from click.testing import CliRunner

import hafen
from hafen.cli import main
from hafen.testing import thread_cluster


@pytest.fixture(scope="module")
def scheduler():
    with thread_cluster(1, threads_per_worker=2) as client:
        yield client.scheduler.address


def test_reshuffle_command(tmp_path, src, sales, scheduler):
    dst = str(tmp_path / "dst")
    result = CliRunner().invoke(
        main,
        [
            "reshuffle", src, dst, "-p", "store_id", "-n", "3", "--sort-by", "product_id",
            "--index", "product_id", "--where", "qty >= 2", "--scheduler", scheduler,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "version 0" in result.output
    out = hafen.open_dataset(dst)
    assert out.indices == ["product_id"]
    check_reshuffled(out, sales[sales.qty >= 2], ["store_id"], 3, ["product_id"], ["product_id"])


def test_bad_arguments_are_one_line(tmp_path, src, scheduler):
    dst = str(tmp_path / "dst")
    result = CliRunner().invoke(
        main, ["reshuffle", src, dst, "-p", "nope", "--scheduler", scheduler]
    )
    assert result.exit_code == 1
    assert "SchemaError" in result.output and "nope" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(
        main, ["reshuffle", src, dst, "-p", "store_id", "-n", "0", "--scheduler", scheduler]
    )
    assert result.exit_code == 1 and "num_buckets" in result.output
    assert not (tmp_path / "dst").exists()
