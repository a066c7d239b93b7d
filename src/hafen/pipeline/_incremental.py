"""Incremental runs: each stage does only what the data that arrived since the last run changes.

**Watermark.** A database filled through the ingest API (:mod:`hafen.serve._ingest`) numbers its
batches: every row carries its batch's ingest sequence number ``hafen_seq``, and the database
can say a number ``N`` up to which every batch has landed (SQLite: the counter
``hafen_sequence``; PostgreSQL: the oldest running transaction's id, less one). A run reads ``N``
first and extracts the sales with ``hafen_seq`` in ``(last run's N, N]``, whatever their dates,
so late data for old days is picked up. A database without the counter's table (the synthetic
one, or any other) is extracted whole on every run.

**Lineage.** Every version the pipeline commits says in its commit's parameters
(:meth:`~hafen.datasets.Dataset.history`, key ``"pipeline"``) what it covers:

- ``generation``: a token drawn when the dataset is rebuilt whole, kept by the versions that
  only add to it;
- ``watermark`` (``raw/*``): the ingest sequence number the version covers;
- ``inputs``: for each dataset it was made from, ``[generation, version]`` of the version it
  covers (``forecasts`` also keep the calendar and every store's held-out metrics).

A stage compares its inputs now with what its dataset's latest version covers. Nothing new: no
commit at all. Only files added to its main input since (same generation; a file records the
version that added it): the stage processes just those files and appends, or, for the
forecasts, forecasts again just the stores those files belong to and replaces their partitions
in one commit. Anything else (an input rebuilt, a dimension table changed, the calendar moved
for the forecasts, no lineage): the stage rebuilds whole, as a full run does. So does
``sales_by_store`` once a store's partition has gathered :data:`COMPACT_FILES` files, a file per
run that touched it: the rewrite puts each store in one file again (and forecasts every store).

Because the lineage lands in the same commit as the data it describes, a run killed at any
point leaves every dataset agreeing with its lineage: the next run picks up where the datasets
are, and nothing is counted twice.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import uuid
from typing import Any

from hafen.datasets import Dataset, open_dataset
from hafen.errors import DatasetNotFoundError

__all__ = [
    "COMPACT_FILES",
    "KEY",
    "Step",
    "crowded",
    "input_ref",
    "lineage",
    "open_latest",
    "plan_step",
    "source_sequence",
]

#: The key of the pipeline's lineage in a commit's parameters.
KEY = "pipeline"
#: Files in one store's partition of ``sales_by_store`` (each incremental run that touches the
#: store adds one) at which the next run rewrites the dataset whole, one file per store again.
COMPACT_FILES = 16
SEQ_COLUMN = "hafen_seq"
SEQUENCE_TABLE = "hafen_sequence"


def new_generation() -> str:
    return uuid.uuid4().hex[:12]


def open_latest(url: str) -> Dataset | None:
    """The latest version of the dataset at ``url``, or None if there is none."""
    try:
        return open_dataset(url)
    except DatasetNotFoundError:
        return None


#: Lineage read before, by commit id (a commit never changes; its id is drawn per commit).
_SEEN: dict[str, dict[str, Any] | None] = {}


def lineage(ds: Dataset | None) -> dict[str, Any] | None:
    """What version ``ds`` covers (see the module docstring); None without lineage."""
    if ds is None:
        return None
    commit = ds.state.commit_id
    if commit and commit in _SEEN:  # a run asks several times: a commit's JSON costs ms to read
        return copy.deepcopy(_SEEN[commit])
    entries = ds.history(limit=1)
    found = entries[0]["parameters"].get(KEY) if entries else None
    found = found if isinstance(found, dict) else None
    if commit:
        if len(_SEEN) >= 1024:
            _SEEN.pop(next(iter(_SEEN)))
        _SEEN[commit] = copy.deepcopy(found)
    return found


def input_ref(ds: Dataset) -> list[Any]:
    """``[generation, version]`` of ``ds``, as a dataset made from it records it."""
    found = lineage(ds) or {}
    return [found.get("generation"), ds.version]


@dataclasses.dataclass(frozen=True)
class Step:
    """What a stage does this run: ``"skip"``, ``"append"`` (the main input's files added after
    version ``since``) or ``"rebuild"``."""

    action: str
    since: int | None = None
    generation: str = ""


def plan_step(
    own: dict[str, Any] | None, inputs: dict[str, list[Any]], main: str, *, full: bool
) -> Step:
    """The step of a stage whose dataset covers ``own``, with its inputs now at ``inputs``."""
    if full or own is None or not isinstance(own.get("inputs"), dict):
        return Step("rebuild", generation=new_generation())
    covered = own["inputs"]
    if set(covered) != set(inputs) or any(g is None for g, _ in inputs.values()):
        return Step("rebuild", generation=new_generation())
    for name, (generation, version) in inputs.items():
        was_generation, was_version = covered[name]
        if generation != was_generation or (name != main and version != was_version):
            return Step("rebuild", generation=new_generation())
    since = int(covered[main][1])
    if inputs[main][1] == since:
        return Step("skip", generation=str(own["generation"]))
    if inputs[main][1] < since:  # the input went back in time (restored): start over
        return Step("rebuild", generation=new_generation())
    return Step("append", since=since, generation=str(own["generation"]))


def crowded(ds: Dataset | None) -> bool:
    """Whether a partition of ``ds`` has :data:`COMPACT_FILES` files or more."""
    counts: dict[str, int] = {}
    for f in [] if ds is None else ds.files():
        counts[f.partition] = counts.get(f.partition, 0) + 1
    return max(counts.values(), default=0) >= COMPACT_FILES


def added_since(ds: Dataset, version: int) -> list[Any]:
    """The files of ``ds`` added by versions after ``version``."""
    return [f for f in ds.files() if f.version > version]


# -- the source ------------------------------------------------------------------------------


def _query(db: Any, conn: Any, sql: str) -> list[tuple[Any, ...]]:
    if db.dialect == "sqlite":
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    cur = conn.cursor()
    try:
        cur.execute(sql)
        rows = [tuple(r) for r in cur.fetchall()]
    finally:
        cur.close()
    conn.rollback()
    return rows


@dataclasses.dataclass(frozen=True)
class IngestSequence:
    """The source's ingest sequence at the start of a run, and what arrived after a watermark."""

    url: str
    number: int

    def has_rows(self, table: str, after: int) -> bool:
        """Whether ``table`` has rows of batches in ``(after, number]``."""
        from hafen.sql._url import connect, map_db_errors, parse_url, quote_ident

        db = parse_url(self.url)
        conn = connect(db, "meta")
        try:
            with map_db_errors(db, f"looking for new rows in {table!r}"):
                rows = _query(
                    db,
                    conn,
                    f"SELECT 1 FROM {quote_ident(table)} WHERE {self.where(after)} LIMIT 1",
                )
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return bool(rows)

    def where(self, after: int | None) -> str:
        """The SQL condition selecting the rows of batches in ``(after, number]``."""
        upto = f"{SEQ_COLUMN} <= {int(self.number)}"
        return upto if after is None else f"{SEQ_COLUMN} > {int(after)} AND {upto}"


def source_sequence(url: str) -> IngestSequence | None:
    """The ingest sequence of the database at ``url`` now; None if it has none (then every run
    extracts everything)."""
    from hafen.sql._source import table_exists
    from hafen.sql._url import connect, map_db_errors, parse_url, quote_ident

    db = parse_url(url)
    conn = connect(db, "meta")
    try:
        if not table_exists(db, conn, SEQUENCE_TABLE):
            return None
        with map_db_errors(db, "reading the ingest sequence"):
            if db.dialect == "sqlite":
                sql = f"SELECT n FROM {quote_ident(SEQUENCE_TABLE)} WHERE id = 1"
            else:  # every transaction below the oldest running one has finished
                sql = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1"
            rows = _query(db, conn, sql)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return IngestSequence(url, int(rows[0][0])) if rows else None
