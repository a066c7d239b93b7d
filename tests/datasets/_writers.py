"""Writer processes for the concurrency tests (imported by spawned children)."""

from __future__ import annotations

import contextlib
import sys
import time

import pandas as pd

import hafen
from hafen.datasets import open_dataset
from hafen.datasets._dataset import storage_for
from hafen.datasets._schema import conform, to_arrow
from hafen.datasets._write import stage_table
from hafen.datasets._write_dataset import commit_staged
from hafen.errors import ConflictError


def append_many(url: str, writer: int, commits: int, barrier) -> None:
    barrier.wait()
    for i in range(commits):
        df = pd.DataFrame(
            {"part": [writer % 3] * 4, "writer": [writer] * 4, "i": [i] * 4, "j": range(4)}
        )
        hafen.write_dataset(df, url, mode="append")


def append_acknowledged(url: str, writer: int, commits: int, barrier, results) -> None:
    """Append ``commits`` one-row commits and report each version the writer was given."""
    barrier.wait()
    for i in range(commits):
        df = pd.DataFrame({"part": [i % 3], "writer": [writer], "i": [i], "j": [0]})
        results.put((writer, i, _append_until_landed(df, url)))


def _append_until_landed(df: pd.DataFrame, url: str, attempts: int = 20) -> int:
    """Append ``df``; a ConflictError (nothing landed: on a loaded machine a write can outlast
    the staging share of a short grace period) is answered by writing again, as a user would."""
    for _ in range(attempts - 1):
        with contextlib.suppress(ConflictError):
            return hafen.write_dataset(df, url, mode="append").version
    return hafen.write_dataset(df, url, mode="append").version


def vacuum_until(url: str, retain: int, grace: str, stop, barrier) -> None:
    """Vacuum in a loop, as fast as it goes, until ``stop`` is set."""
    barrier.wait()
    while not stop.is_set():
        # ConflictError: the other vacuum kept retiring versions under this one
        with contextlib.suppress(ConflictError):
            open_dataset(url).vacuum(retain_versions=retain, grace_period=grace)


def overwrite_partition(url: str, writer: int, part: int, barrier, results, retry: bool) -> None:
    ds = open_dataset(url)
    df = pd.DataFrame({"part": [part] * 3, "writer": [writer] * 3, "i": [0] * 3, "j": range(3)})
    staged = stage_table(
        ds.storage,
        conform(to_arrow(df), ds.schema),
        partition_on=ds.partition_on,
    )
    barrier.wait()  # both writers have read the same version before either commits
    try:
        commit_staged(
            url,
            [staged],
            mode="overwrite",
            base=ds.state,
            on_conflict="retry" if retry else "raise",
        )
        results.put((writer, "landed"))
    except ConflictError as exc:
        results.put((writer, f"conflict: {exc}"))


def stage_then_hang(url: str) -> None:
    """Write a commit's files, announce it, and wait to be killed before committing."""
    ds = open_dataset(url)
    df = pd.DataFrame({"part": [7] * 5, "writer": [99] * 5, "i": [0] * 5, "j": range(5)})
    staged = stage_table(
        storage_for(url),
        conform(to_arrow(df), ds.schema),
        partition_on=ds.partition_on,
    )
    print("staged", len(staged.files), flush=True)
    time.sleep(600)


if __name__ == "__main__":
    stage_then_hang(sys.argv[1])


def append_to_missing(url: str, writer: int, barrier) -> None:
    """Append to a dataset that does not exist yet; several writers race to create it."""
    df = pd.DataFrame({"part": [writer % 2] * 2, "writer": [writer] * 2, "i": [0, 1], "j": [0, 1]})
    barrier.wait()
    hafen.write_dataset(df, url, partition_on=["part"], mode="append")
