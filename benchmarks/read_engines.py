"""Where a full read's time goes: the same files read by hafen, by pyarrow with and without page
checksum verification, and by polars, in turns (issue 19).

    python benchmarks/read_engines.py                 # 2 million rows x 5 columns, 100 partitions
    python benchmarks/read_engines.py --rows 1e7 --rounds 5

hafen's files and delta-rs' files (the same table, partitioned alike) are each read by pyarrow's
dataset reader and by polars' Parquet reader, so that the engine's share of a difference (the
decoder) is told apart from the files' (encodings) and from hafen's own (per-file checks, page
checksums); hafen's files read one by one on a thread pool (``pq.read_table``, pre-buffered)
tell Arrow's decoder apart from its dataset scanner. Wall and CPU seconds, median and range
over ``--rounds`` rounds in turns.
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

import hafen
from datasets_io import make_table


def arrow_read(files: list[str], verify: bool) -> pa.Table:
    options = pds.ParquetFragmentScanOptions(page_checksum_verification=verify)
    fmt = pds.ParquetFileFormat(default_fragment_scan_options=options)
    return pds.dataset(files, format=fmt).to_table()


def per_file_read(files: list[str], pool: ThreadPoolExecutor) -> pa.Table:
    """Each file read whole by ``pq.read_table`` (pre-buffered, page checksums verified) on a
    thread pool, the tables concatenated: Arrow's decoder without its dataset scanner."""

    def one(path: str) -> pa.Table:
        return pq.read_table(
            path, pre_buffer=True, page_checksum_verification=True, use_threads=False
        )

    return pa.concat_tables(pool.map(one, files))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=2e6)
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import deltalake
    import polars as pl

    table = make_table(int(args.rows), args.partitions)
    root = tempfile.mkdtemp(prefix="hafen-bench-")
    hafen.write_dataset(table, f"{root}/hafen", partition_on=["part"], indices=["product_id"])
    deltalake.write_deltalake(f"{root}/delta", table, partition_by=["part"])
    ds = hafen.open_dataset(f"{root}/hafen")
    ours = sorted(glob.glob(f"{root}/hafen/table/**/*.parquet", recursive=True))
    theirs = sorted(glob.glob(f"{root}/delta/**/*.parquet", recursive=True))
    pool = ThreadPoolExecutor(2 * (os.cpu_count() or 1))
    ops: dict[str, Callable[[], object]] = {
        "hafen read_arrow": ds.read_arrow,
        "pyarrow, hafen's files, checksums on": lambda: arrow_read(ours, True),
        "pyarrow, hafen's files, checksums off": lambda: arrow_read(ours, False),
        "pyarrow, delta-rs' files": lambda: arrow_read(theirs, False),
        "pyarrow per file, threads, hafen's files": lambda: per_file_read(ours, pool),
        "polars, hafen's files": lambda: pl.read_parquet(ours),
        "polars, delta-rs' files": lambda: pl.read_parquet(theirs),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ops}
    names = list(ops)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            ops[name]()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    print(
        f"{int(args.rows):,} rows, {args.partitions} partitions, {args.rounds} rounds in turns, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; ms, median (range)"
    )
    for name, pairs in times.items():
        w = [1e3 * a for a, _ in pairs]
        c = [1e3 * b for _, b in pairs]
        print(
            f"{name:40s} wall {statistics.median(w):7.1f} ({min(w):.0f}-{max(w):.0f})"
            f"   cpu {statistics.median(c):7.1f} ({min(c):.0f}-{max(c):.0f})"
        )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
