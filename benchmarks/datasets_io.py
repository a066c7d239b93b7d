"""Dataset write and read against delta-rs, DuckDB, polars, pyarrow.dataset and plateau, in turns.

    python benchmarks/datasets_io.py               # 10 million rows x 5 columns, 100 partitions
    python benchmarks/datasets_io.py --rows 1e6    # a quick look
    python benchmarks/datasets_io.py --rows 1e6 --url az://bench/io --azurite

With ``--url`` the same table is also written and read at that URL (credentials from the
environment, e.g. ``AZURE_STORAGE_CONNECTION_STRING``), by hafen and by pyarrow through the same
fsspec filesystem (adlfs for ``az://``), next to hafen's local figures; ``--azurite`` starts a
throwaway Azurite (npm, see :mod:`hafen.testing`) and points the credentials at it.

Contenders (issue 19): hafen; delta-rs (``deltalake``, its own Delta layout), read also by
polars (``scan_delta``); DuckDB (``COPY ... PARTITION_BY``, read with ``read_parquet`` over its
own hive layout); pyarrow (tuned and default); plateau. Reads are to Arrow unless the operation
says pandas. Every contender runs ``--rounds`` times (at least 3), in turns, the order rotating
each round; the table gives the median and the range of each figure, and hafen's median over
the contender's (below 1.00x hafen is faster). plateau, much slower, runs 3 rounds on its own.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
from rich.console import Console
from rich.table import Table

import hafen
from hafen.datasets._dataset import storage_for
from hafen.datasets._row_groups import clear_footers

console = Console(width=240)


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


Contenders = dict[str, tuple[Callable[[], object], Callable[[], None] | None]]


def in_turns(contenders: Contenders, rounds: int) -> dict[str, list[float]]:
    """Every time of each contender, run in turns ``rounds`` times, the order rotating by one
    each round (a b c, b c a, c a b, ...), so that neither a change in the machine's load nor
    the disk's writeback of the previous run's files falls on one contender more than another."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            fn, setup = contenders[name]
            times[name].append(best(fn, 1, setup))
    return times


def split(results: dict[str, dict[str, list[float]]], op: str, name: str, row: str) -> None:
    """Move contender ``name`` of ``op`` to a row of its own, as hafen, beside the others."""
    times = results[op].pop(name)
    others = {n: t for n, t in results[op].items() if not n.startswith("hafen")}
    results[row] = {"hafen": times, **others}


def median(times: list[float]) -> float:
    return float(np.median(times))


def spread(times: list[float]) -> str:
    """The median and the range of ``times``: ``0.361 (0.35-0.40)``."""
    return f"{median(times):.3f} ({min(times):.2f}-{max(times):.2f})"


def remote_io(
    table: pa.Table,
    url: str,
    repeat: int,
    local: dict[str, dict[str, float]],
    one_part: int,
    lookup_product: int,
) -> None:
    """Write and read ``table`` at ``url`` with hafen and with pyarrow through the same fsspec."""
    storage = storage_for(url)
    fs, base = storage.fs, storage.root
    hafen_url, pa_path = f"{storage.url}/hafen", f"{base}/pa_tuned"
    part_schema = pa.schema([("part", pa.int64())])
    tuned = {"min_rows_per_group": 128 * 1024, "max_rows_per_group": 256 * 1024}

    def clear(*paths: str) -> Callable[[], None]:
        def run() -> None:
            for path in paths:
                if fs.exists(path):
                    fs.rm(path, recursive=True)

        return run

    def pa_read(flt=None) -> pa.Table:
        d = pds.dataset(pa_path, filesystem=fs, format="parquet", partitioning="hive")
        return d.to_table(filter=flt)

    results: dict[str, dict[str, float]] = {}
    results["write"] = {
        "hafen": best(
            lambda: hafen.write_dataset(
                table, hafen_url, partition_on=["part"], indices=["product_id"]
            ),
            repeat,
            clear(f"{base}/hafen", f"{base}/hafen.by-dataset-metadata.json"),
        ),
        "pyarrow": best(
            lambda: pds.write_dataset(
                table,
                pa_path,
                filesystem=fs,
                format="parquet",
                partitioning=pds.partitioning(part_schema, flavor="hive"),
                existing_data_behavior="overwrite_or_ignore",
                **tuned,
            ),
            repeat,
            clear(pa_path),
        ),
    }
    ds = hafen.open_dataset(hafen_url)
    point = [[("product_id", "==", lookup_product)]]
    results["full read"] = {
        "hafen": best(lambda: ds.read_arrow(), repeat),
        "pyarrow": best(lambda: pa_read(), repeat),
    }
    results["one partition"] = {
        "hafen": best(lambda: ds.read_arrow(predicates=[[("part", "==", one_part)]]), repeat),
        "pyarrow": best(lambda: pa_read(pc.field("part") == one_part), repeat),
    }
    results["point lookup"] = {
        "hafen": best(lambda: ds.read_arrow(predicates=point), repeat),
        "pyarrow": best(lambda: pa_read(pc.field("product_id") == lookup_product), repeat),
    }
    assert ds.read_arrow().num_rows == table.num_rows
    via = type(fs).__module__.split(".")[0]
    out = Table(title=f"datasets_io at {url}: hafen and pyarrow (tuned) through {via}")
    for column in ("operation", "hafen local s", "hafen remote s", "pyarrow remote s"):
        out.add_column(column)
    out.add_column("hafen remote / local")
    out.add_column("hafen / pyarrow, remote")
    for op, timing in results.items():
        out.add_row(
            op,
            f"{local[op]['hafen']:.3f}",
            f"{timing['hafen']:.3f}",
            f"{timing['pyarrow']:.3f}",
            f"{timing['hafen'] / local[op]['hafen']:.2f}x",
            f"{timing['hafen'] / timing['pyarrow']:.2f}x",
        )
    console.print(out)
    clear(f"{base}/hafen", f"{base}/hafen.by-dataset-metadata.json", pa_path)()


