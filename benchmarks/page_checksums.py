"""What verifying Parquet page checksums costs a read, with pyarrow alone, in turns.

    python benchmarks/page_checksums.py                 # 3 million rows, 11 rounds
    python benchmarks/page_checksums.py --rows 1e7 --rounds 5

hafen writes datasets_io's table (100 partitions), then pyarrow reads the same files with
``page_checksum_verification`` on and off, the order alternating each round: a full read and a
one-column read. Prints the median and range of each, and on / off.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import pyarrow.dataset as pds

import hafen.datasets
from ab_revision import in_turns
from datasets_io import make_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=3e6)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hafen-pages-"))
    try:
        hafen.datasets.write_dataset(
            make_table(int(args.rows), 100), str(work / "ds"), partition_on=["part"]
        )
        files = sorted(str(p) for p in (work / "ds").rglob("*.parquet"))
        formats = {
            "off": pds.ParquetFileFormat(),
            "on": pds.ParquetFileFormat(
                default_fragment_scan_options=pds.ParquetFragmentScanOptions(
                    page_checksum_verification=True
                )
            ),
        }
        print(f"{int(args.rows):,} rows in {len(files)} files, {args.rounds} rounds")
        for op, columns in (("full read", None), ("column a", ["a"])):
            times = in_turns(
                {
                    name: (lambda f=f, c=columns: pds.dataset(files, format=f).to_table(columns=c))
                    for name, f in formats.items()
                },
                args.rounds,
            )
            line = [f"{op:10s}"]
            for name in formats:
                wall = times[name][0]
                line.append(
                    f"{name} {statistics.median(wall) * 1e3:7.1f} ms"
                    f" [{min(wall) * 1e3:.1f}-{max(wall) * 1e3:.1f}]"
                )
            ratio = statistics.median(times["on"][0]) / statistics.median(times["off"][0])
            print("   ".join(line) + f"   on/off {ratio:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
