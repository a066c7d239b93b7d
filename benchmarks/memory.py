"""Cluster memory: vanilla Dask against hafen's choke-holds and back-pressure guard (issue 16).

Each graph runs with every contender side by side in one run, in turns (the order rotates each
round, so a change in the machine's load falls on all alike), on a fresh process-based
LocalCluster per run; peak and mean cluster memory are sampled with
``distributed.diagnostics.MemorySampler`` (``managed``: the bytes of results Dask holds;
``process``: the workers' resident memory), and wall time is measured around the compute. Prints
the median and the range (min-max) over the rounds, and the ideal computed for each graph.

(a) ``fanin``: 120 producers of 16 MiB, two at a time (Dask: a ``db`` resource of 1 on each of
    2 workers; hafen: a limit of 2 with ``results=4``), each feeding a consumer ten times slower
    that writes one at a time (Dask: a ``writer`` resource on one worker; hafen: a limit of 1).
    Ideal: one result being consumed, the next one ready, and the two being produced: 4 x 16 MiB.
(b) graphs of the public Dask benchmark suite (coiled/benchmarks), scaled to this machine, with
    hafen's automatic guard only (no annotation): ``align`` (``test_dataframe_align``: two
    timeseries of different date ranges subtracted and averaged) and ``anom_mean``
    (``test_anom_mean``'s graph -- climatology per day-of-cycle, anomalies, their mean -- written
    with dask.array, xarray not being a dependency); and, with their inputs read per file
    through ``dask.delayed`` opens and ``da.from_delayed`` reads (:func:`files_array`) instead of
    ``da.random`` -- reads Dask does not call root-ish, so does not queue --, ``quadratic_mean``
    (``test_quadratic_mean``), ``double_diff`` (``test_double_diff``) and ``vorticity``
    (``test_vorticity``). Workers have 1 GiB each and Dask's spill/pause/terminate thresholds off
    for every contender, so memory is what the schedule makes it (the guard's watermarks are its
    defaults: 40 %/30 % of the 2 GiB). Ideal: the working set of a depth-first schedule without
    recomputation (see ``GRAPHS``).
(c) ``--demo REV``: ``hafen demo --stores 100`` end to end, hafen at git revision ``REV`` (exported
    with ``git archive``) against the working tree, each in its own process.

Goals (issue 16): (a) peak within 1.5x of the ideal where vanilla Dask is about 10x, wall time
within 1.05x; (b) peak at most half of vanilla Dask's on at least two graphs, wall time within
1.1x; (c) lower peak than before at the same wall time.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/memory.py [--rounds 3]
[--graphs fanin,align,anom_mean,quadratic_mean,double_diff,vorticity] [--demo main]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
from distributed import Client, LocalCluster
from distributed.diagnostics import MemorySampler

MiB = 2**20
ROOT = Path(__file__).resolve().parent.parent

#: Dask's memory thresholds off: spilling would cap memory at the price of disk and time.
NO_SPILL = {
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
    "distributed.worker.memory.terminate": False,
}


@contextlib.contextmanager
def cluster(hafen_on: bool, **kwargs: Any) -> Iterator[Client]:
    """A process LocalCluster; with hafen's extensions (``hafen.connect``) or plain Dask."""
    kwargs.setdefault("dashboard_address", ":0")
    if hafen_on:
        import hafen

        client = hafen.connect(**kwargs)
    else:
        client = Client(LocalCluster(**kwargs))
    try:
        client.wait_for_workers(kwargs.get("n_workers", 1), timeout=120)
        yield client
    finally:
        owned = client.cluster
        client.close()
        if owned is not None:
            owned.close()


def sampled(client: Client, run: Callable[[], Any]) -> dict[str, float]:
    """Run ``run()``; its wall time and the cluster's peak and mean memory, in MiB."""
    sampler = MemorySampler()
    began = time.perf_counter()
    with (
        sampler.sample("managed", client=client, measure="managed", interval=0.05),
        sampler.sample("process", client=client, measure="process", interval=0.05),
    ):
        run()
    wall = time.perf_counter() - began
    frame = sampler.to_pandas()
    return {
        "wall": wall,
        "peak": float(frame["managed"].max()) / MiB,
        "mean": float(frame["managed"].mean()) / MiB,
        "peak_rss": float(frame["process"].max()) / MiB,
    }


# --- (a) the restricted fan-in -------------------------------------------------------------

FANIN_N, FANIN_SIZE = 120, 16 * MiB
FANIN_PRODUCE, FANIN_CONSUME = 0.01, 0.1