def start_azurite(url: str) -> Callable[[], None]:
    """Start a throwaway Azurite, point the environment at it, create the URL's container."""
    import os

    from hafen.testing import Azurite

    server = Azurite(Path(tempfile.mkdtemp(prefix="hafen-bench-azurite-")))
    server.start()
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = server.connection_string
    server.create_container(url.split("://", 1)[1].split("/", 1)[0].split("@", 1)[0])

    def stop() -> None:
        server.stop()
        shutil.rmtree(server.location, ignore_errors=True)

    return stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=10e6)
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument(
        "--rounds", "--repeat", type=int, default=5, help="Rounds in turns (at least 3)."
    )
    parser.add_argument("--root", default=None, help="Local directory for the datasets.")
    parser.add_argument("--no-plateau", action="store_true")
    parser.add_argument("--url", default=None, help="Also write and read there (az://...).")
    parser.add_argument("--azurite", action="store_true", help="Run --url on a new Azurite.")
    args = parser.parse_args()
    if args.azurite and not args.url:
        parser.error("--azurite needs --url az://CONTAINER/PATH")
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: one or two runs are noise on a shared machine")
    rows = int(args.rows)
    root = Path(args.root or tempfile.mkdtemp(prefix="hafen-bench-"))
    table = make_table(rows, args.partitions)
    df = table.to_pandas() if not args.no_plateau else None
    lookup_product = int(table.column("product_id")[12345].as_py())
    one_part = int(table.column("part")[0].as_py())
    # a range of 0.1% of the product ids
    low, high = lookup_product, lookup_product + 49
    console.print(
        f"{rows:,} rows x 5 columns, {args.partitions} partitions, in {root}, "
        f"{args.rounds} rounds in turns; {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )

    import deltalake
    import duckdb
    import polars as pl

    duck = duckdb.connect()
    # DuckDB with its Parquet metadata cache (off by default): the counterpart of hafen keeping
    # the footers of files it has read, for repeated lookups
    duck_cached = duckdb.connect()
    duck_cached.execute("SET parquet_metadata_cache = true")
    part_schema = pa.schema([("part", pa.int64())])
    tuned = {"min_rows_per_group": 128 * 1024, "max_rows_per_group": 256 * 1024}

    def clear(name: str) -> Callable[[], None]:
        def run() -> None:
            shutil.rmtree(root / name, ignore_errors=True)
            (root / f"{name}.by-dataset-metadata.json").unlink(missing_ok=True)
            os.sync()  # no contender pays for the disk writing back another's files

        return run

    def hafen_write(name: str, **options: Any) -> Callable[[], object]:
        return lambda: hafen.write_dataset(
            table, str(root / name), partition_on=["part"], **options
        )

    def arrow_encodings(fn: Callable[[], object]) -> Callable[[], object]:
        """``fn`` with every column dictionary-encoded, as pyarrow does."""

        def run() -> object:
            from hafen.config import reload_settings

            os.environ["HAFEN_PARQUET_DICTIONARY"] = "always"
            reload_settings()  # the process reads its settings once
            try:
                return fn()
            finally:
                del os.environ["HAFEN_PARQUET_DICTIONARY"]
                reload_settings()

        return run

    def pa_write(name: str, **options: Any) -> None:
        pds.write_dataset(
            table,
            root / name,
            format="parquet",
            partitioning=pds.partitioning(part_schema, flavor="hive"),
            existing_data_behavior="overwrite_or_ignore",
            **options,
        )

    def delta_write() -> None:
        deltalake.write_deltalake(str(root / "delta"), table, partition_by=["part"])

    def duck_write() -> None:
        duck.register("source", table)
        duck.execute(f"COPY source TO '{root / 'duck'}' (FORMAT parquet, PARTITION_BY (part))")
        duck.unregister("source")

    results: dict[str, dict[str, list[float]]] = {}

    # -- write --------------------------------------------------------------------------------
    # in turns, so that the load of a shared machine falls on every contender alike
    writes = in_turns(
        {
            "hafen": (hafen_write("hafen", indices=["product_id"]), clear("hafen")),
            # the same work as the others': no secondary index
            "hafen, no index": (hafen_write("hafen_noidx"), clear("hafen_noidx")),
            # files sorted by the indexed column, in small row groups: for lookups
            "hafen, sorted": (
                hafen_write("hafen_sorted", indices=["product_id"], sort_by=["product_id"]),
                clear("hafen_sorted"),
            ),
            # the same files as pyarrow's: every column dictionary-encoded
            "hafen, Arrow's encodings": (
                arrow_encodings(hafen_write("hafen_dict", indices=["product_id"])),
                clear("hafen_dict"),
            ),
            "delta-rs": (delta_write, clear("delta")),
            "DuckDB": (duck_write, clear("duck")),
            "pyarrow (tuned)": (lambda: pa_write("pa_tuned", **tuned), clear("pa_tuned")),
            "pyarrow (default)": (lambda: pa_write("pa_default"), clear("pa_default")),
        },
        args.rounds,
    )
    others = {n: t for n, t in writes.items() if not n.startswith("hafen")}
    results["write"] = {"hafen": writes["hafen"], **others}
    results["write, no index"] = {"hafen": writes["hafen, no index"], **others}
    results["write, Arrow's encodings"] = {"hafen": writes["hafen, Arrow's encodings"], **others}
    results["write, sorted by product_id"] = {"hafen": writes["hafen, sorted"], **others}
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

        results["write"]["plateau"] = in_turns({"plateau": (plateau_write, None)}, 3)["plateau"]

    ds = hafen.open_dataset(str(root / "hafen"))
    ds_dict = hafen.open_dataset(str(root / "hafen_dict"))
    ds_sorted = hafen.open_dataset(str(root / "hafen_sorted"))
    delta_path = str(root / "delta")
    duck_files = f"read_parquet('{root / 'duck'}/**/*.parquet', hive_partitioning = true)"

    def pa_read(name: str, flt: pc.Expression | None = None) -> pa.Table:
        d = pds.dataset(root / name, format="parquet", partitioning="hive")
        return d.to_table(filter=flt)

    def duck_read(where: str = "", con: duckdb.DuckDBPyConnection = duck) -> pa.Table:
        return con.sql(f"SELECT * FROM {duck_files} {where}").to_arrow_table()

    def polars_read(flt: pl.Expr | None = None) -> pl.DataFrame:
        frame = pl.scan_delta(delta_path)
        return (frame if flt is None else frame.filter(flt)).collect()

    def reads(
        flt: pc.Expression | None,
        predicates: list[list[tuple[str, str, int]]] | None,
        where: str,
        pl_flt: pl.Expr | None,
        delta_filters: list[tuple[str, str, int]] | None,
    ) -> Contenders:
        ops: Contenders = {
            "hafen": (lambda: ds.read_arrow(predicates=predicates), None),
            "hafen, sorted": (lambda: ds_sorted.read_arrow(predicates=predicates), None),
            "delta-rs": (
                lambda: deltalake.DeltaTable(delta_path).to_pyarrow_table(filters=delta_filters),
                None,
            ),
            "DuckDB": (lambda: duck_read(where), None),
            "polars": (lambda: polars_read(pl_flt).to_arrow(), None),
            "pyarrow (tuned)": (lambda: pa_read("pa_tuned", flt), None),
            "pyarrow (default)": (lambda: pa_read("pa_default", flt), None),
        }
        return ops

    def lookups(*args: Any) -> Contenders:
        """``reads`` of a lookup, with hafen's first lookup (no footer kept: a new process)
        and DuckDB with its metadata cache beside them."""
        ops = reads(*args)
        ops["hafen, sorted, first lookup"] = (ops["hafen, sorted"][0], clear_footers)
        ops["DuckDB, metadata cache"] = (lambda: duck_read(args[2], duck_cached), None)
        return ops

    def slow_reads(predicates: list[list[tuple[str, str, int]]] | None) -> dict[str, list[float]]:
        if not plateau_store:
            return {}
        ops: Contenders = {
            "plateau": (lambda: read_table("bench", plateau_store, predicates=predicates), None)
        }
        return in_turns(ops, 3)

    # in turns too, once every file written is on disk
    os.sync()
    full = reads(None, None, "", None, None)
    full["hafen, Arrow's encodings"] = (lambda: ds_dict.read_arrow(), None)
    results["full read"] = in_turns(full, args.rounds)
    split(results, "full read", "hafen, Arrow's encodings", "full read, Arrow's encodings")
    split(results, "full read", "hafen, sorted", "full read, files sorted")
    results["full read"].update(slow_reads(None))
    results["full read to pandas"] = in_turns(
        {
            "hafen": (lambda: ds.read(), None),
            "DuckDB": (lambda: duck.sql(f"SELECT * FROM {duck_files}").df(), None),
            "polars": (lambda: polars_read().to_pandas(), None),
            "pyarrow (tuned)": (lambda: pa_read("pa_tuned").to_pandas(), None),
        },
        args.rounds,
    )
    results["one partition"] = in_turns(
        reads(
            pc.field("part") == one_part,
            [[("part", "==", one_part)]],
            f"WHERE part = {one_part}",
            pl.col("part") == one_part,
            [("part", "=", one_part)],
        ),
        args.rounds,
    )
    split(results, "one partition", "hafen, sorted", "one partition, files sorted")
    # an indexed point lookup
    point = [[("product_id", "==", lookup_product)]]
    results["point lookup"] = in_turns(
        lookups(
            pc.field("product_id") == lookup_product,
            point,
            f"WHERE product_id = {lookup_product}",
            pl.col("product_id") == lookup_product,
            [("product_id", "=", lookup_product)],
        ),
        args.rounds,
    )
    split(results, "point lookup", "hafen, sorted", "point lookup, files sorted")
    split(results, "point lookup", "hafen, sorted, first lookup", "point lookup, sorted, first")
    results["point lookup"].update(slow_reads(point))
    span = [[("product_id", ">=", low), ("product_id", "<=", high)]]
    results["range lookup"] = in_turns(
        lookups(
            (pc.field("product_id") >= low) & (pc.field("product_id") <= high),
            span,
            f"WHERE product_id BETWEEN {low} AND {high}",
            pl.col("product_id").is_between(low, high),
            [("product_id", ">=", low), ("product_id", "<=", high)],
        ),
        args.rounds,
    )
    split(results, "range lookup", "hafen, sorted", "range lookup, files sorted")
    split(results, "range lookup", "hafen, sorted, first lookup", "range lookup, sorted, first")
    touched = len(ds.files(point))
    point_rows = table.filter(pc.field("product_id") == lookup_product)
    holding = len(set(pc.unique(point_rows.column("part")).to_pylist()))
    assert ds.read_arrow(predicates=point).num_rows == point_rows.num_rows
    assert ds_sorted.read_arrow(predicates=point).num_rows == point_rows.num_rows
    assert duck_read(f"WHERE product_id = {lookup_product}").num_rows == point_rows.num_rows

    names = ["hafen"] + [n for n in results["full read"] if n != "hafen"]
    for timing in results.values():
        names += [n for n in timing if n not in names]
    out = Table(
        title=f"datasets_io: {rows:,} rows, {args.partitions} partitions, seconds: median "
        f"(range) of {args.rounds} rounds in turns (plateau: 3), and hafen's median / this one's"
    )
    out.add_column("operation")
    for name in names:
        out.add_column(name, justify="right")
    for op, timing in results.items():
        row = [op]
        for n in names:
            if n not in timing:
                row.append("-")
            elif n == "hafen":
                row.append(spread(timing[n]))
            else:
                ratio = median(timing["hafen"]) / median(timing[n])
                row.append(f"{spread(timing[n])} {ratio:.2f}x")
        out.add_row(*row)
    console.print(out)
    console.print(
        f"point lookup: hafen opened {touched} of {len(ds.files())} files; "
        f"{holding} files hold the value ({point_rows.num_rows} rows); "
        f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    shutil.rmtree(root, ignore_errors=True)
    if args.url:
        stop = start_azurite(args.url) if args.azurite else None
        local = {op: {n: median(t) for n, t in timing.items()} for op, timing in results.items()}
        try:
            remote_io(table, args.url, args.rounds, local, one_part, lookup_product)
        finally:
            if stop:
                stop()


if __name__ == "__main__":
    main()
