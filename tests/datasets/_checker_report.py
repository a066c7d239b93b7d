"""The concurrency checker's verdict: the kinds of anomaly, the snapshot it checks, the report."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EXAMPLES", "KINDS", "Anomaly", "Report", "Snapshot"]

KINDS = {
    "lost-commit": "(1) an acknowledged commit is not in the history of the latest version",
    "duplicate-version": "(2) one version number was given to two commits",
    "stray-entry": "(2) a log entry below the oldest retained version (re-created after vacuum)",
    "wrong-content": "(3) a version read back differs from the model",
    "unexplained-version": "(3) no operation of the journal explains a version",
    "retained-unreadable": "(3) a retained version cannot be read",
    "delete-left-rows": "(4) a delete's version holds rows matching its predicate",
    "reader-went-back": "(5) a reader saw an older version after a newer one",
    "stale-read": "(5) a read started after a commit was acknowledged did not see it",
    "stale-server": "(6) the server did not reflect the latest version within its bound",
    "server-error": "(6) the server answered its dataset endpoint with an error",
    "conflict-landed": "(7) an operation that raised ConflictError landed",
    "error-but-landed": "(7) an operation that raised another error landed anyway",
    "landed-twice": "(7) one operation landed as two versions",
    "harness": "a workload process failed by itself (a bug of the checker's workload)",
}
EXAMPLES = 5


@dataclass
class Anomaly:
    kind: str
    message: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    """The dataset after the run: the latest version, and every log entry still present."""

    latest: int
    dataset_id: str
    t: float
    versions: dict[int, dict[str, Any]]  # v -> {"entry": identify_entry(...), "rows", "error"}


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    anomalies: list[Anomaly] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def kinds(self) -> Counter[str]:
        return Counter(a.kind for a in self.anomalies)

    def summary(self) -> str:
        lines = ["concurrency checker: " + ("no anomalies" if self.ok else "ANOMALIES FOUND")]
        for key, value in self.figures.items():
            lines.append(f"  {key}: {value}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        by_kind: dict[str, list[Anomaly]] = defaultdict(list)
        for a in self.anomalies:
            by_kind[a.kind].append(a)
        for kind, found in by_kind.items():
            lines.append(f"{len(found)} x {kind}: {KINDS.get(kind, kind)}")
            for a in found[:EXAMPLES]:
                lines.append(f"  - {a.message}")
                lines.extend(f"      {e}" for e in a.evidence[:8])
            if len(found) > EXAMPLES:
                lines.append(f"  ... and {len(found) - EXAMPLES} more")
        return "\n".join(lines)
