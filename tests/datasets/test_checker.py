"""The concurrency checker (issue 13): its logic on hand-made journals, then real runs.

The first tests feed :func:`_checker_model.check` a small journal written by hand, clean or with
one anomaly planted, so the checker's own logic is proven independent of timing. The slow tests
run the whole workload (writers killed at random, vacuum, readers, ``hafen serve``) for
``HAFEN_CHECKER_SECONDS`` (default 25) on local files and on Azurite, and fail on any anomaly;
``make soak`` runs the same for as long as asked.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from _checker_journal import digest, journal_of
from _checker_model import check
from _checker_report import Report, Snapshot
from _checker_run import checker_seconds, run_checker

# -- a hand-made history --------------------------------------------------------------------------

T0 = 1000.0


class Story:
    """Events of a small run, written by hand, and the dataset it left (a :class:`Snapshot`)."""

    def __init__(self) -> None:
        self.t = T0
        self.events: list[dict[str, Any]] = []
        self.retained: dict[int, list[list[Any]]] = {}
        self.missing: dict[int, list[str]] = {}  # retained versions unreadable: files gone
        self.stubs: list[int] = []  # versions whose log entry vacuum retired
        self.entries: dict[int, dict[str, Any]] = {}
        self.latest = -1
        self.event("harness", "config", refresh=0.5, margin=1.0, grace="1.5s")

    def event(self, proc: str, event: str, *, at: float | None = None, **fields: Any) -> float:
        self.t = at if at is not None else self.t + 0.01
        self.events.append({"t": self.t, "proc": proc, "event": event, **fields})
        return self.t

    def entry(self, version: int, operation: str, op: str | None, *, tag: int | None = None):
        e = {
            "version": version,
            "commit_id": f"c{version}-{op}",
            "operation": operation,
            "read_version": version - 1,
            "ops": [op] if operation != "delete" else None,
            "tags": [tag] if tag is not None else [],
            "files": [f"table/{op}.parquet"],
        }
        self.entries[version] = e
        self.latest = max(self.latest, version)
        self.event("vacuum", "entry", **e)
        return e["commit_id"]

    def write(
        self,
        op: str,
        kind: str,
        rows: list[tuple[int, int, int]],
        version: int | None,
        *,
        outcome: str = "ok",
        error: str = "ConflictError",
    ) -> None:
        proc = op.rsplit(".", 1)[0]
        self.event(proc, "invoke", op=op, kind=kind, rows=[list(r) for r in rows])
        commit = self.entry(version, kind, op) if version is not None else None
        if outcome == "ok":
            self.event(proc, "ok", op=op, version=version, commit_id=commit)
        elif outcome == "fail":
            self.event(proc, "fail", op=op, error=error, message="...")

    def delete(
        self, op: str, predicate: list[Any], version: int, *, committed=True, matching=0
    ) -> None:
        proc, tag = op.rsplit(".", 1)[0], -(10**10 + len(self.events))
        self.event(proc, "invoke", op=op, kind="delete", predicate=predicate, tag=tag)
        commit = self.entry(version, "delete", op, tag=tag) if committed else f"c{version}"
        self.event(
            proc,
            "ok",
            op=op,
            version=version,
            commit_id=commit,
            committed=committed,
            matching=matching,
            base_version=version - 1,
        )

    def read(self, proc: str, api: str, version: int, rows: list[list[Any]], **extra) -> None:
        keys = [(r[0], r[1]) for r in rows]
        self.event(
            proc,
            "read",
            api=api,
            version=version,
            dataset_id="d1",
            rows=len(rows),
            digest=digest(keys),
            t_end=self.t + 0.005,
            **extra,
        )

    def poll(self, version: int, *, at: float | None = None, status: int | None = 200) -> None:
        self.event(
            "poller", "poll", at=at, status=status, version=version, timestamp=f"ts{version}"
        )

    def snapshot(self) -> Snapshot:
        versions: dict[int, dict[str, Any]] = {
            v: {"entry": self.entries[v], "rows": rows} for v, rows in self.retained.items()
        }
        for v, paths in self.missing.items():
            versions[v].update(rows=None, error="StorageError: missing file", missing=paths)
        for v in self.stubs:  # entries vacuum retired: commit id and operation only
            e = self.entries[v]
            stub = {**e, "ops": None, "tags": [], "files": [], "stub": True}
            versions[v] = {"entry": stub}
        return Snapshot(self.latest, "d1", self.t + 1, versions)

    def check(self) -> Report:
        return check(journal_of(copy.deepcopy(self.events)), self.snapshot())


# rows as the dataset holds them: [op, seq, part, value, writer]
INIT = [["init", 0, 0, 50, "init"], ["init", 1, 1, 51, "init"]]
A1 = [["w0.0.0", 0, 0, 10, "w0"], ["w0.0.0", 1, 2, 20, "w0"]]
O2 = [["w1.0.0", 0, 0, 99, "w1"]]
K4 = [["w1.0.1", 0, 3, 5, "w1"]]
V2 = [INIT[1], A1[1], O2[0]]  # the overwrite replaced partition 0
V3 = [INIT[1], O2[0]]  # the delete of value < 30 removed w0.0.0's second row
V4 = [*V3, K4[0]]


def clean() -> Story:
    """Create, append, overwrite, delete, a killed append that landed, a conflict, readers."""
    s = Story()
    s.poll(-1, status=None)  # the server starting: no answer yet
    s.write("init", "create", [(0, 0, 50), (1, 1, 51)], 0)
    s.poll(0)
    s.write("w0.0.0", "append", [(0, 0, 10), (2, 1, 20)], 1)
    s.read("r0", "open", 1, [*INIT, *A1])
    s.write("w1.0.0", "overwrite", [(0, 0, 99)], 2)
    s.read("r0", "latest", 2, V2)
    s.poll(2)
    s.delete("w0.0.1", [[["value", "<", 30]]], 3)
    s.write("w1.0.1", "append", [(3, 0, 5)], 4, outcome="none")  # killed after it landed
    s.event("harness", "kill", name="w1.0")
    s.write("w0.0.2", "overwrite", [(1, 0, 1)], None, outcome="fail")  # ConflictError
    s.delete("w0.0.3", [[["part", "==", 2]]], 4, committed=False)  # matched nothing
    s.read("r1", "open", 4, V4)
    s.read("r1", "version", 2, V2)
    s.poll(4)
    s.event("vacuum", "vacuum", retain=2, grace="1.5s", removed_versions=[0, 1, 2], removed_files=3)
    s.retained = {3: V3, 4: V4}
    return s


def kinds(report: Report) -> set[str]:
    return set(report.kinds())


def test_a_clean_history_has_no_anomaly():
    report = clean().check()
    assert report.ok, report.summary()
    assert "unknown outcome: 1 (killed or unknown), 1 landed" in report.summary()
    assert report.figures["kills"] == 1


def test_entries_retired_by_vacuum_are_history_not_retained_versions():
    s = clean()
    s.stubs = [0, 1, 2]
    report = s.check()
    assert report.ok, report.summary()
    assert "retained v3..v4" in report.figures["commits"]
    # a stub the archiver never saw in full is named by its commit id
    s.events = [e for e in s.events if not (e["event"] == "entry" and e["version"] == 1)]
    assert s.check().ok


def test_a_version_acknowledged_twice_is_a_lost_commit():
    s = clean()
    # a stale writer re-created vacuumed entry 1 and was told its append landed there
    s.write("w2.0.0", "append", [(1, 0, 7)], 1)
    report = s.check()
    assert kinds(report) == {"lost-commit", "duplicate-version"}, report.summary()
    lost = next(a for a in report.anomalies if a.kind == "lost-commit")
    assert "w2.0.0 was acknowledged as version 1" in lost.message
    assert "0 of its 1 rows are in the latest version 4" in lost.evidence


def test_an_acknowledged_version_beyond_the_latest_is_lost():
    s = clean()
    s.event("w2.0", "invoke", op="w2.0.0", kind="append", rows=[[1, 0, 7]])
    s.event("w2.0", "ok", op="w2.0.0", version=9, commit_id="c9")
    assert kinds(s.check()) == {"lost-commit"}


def test_two_acknowledgements_of_one_unseen_version_are_a_duplicate():
    s = clean()
    for op in ("w2.0.0", "w3.0.0"):
        s.event(op[:4], "invoke", op=op, kind="append", rows=[[1, 0, 7]])
        s.event(op[:4], "ok", op=op, version=3, commit_id=f"x-{op}")
    assert {"duplicate-version", "lost-commit"} <= kinds(s.check())


def test_a_log_entry_below_the_retained_versions_is_a_stray():
    s = clean()
    s.retained[1] = [*INIT, *A1]
    assert kinds(s.check()) == {"stray-entry"}


def test_a_missing_row_in_a_retained_version_is_wrong_content():
    s = clean()
    s.retained[4] = V4[1:]
    report = s.check()
    assert kinds(report) == {"wrong-content"}
    (a,) = report.anomalies
    assert a.message.startswith("version 4 (append by w1.0.1): 2 rows, the model has 3")
    assert a.evidence[0].startswith("missing 1 rows of init create 2 rows into part [0, 1]: ok v0")


def test_a_row_read_twice_is_wrong_content():
    s = clean()
    s.retained[4] = [*V4, V4[0]]
    report = s.check()
    assert kinds(report) == {"wrong-content"}
    assert "1 rows appear more than once" in report.anomalies[0].evidence


def test_a_reader_seeing_other_content_is_wrong_content():
    s = clean()
    s.read("r1", "open", 4, V3)
    report = s.check()
    assert kinds(report) == {"wrong-content"}
    assert "r1 read 1 versions" in report.anomalies[0].message


def test_an_unreadable_retained_version_is_reported_with_the_commit_of_its_missing_file():
    s = clean()
    s.missing[4] = ["table/w1.0.1.parquet"]
    s.events.insert(0, {"t": T0 - 1, "proc": "w1.0", "event": "x"})  # ignored: unknown event
    report = s.check()
    assert kinds(report) == {"retained-unreadable"}
    assert (
        report.anomalies[0]
        .evidence[1]
        .startswith("table/w1.0.1.parquet, added by w1.0.1 append 1 rows into part [3]")
    )


def test_a_file_lost_by_a_writer_slower_than_the_grace_period_is_a_note():
    s = clean()
    s.write("w2.0.0", "append", [(1, 0, 7)], 5)
    s.events[-1]["t"] += 2.0  # it took 2s to commit: vacuum (grace 1.5s) removed its file
    s.retained[5] = []
    s.missing[5] = ["table/w2.0.0.parquet"]
    report = s.check()
    assert report.ok, report.summary()
    assert "1 retained versions refer to files that vacuum removed" in report.notes[0]


def test_a_delete_that_left_matching_rows():
    s = clean()
    # the delete's version holds a row with value < 30 that a concurrent append brought
    s.write("w2.0.0", "append", [(3, 0, 1)], 5)
    s.delete("w0.0.9", [[["value", "<", 30]]], 6, matching=1)
    s.retained = {5: [*V4, ["w2.0.0", 0, 3, 1, "w2"]], 6: [*V4, ["w2.0.0", 0, 3, 1, "w2"]]}
    report = s.check()
    assert kinds(report) == {"delete-left-rows", "wrong-content"}, report.summary()


def test_a_delete_version_holding_matching_rows_is_found_without_the_probe():
    s = clean()
    s.retained[3] = [*V3, A1[1]]  # w0.0.0's row of value 20 survived the delete of value < 30
    s.retained[4] = [*V4, A1[1]]
    report = s.check()
    assert {"delete-left-rows", "wrong-content"} == kinds(report)
    left = next(a for a in report.anomalies if a.kind == "delete-left-rows")
    assert "version 3, w0.0.1's delete, holds 1 rows" in left.message


def test_a_reader_going_back_and_reading_stale():
    s = clean()
    s.read("r1", "latest", 2, V2)  # after it read v4, and after v4 was acknowledged
    report = s.check()
    assert kinds(report) == {"reader-went-back", "stale-read"}


def test_a_reader_following_a_recreated_dataset():
    s = clean()
    s.event("harness", "phase", name="recreate")
    s.event("r1", "read", api="open", version=2, dataset_id="d1", t_end=s.t)  # half deleted
    s.event("harness", "phase", name="recreated", version=1, timestamp="new", dataset_id="d2")
    s.event("r0", "read", api="open", version=1, dataset_id="d2", t_end=s.t)
    assert s.check().ok
    s.event("r0", "read", api="latest", version=4, dataset_id="d1", t_end=s.t)  # the deleted one
    assert kinds(s.check()) == {"reader-went-back", "stale-read"}


def test_a_server_behind_by_more_than_its_bound():
    s = clean()
    known = next(e["t"] for e in s.events if e["event"] == "entry" and e["version"] == 4)
    s.poll(2, at=known + 1.4)  # v4 landed 1.4s ago: within refresh 0.5s + 1s
    assert s.check().ok
    s.poll(2, at=known + 1.6)
    report = s.check()
    assert kinds(report) == {"stale-server"}
    assert "server behind by more than 1.5s" in report.anomalies[0].message


def test_a_server_serving_a_deleted_dataset():
    s = clean()
    s.event("harness", "phase", name="recreate")
    done = s.event(
        "harness", "phase", name="recreated", version=1, timestamp="ts1", dataset_id="d2"
    )
    s.poll(1, at=done + 1.0)
    s.poll(4, at=done + 2.0)
    report = s.check()
    assert kinds(report) == {"stale-server"}
    assert "after the dataset was deleted and recreated" in report.anomalies[0].evidence[0]


def test_a_server_error():
    s = clean()
    s.poll(4, status=500)
    assert kinds(s.check()) == {"server-error"}


def test_a_conflict_that_landed():
    s = clean()
    s.write("w2.0.0", "overwrite", [(1, 0, 7)], 5, outcome="fail")
    s.retained[5] = [O2[0], K4[0], ["w2.0.0", 0, 1, 7, "w2"]]  # partition 1 replaced
    report = s.check()
    assert kinds(report) == {"conflict-landed"}, report.summary()


def test_an_error_after_the_commit_landed():
    s = clean()
    s.write("w2.0.0", "append", [(1, 0, 7)], 5, outcome="fail", error="CorruptMetadataError")
    s.retained[5] = [*V4, ["w2.0.0", 0, 1, 7, "w2"]]
    report = s.check()
    assert kinds(report) == {"error-but-landed"}
    assert "raised CorruptMetadataError but landed as version 5" in report.anomalies[0].message


def test_one_operation_landing_twice():
    s = clean()
    s.entry(5, "append", "w1.0.1")  # the killed append, committed a second time
    s.retained[5] = [*V4, K4[0]]
    assert "landed-twice" in kinds(s.check())


def test_unseen_versions_are_explained_by_a_search_over_unknown_outcomes():
    s = clean()
    # two killed appends; one landed as v5, vacuumed before the archiver saw it
    s.event("w2.0", "invoke", op="w2.0.0", kind="append", rows=[[1, 0, 7]])
    s.event("w3.0", "invoke", op="w3.0.0", kind="append", rows=[[2, 0, 8]])
    s.entry(6, "append", "w0.0.5")
    s.event("w0.0", "invoke", op="w0.0.5", kind="append", rows=[[0, 0, 1]])
    s.event("w0.0", "ok", op="w0.0.5", version=6, commit_id="c6-w0.0.5")
    s.retained = {6: [*V4, ["w3.0.0", 0, 2, 8, "w3"], ["w0.0.5", 0, 0, 1, "w0"]]}
    report = s.check()
    assert report.ok, report.summary()
    assert any("placed w3.0.0 at v5" in note for note in report.notes)
    # and nothing explains a row nobody wrote
    s.retained[6].append(["w9.0.0", 0, 2, 8, "w9"])
    assert kinds(s.check()) == {"unexplained-version", "wrong-content"}


def test_an_unseen_version_without_any_candidate():
    s = clean()
    s.entry(6, "append", "w0.0.5")
    s.event("w0.0", "invoke", op="w0.0.5", kind="append", rows=[[0, 0, 1]])
    s.event("w0.0", "ok", op="w0.0.5", version=6, commit_id="c6-w0.0.5")
    s.retained = {6: [*V4, ["w0.0.5", 0, 0, 1, "w0"]]}
    assert "unexplained-version" in kinds(s.check())


def test_a_crashed_workload_process_fails_the_check():
    s = clean()
    s.event("w0.0.crash", "crash", name="w0.0", tail="Traceback ...\nNameError: x")
    report = s.check()
    assert kinds(report) == {"harness"}
    assert report.anomalies[0].evidence == ["Traceback ...", "NameError: x"]


def test_the_summary_names_every_anomaly_with_its_evidence():
    s = clean()
    s.write("w2.0.0", "append", [(1, 0, 7)], 1)
    s.poll(4, status=500)
    text = s.check().summary()
    assert text.startswith("concurrency checker: ANOMALIES FOUND")
    assert "1 x lost-commit: (1) an acknowledged commit is not in the history" in text
    assert "1 x server-error" in text
    assert "operations: " in text and "kills: 1" in text


# -- real runs ------------------------------------------------------------------------------------


def _run(url: str, tmp_path) -> Report:
    report = run_checker(url, tmp_path / "run", seconds=checker_seconds())
    print(report.summary())
    return report


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_checker_on_local_files(tmp_path):
    report = _run(str(tmp_path / "data" / "checked"), tmp_path)
    assert report.ok, report.summary()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_checker_on_azurite(azurite, tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    report = _run(azurite.url(f"{uuid.uuid4().hex[:8]}/checked"), tmp_path)
    assert report.ok, report.summary()
