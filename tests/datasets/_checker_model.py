"""The concurrency checker: a journal and the dataset afterwards, checked against a model.

:func:`check` takes the :class:`~_checker_journal.Journal` of a run and a :class:`Snapshot` of
the dataset taken after the writers stopped (every log entry still present, and every retained
version read back), and returns a :class:`Report` of figures and anomalies. It is pure: no
storage, no clock, so its logic is tested on hand-made journals (``test_checker.py``).

The history is rebuilt version by version. The operation behind version ``v`` is named by its
log entry (the final one for retained versions, else the first one the archiver saw): the ``op``
ids of the rows it adds, or the tag in a delete's predicate, or the commit id an acknowledged
operation was given. A version nobody saw (vacuumed before the archiver read it) is taken from the
acknowledgements; if none claims it, it was committed by an operation whose outcome is unknown
(killed, or ``CommitOutcomeUnknownError``), and the checker searches which of those operations,
placed there, explains everything read (like Jepsen's linearizability search, on a few holes).
The model then replays the operations in version order (append adds rows; overwrite replaces
the partitions of its rows; delete drops matching rows), and every version read, by the readers
or after the run, must equal it. The checks on times (readers, server) are in
:mod:`_checker_freshness`; the kinds of anomaly and the report in :mod:`_checker_report`.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from _checker_freshness import check_readers, check_server
from _checker_journal import Entry, Journal, Op, digest, matches
from _checker_report import EXAMPLES, Anomaly, Report, Snapshot

__all__ = ["check"]

MAX_SEARCH = 2000
Row = tuple[str, int, int, int, str]  # op, seq, part, value, writer
State = dict[int, dict[tuple[str, int], tuple[int, str]]]  # part -> (op, seq) -> (value, writer)

# -- the model ------------------------------------------------------------------------------------


def apply(state: State, op: Op) -> None:
    """Apply one landed operation to the model (in place)."""
    if op.kind in ("create", "append", "overwrite"):
        if op.kind == "overwrite":
            for part in {p for p, _, _ in op.rows}:
                state[part] = {}
        for part, seq, value in op.rows:
            state.setdefault(part, {})[(op.id, seq)] = (value, op.writer)
    elif op.kind == "delete":
        assert op.predicate is not None
        for part, rows in state.items():
            gone = [
                k for k, (v, _) in rows.items() if matches(op.predicate, {"part": part, "value": v})
            ]
            for k in gone:
                del rows[k]
    else:
        raise ValueError(op.kind)


def rows_of(state: State) -> Counter[Row]:
    return Counter(
        (op, seq, part, value, writer)
        for part, rows in state.items()
        for (op, seq), (value, writer) in rows.items()
    )


def copy_state(state: State) -> State:
    return {part: dict(rows) for part, rows in state.items()}


@dataclass
class _Observations:
    """What was read of each version: full rows (retained) and fingerprints (readers)."""

    rows: dict[int, Counter[Row]]
    reads: dict[int, list[dict[str, Any]]]

    def versions(self) -> set[int]:
        return set(self.rows) | set(self.reads)


def _replay(
    chain: dict[int, Op | None], start: int, end: int, state: State, obs: _Observations
) -> tuple[State, dict[int, Counter[Row]], dict[int, tuple[int, str]]]:
    """Replay versions start..end onto ``state``; return it and the model at observed versions."""
    wanted = obs.versions()
    full: dict[int, Counter[Row]] = {}
    prints: dict[int, tuple[int, str]] = {}
    for v in range(start, end + 1):
        op = chain.get(v)
        if op is not None:
            apply(state, op)
        if v in wanted:
            keys = [k for rows in state.values() for k in rows]
            prints[v] = (len(keys), digest(keys))
            if v in obs.rows:
                full[v] = rows_of(state)
    return state, full, prints


def _mismatches(
    obs: _Observations, full: dict[int, Counter[Row]], prints: dict[int, tuple[int, str]]
) -> int:
    bad = sum(1 for v, rows in obs.rows.items() if v in full and full[v] != rows)
    for v, reads in obs.reads.items():
        if v in prints:
            bad += sum(1 for r in reads if (r["rows"], r["digest"]) != prints[v])
    return bad


def _seconds(text: Any) -> float | None:
    """``"1.5s"`` -> 1.5 (the workload's grace periods are in seconds)."""
    try:
        return float(str(text).removesuffix("s"))
    except ValueError:
        return None


# -- the check ------------------------------------------------------------------------------------


def check(journal: Journal, snapshot: Snapshot) -> Report:
    """Check the run recorded in ``journal`` against the dataset left in ``snapshot``."""
    return _Checker(journal, snapshot).run()


class _Checker:
    def __init__(self, journal: Journal, snapshot: Snapshot) -> None:
        self.j = journal
        self.s = snapshot
        self.report = Report()
        self.ops = journal.ops
        self.tag_to_op = {op.tag: op.id for op in self.ops.values() if op.tag is not None}
        self.by_commit: dict[str, list[Op]] = defaultdict(list)
        for op in self.ops.values():
            if op.outcome == "ok" and op.commit_id:
                self.by_commit[op.commit_id].append(op)

    def anomaly(self, kind: str, message: str, evidence: Iterable[str] = ()) -> None:
        self.report.anomalies.append(Anomaly(kind, message, list(evidence)))

    def run(self) -> Report:
        self._harness()
        self._history()
        self._model()
        self._outcomes()
        self._deletes()
        check_readers(self)
        check_server(self)
        self._figures()
        return self.report

    # -- the history --------------------------------------------------------------------------

    def identity(self, e: Entry) -> str | None:
        if e.operation == "delete":
            named = {self.tag_to_op[t] for t in e.tags if t in self.tag_to_op}
            if len(named) == 1:
                return named.pop()
        elif e.ops is not None and len(e.ops) == 1 and e.ops[0] in self.ops:
            return e.ops[0]
        kinds = {"delete"} if e.operation == "delete" else {e.operation}
        claims = [
            o
            for o in self.by_commit.get(e.commit_id, [])
            if o.kind in kinds and o.committed is not False
        ]
        return claims[0].id if len(claims) == 1 else None

    def _history(self) -> None:
        s = self.s
        latest = s.latest
        final: dict[int, Entry] = {}
        for v, info in s.versions.items():
            e = info["entry"]
            final[v] = Entry(
                v,
                e["commit_id"],
                e["operation"],
                e["ops"],
                e["tags"],
                s.t,
                "final",
                e.get("files", []),
                bool(e.get("stub")),
            )
        oldest = latest
        while oldest - 1 in final and not final[oldest - 1].stub:
            oldest -= 1
        self.oldest = oldest
        self.created_twice: set[int] = set()
        seen: dict[int, list[Entry]] = defaultdict(list)
        for e in sorted(self.j.entries, key=lambda e: e.t):
            if all(x.commit_id != e.commit_id for x in seen[e.version]):
                seen[e.version].append(e)
        for v in sorted(set(seen) | set(final)):
            commits = [x for x in seen.get(v, []) if x.commit_id or not x.stub]
            f = final.get(v)
            if (
                f is not None
                and (f.commit_id or not f.stub)
                and all(x.commit_id != f.commit_id for x in commits)
            ):
                commits.append(f)
            if len(commits) > 1:
                self.created_twice.add(v)
                self.anomaly(
                    "duplicate-version",
                    f"log entry {v} was created {len(commits)} times",
                    [self._entry_text(x) for x in commits],
                )
        for v in sorted(final):
            if v < oldest and not final[v].stub:
                self.anomaly(
                    "stray-entry",
                    f"log entry {v} exists below the oldest retained version {oldest}",
                    [self._entry_text(final[v])],
                )
        self.first_seen: dict[int, float] = {v: es[0].t for v, es in seen.items() if es}
        self.entry_at: dict[int, Entry | None] = {}
        self.chain: dict[int, Op | None] = {}
        self.source: dict[int, str] = {}
        for v in range(0, latest + 1):
            e = final.get(v) if v >= oldest else None
            if e is None and seen.get(v):
                e = next((x for x in seen[v] if not x.stub), seen[v][0])
            if e is None and v in final:
                e = final[v]  # a stub: its commit id still names the commit
            self.entry_at[v] = e
            op_id = self.identity(e) if e is not None else None
            self.source[v] = "log" if e is not None else "journal"
            if op_id is None and e is None:
                op_id = self._claim(v)
            self.chain[v] = self.ops.get(op_id) if op_id else None
        self.added_by: dict[str, str] = {}
        for e in itertools.chain(*seen.values(), final.values()):
            op_id = self.identity(e)
            if op_id:
                self.added_by.update(dict.fromkeys(e.files, op_id))
        self.grace = _seconds(self.j.config.get("grace"))
        self.placed: dict[str, list[int]] = defaultdict(list)
        for v, op in self.chain.items():
            if op is not None:
                self.placed[op.id].append(v)
        for e in itertools.chain(*seen.values(), final.values()):
            op_id = self.identity(e)
            if op_id and e.version not in self.placed[op_id]:
                self.placed[op_id].append(e.version)  # a stray or replaced entry: it landed too

    def _claim(self, v: int) -> str | None:
        """The operation an acknowledgement says committed ``v`` (which nobody saw)."""
        claims = [
            o
            for o in self.ops.values()
            if o.outcome == "ok" and o.version == v and o.committed is not False
        ]
        if len({o.commit_id for o in claims}) != 1:
            return None
        writes = [o for o in claims if o.kind != "delete"]
        if len(writes) == 1:
            return writes[0].id
        return claims[0].id if len(claims) == 1 else None

    def _remover(self, path: str, op: Op | None) -> list[str]:
        """Which vacuum removed ``path``, and when, relative to the commit that added it."""
        for vac in self.j.vacuums:
            if path in vac.get("removed", []):
                text = (
                    f"removed by the vacuum that ran from t={vac['started']:.3f} to {vac['t']:.3f}"
                )
                if op is not None:
                    text += (
                        f"; the commit was invoked at t={op.t_invoke:.3f} and acknowledged at "
                        f"t={op.t_end or float('nan'):.3f}"
                    )
                return [text]
        return []

    def _adder(self, path: str) -> Op | None:
        """The operation whose commit added data file ``path``."""
        op_id = self.added_by.get(path)
        return self.ops.get(op_id) if op_id else None

    def _entry_text(self, e: Entry) -> str:
        op_id = self.identity(e)
        op = self.ops.get(op_id) if op_id else None
        who = op.brief() if op else f"unidentified (ops {e.ops}, tags {e.tags})"
        return f"v{e.version} {e.operation} commit {e.commit_id[:12]} ({e.source}): {who}"

    # -- outcomes -------------------------------------------------------------------------------

    def _outcomes(self) -> None:
        for op_id, versions in self.placed.items():
            op = self.ops[op_id]
            if len(versions) > 1:
                self.anomaly(
                    "landed-twice",
                    f"{op_id} landed as versions {sorted(versions)}",
                    [op.brief()],
                )
            if op.outcome == "conflict":
                self.anomaly(
                    "conflict-landed",
                    f"{op_id} raised ConflictError but landed as version {versions[0]}",
                    [op.brief(), f"{op.message}"],
                )
            elif op.outcome == "error":
                self.anomaly(
                    "error-but-landed",
                    f"{op_id} raised {op.error} but landed as version {versions[0]}: "
                    "a caller that retries it duplicates its rows",
                    [op.brief(), f"{op.message}"],
                )
        acked: dict[int, list[Op]] = defaultdict(list)
        for op in self.ops.values():
            if op.outcome != "ok" or op.version is None:
                continue
            v = op.version
            if op.kind == "delete" and op.committed is False:
                continue
            at = self.chain.get(v)
            if v > self.s.latest:
                self.anomaly(
                    "lost-commit",
                    f"{op.id} was acknowledged as version {v}, beyond the latest {self.s.latest}",
                    [op.brief()],
                )
                continue
            if at is not None and at.id != op.id:
                if op.kind == "delete" and op.committed is None:
                    continue  # a delete that matched nothing returns an existing version
                entry = self.entry_at.get(v)
                self.anomaly(
                    "lost-commit",
                    f"{op.id} was acknowledged as version {v} (commit {str(op.commit_id)[:12]}), "
                    f"but version {v} in the history is {at.id}",
                    [
                        op.brief(),
                        f"history: {self._entry_text(entry) if entry else at.brief()}",
                        *self._rows_now(op),
                    ],
                )
            acked[v].append(op)
        for v, claims in sorted(acked.items()):
            commits = {o.commit_id for o in claims}
            if len(commits) > 1 and v not in self.created_twice:  # else reported already
                self.created_twice.add(v)
                self.anomaly(
                    "duplicate-version",
                    f"version {v} was acknowledged to {len(claims)} commits: "
                    + ", ".join(o.id for o in claims),
                    [o.brief() + f" commit {str(o.commit_id)[:12]}" for o in claims],
                )

    def _rows_now(self, op: Op) -> list[str]:
        latest = self.s.versions.get(self.s.latest, {}).get("rows")
        if latest is None or op.kind not in ("append", "overwrite"):
            return []
        present = sum(1 for r in latest if r[0] == op.id)
        return [f"{present} of its {len(op.rows)} rows are in the latest version {self.s.latest}"]

    # -- the model ----------------------------------------------------------------------------

    def _observations(self) -> _Observations:
        rows: dict[int, Counter[Row]] = {}
        outlived: dict[str, set[int]] = defaultdict(set)
        for v, info in sorted(self.s.versions.items()):
            if v < self.oldest or info["entry"].get("stub"):
                continue
            if info.get("rows") is not None:
                rows[v] = Counter(tuple(r) for r in info["rows"])  # type: ignore[misc]
                continue
            evidence, excused = [str(info.get("error"))], bool(info.get("missing"))
            for path in info.get("missing", []):
                op = self._adder(path)
                took = None if op is None else (op.t_end or self.s.t) - op.t_invoke
                if op is None or took is None or self.grace is None or took <= self.grace:
                    excused = False
                    who = "an unknown commit" if op is None else op.brief()
                    evidence.append(f"{path}, added by {who}, is gone")
                    evidence.extend(self._remover(path, op))
                else:
                    outlived[op.id].add(v)
            if not excused:
                self.anomaly(
                    "retained-unreadable",
                    f"retained version {v} could not be read after the run",
                    evidence,
                )
        if outlived:
            self.report.notes.append(
                f"{sum(map(len, outlived.values()))} retained versions refer to files that vacuum "
                f"removed while the writer that staged them outlived the grace period "
                f"({self.grace:g}s): "
                + "; ".join(
                    f"{self.ops[o].brief()} (v{min(vs)}..v{max(vs)})"
                    for o, vs in list(outlived.items())[:EXAMPLES]
                )
            )
        reads: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in self.j.reads:
            if (
                r.get("digest")
                and r.get("dataset_id") == self.s.dataset_id
                and 0 <= r["version"] <= self.s.latest
            ):
                reads[r["version"]].append(r)
        return _Observations(rows, dict(reads))

    def _model(self) -> None:
        obs = self._observations()
        self.obs = obs
        latest = self.s.latest
        holes = [v for v in range(latest + 1) if self.chain[v] is None]
        self.holes = holes
        self.searched = 0
        if holes:
            self._fill(holes, obs)
        _, full, prints = _replay(self.chain, 0, latest, {}, obs)
        for v in sorted(obs.rows):
            if v in full and full[v] != obs.rows[v]:
                self.anomaly("wrong-content", *self._diff(v, full[v], obs.rows[v]))
        bad_reads = [
            (v, r)
            for v, reads in sorted(obs.reads.items())
            for r in reads
            if v in prints and (r["rows"], r["digest"]) != prints[v]
        ]
        by_proc: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        for v, r in bad_reads:
            by_proc[r["proc"]].append((v, r))
        for proc, found in by_proc.items():
            self.anomaly(
                "wrong-content",
                f"{proc} read {len(found)} versions whose content differs from the model",
                [
                    f"v{v} ({r['api']}, t={r['t']:.3f}): {r['rows']} rows, digest {r['digest']}; "
                    f"model: {prints[v][0]} rows, digest {prints[v][1]}"
                    for v, r in found[:EXAMPLES]
                ],
            )

    def _fill(self, holes: list[int], obs: _Observations) -> None:
        """Place unknown-outcome operations into the versions nobody saw, as the reads demand.

        Holes are searched in groups: an observed version between two holes pins the state
        there, so the groups on either side are independent.
        """
        observed = sorted(obs.versions())
        groups: list[list[int]] = []
        for v in holes:
            if groups:
                i = bisect.bisect_left(observed, groups[-1][-1])
                if i == len(observed) or observed[i] >= v:
                    groups[-1].append(v)
                    continue
            groups.append([v])
        known = self._known_since()
        later = float("inf")
        self.next_known: dict[int, float] = {}
        for v in range(self.s.latest, -1, -1):
            self.next_known[v] = later  # no operation invoked after this committed v
            later = min(later, known[v])
        for group in groups:
            self._fill_group(group, obs, observed)

    def _fill_group(self, holes: list[int], obs: _Observations, observed: list[int]) -> None:
        deadline = self.next_known[holes[0]]
        candidates = [
            op
            for op in self.ops.values()
            if op.outcome in ("none", "unknown", "error")
            and op.id not in self.placed
            and op.t_invoke < self.next_known[holes[-1]]
        ]
        # killed ones first, the likeliest (invoked just before the version) first
        candidates.sort(key=lambda op: (op.outcome == "error", abs(deadline - op.t_invoke)))

        def fits(op: Op, v: int) -> bool:
            e = self.entry_at.get(v)
            return op.t_invoke < self.next_known[v] and (e is None or e.operation == op.kind)

        if len(candidates) < len(holes):
            self.anomaly(
                "unexplained-version",
                f"versions {holes} were committed, but only {len(candidates)} operations of "
                "unknown outcome could have done it",
                [op.brief() for op in candidates[:EXAMPLES]],
            )
        first = holes[0]
        i = bisect.bisect_left(observed, holes[-1])
        until = observed[i] if i < len(observed) else self.s.latest  # pinned from there on
        base, _, _ = _replay(self.chain, 0, first - 1, {}, _Observations({}, {}))
        best: tuple[int, tuple[Op, ...]] | None = None
        tried = 0
        for assignment in itertools.permutations(candidates, len(holes)):
            if not all(fits(op, v) for op, v in zip(assignment, holes, strict=True)):
                continue
            tried += 1
            trial = dict(self.chain)
            trial.update(zip(holes, assignment, strict=True))
            _, full, prints = _replay(trial, first, until, copy_state(base), obs)
            bad = _mismatches(obs, full, prints)
            if best is None or bad < best[0]:
                best = (bad, assignment)
            if bad == 0 or tried >= MAX_SEARCH:
                break
        self.searched += tried
        if best is None:
            return
        for op, v in zip(best[1], holes, strict=True):
            self.chain[v] = op
            self.placed[op.id].append(v)
            self.source[v] = "search"
        self.report.notes.append(
            f"versions {holes} were vacuumed before anyone saw them; placed "
            + ", ".join(f"{op.id} at v{v}" for op, v in zip(best[1], holes, strict=True))
            + f" ({tried} placements tried, {best[0]} reads left unexplained)"
        )
        if best[0]:
            self.anomaly(
                "unexplained-version",
                f"no placement of the {len(candidates)} operations of unknown outcome into the "
                f"unseen versions {holes} explains what was read",
                [op.brief() for op in candidates[:EXAMPLES]],
            )

    def _diff(self, v: int, model: Counter[Row], actual: Counter[Row]) -> tuple[str, list[str]]:
        missing = Counter(r[0] for r in (model - actual).elements())
        extra = Counter(r[0] for r in (actual - model).elements())
        dupes = sum(n - 1 for n in actual.values() if n > 1)
        op = self.chain.get(v)
        message = (
            f"version {v} ({op.kind if op else '?'} by {op.id if op else '?'}): "
            f"{sum(actual.values())} rows, the model has {sum(model.values())}"
        )
        evidence = []
        for label, found in (("missing", missing), ("unexpected", extra)):
            for op_id, n in found.most_common(EXAMPLES):
                who = self.ops.get(op_id)
                evidence.append(f"{label} {n} rows of {who.brief() if who else op_id}")
        if dupes:
            evidence.append(f"{dupes} rows appear more than once")
        return message, evidence

    # -- deletes ------------------------------------------------------------------------------

    def _deletes(self) -> None:
        flagged = set()
        for op in self.ops.values():
            if op.kind == "delete" and op.outcome == "ok" and op.matching:
                flagged.add(op.id)
                self.anomaly(
                    "delete-left-rows",
                    f"{op.id} returned version {op.version}, which holds {op.matching} rows "
                    f"matching its predicate",
                    [op.brief()],
                )
        for v, rows in self.obs.rows.items():
            op = self.chain.get(v)
            if op is None or op.kind != "delete" or op.id in flagged:
                continue
            assert op.predicate is not None
            left = [r for r in rows if matches(op.predicate, {"part": r[2], "value": r[3]})]
            if left:
                by_op = Counter(r[0] for r in left)
                self.anomaly(
                    "delete-left-rows",
                    f"version {v}, {op.id}'s delete, holds {len(left)} rows matching its predicate",
                    [op.brief()]
                    + [
                        f"{n} rows of {self.ops[o].brief() if o in self.ops else o}"
                        for o, n in by_op.most_common(EXAMPLES)
                    ],
                )

    def _known_since(self) -> dict[int, float]:
        """For each version, the earliest time it is known to have landed."""
        known: dict[int, float] = {}
        for v, op in self.chain.items():
            ts = [self.s.t]
            if v in self.first_seen:
                ts.append(self.first_seen[v])
            if op is not None and op.outcome == "ok" and op.version == v and op.t_end:
                ts.append(op.t_end)
            known[v] = min(ts)
        return known

    # -- the rest -----------------------------------------------------------------------------

    def _harness(self) -> None:
        for c in self.j.crashes:
            self.anomaly(
                "harness",
                f"{c.get('name', c['proc'])} failed (exit code {c.get('code')})",
                c.get("tail", "").splitlines()[-8:],
            )

    def _figures(self) -> None:
        f = self.report.figures
        ops = [op for op in self.ops.values() if op.proc != "harness"]
        outcome = Counter(op.outcome for op in ops)
        kinds = Counter(op.kind for op in ops)
        f["operations"] = f"{len(ops)} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"
        f["outcomes"] = ", ".join(f"{k} {n}" for k, n in sorted(outcome.items()))
        errors = Counter(op.error for op in ops if op.outcome == "error")
        if errors:
            f["errors"] = ", ".join(f"{k} {n}" for k, n in errors.most_common())
        took = sorted(op.t_end - op.t_invoke for op in ops if op.outcome == "ok" and op.t_end)
        if took:
            f["commit latency"] = (
                f"p50 {took[len(took) // 2]:.2f}s, p99 {took[int(len(took) * 0.99)]:.2f}s, "
                f"max {took[-1]:.2f}s"
            )
        noop = sum(1 for op in ops if op.kind == "delete" and op.committed is False)
        f["commits"] = (
            f"{self.s.latest + 1} versions; {noop} deletes matched nothing; latest "
            f"v{self.s.latest}, retained v{self.oldest}..v{self.s.latest}"
        )
        seen = len(self.first_seen)
        f["history"] = (
            f"{seen} of {self.s.latest + 1} log entries seen by the archiver, "
            f"{len(self.holes)} unseen and unacknowledged"
            + (f" ({self.searched} placements searched)" if self.holes else "")
        )
        f["kills"] = len(self.j.kills)
        landed_unknown = sum(
            1 for op in ops if op.outcome in ("none", "unknown") and op.id in self.placed
        )
        f["unknown outcome"] = (
            f"{outcome['none'] + outcome['unknown']} (killed or unknown), {landed_unknown} landed"
        )
        ok_vac = [x for x in self.j.vacuums if "error" not in x]
        f["vacuums"] = (
            f"{len(self.j.vacuums)} ({len(self.j.vacuums) - len(ok_vac)} failed), "
            f"{sum(len(x.get('removed_versions', [])) for x in ok_vac)} log entries and "
            f"{sum(x.get('removed_files', 0) for x in ok_vac)} files removed"
        )
        reads = Counter(r["api"] for r in self.j.reads)
        failed = Counter(r.get("error") for r in self.j.reads if r.get("error"))
        f["reads"] = (
            f"{len(self.j.reads)} ({', '.join(f'{k} {n}' for k, n in sorted(reads.items()))}); "
            f"{sum(failed.values())} failed"
            + (f": {', '.join(f'{k} {n}' for k, n in failed.most_common())}" if failed else "")
        )
        statuses = Counter(str(p.get("status")) for p in self.j.polls)
        f["server polls"] = ", ".join(f"{k}: {n}" for k, n in sorted(statuses.items()))
        f["anomalies"] = len(self.report.anomalies)
