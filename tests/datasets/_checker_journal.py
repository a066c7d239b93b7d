"""The concurrency checker's journal: the events the workload records, read back as operations.

Every process of the workload (:mod:`_checker_workload`) and the harness (:mod:`_checker_run`)
appends one JSON object per line to its own file in one journal folder, flushed after each line,
so a process killed at any moment leaves every event it recorded before. Each event has ``t``
(``time.time()``, shared by all processes of the machine), ``proc`` (who wrote it) and ``event``:

``invoke``          an operation starts: ``op`` (unique id), ``kind`` (create, append, overwrite,
                    delete), ``on_conflict``, ``rows`` ([part, seq, value], for writes),
                    ``predicate`` (DNF of [column, op, value], for deletes), ``tag`` (see below),
                    ``stale`` (a delete through a long-lived ``Dataset``)
``ok``              it returned: ``version`` and ``commit_id`` of the returned ``Dataset``; for a
                    delete also ``base_version``, ``committed`` (False: nothing matched and an
                    existing version came back; None: unknown) and ``matching`` (rows of the
                    returned version that match the predicate, read right away)
``fail``            it raised: ``error`` (class name) and ``message``
(no outcome)        the process was killed during the operation
``entry``           the archiver saw log entry ``version`` (``commit_id``, ``operation``, ``ops``:
                    the operation ids of the rows it adds, ``tags``: delete tags in its parameters,
                    ``files``: the data files it adds)
``vacuum``          a vacuum ran: ``retain``, ``grace``, and ``removed_versions``/``removed_files``
                    or ``error``
``read``            a reader read: ``api`` (open, latest, version), ``version``, ``dataset_id``,
                    ``rows`` and ``digest`` (see :func:`digest`) or ``error``; ``t`` is when the
                    call started, ``t_end`` when it returned
``poll``            the server answered: ``status``, ``version``, ``timestamp`` (``t``: sent)
``kill``/``start``  the harness killed or (re)started a process
``crash``           a workload process exited by itself with an error (a harness bug)
``phase``           the harness moved on: ``name`` (stop, recreate); ``recreated`` gives the new
                    dataset's ``version``, ``timestamp`` and ``dataset_id``

A delete's predicate carries one extra conjunction, ``part == TAG``, with ``TAG`` a negative number
unique to the operation: it matches nothing (partitions are 0..3), so the delete means the same,
but the log entry's parameters then name the operation, and a delete whose process was killed
can be told apart from every other.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Entry",
    "Journal",
    "JournalWriter",
    "Op",
    "digest",
    "identify_entry",
    "load_journal",
    "matches",
    "op_number",
]

PARTITIONS = 4
TAG_RE = re.compile(r"-\d{9,}")


def op_number(writer: int, incarnation: int, seq: int) -> int:
    """A number unique to one operation (its delete tag is minus this number)."""
    return (writer + 1) * 10**10 + incarnation * 10**5 + seq


def digest(keys: Iterable[tuple[str, int]]) -> str:
    """A short fingerprint of a set of rows, identified by (operation id, row number)."""
    text = "\n".join(sorted(f"{op}:{seq}" for op, seq in keys))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def matches(predicate: list[list[list[Any]]], row: Mapping[str, Any]) -> bool:
    """Whether ``row`` matches a DNF predicate of [column, op, value] terms (no nulls here)."""

    def term(column: str, op: str, value: Any) -> bool:
        actual = row[column]
        if op == "==":
            return actual == value
        if op == "!=":
            return actual != value
        if op == "<":
            return actual < value
        if op == "<=":
            return actual <= value
        if op == ">":
            return actual > value
        if op == ">=":
            return actual >= value
        if op == "in":
            return actual in value
        if op == "not in":
            return actual not in value
        raise ValueError(op)

    return any(all(term(*t) for t in conj) for conj in predicate)


class JournalWriter:
    """Appends events, one flushed JSON line each, to ``directory/name.jsonl``."""

    def __init__(self, directory: str | Path, name: str, clock: Callable[[], float]) -> None:
        self.proc = name
        self._clock = clock
        self._file = open(Path(directory) / f"{name}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, event: str, *, t: float | None = None, **fields: Any) -> float:
        now = self._clock() if t is None else t
        line = json.dumps({"t": now, "proc": self.proc, "event": event, **fields}, default=str)
        self._file.write(line + "\n")
        self._file.flush()
        return now

    def close(self) -> None:
        self._file.close()


def identify_entry(
    data: Mapping[str, Any], read_ops: Callable[[str], set[str] | None]
) -> dict[str, Any]:
    """What the checker needs of a raw log entry: its commit and the operation behind it.

    The operation of an append or overwrite is the one id in the ``op`` column of the files it
    adds: taken from the file statistics in the entry when they show one value, else read from
    the file by ``read_ops`` (None when it cannot be read). A delete names its operation by the
    tag in its parameters. A stub (an entry vacuum retired) keeps only its commit id and
    operation.
    """
    operation = data.get("operation")
    ops: set[str] | None = set()
    tags: list[int] = []
    adds = [a["add"] for a in data.get("actions", []) if "add" in a]
    stub = bool(data.get("vacuumed"))  # retired by vacuum: the commit id and operation only
    if stub:
        ops = None
    elif operation == "delete":
        ops = None
        tags = sorted({int(x) for x in TAG_RE.findall(json.dumps(data.get("parameters", {})))})
    else:
        for add in adds:
            stat = (add.get("stats") or {}).get("op")
            if stat and stat[0] == stat[1]:
                ops.add(stat[0])
                continue
            found = read_ops(add["path"])
            if found is None:
                ops = None
                break
            ops |= found
    return {
        "version": data.get("version"),
        "commit_id": data.get("commit_id"),
        "operation": operation,
        "read_version": data.get("read_version"),
        "ops": sorted(ops) if ops is not None else None,
        "tags": tags,
        "files": [a["path"] for a in adds],
        "stub": stub,
    }


@dataclass
class Op:
    """One operation of the workload and what became of it."""

    id: str
    proc: str
    kind: str
    t_invoke: float
    on_conflict: str = "raise"
    rows: list[tuple[int, int, int]] = field(default_factory=list)  # part, seq, value
    predicate: list[list[list[Any]]] | None = None
    tag: int | None = None
    stale: bool = False
    outcome: str = "none"  # ok | conflict | unknown | error | none (killed)
    t_end: float | None = None
    version: int | None = None
    commit_id: str | None = None
    base_version: int | None = None
    committed: bool | None = None
    matching: int | None = None
    error: str | None = None
    message: str | None = None

    @property
    def writer(self) -> str:
        return self.id.split(".", 1)[0]

    def row_tuples(self) -> list[tuple[str, int, int, int, str]]:
        return [(self.id, seq, part, value, self.writer) for part, seq, value in self.rows]

    def brief(self) -> str:
        what = f"{self.kind}"
        if self.kind in ("append", "overwrite", "create"):
            parts = sorted({p for p, _, _ in self.rows})
            what += f" {len(self.rows)} rows into part {parts}"
        elif self.predicate is not None:
            what += f" {self.predicate}"
        if self.on_conflict == "retry":
            what += " (retry)"
        if self.stale:
            what += " (long-lived handle)"
        end = f"{self.t_end - self.t_invoke:.2f}s" if self.t_end is not None else "-"
        result = self.outcome if self.version is None else f"{self.outcome} v{self.version}"
        if self.error:
            result += f" {self.error}"
        return f"{self.id} {what}: {result} after {end}"


_OUTCOMES = {
    "ConflictError": "conflict",
    "CommitOutcomeUnknownError": "unknown",
}


@dataclass
class Entry:
    """A log entry as the archiver or the final snapshot saw it."""

    version: int
    commit_id: str
    operation: str
    ops: list[str] | None
    tags: list[int]
    t: float
    source: str  # archive | final
    files: list[str] = field(default_factory=list)  # the data files it adds
    stub: bool = False  # retired by vacuum: only its commit id and operation are left


@dataclass
class Journal:
    ops: dict[str, Op] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    reads: list[dict[str, Any]] = field(default_factory=list)
    polls: list[dict[str, Any]] = field(default_factory=list)
    vacuums: list[dict[str, Any]] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    starts: list[dict[str, Any]] = field(default_factory=list)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)  # archive errors and the like
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def add(self, ev: Mapping[str, Any]) -> None:
        kind = ev["event"]
        if kind == "invoke":
            self.ops[ev["op"]] = Op(
                id=ev["op"],
                proc=ev["proc"],
                kind=ev["kind"],
                t_invoke=ev["t"],
                on_conflict=ev.get("on_conflict", "raise"),
                rows=[tuple(r) for r in ev.get("rows", [])],  # type: ignore[misc]
                predicate=ev.get("predicate"),
                tag=ev.get("tag"),
                stale=bool(ev.get("stale")),
            )
        elif kind in ("ok", "fail"):
            op = self.ops[ev["op"]]
            op.t_end = ev["t"]
            if kind == "ok":
                op.outcome = "ok"
                op.version, op.commit_id = ev["version"], ev.get("commit_id")
                op.base_version = ev.get("base_version")
                op.committed, op.matching = ev.get("committed"), ev.get("matching")
            else:
                op.outcome = _OUTCOMES.get(ev["error"], "error")
                op.error, op.message = ev["error"], ev.get("message")
        elif kind == "entry":
            self.entries.append(
                Entry(
                    ev["version"],
                    ev["commit_id"],
                    ev["operation"],
                    ev.get("ops"),
                    list(ev.get("tags", [])),
                    ev["t"],
                    "archive",
                    list(ev.get("files", [])),
                    bool(ev.get("stub")),
                )
            )
        elif kind == "read":
            self.reads.append(dict(ev))
        elif kind == "poll":
            self.polls.append(dict(ev))
        elif kind == "vacuum":
            self.vacuums.append(dict(ev))
        elif kind == "kill":
            self.kills.append(dict(ev))
        elif kind == "start":
            self.starts.append(dict(ev))
        elif kind == "crash":
            self.crashes.append(dict(ev))
        elif kind == "phase":
            self.phases[ev["name"]] = dict(ev)
        elif kind == "config":
            self.config.update({k: v for k, v in ev.items() if k not in ("t", "proc", "event")})
        else:
            self.other.append(dict(ev))


def load_journal(directory: str | Path) -> Journal:
    """Read every ``*.jsonl`` file of ``directory``, in time order."""
    events = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by SIGKILL: the event did not happen for us
    return journal_of(events)


def journal_of(events: Iterable[Mapping[str, Any]]) -> Journal:
    journal = Journal()
    for ev in sorted(events, key=lambda e: e["t"]):
        journal.add(ev)
    return journal