def fanin(contender: str) -> dict[str, float]:
    from hafen.testing import fan_in

    kwargs = {"n_workers": 2, "threads_per_worker": 2, "memory_limit": "4GiB"}
    with dask.config.set(NO_SPILL), cluster(contender != "dask", **kwargs) as client:
        if contender == "dask":
            # Dask's own idiom: a "db" resource of 1 on each worker (two producers at a time)
            # and the "writer" on one worker only (consumers one at a time)
            first, second = sorted(client.scheduler_info()["workers"])
            client.run(_set_resources, {"db": 1, "writer": 1}, workers=[first])
            client.run(_set_resources, {"db": 1}, workers=[second])
            graph = fan_in(
                FANIN_N,
                size=FANIN_SIZE,
                produce_delay=FANIN_PRODUCE,
                consume_delay=FANIN_CONSUME,
                producer_resources={"db": 1},
                consumer_resources={"writer": 1},
            )
        else:
            import hafen

            hafen.set_limit("db", concurrency=2, results=4, client=client)
            hafen.set_limit("writer", concurrency=1, client=client)
            graph = fan_in(
                FANIN_N,
                size=FANIN_SIZE,
                produce_delay=FANIN_PRODUCE,
                consume_delay=FANIN_CONSUME,
                producer_limit="db",
                consumer_limit="writer",
            )
        return sampled(client, lambda: client.gather(client.compute(graph)))


async def _set_resources(resources: dict[str, float], dask_worker: Any = None) -> None:
    # what `dask worker --resources` gives a worker at start, for one already running
    await dask_worker.set_resources(**resources)


# --- (b) graphs of the Dask benchmark suite ------------------------------------------------


def align_graph() -> Any:
    """coiled/benchmarks test_dataframe_align, scaled: 1 GiB and 0.5 GiB timeseries."""
    from dask.datasets import timeseries

    def series(start: str, partitions: int) -> Any:
        end = (np.datetime64(start) + np.timedelta64(12 * partitions, "h")).astype(str)
        return timeseries(
            start=start,
            end=end,
            freq="600ms",
            partition_freq="12h",
            dtypes={str(i): float for i in range(100)},
            seed=1,
        )

    df = series("2020-01-01", 18)  # 18 partitions of ~55 MiB
    df2 = series("2010-01-01", 9)
    return (df2 - df).mean()


def anom_mean_graph() -> Any:
    """coiled/benchmarks test_anom_mean's graph in dask.array: 300 chunks of 10 MiB."""
    import dask.array as da

    rows, ngroups, width = 300, 3, (10 * MiB) // 8
    data = da.random.random((rows, width), chunks=(1, width))
    day = np.arange(rows) % ngroups
    clim = da.stack([data[day == g].mean(axis=0) for g in range(ngroups)])
    anom = data - clim[day]
    return anom.mean(axis=0)


# The suite's array graphs build their inputs with ``da.random``, whose tasks Dask queues as
# root-ish; read from files with ``dask.delayed`` (one open per file, one read per chunk:
# ``da.from_delayed``), the same graphs' reads are not root-ish -- their group depends on the
# opens (or holds a single task), and they are not marked as data producers -- so Dask sends
# every read to the workers as soon as its file is open.

FILES = 10


def _open_file(number: int) -> dict[str, int]:
    """A file handle: small (what ``open`` returns), needed by every read of the file."""
    return {"seed": number}


def _read(handle: dict[str, int], index: tuple[int, ...], shape: tuple[int, ...]) -> Any:
    """One chunk of the file (random numbers stand in for its contents)."""
    return np.random.default_rng([handle["seed"], *index]).random(shape)


