"""The concurrency checker's workload: writer, reader and vacuum processes.

:mod:`_checker_run` starts each as a process (:func:`main`) forked from a fork server, a fresh
interpreter that has imported this module and nothing else, so that a writer killed with SIGKILL
is back at work in a few milliseconds; ``python _checker_workload.py ROLE JSON`` runs one by hand.
Each process journals
every operation before invoking it and after (see :mod:`_checker_journal`), and loops until the
stop file exists. Everything goes through hafen's public API, except that the vacuum process also
archives the raw log entries it can see (``_hafen/log/*.json``, read as files) so that the
checker knows which operation committed each version, also after vacuum removed it.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from _checker_journal import (
    PARTITIONS,
    JournalWriter,
    digest,
    identify_entry,
    op_number,
)

import hafen
from hafen.config import reload_settings
from hafen.datasets._dataset import storage_for

LOG_DIR = "_hafen/log"
ENV_PREFIXES = ("HAFEN_", "AZURE_STORAGE_")
SCHEMA = pa.schema(
    [
        ("part", pa.int64()),
        ("op", pa.string()),
        ("writer", pa.string()),
        ("seq", pa.int64()),
        ("value", pa.int64()),
    ]
)


def table_of(op: str, rows: list[tuple[int, int, int]]) -> pa.Table:
    """The rows of operation ``op``: (part, seq, value) each, with the op and writer ids."""
    return pa.table(
        {
            "part": [p for p, _, _ in rows],
            "op": [op] * len(rows),
            "writer": [op.split(".", 1)[0]] * len(rows),
            "seq": [s for _, s, _ in rows],
            "value": [v for _, _, v in rows],
        },
        schema=SCHEMA,
    )


def _stopping(args: dict[str, Any]) -> bool:
    return Path(args["stop"]).exists()


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": type(exc).__name__, "message": str(exc)[:500]}


# -- writers --------------------------------------------------------------------------------------


def random_rows(rng: random.Random, parts: list[int]) -> list[tuple[int, int, int]]:
    rows = []
    for part in parts:
        for _ in range(rng.randint(1, 4)):
            rows.append((part, len(rows), rng.randint(0, 99)))
    return rows


def random_predicate(rng: random.Random, rows: bool = True) -> list[list[list[Any]]]:
    """A delete's predicate: a whole partition, or (``rows``) rows by value in some or all."""
    p = rng.randrange(PARTITIONS)
    if not rows:
        return [[["part", "==", p]]]
    return rng.choice(
        [
            [[["part", "==", p]]],
            [[["value", "<", rng.randint(5, 30)]]],
            [[["part", "==", p], ["value", ">=", rng.randint(60, 95)]]],
            [[["part", "in", sorted({p, rng.randrange(PARTITIONS)})], ["value", "<", 40]]],
        ]
    )


def writer(args: dict[str, Any]) -> None:
    url, w, inc = args["url"], args["writer"], args["incarnation"]
    rng = random.Random(args["seed"])
    journal = JournalWriter(args["journal"], f"w{w}.{inc}", time.time)
    handle: hafen.Dataset | None = None
    seq = 0
    while not _stopping(args):
        op = f"w{w}.{inc}.{seq}"
        tag = -op_number(w, inc, seq)
        seq += 1
        r = rng.random()
        kind = "append" if r < 0.45 else "overwrite" if r < 0.7 else "delete"
        on_conflict = rng.choice(["raise", "retry"])
        try:
            if kind == "delete":
                predicate = random_predicate(rng, args.get("row_deletes", True))
                stale = handle is not None and rng.random() < 0.3
                journal.write(
                    "invoke",
                    op=op,
                    kind=kind,
                    on_conflict=on_conflict,
                    predicate=predicate,
                    tag=tag,
                    stale=stale,
                )
                base = handle if stale and handle is not None else hafen.open_dataset(url)
                tagged = [[tuple(t) for t in c] for c in predicate] + [[("part", "==", tag)]]
                result = base.delete(tagged, on_conflict=on_conflict)
                outcome = _delete_outcome(base, result, predicate, tag, on_conflict)
            else:
                parts = rng.sample(range(PARTITIONS), 1 if rng.random() < 0.7 else 2)
                rows = random_rows(rng, parts)
                journal.write(
                    "invoke", op=op, kind=kind, on_conflict=on_conflict, rows=[[*x] for x in rows]
                )
                result = hafen.write_dataset(
                    table_of(op, rows), url, mode=kind, on_conflict=on_conflict
                )
                outcome = {}
            journal.write(
                "ok", op=op, version=result.version, commit_id=result.state.commit_id, **outcome
            )
            handle = result
        except Exception as exc:  # ConflictError, CommitOutcomeUnknownError, or any other
            journal.write("fail", op=op, **_error(exc))
        time.sleep(rng.uniform(0, args.get("pause", 0.05)))  # workload pacing, not a wait


def _delete_outcome(
    base: hafen.Dataset, result: hafen.Dataset, predicate: Any, tag: int, on_conflict: str
) -> dict[str, Any]:
    """Whether the delete committed, and how many rows of its version still match it."""
    committed: bool | None
    if on_conflict == "raise":
        committed = result.version != base.version  # nothing matched: ``base`` came back
    else:
        try:
            params = result.history(limit=1)[0]["parameters"]
            committed = str(tag) in json.dumps(params, default=str)
        except Exception:
            committed = None
    try:
        matching = result.read_arrow(predicates=[[tuple(t) for t in c] for c in predicate]).num_rows
    except Exception:
        matching = None  # e.g. vacuumed meanwhile; the checker reads retained versions itself
    return {"base_version": base.version, "committed": committed, "matching": matching}


