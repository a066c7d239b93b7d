"""Settings read once per process against re-read on every call, in one process, in turns.

    python benchmarks/settings_cache.py                  # 300 appends per round, 4 rounds
    python benchmarks/settings_cache.py --appends 100 --rounds 2

Each round appends ``--appends`` small frames (10 rows, one new partition each) to each of two
fresh datasets, alternating commit by commit so that the machine's load falls on both alike: one
with the settings read once (``hafen.config.get_settings``, the default), one re-reading the
environment and ``hafen.toml`` on every call, as before issue 14 (each module's ``get_settings``
replaced by one that reads them again). Prints the median commit time of each (after the first
50 of a round), how often an append asks for the settings, and what one read costs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import pandas as pd

import hafen
import hafen.config
from hafen.config import get_settings, reload_settings

WARMUP = 50
MODES = ["read once", "re-read each call"]


def frame(i: int) -> pd.DataFrame:
    return pd.DataFrame({"batch": [i % 500] * 10, "i": [i] * 10, "v": [float(i)] * 10})


def bound_get_settings() -> list[ModuleType]:
    """The hafen modules holding ``get_settings`` (hafen.config too: for imports in functions)."""
    return [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("hafen") and getattr(module, "get_settings", None) is get_settings
    ]


def rereading(
    env: dict[str, str] | None = None, toml_path: str | None = None
) -> hafen.config.Settings:
    return hafen.config._read_settings(env, toml_path)  # what get_settings did on every call


def interleaved(root: Path, n: int, modules: list[ModuleType]) -> dict[str, list[float]]:
    """``n`` appends to each of two datasets, alternating commit by commit (and which goes first),
    one with the settings read once, one re-reading them on every call."""
    urls = {mode: str(root / mode) for mode in MODES}
    for url in urls.values():
        hafen.write_dataset(frame(0), url, partition_on=["batch"])
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i in range(n):
        for mode in MODES[i % 2 :] + MODES[: i % 2]:
            replacement = get_settings if mode == "read once" else rereading
            for module in modules:
                module.get_settings = replacement  # type: ignore[attr-defined]
            start = time.perf_counter()
            hafen.write_dataset(frame(i + 1), urls[mode], mode="append")
            times[mode].append(time.perf_counter() - start)
    for module in modules:
        module.get_settings = get_settings  # type: ignore[attr-defined]
    for url in urls.values():
        shutil.rmtree(url, ignore_errors=True)
        Path(f"{url}.by-dataset-metadata.json").unlink(missing_ok=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hafen-settings-"))
    calls = 0

    def counting(
        env: dict[str, str] | None = None, toml_path: str | None = None
    ) -> hafen.config.Settings:
        nonlocal calls
        calls += 1
        return get_settings(env, toml_path)

    try:
        interleaved(root / "warm", WARMUP, [])  # imports, first files
        modules = bound_get_settings()
        for module in modules:
            module.get_settings = counting  # type: ignore[attr-defined]
        hafen.write_dataset(frame(1), str(root / "warm" / "read once"), mode="append")
        per_commit = calls
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        rounds = []
        for r in range(args.rounds):
            got = interleaved(root / str(r), args.appends, modules)
            rounds.append({mode: statistics.median(t[WARMUP:]) for mode, t in got.items()})
            for mode in MODES:
                times[mode].extend(got[mode][WARMUP:])
        reads = []
        for _ in range(200):
            start = time.perf_counter()
            reload_settings()
            reads.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"{args.rounds} rounds x {args.appends} appends per mode, alternating commit by commit; "
        f"medians after the first {WARMUP} of a round"
    )
    for mode in MODES:
        per_round = ", ".join(f"{r[mode] * 1e3:.2f}" for r in rounds)
        print(
            f"  {mode:18s} {statistics.median(times[mode]) * 1e3:6.2f} ms per commit "
            f"(rounds: {per_round})"
        )
    base, cached = (statistics.median(times[m]) for m in ("re-read each call", "read once"))
    print(f"  read once / re-read: {cached / base:.3f} ({(base - cached) * 1e3:+.2f} ms a commit)")
    print(
        f"  get_settings() calls per append: {per_commit}; one read of the environment and "
        f"hafen.toml: {statistics.median(reads) * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
