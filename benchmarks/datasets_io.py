"""Dataset write and read against pyarrow.dataset and plateau, in one run, as ratios.

    python benchmarks/datasets_io.py               # 10 million rows x 5 columns, 100 partitions
    python benchmarks/datasets_io.py --rows 1e6    # a quick look

Each operation runs ``--repeat`` times per contender; the best time counts.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
from rich.console import Console
from rich.table import Table

import hafen

console = Console()


def make_table(rows: int, partitions: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "part": rng.integers(0, partitions, rows),
            "product_id": rng.integers(0, 50_000, rows),
            "a": rng.random(rows),
            "b": rng.normal(size=rows),
            "s": pa.array(np.char.add("item-", rng.integers(0, 1000, rows).astype(str))),
        }
    )


def best(fn: Callable[[], object], repeat: int, setup: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if setup:
            setup()
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=10e6)
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--root", default=None, help="Local directory for the datasets.")
    parser.add_argument("--no-plateau", action="store_true")
    args = parser.parse_args()
    rows = int(args.rows)
    root = Path(args.root or tempfile.mkdtemp(prefix="hafen-bench-"))
    table = make_table(rows, args.partitions)
    df = table.to_pandas() if not args.no_plateau else None
    lookup_product = int(table.column("product_id")[12345].as_py())
    one_part = int(table.column("part")[0].as_py())
    console.print(f"{rows:,} rows x 5 columns, {args.partitions} partitions, in {root}")

    part_schema = pa.schema([("part", pa.int64())])
    tuned = {"min_rows_per_group": 128 * 1024, "max_rows_per_group": 256 * 1024}

    def clear(name: str) -> Callable[[], None]:
        def run() -> None:
            shutil.rmtree(root / name, ignore_errors=True)
            (root / f"{name}.by-dataset-metadata.json").unlink(missing_ok=True)

        return run

    results: dict[str, dict[str, float]] = {}

    # -- write --------------------------------------------------------------------------------
    results["write"] = {
        "hafen": best(
            lambda: hafen.write_dataset(
                table, str(root / "hafen"), partition_on=["part"], indices=["product_id"]
            ),
            args.repeat,
            clear("hafen"),
        ),
        "pyarrow (tuned)": best(
            lambda: pds.write_dataset(
                table,
                root / "pa_tuned",
                format="parquet",
                partitioning=pds.partitioning(part_schema, flavor="hive"),
                existing_data_behavior="overwrite_or_ignore",
                **tuned,
            ),
            args.repeat,
            clear("pa_tuned"),
        ),
        "pyarrow (default)": best(
            lambda: pds.write_dataset(
                table,
                root / "pa_default",
                format="parquet",
                partitioning=pds.partitioning(part_schema, flavor="hive"),
                existing_data_behavior="overwrite_or_ignore",
            ),
            args.repeat,
            clear("pa_default"),
        ),
    }
    plateau_store = None
    if not args.no_plateau:
        from minimalkv import get_store_from_url
        from plateau.io.eager import read_table, store_dataframes_as_dataset

        (root / "plateau").mkdir(exist_ok=True)
        plateau_store = partial(get_store_from_url, f"hfs://{root / 'plateau'}")

        def plateau_write() -> None:
            store_dataframes_as_dataset(
                dfs=[df],
                store=plateau_store,
                dataset_uuid="bench",
                partition_on=["part"],
                secondary_indices=["product_id"],
                overwrite=True,
            )

        results["write"]["plateau"] = best(plateau_write, args.repeat)

    ds = hafen.open_dataset(str(root / "hafen"))

    def pa_read(name: str, flt=None) -> pa.Table:
        d = pds.dataset(root / name, format="parquet", partitioning="hive")
        return d.to_table(filter=flt)

    # -- full read ------------------------------------------------------------------------------
    results["full read"] = {
        "hafen": best(lambda: ds.read_arrow(), args.repeat),
        "pyarrow (tuned)": best(lambda: pa_read("pa_tuned"), args.repeat),
        "pyarrow (default)": best(lambda: pa_read("pa_default"), args.repeat),
    }
    if plateau_store:
        results["full read"]["plateau"] = best(
            lambda: read_table("bench", plateau_store), args.repeat
        )

    # -- one partition --------------------------------------------------------------------------
    results["one partition"] = {
        "hafen": best(lambda: ds.read_arrow(predicates=[[("part", "==", one_part)]]), args.repeat),
        "pyarrow (tuned)": best(
            lambda: pa_read("pa_tuned", pc.field("part") == one_part), args.repeat
        ),
        "pyarrow (default)": best(
            lambda: pa_read("pa_default", pc.field("part") == one_part), args.repeat
        ),
    }
    if plateau_store:
        results["one partition"]["plateau"] = best(
            lambda: read_table("bench", plateau_store, predicates=[[("part", "==", one_part)]]),
            args.repeat,
        )

    # -- indexed point lookup -------------------------------------------------------------------
    point = [[("product_id", "==", lookup_product)]]
    results["point lookup"] = {
        "hafen": best(lambda: ds.read_arrow(predicates=point), args.repeat),
        "pyarrow (tuned)": best(
            lambda: pa_read("pa_tuned", pc.field("product_id") == lookup_product), args.repeat
        ),
        "pyarrow (default)": best(
            lambda: pa_read("pa_default", pc.field("product_id") == lookup_product), args.repeat
        ),
    }
    if plateau_store:
        results["point lookup"]["plateau"] = best(
            lambda: read_table("bench", plateau_store, predicates=point), args.repeat
        )
    touched = len(ds.files(point))
    holding = len(
        {
            p
            for p in pc.unique(
                table.filter(pc.field("product_id") == lookup_product).column("part")
            ).to_pylist()
        }
    )
    expected_rows = table.filter(pc.field("product_id") == lookup_product).num_rows
    assert ds.read_arrow(predicates=point).num_rows == expected_rows

    out = Table(
        title=f"datasets_io: {rows:,} rows, {args.partitions} partitions (best of {args.repeat})"
    )
    out.add_column("operation")
    names = list(results["write"])
    for name in names:
        out.add_column(f"{name} s")
    for name in names[1:]:
        out.add_column(f"hafen / {name}")
    for op, timing in results.items():
        row = [op] + [f"{timing[n]:.3f}" for n in names]
        row += [f"{timing['hafen'] / timing[n]:.2f}x" for n in names[1:]]
        out.add_row(*row)
    console.print(out)
    console.print(
        f"point lookup: hafen opened {touched} of {len(ds.files())} files; "
        f"{holding} files hold the value ({expected_rows} rows)"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