def files_array(shape: tuple[int, ...], chunks: Any, files: int = FILES) -> Any:
    """A float array read chunk by chunk from ``files`` files, as users write it with delayed."""
    import dask.array as da

    normal = da.core.normalize_chunks(chunks, shape, dtype=float)
    numblocks = tuple(len(c) for c in normal)
    total = int(np.prod(numblocks))
    handles = [dask.delayed(_open_file)(f) for f in range(files)]

    def block(index: tuple[int, ...]) -> Any:
        if len(index) < len(numblocks):
            return [block((*index, i)) for i in range(numblocks[len(index)])]
        flat = int(np.ravel_multi_index(index, numblocks))
        shape = tuple(normal[axis][i] for axis, i in enumerate(index))
        read = dask.delayed(_read)(handles[flat * files // total], index, shape)
        return da.from_delayed(read, shape, dtype=float)

    return da.block(block(()))


class DevNull:
    """A store target that drops what it is given (coiled/benchmarks' ``arr_to_devnull``)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def quadratic_mean_graph() -> Any:
    """coiled/benchmarks test_quadratic_mean (array backend) on inputs read per file:
    u**2, v**2 and u*v averaged over time, 2 x 60 chunks of 14.5 MiB."""
    u = files_array((600, 1, 987, 192), (10, 1, -1, -1))
    v = files_array((600, 1, 987, 192), (10, 1, -1, -1))
    return [(u**2).mean(axis=0), (v**2).mean(axis=0), (u * v).mean(axis=0)]


def double_diff_graph() -> Any:
    """coiled/benchmarks test_double_diff on inputs read per file: ``a[1:, 1:] - b[:-1, :-1]``
    stored to nowhere, 2 x 64 chunks of 20 MiB."""
    import dask.array as da

    a = files_array((8 * 1619, 8 * 1619), 1619)
    b = files_array((8 * 1619, 8 * 1619), 1619)
    return da.store(a[1:, 1:] - b[:-1, :-1], DevNull(), lock=False, compute=False)


def vorticity_graph() -> Any:
    """coiled/benchmarks test_vorticity on inputs read per file: u and v padded by one row and
    rechunked back, ``dx * u - dy * v`` stored to nowhere, 2 x 100 chunks of 7.6 MiB."""
    import dask.array as da

    shape, chunks = (1000, 1000, 100), (1000, 1000, 1)
    u, v = files_array(shape, chunks), files_array(shape, chunks)
    rng = da.random.default_rng(0)
    dx = rng.random((1001, 1000), chunks=(1001, 1000))
    dy = rng.random((1001, 1000), chunks=(1001, 1000))

    def pad_rechunk(arr: Any) -> Any:
        padded = da.pad(arr, pad_width=[(0, 1), (0, 0), (0, 0)], mode="wrap")
        return padded.rechunk((1001, *padded.chunks[1:]))

    result = dx[..., None] * pad_rechunk(u) - dy[..., None] * pad_rechunk(v)
    return da.store(result, DevNull(), lock=False, compute=False)


#: graph builder, ideal managed MiB: for align, two ~55 MiB partitions per thread (the working
#: set of a depth-first schedule); for anom_mean, all of the data (3000 MiB): every chunk is
#: needed again after its group's climatology, which needs the whole group, so without
#: recomputing chunks nothing can be released before the climatologies are done; for
#: quadratic_mean, a u and a v chunk per thread (the partial means are small); for
#: double_diff, a row of chunks of each input and the next chunk (each chunk is needed by the
#: outputs of its row and of the row above); for vorticity, dx and dy, and per thread u and v
#: and their padded copies
GRAPHS: dict[str, tuple[Callable[[], Any], float]] = {
    "align": (align_graph, 4 * 2 * 55 + 2 * 2),
    "anom_mean": (anom_mean_graph, 300 * 10),
    "quadratic_mean": (quadratic_mean_graph, 4 * 2 * 14.5),
    "double_diff": (double_diff_graph, 2 * 9 * 20),
    "vorticity": (vorticity_graph, 2 * 7.6 + 4 * 4 * 7.6),
}


def suite(name: str, contender: str) -> dict[str, float]:
    build, _ = GRAPHS[name]
    kwargs = {"n_workers": 2, "threads_per_worker": 2, "memory_limit": "1GiB"}
    with dask.config.set(NO_SPILL), cluster(contender != "dask", **kwargs) as client:
        graph = build()
        return sampled(client, lambda: dask.compute(graph))


# --- (c) the demo --------------------------------------------------------------------------

DEMO_CHILD = r"""
import json, sys, time
from pathlib import Path
from distributed.diagnostics import MemorySampler
from hafen.pipeline import _run
from hafen.pipeline._config import SynthParams

def run():
    database, datasets, stores = sys.argv[1], sys.argv[2], int(sys.argv[3])
    Path(database).mkdir(parents=True, exist_ok=True)
    cfg = _run.demo_config(database, datasets_root=datasets)
    _run.prepare_database(cfg, SynthParams(stores=stores), None)  # made once, then reused
    client = _run._connect(cfg)
    sampler = MemorySampler()
    began = time.perf_counter()
    with sampler.sample("managed", client=client, measure="managed", interval=0.1), \
         sampler.sample("process", client=client, measure="process", interval=0.1):
        _run.run_pipeline(cfg, client=client)
    wall = time.perf_counter() - began
    frame = sampler.to_pandas()
    client.close()
    print("RESULT " + json.dumps({"wall": wall,
          "peak": float(frame["managed"].max()) / 2**20,
          "mean": float(frame["managed"].mean()) / 2**20,
          "peak_rss": float(frame["process"].max()) / 2**20}))

if __name__ == "__main__":
    run()
"""


def export(revision: str, into: Path) -> Path:
    """``src/hafen`` at ``revision`` under ``into/src`` (importable as ``hafen``)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src/hafen"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def demo(src: Path, work: Path, name: str, stores: int) -> dict[str, float]:
    """One demo run in its own process, hafen from ``src``; the database is shared."""
    script = work / "demo_child.py"
    script.write_text(DEMO_CHILD)
    env = {**os.environ, "PYTHONPATH": str(src), "HAFEN_CONFIG": os.devnull}
    done = subprocess.run(
        [sys.executable, str(script), str(work / "db"), str(work / name / "datasets"), str(stores)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, float] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"demo failed ({done.returncode}):\n{done.stderr[-3000:]}")


# --- running and reporting -----------------------------------------------------------------


def in_turns(
    runs: dict[str, Callable[[], dict[str, float]]], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Every contender once per round, the order rotating; their results by contender."""
    out: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            result = runs[name]()
            out[name].append(result)
            shown = ", ".join(f"{k} {v:.1f}" for k, v in result.items())
            print(f"  round {r + 1} {name}: {shown}", flush=True)
    return out


def summarize(title: str, results: dict[str, list[dict[str, float]]], ideal: float | None) -> None:
    def cell(rows: list[dict[str, float]], key: str) -> str:
        values = [row[key] for row in rows]
        return f"{statistics.median(values):8.1f} [{min(values):.0f}-{max(values):.0f}]"

    def median(name: str, key: str) -> float:
        return statistics.median(row[key] for row in results[name])

    print(f"\n{title}" + (f" (ideal peak {ideal:.0f} MiB)" if ideal else ""))
    heads = ("contender", "peak MiB", "mean MiB", "peak RSS MiB", "wall s")
    print(f"{heads[0]:>12} {heads[1]:>20} {heads[2]:>20} {heads[3]:>22} {heads[4]:>18}")
    for name, rows in results.items():
        cells = [cell(rows, key) for key in ("peak", "mean", "peak_rss", "wall")]
        print(f"{name:>12} {cells[0]:>20} {cells[1]:>20} {cells[2]:>22} {cells[3]:>18}")
    first, second = list(results)
    peak = median(second, "peak") / median(first, "peak")
    wall = median(second, "wall") / median(first, "wall")
    line = f"peak {second}/{first} = {peak:.2f}x, wall {wall:.2f}x"
    if ideal:
        line += (
            f", peak/ideal {median(second, 'peak') / ideal:.2f}x"
            f" ({first} {median(first, 'peak') / ideal:.1f}x)"
        )
    print(f"{'':>12} {line}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--graphs", default=",".join(["fanin", *GRAPHS]))
    parser.add_argument("--demo", metavar="REV", help="also (c): the demo at REV vs the tree")
    parser.add_argument("--stores", type=int, default=100)
    args = parser.parse_args()
    graphs = [g for g in args.graphs.split(",") if g]
    print(f"memory.py, {args.rounds} rounds, {os.cpu_count()} cores", flush=True)
    if "fanin" in graphs:
        print("(a) fanin", flush=True)
        runs = {c: (lambda c=c: fanin(c)) for c in ("dask", "hafen")}
        summarize("(a) restricted fan-in", in_turns(runs, args.rounds), 4 * FANIN_SIZE / MiB)
    for name in (g for g in graphs if g in GRAPHS):
        print(f"(b) {name}", flush=True)
        runs = {c: (lambda c=c, n=name: suite(n, c)) for c in ("dask", "hafen")}
        summarize(f"(b) {name}", in_turns(runs, args.rounds), GRAPHS[name][1])
    if args.demo:
        with tempfile.TemporaryDirectory(prefix="hafen-memory-") as tmp:
            work = Path(tmp)
            for name in ("before", "after"):
                (work / name).mkdir()
            sources = {"before": export(args.demo, work / "before"), "after": ROOT / "src"}
            print(f"(c) demo --stores {args.stores}: {args.demo} vs the working tree", flush=True)
            runs = {n: (lambda n=n: demo(sources[n], work, n, args.stores)) for n in sources}
            summarize(f"(c) hafen demo --stores {args.stores}", in_turns(runs, args.rounds), None)


if __name__ == "__main__":
    main()