# -- readers --------------------------------------------------------------------------------------


def _content(ds: hafen.Dataset) -> dict[str, Any]:
    table = ds.read_arrow(columns=["op", "seq"])
    keys = zip(table.column("op").to_pylist(), table.column("seq").to_pylist(), strict=True)
    return {"rows": table.num_rows, "digest": digest(keys)}


def reader(args: dict[str, Any]) -> None:
    """Open the latest version (and read it), follow a long-lived handle, time-travel a little."""
    url = args["url"]
    rng = random.Random(args["seed"])
    journal = JournalWriter(args["journal"], f"r{args['reader']}", time.time)
    handle: hafen.Dataset | None = None
    last = 0
    while not _stopping(args):
        r = rng.random()
        api = "latest" if handle is not None and r < 0.45 else "open" if r < 0.85 else "version"
        t = time.time()
        record: dict[str, Any] = {"api": api}
        try:
            if api == "latest":
                assert handle is not None
                record["from_version"] = handle.version
                ds = handle = handle.latest()
            elif api == "open":
                ds = hafen.open_dataset(url)
                if handle is None:
                    handle = ds
            else:
                record["version"] = v = max(0, last - rng.randint(0, 4))
                ds = hafen.open_dataset(url, version=v)
            record.update(version=ds.version, dataset_id=ds.state.dataset_id)
            last = max(last, ds.version)
            if api != "latest" or rng.random() < 0.5:
                record.update(_content(ds))
        except Exception as exc:
            record.update(_error(exc))
        journal.write("read", t=t, t_end=time.time(), **record)
        time.sleep(rng.uniform(0.02, args.get("pause", 0.15)))


# -- vacuum and the archiver ----------------------------------------------------------------------


class Archiver:
    """Reads every log entry that appears (and re-appears) and journals what it commits."""

    def __init__(self, url: str, journal: JournalWriter) -> None:
        self.storage = storage_for(url)
        self.journal = journal
        self.seen: dict[int, str] = {}
        self.present: set[int] = set()
        self.lock = threading.Lock()

    def _ops_in(self, path: str) -> set[str] | None:
        try:
            with self.storage.arrow_filesystem.open_input_file(self.storage.full(path)) as fh:
                return set(pq.read_table(fh, columns=["op"]).column("op").to_pylist())
        except Exception:
            return None

    def round(self) -> None:
        with self.lock:
            listed = set()
            for info in self.storage.list(LOG_DIR):
                name = info.path.rsplit("/", 1)[-1]
                stem = name[: -len(".json")]
                if name.endswith(".json") and stem.isdigit():
                    listed.add(int(stem))
            for v in sorted(listed):
                if v in self.seen and v in self.present:
                    continue  # known, and has not disappeared since
                try:
                    data = json.loads(self.storage.read_bytes(f"{LOG_DIR}/{v:020d}.json"))
                except Exception:
                    listed.discard(v)  # vacuumed between the listing and the read
                    continue
                if self.seen.get(v) == data.get("commit_id"):
                    continue
                self.seen[v] = data.get("commit_id")
                self.journal.write("entry", **identify_entry(data, self._ops_in))
            self.present = listed


def vacuum(args: dict[str, Any]) -> None:
    url = args["url"]
    rng = random.Random(args["seed"])
    journal = JournalWriter(args["journal"], "vacuum", time.time)
    archiver = Archiver(url, journal)
    stop = threading.Event()

    def archive() -> None:
        while not stop.is_set():
            try:
                archiver.round()
            except Exception as exc:
                journal.write("archive-error", **_error(exc))
            stop.wait(args.get("archive_every", 0.02))

    thread = threading.Thread(target=archive, daemon=True)
    thread.start()
    try:
        while not _stopping(args):
            time.sleep(rng.uniform(*args.get("every", (0.3, 1.0))))  # workload pacing
            retain = rng.choice(args.get("retain", [2, 3]))
            started = time.time()
            grace = args.get("grace", "1.5s")
            try:
                archiver.round()  # so that what this vacuum removes has been seen
                started = time.time()
                report = hafen.open_dataset(url).vacuum(retain_versions=retain, grace_period=grace)
                journal.write(
                    "vacuum",
                    retain=retain,
                    grace=grace,
                    started=started,
                    removed_versions=report.removed_versions,
                    removed_files=len(report.removed_files),
                    removed=[p for p in report.removed_files if p.startswith("table/")][:200],
                )
            except Exception as exc:
                journal.write("vacuum", retain=retain, grace=grace, started=started, **_error(exc))
    finally:
        stop.set()
        thread.join(10)
        archiver.round()


ROLES = {"writer": writer, "reader": reader, "vacuum": vacuum}


def main(role: str, args: dict[str, Any]) -> None:
    """Run one role (a process target): the environment first, as the harness has it now.

    Processes are forked from a fork server that started with the environment of its time, so
    the settings and credentials (``HAFEN_*``, ``AZURE_STORAGE_*``) come in ``args["env"]``.
    """
    for key in [k for k in os.environ if k.startswith(ENV_PREFIXES)]:
        del os.environ[key]
    os.environ.update(args.get("env", {}))
    reload_settings()  # the fork server may have read them already
    try:
        ROLES[role](args)
    except Exception:
        name = args.get("name", role)
        JournalWriter(args["journal"], f"{name}.crash", time.time).write(
            "crash", name=name, tail=traceback.format_exc()[-1500:]
        )
        raise


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
