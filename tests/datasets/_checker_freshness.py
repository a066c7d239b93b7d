"""The concurrency checker's clocks: readers that go back or read stale, a server behind.

Checks (5) and (6) of :mod:`_checker_model`, on the times the journal recorded: a read that started
after a version was acknowledged must see it (or something newer), a reader never sees an older
version after a newer one, and the server serves every version within its refresh interval plus a
margin (``refresh`` and ``margin`` of the journal's config) of the time it was first known.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _checker_model import _Checker

__all__ = ["check_readers", "check_server"]


# -- readers -------------------------------------------------------------------------------------


def _generation(c: _Checker, dataset_id: str | None) -> int | None:
    if dataset_id == c.s.dataset_id:
        return 0
    recreated = c.j.phases.get("recreated")
    if recreated and dataset_id == recreated.get("dataset_id"):
        return 1
    return None


def _acked_timeline(c: _Checker) -> tuple[list[float], list[int], list[str]]:
    """Times at which versions were acknowledged (confirmed in the history), running max."""
    acked = sorted(
        (op.t_end, v, op.id)
        for v, op in c.chain.items()
        if op is not None and op.outcome == "ok" and op.version == v and op.t_end
    )
    times, best, who = [], [], []
    top, top_id = -1, ""
    for t, v, op_id in acked:
        if v > top:
            top, top_id = v, op_id
        times.append(t)
        best.append(top)
        who.append(top_id)
    return times, best, who


def check_readers(c: _Checker) -> None:
    times, best, who = _acked_timeline(c)
    recreated = c.j.phases.get("recreated")
    recreate = c.j.phases.get("recreate")
    went_back: dict[str, list[str]] = defaultdict(list)
    stale: dict[tuple[str, str], list[str]] = defaultdict(list)
    last: dict[str, tuple[int, int, dict[str, Any]]] = {}
    for r in sorted(c.j.reads, key=lambda r: r["t"]):
        if r.get("error") or r["api"] == "version":
            continue
        if recreate and recreated and r["t_end"] >= recreate["t"] and r["t"] <= recreated["t"]:
            continue  # it read while the harness deleted the folder, file by file: anything goes
        gen = _generation(c, r.get("dataset_id"))
        if gen is None:
            continue
        where = f"{r['api']} v{r['version']} at t={r['t']:.3f}"
        prev = last.get(r["proc"])
        if prev is not None and (gen, r["version"]) < prev[:2]:
            p = prev[2]
            went_back[r["proc"]].append(
                f"{p['api']} v{p['version']} (dataset {p['dataset_id'][:8]}) at "
                f"t={p['t']:.3f}, then {where} (dataset {r['dataset_id'][:8]})"
            )
        if prev is None or (gen, r["version"]) >= prev[:2]:
            last[r["proc"]] = (gen, r["version"], r)
        if recreated and r["t"] > recreated["t"]:
            if gen != 1 or r["version"] < recreated["version"]:
                stale[(r["proc"], r["api"])].append(
                    f"{where} (dataset {r['dataset_id'][:8]}) started "
                    f"{r['t'] - recreated['t']:.2f}s after the dataset was recreated "
                    f"(now dataset {recreated['dataset_id'][:8]} v{recreated['version']})"
                )
            continue
        i = bisect.bisect_left(times, r["t"]) - 1
        if gen == 0 and i >= 0 and best[i] > r["version"]:
            stale[(r["proc"], r["api"])].append(
                f"{where}, but v{best[i]} ({who[i]}) had been acknowledged "
                f"{r['t'] - times[i]:.2f}s before"
            )
    for proc, found in went_back.items():
        c.anomaly("reader-went-back", f"{proc} went back {len(found)} times", found)
    for (proc, api), found in stale.items():
        c.anomaly(
            "stale-read", f"{proc}'s {api}() returned a stale version {len(found)} times", found
        )


# -- the server ----------------------------------------------------------------------------------


def check_server(c: _Checker) -> None:
    cfg = c.j.config
    if not c.j.polls:
        return
    bound = float(cfg.get("refresh", 1.0)) + float(cfg.get("margin", 1.0))
    recreate = c.j.phases.get("recreate")
    recreated = c.j.phases.get("recreated")
    cut = recreate["t"] if recreate else float("inf")
    known = c._known_since()
    order = sorted((t, v) for v, t in known.items())
    k_times = [t for t, _ in order]
    k_best = list(itertools.accumulate((v for _, v in order), max))
    lags: list[float] = []
    errors = [p for p in c.j.polls if p.get("status") and p["status"] >= 500]
    if errors:
        c.anomaly(
            "server-error",
            f"the server answered {len(errors)} polls with an error",
            [f"t={p['t']:.3f}: {p['status']} {p.get('body', '')[:200]}" for p in errors],
        )
    behind: list[str] = []  # before the dataset was deleted and recreated
    gone: list[str] = []  # after
    worst = 0.0
    newer_since: dict[int, float] = {}  # v -> when the first version after v was known
    running = float("inf")
    for v in sorted(known, reverse=True):
        newer_since[v] = running
        running = min(running, known[v])
    for p in c.j.polls:
        if p.get("status") != 200:
            continue
        if p["t"] < cut:
            i = bisect.bisect_right(k_times, p["t"] - bound) - 1
            if i >= 0 and k_best[i] > p["version"]:
                # how long the newest version it lacks has been known
                since = newer_since.get(p["version"], k_times[i])
                worst = max(worst, p["t"] - since)
                behind.append(
                    f"t={p['t']:.3f}: served v{p['version']}, v{k_best[i]} was known "
                    f"since {p['t'] - k_times[i]:.2f}s (bound {bound:.1f}s)"
                )
        elif recreated and p["t"] > recreated["t"] + bound:
            now = (recreated["version"], recreated["timestamp"])
            if (p["version"], p.get("timestamp")) != now:
                gone.append(
                    f"t={p['t']:.3f}: served v{p['version']} ({p.get('timestamp')}) "
                    f"{p['t'] - recreated['t']:.2f}s after the dataset was deleted and "
                    f"recreated as v{recreated['version']} ({recreated['timestamp']})"
                )
    if behind:
        c.anomaly(
            "stale-server",
            f"{len(behind)} polls found the server behind by more than {bound:.1f}s "
            f"(at worst {worst:.1f}s behind)",
            _ends(behind),
        )
    if gone:
        c.anomaly(
            "stale-server",
            f"{len(gone)} polls found the server serving the deleted dataset more than "
            f"{bound:.1f}s after it was recreated",
            _ends(gone),
        )
    served = sorted((p["t"], p["version"]) for p in c.j.polls if p.get("status") == 200)
    served = [(t, v) for t, v in served if t < cut]
    s_times = [t for t, _ in served]
    s_best = list(itertools.accumulate((v for _, v in served), max))
    never = 0
    for v, t in known.items():
        if not served or t < served[0][0]:
            continue  # before the server's first answer
        i = bisect.bisect_left(s_best, v)  # the first poll that served v or newer
        if i == len(s_best):
            never += 1
        else:
            lags.append(max(0.0, s_times[i] - t))
    if lags:
        lags.sort()
        c.report.figures["server lag"] = (
            f"p50 {lags[len(lags) // 2]:.2f}s, max {lags[-1]:.2f}s (bound {bound:.1f}s)"
            + (f"; {never} versions never served" if never else "")
        )


def _ends(lines: list[str]) -> list[str]:
    """The first and last three of ``lines``."""
    return lines if len(lines) <= 6 else [*lines[:3], "...", *lines[-3:]]
