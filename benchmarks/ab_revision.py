"""hafen at a git revision against the working tree, in one process, in turns.

    python benchmarks/ab_revision.py main              # datasets_io's table, 3 million rows
    python benchmarks/ab_revision.py HEAD~3 --rows 1e6 --rounds 9

On a shared machine, separate runs of ``datasets_io.py`` before and after a change differ more
from each other than the change does. Here both versions run in the same process: the revision's
``src/hafen`` is exported (``git archive``) into a temporary directory as the package
``hafen_base`` (its imports renamed), and every round runs each contender once, the order
rotating, so a change in the machine's load falls on both alike. Prints the best and median of
the rounds, wall time and the process's CPU time (all threads), after / before.

Only ``hafen.datasets`` is compared (write with an index, full read, a one-column read, one
partition, an indexed point lookup, a streamed read, and ``--commits`` small appends to a dataset
that grows, the commit log's cost); the datasets each version wrote are read by that version.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from datasets_io import make_table

ROOT = Path(__file__).resolve().parent.parent


def export(revision: str, into: Path) -> None:
    """``src/hafen`` at ``revision`` as the package ``hafen_base`` in ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src/hafen"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    package = into / "hafen_base"
    (into / "src" / "hafen").rename(package)
    imports = re.compile(r"^(\s*)(from|import) hafen(?=[.\s])", re.MULTILINE)
    modules = re.compile(r"\"hafen\.(datasets|dask|cluster|sql|pipeline|serve)")
    for path in package.rglob("*.py"):
        text = imports.sub(r"\1\2 hafen_base", path.read_text())
        path.write_text(modules.sub(r'"hafen_base.\1', text))


def in_turns(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    setup: Callable[[str], None] | None = None,
) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and CPU seconds of each contender per round; the order rotates each round."""
    out: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if setup:
                setup(name)
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            out[name][0].append(time.perf_counter() - wall)
            out[name][1].append(time.process_time() - cpu)
    return out


def report(op: str, times: dict[str, tuple[list[float], list[float]]]) -> None:
    (bw, bc), (aw, ac) = times["before"], times["after"]

    def pct(a: float, b: float) -> str:
        return f"{100 * (a / b - 1):+5.1f}%"

    print(
        f"{op:15s} best {min(bw) * 1e3:8.1f} -> {min(aw) * 1e3:8.1f} ms ({pct(min(aw), min(bw))})"
        f"   median {statistics.median(bw) * 1e3:8.1f} -> {statistics.median(aw) * 1e3:8.1f} ms"
        f" ({pct(statistics.median(aw), statistics.median(bw))})"
        f"   cpu best {pct(min(ac), min(bc))}",
        flush=True,
    )


def commits(versions: dict[str, Any], work: Path, count: int) -> dict[str, Callable[[], object]]:
    """Each version appends ``count`` frames of 10 rows, one commit each, to its own dataset."""
    batch = pd.DataFrame({"batch": [0] * 10, "v": [1.0] * 10})

    def appends(name: str) -> Callable[[], object]:
        url = str(work / f"{name}-commits")
        versions[name].write_dataset(batch, url, partition_on=["batch"], mode="create")

        def run() -> None:
            for _ in range(count):
                versions[name].write_dataset(batch, url, mode="append")

        return run

    return {n: appends(n) for n in versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision", help="git revision to compare the working tree with")
    parser.add_argument("--rows", type=float, default=3e6)
    parser.add_argument("--rounds", type=int, default=7, help="write rounds; reads get 3x")
    parser.add_argument(
        "--commits", type=int, default=100, help="appends of 10 rows per round (0: none)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hafen-ab-"))
    try:
        export(args.revision, work)
        sys.path.insert(0, str(work))
        sys.path.insert(0, str(ROOT / "src"))
        versions = {
            "before": importlib.import_module("hafen_base.datasets"),
            "after": importlib.import_module("hafen.datasets"),
        }
        table = make_table(int(args.rows), 100)
        pid = int(table.column("product_id")[12345].as_py())
        part = int(table.column("part")[0].as_py())
        print(f"{args.revision} -> working tree, {int(args.rows):,} rows x 5 columns")

        def clear(name: str) -> None:
            shutil.rmtree(work / name, ignore_errors=True)
            (work / f"{name}.by-dataset-metadata.json").unlink(missing_ok=True)
            os.sync()

        def write(name: str) -> Callable[[], object]:
            return lambda: versions[name].write_dataset(
                table, str(work / name), partition_on=["part"], indices=["product_id"]
            )

        report("write", in_turns({n: write(n) for n in versions}, args.rounds, clear))
        os.sync()
        opened = {n: m.open_dataset(str(work / n)) for n, m in versions.items()}
        reads: dict[str, Callable[[object], object]] = {
            "full read": lambda ds: ds.read_arrow(),
            "one column": lambda ds: ds.read_arrow(columns=["a"]),
            "one partition": lambda ds: ds.read_arrow(predicates=[[("part", "==", part)]]),
            "point lookup": lambda ds: ds.read_arrow(predicates=[[("product_id", "==", pid)]]),
            "scan_batches": lambda ds: sum(b.num_rows for b in ds.scan_batches()),
        }
        for op, read in reads.items():
            contenders = {n: (lambda ds=ds, read=read: read(ds)) for n, ds in opened.items()}
            report(op, in_turns(contenders, 3 * args.rounds))
        if args.commits:
            report(f"{args.commits} commits", in_turns(commits(versions, work, args.commits), 5))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
