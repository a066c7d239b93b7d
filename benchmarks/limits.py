"""Cluster-wide limits held on the scheduler (hafen) against ``distributed.Semaphore``.

Three measurements, each against an anchor measured in the same run, on process-based
LocalClusters of 2 workers x 4 threads:

(a) 2,000 tiny tasks under a limit of 4: wall time as a ratio to the same tasks unlimited.
(b) 200 tasks of 50 ms under a limit of 4, submitted before 200 unlimited tasks of 50 ms: when the
    unlimited ones are all done, as a ratio to the unlimited ones alone.
(c) A task holding the only slot of a limit dies with its worker (SIGKILL): seconds until the
    slot is held again (by the task's rerun).

Goals (issue 3): (a) within 10 % of unlimited; (b) unlimited tasks unaffected; (c) under 2 s
(the Semaphore takes about 38 s, its lease timeout plus the validation interval).

(a') repeats (a) on 1 worker x 4 threads with ``worker-saturation`` 1.0, where the scheduler keeps 4
tasks in flight unlimited too, to separate the cost of the mechanism from that of the limit.
(b) also reports a "perfect limiter": 4 tasks running the limited work back to back, the threads an
ideal limiter occupies at no cost of its own.

Run: ``.venv/bin/python benchmarks/limits.py`` (5-6 minutes on 2 busy cores; ``--repeat N``).
The task functions come from :mod:`hafen.testing`, which worker processes import like hafen.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dask
from distributed import Client, Semaphore, wait

import hafen
from hafen.testing import (
    holder,
    holder_semaphore,
    poll_for,
    sleepy,
    sleepy_semaphore,
    sleepy_serial,
    tiny,
    tiny_semaphore,
)

WORKERS, THREADS = 2, 4
TINY_TASKS = 2000
MIXED_TASKS, MIXED_DURATION = 200, 0.05
LIMIT = 4


def new_client(workers: int = WORKERS, threads: int = THREADS) -> Client:
    return hafen.connect(
        n_workers=workers, threads_per_worker=threads, dashboard_address=":0", memory_limit="2GiB"
    )


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_tiny(client: Client, repeat: int, *, semaphore: bool = True) -> dict[str, list[float]]:
    hafen.set_limit("bench-a", concurrency=LIMIT, client=client)
    sem = Semaphore(max_leases=LIMIT, name="bench-a")
    results: dict[str, list[float]] = {"unlimited": [], "hafen": []}
    if semaphore:
        results["semaphore"] = []

    def unlimited() -> None:
        client.gather(client.map(tiny, range(TINY_TASKS), pure=False))

    def limited() -> None:
        with dask.annotate(limits="bench-a"):
            futures = client.map(tiny, range(TINY_TASKS), pure=False)
        client.gather(futures)

    def semaphore_run() -> None:
        client.gather(client.map(tiny_semaphore, range(TINY_TASKS), sem=sem, pure=False))

    unlimited()  # warm up: imports, connections
    runs = {"unlimited": unlimited, "hafen": limited, "semaphore": semaphore_run}
    in_turns({name: runs[name] for name in results}, results, repeat)
    return results


def bench_mixed(client: Client, repeat: int) -> dict[str, list[float]]:
    hafen.set_limit("bench-b", concurrency=LIMIT, client=client)
    sem = Semaphore(max_leases=LIMIT, name="bench-b")
    results: dict[str, list[float]] = {
        "unlimited alone": [],
        "perfect limiter": [],
        "hafen": [],
        "semaphore": [],
    }
    n, d = MIXED_TASKS, MIXED_DURATION

    def unlimited_done_after(submit_limited: Callable[[], list] | None) -> float:
        start = time.perf_counter()
        limited = submit_limited() if submit_limited else []
        free = client.map(sleepy, range(n), duration=d, pure=False)
        wait(free)
        took = time.perf_counter() - start
        wait(limited)
        return took

    def hafen_limited() -> list:
        with dask.annotate(limits="bench-b"):
            return client.map(sleepy, range(n), duration=d, pure=False)

    def perfect_limiter() -> list:
        # LIMIT long tasks each doing n / LIMIT of the limited work back to back: the threads
        # an ideal limiter occupies, without any cost of its own
        return [
            client.submit(sleepy_serial, n // LIMIT, d, pure=False, priority=1)
            for _ in range(LIMIT)
        ]

    def semaphore_limited() -> list:
        return client.map(sleepy_semaphore, range(n), duration=d, sem=sem, pure=False)

    unlimited_done_after(None)  # warm up
    runs: dict[str, Callable[[], float]] = {
        "unlimited alone": lambda: unlimited_done_after(None),
        "perfect limiter": lambda: unlimited_done_after(perfect_limiter),
        "hafen": lambda: unlimited_done_after(hafen_limited),
        "semaphore": lambda: unlimited_done_after(semaphore_limited),
    }
    for r in range(repeat):
        names = list(runs)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].append(runs[name]())
    return results


def in_turns(
    runs: dict[str, Callable[[], object]], results: dict[str, list[float]], rounds: int
) -> None:
    """Time each of ``runs`` in turns ``rounds`` times, the order rotating each round."""
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].append(timed(runs[name]))


def spread(values: list[float]) -> str:
    """``median s (min-max)``."""
    return f"{statistics.median(values):7.3f} s ({min(values):.3f}-{max(values):.3f})"


def _regrant_after_kill(client: Client, submit: Callable[[str, str], object]) -> float:
    """Kill the worker of the task holding the slot; seconds until the next entry."""
    with tempfile.TemporaryDirectory() as tmp:
        log = str(Path(tmp) / "entries.log")
        victim = sorted(client.scheduler_info()["workers"])[0]
        future = submit(log, victim)
        poll_for(lambda: Path(log).exists(), 30, period=0.01, what="the holder started")
        pid = client.run(os.getpid, workers=[victim])[victim]
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        poll_for(
            lambda: len(Path(log).read_text().splitlines()) >= 2,
            120,
            period=0.005,
            what="the slot was granted again",
        )
        entered = float(Path(log).read_text().splitlines()[1])
        client.cancel([future])
        return entered - killed_at


def bench_kill() -> dict[str, float]:
    results = {}
    client = new_client()
    try:
        hafen.set_limit("bench-c", concurrency=1, client=client)

        def hafen_submit(log: str, victim: str) -> object:
            with dask.annotate(limits="bench-c"):
                return client.submit(
                    holder, log, 60, workers=[victim], allow_other_workers=True, pure=False
                )

        results["hafen"] = _regrant_after_kill(client, hafen_submit)
    finally:
        client.close()
    client = new_client()
    try:
        sem = Semaphore(max_leases=1, name="bench-c")

        def semaphore_submit(log: str, victim: str) -> object:
            return client.submit(
                holder_semaphore, log, 60, sem, workers=[victim], allow_other_workers=True,
                pure=False,
            )  # fmt: skip

        results["semaphore"] = _regrant_after_kill(client, semaphore_submit)
    finally:
        client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of (a) and (b) in turns (at least 3)"
    )
    parser.add_argument("--skip-kill", action="store_true", help="skip (c), which takes ~45 s")
    args = parser.parse_args()
    if args.repeat < 3:
        parser.error("--repeat must be at least 3: one or two runs are noise on a shared machine")
    print(f"hafen limits benchmark: {WORKERS} workers x {THREADS} threads, cpus={os.cpu_count()}")

    client = new_client()
    try:
        a = bench_tiny(client, args.repeat)
        b = bench_mixed(client, args.repeat)
    finally:
        client.close()
    # (a') the limit equal to what the scheduler keeps in flight unlimited: 1 worker x 4
    # threads with worker-saturation 1.0, so both runs have 4 tasks in flight
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        client = new_client(1, LIMIT)
    try:
        a2 = bench_tiny(client, args.repeat, semaphore=False)
    finally:
        client.close()

    med = {k: statistics.median(v) for k, v in a.items()}
    print(
        f"\n(a) {TINY_TASKS} tiny tasks, limit {LIMIT}; median (range) of {args.repeat} rounds "
        "in turns, and the ratio of medians:"
    )
    for name, value in med.items():
        print(f"    {name:<16} {spread(a[name])}   x{value / med['unlimited']:.2f}")
    med = {k: statistics.median(v) for k, v in a2.items()}
    print(f"(a') same on 1 worker x {LIMIT} threads, worker-saturation 1.0 (4 in flight):")
    for name, value in med.items():
        print(f"    {name:<16} {spread(a2[name])}   x{value / med['unlimited']:.2f}")
    med = {k: statistics.median(v) for k, v in b.items()}
    print(
        f"\n(b) {MIXED_TASKS} limited ({LIMIT}) + {MIXED_TASKS} unlimited tasks of "
        f"{MIXED_DURATION * 1000:.0f} ms; unlimited all done after (median (range) of "
        f"{args.repeat} rounds in turns):"
    )
    for name, value in med.items():
        print(f"    {name:<16} {spread(b[name])}   x{value / med['unlimited alone']:.2f}")
    if not args.skip_kill:
        c = bench_kill()
        print("\n(c) SIGKILLed holder of a limit of 1: seconds until the slot is held again:")
        for name, value in c.items():
            print(f"    {name:<16} {value:7.3f} s")


if __name__ == "__main__":
    main()
