"""`hafen dataset ...` on a real dataset, as a user types it."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pandas as pd
import pytest
from click.testing import CliRunner

import hafen
from hafen.cli import main


def make(tmp_path) -> str:
    df = pd.DataFrame(
        {
            "date": [dt.date(2024, 1, 1 + i % 3) for i in range(30)],
            "store_id": [i % 4 for i in range(30)],
            "qty": [float(i) for i in range(30)],
        }
    )
    url = str(tmp_path / "root" / "sales")
    hafen.write_dataset(df, url, partition_on=["date"])
    hafen.write_dataset(df, url, mode="append")
    return url


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_ls_show_history(tmp_path):
    url = make(tmp_path)
    assert "sales" in run("dataset", "ls", str(tmp_path / "root"))
    shown = run("dataset", "show", url)
    assert "version 1" in shown and "60 rows" in shown and "date (partition)" in shown
    history = run("dataset", "history", url)
    assert "append" in history and "create" in history


def test_read_with_where_and_columns(tmp_path):
    url = make(tmp_path)
    out = run(
        "dataset",
        "read",
        url,
        "--where",
        "store_id in (1, 2) and date >= 2024-01-02",
        "--columns",
        "store_id,qty",
        "--format",
        "json",
        "--limit",
        "0",
    )
    rows = json.loads(out)
    df = hafen.open_dataset(url).read()
    expected = df[df["store_id"].isin([1, 2]) & (df["date"] >= dt.date(2024, 1, 2))]
    assert len(rows) == len(expected) and set(rows[0]) == {"store_id", "qty"}


def test_errors_are_one_readable_line(tmp_path):
    url = make(tmp_path)
    result = CliRunner().invoke(main, ["dataset", "read", url, "--where", "stor = 1"])
    assert result.exit_code == 1
    assert "PredicateError" in result.output and "'stor'" in result.output
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["dataset", "show", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "DatasetNotFoundError" in missing.output


def test_vacuum(tmp_path):
    url = make(tmp_path)
    df = hafen.open_dataset(url).read().drop_duplicates("date")
    hafen.write_dataset(df, url, mode="overwrite")  # replaces all three partitions
    out = run("dataset", "vacuum", url, "--retain", "1", "--grace", "0")
    assert "removed" in out and "2 old versions" in out
    assert hafen.open_dataset(url).num_rows == 3


def test_ls_of_a_missing_root_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["dataset", "ls", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "DatasetNotFoundError: nothing at" in result.output


@pytest.fixture
def people(tmp_path) -> str:
    df = pd.DataFrame(
        {
            "name": ["a or name == b", "a", "b", "x, y", "x", "y", "it's", "", None],
            "day": [dt.date(2024, 1, 1 + i % 3) for i in range(9)],
            "price": [Decimal("9.99"), Decimal("10.00")] * 4 + [None],
        }
    )
    url = str(tmp_path / "people")
    hafen.write_dataset(df, url, partition_on=["day"])
    return url


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ("name == 'a or name == b'", ["a or name == b"]),
        ("name in ('x, y')", ["x, y"]),
        ("name = 'it''s' or name = ''", ["", "it's"]),
        ("name is null", [None]),
        ("day = 2024-01-02 and name <> 'a'", ["x", ""]),
        ("price >= 9.99 and price < 10", ["a or name == b", "b", "x", "it's"]),
        ("price = 9.995", []),
    ],
)
def test_where_reads_quotes_nulls_dates_and_decimals(people, where, names):
    result = CliRunner().invoke(
        main, ["dataset", "read", people, "--where", where, "--format", "json", "--limit", "0"]
    )
    assert result.exit_code == 0, result.output
    found = [row["name"] for row in json.loads(result.output)]
    assert sorted(found, key=repr) == sorted(names, key=repr)


def test_where_reports_an_incomplete_condition(people):
    result = CliRunner().invoke(main, ["dataset", "read", people, "--where", "name =="])
    assert result.exit_code == 1
    assert "PredicateError" in result.output and "'=='" in result.output
    assert "Traceback" not in result.output


def test_verify_names_damaged_files_and_exits_1(tmp_path):
    url = make(tmp_path)
    out = run("dataset", "verify", url)
    assert "version 1: 6 data files" in out and "all files are sound" in out
    ds = hafen.open_dataset(url)
    first = min(f.path for f in ds.files() if f.version == 0)
    second = min(f.path for f in ds.files() if f.version == 1)
    path = tmp_path / "root" / "sales" / first
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    (tmp_path / "root" / "sales" / second).unlink()
    result = CliRunner().invoke(main, ["dataset", "verify", url])
    assert result.exit_code == 1
    assert f"bad {first} (data file): has checksum crc32:" in result.output
    assert f"bad {second} (data file): is missing" in result.output
    assert "2 of 6 files are damaged or missing" in result.output
    # version 0 has only the first commit's files: the damaged one, not the missing one
    older = CliRunner().invoke(main, ["dataset", "verify", url, "--version", "0"])
    assert older.exit_code == 1 and "version 0: 3 data files" in older.output
    assert first in older.output and second not in older.output


def test_a_version_too_big_for_anything_is_one_line(tmp_path):
    url = make(tmp_path)
    for command in ("show", "read", "verify"):
        result = CliRunner().invoke(
            main, ["dataset", command, url, "--version", "99999999999999999999999"]
        )
        assert result.exit_code == 1, result.output
        assert (
            "VersionNotFoundError" in result.output and "versions are below 2**63" in result.output
        )
        assert "Traceback" not in result.output


def test_a_long_path_is_printed_on_one_line(tmp_path):
    deep = tmp_path / ("a-directory-with-a-long-name-" * 3)
    url = make(deep)
    shown = run("dataset", "show", url)
    assert f"{url}  version 1  (" in shown
    verified = run("dataset", "verify", url)
    assert f"{url} version 1: 6 data files" in verified
