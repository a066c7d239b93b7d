"""Datasets: opening, reading with pushdown, writing, deleting and vacuuming."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from typing import Literal as TypingLiteral

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from hafen.config import get_settings, parse_duration
from hafen.datasets import _commit as _commit_loop
from hafen.datasets import _logstore
from hafen.datasets._actions import (
    LOG_DIR,
    Commit,
    DataFile,
    DatasetState,
    IndexPart,
    checkpoint_path,
    file_label,
    log_path,
)
from hafen.datasets._integrity import DAMAGE, fragment_problem, parquet_format
from hafen.datasets._plateau import (
    open_state,
    read_index_part,
    view_references,
    write_index_part,
    write_plateau_view,
)
from hafen.datasets._predicates import Literal, could_match, normalize_predicates, to_expression
from hafen.datasets._schema import (
    conform,
    decode_partition_value,
    merge_schemas,
    normalize_schema,
    to_arrow,
    validate_partition_type,
)
from hafen.datasets._storage import FileInfo, Storage
from hafen.datasets._verify import (
    FileCheck,
    VerifyReport,
    corrupt_file,
    damaged_file,
    file_schema,
    verify_files,
)
from hafen.datasets._write import StagedWrite, stage_table
from hafen.errors import (
    ConfigError,
    ConflictError,
    CorruptDataError,
    DatasetExistsError,
    DatasetNotFoundError,
    HafenError,
    HafenWarning,
    PredicateError,
    SchemaError,
    StorageError,
    VersionNotFoundError,
    VersionVacuumedError,
)

__all__ = [
    "Dataset",
    "VacuumReport",
    "commit_staged",
    "open_dataset",
    "storage_for",
    "write_dataset",
]

Mode = TypingLiteral["create", "append", "overwrite"]
SchemaMode = TypingLiteral["strict", "merge"]
OnConflict = TypingLiteral["raise", "retry"]
Predicates = Sequence[Sequence[tuple[str, str, Any]]] | None
MODES = ("create", "append", "overwrite")
# a write commits only while its staged files are younger than this share of the grace period
_STAGED_GRACE_SHARE = 0.8
SCRATCH_DIR = "_hafen/scratch"  # intermediate files of multi-phase writers (reshuffle)
MAX_VERSION = 2**63 - 1  # versions are 64-bit integers, as in Delta Lake


def storage_for(url: str | Storage, storage_options: dict[str, Any] | None = None) -> Storage:
    """Return the :class:`Storage` of a dataset URL (settings' storage options as defaults)."""
    if isinstance(url, Storage):
        return url
    options = {**get_settings().storage_options, **(storage_options or {})}
    return Storage(str(url), options)


def _decoded_stats(state: DatasetState, f: DataFile) -> dict[str, tuple[Any, Any, int]]:
    out = {}
    for column, (lo, hi, nulls) in f.stats.items():
        index = state.schema.get_field_index(column)
        if index < 0:
            continue
        type_ = state.schema.field(index).type
        if pa.types.is_date(type_) or pa.types.is_timestamp(type_):
            lo, hi = decode_partition_value(lo, type_), decode_partition_value(hi, type_)
        out[column] = (lo, hi, nulls)
    return out


@dataclass
class VacuumReport:
    """What a vacuum removed (or, with ``dry_run``, would remove)."""

    removed_files: list[str] = field(default_factory=list)
    removed_versions: list[int] = field(default_factory=list)
    bytes_freed: int = 0
    kept_young: int = 0  # unreferenced files kept because they are inside the grace period


class Dataset:
    """One version of a partitioned Parquet dataset.

    Obtain one with :func:`open_dataset` or :func:`write_dataset`. It is immutable: writing
    returns a new :class:`Dataset` of the new version.
    """

    def __init__(self, storage: Storage, state: DatasetState) -> None:
        self._storage = storage
        self._state = state
        self._partition_cache: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return (
            f"Dataset({self.url!r}, version={self.version}, rows={self.num_rows}, "
            f"partition_on={self.partition_on})"
        )

    # -- description ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._storage.url

    @property
    def version(self) -> int:
        return self._state.version

    @property
    def schema(self) -> pa.Schema:
        return self._state.schema

    @property
    def partition_on(self) -> list[str]:
        return list(self._state.partition_on)

    @property
    def indices(self) -> list[str]:
        return list(self._state.indices)

    @property
    def num_rows(self) -> int:
        return self._state.num_rows

    @property
    def timestamp(self) -> str:
        return self._state.timestamp

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def state(self) -> DatasetState:
        return self._state

    def is_latest(self) -> bool:
        """Whether this is still the newest version of the dataset at its URL.

        False when a newer version was committed, and also when this version's log entry is
        gone or no longer its own (the dataset was vacuumed past it, or deleted and recreated).
        """
        if self._state.origin == "plateau":
            return not _logstore.list_versions(self._storage)
        if self._storage.exists(log_path(self.version + 1)):
            return False
        return not self._state.commit_id or _logstore.holds_commit(
            self._storage, self.version, self._state.commit_id
        )

    def latest(self) -> Dataset:
        """This dataset at its newest version (``self`` when it is the newest)."""
        return self if self.is_latest() else open_dataset(self._storage)

    def files(self, predicates: Predicates = None) -> list[DataFile]:
        """The data files of this version that may hold rows matching ``predicates``."""
        literals = normalize_predicates(predicates, self.schema)
        return self._select(literals)

    def partitions(self) -> list[dict[str, Any]]:
        """The partitions of this version, as ``{column: value}``, sorted by their labels."""
        labels = sorted({f.partition for f in self._state.files.values()})
        return [self._partition_values(label) for label in labels]

    def _partition_values(self, label: str) -> dict[str, Any]:
        # per instance: a functools.cache on the method would keep every Dataset alive
        values = self._partition_cache.get(label)
        if values is None:
            values = self._partition_cache[label] = self._state.partition_values(label)
        return values

    # -- planning ------------------------------------------------------------------------------

    def _select(self, literals: list[list[Literal]] | None) -> list[DataFile]:
        files = list(self._state.files.values())
        if literals is None:
            return files
        keep: set[str] = set()
        for conjunction in literals:
            allowed = self._index_allowed(conjunction)
            for f in files:
                if f.path in keep or (allowed is not None and file_label(f.path) not in allowed):
                    continue
                if self._may_hold(conjunction, f):
                    keep.add(f.path)
        return [f for f in files if f.path in keep]

    def _may_hold(self, conjunction: list[Literal], f: DataFile) -> bool:
        """Whether ``f`` may hold rows matching ``conjunction``, by its log entry alone."""
        partition = self._partition_values(f.partition)
        stats = _decoded_stats(self._state, f) if f.stats else {}
        return could_match(conjunction, partition, stats)

    def _index_allowed(self, conjunction: list[Literal]) -> set[str] | None:
        """Labels of files that may match ``conjunction`` according to the indices, or None."""
        allowed: set[str] | None = None
        for lit in conjunction:
            if lit.column not in self._state.indices or lit.op not in ("==", "in"):
                continue
            values = list(lit.value) if lit.op == "in" else [lit.value]
            if any(v is None for v in values):
                continue  # indices do not record nulls
            try:
                labels = self.index_lookup(lit.column, values) if values else set()
            except CorruptDataError as exc:
                if not self.is_latest():
                    raise  # vacuumed or recreated since: the caller should open the latest
                # the index only prunes: without it the read opens more files, same rows
                warnings.warn(
                    f"{exc}; reading without the index on {lit.column!r}",
                    HafenWarning,
                    stacklevel=5,
                )
                continue
            allowed = labels if allowed is None else allowed & labels
        return allowed

    def index_lookup(self, column: str, values: Sequence[Any]) -> set[str]:
        """Labels of the files holding any of ``values`` in indexed ``column``.

        Raises :class:`CorruptDataError` naming the index file when one is missing or damaged
        (a read with predicates then warns and reads without the index instead).
        """
        labels: set[str] = set()
        for part in self._state.live_index_parts(column):
            table = read_index_part(self._storage, part, list(values))
            labels.update(table.column("label").to_pylist())
        return labels

    def _check_columns(self, columns: Sequence[str] | None) -> list[str] | None:
        if columns is None:
            return None
        if isinstance(columns, str):
            raise SchemaError(f"columns must be a list of names, got the string {columns!r}")
        unknown = [c for c in columns if self.schema.get_field_index(c) < 0]
        if unknown:
            raise SchemaError(
                f"unknown columns {unknown}; the dataset has {', '.join(self.schema.names)}"
            )
        return list(columns)

    def scan_batches(
        self,
        columns: Sequence[str] | None = None,
        predicates: Predicates = None,
        *,
        files: Sequence[DataFile] | None = None,
        batch_size: int = 64 * 1024,
    ) -> Iterator[pa.RecordBatch]:
        """Yield the matching rows as record batches, one file at a time (bounded memory).

        Like :meth:`read_arrow`, but streaming: at most one file's batches are in flight.
        """
        columns = self._check_columns(columns)
        literals = normalize_predicates(predicates, self.schema)
        selected = self._select(literals) if files is None else list(files)
        if not selected:
            return iter(())
        expression = to_expression(literals, self.schema) if literals else None
        scanner = self._arrow_dataset(selected).scanner(
            columns=columns,
            filter=expression,
            batch_size=batch_size,
            batch_readahead=1,
            fragment_readahead=1,
            use_threads=False,
        )
        return self._checked_batches(scanner, selected, counted=expression is None)

    def _checked_batches(
        self, scanner: pds.Scanner, selected: list[DataFile], *, counted: bool
    ) -> Iterator[pa.RecordBatch]:
        """The batches of ``scanner``, each file's footer checked before its first batch."""
        by_path = {self._storage.full(f.path): f for f in selected}
        expected = file_schema(self._state)
        rows: dict[str, int] = {}
        batches = iter(scanner.scan_batches())
        while True:
            try:
                tagged = next(batches)
            except StopIteration:
                break
            except FileNotFoundError as exc:
                raise self._missing_file(exc) from exc
            except DAMAGE as exc:
                raise self._read_error(selected, exc) from exc
            path = tagged.fragment.path
            if path not in rows:
                problem = fragment_problem(tagged.fragment, by_path[path], expected)
                if problem is not None:
                    raise corrupt_file(self._storage, by_path[path].path, "data file", problem)
                rows[path] = 0
            rows[path] += tagged.record_batch.num_rows
            yield tagged.record_batch
        if counted:
            for path, f in by_path.items():
                if rows.get(path, 0) != f.num_rows:
                    raise self._read_error(
                        [f], StorageError(f"{path}: read {rows.get(path, 0)} rows")
                    )

    def _arrow_dataset(self, files: Sequence[DataFile]) -> pds.FileSystemDataset:
        schema = self.schema
        partitions = []
        for f in files:
            expr = pc.scalar(True)
            for column, value in self._partition_values(f.partition).items():
                type_ = schema.field(column).type
                if value is None:
                    # a null dictionary scalar would become a dictionary holding a null, which
                    # neither filters nor converts to pandas: Arrow fills the column with nulls
                    if not pa.types.is_dictionary(type_):
                        expr = expr & pc.field(column).is_null()
                else:
                    expr = expr & (pc.field(column) == pa.scalar(value, type=type_))
            partitions.append(expr)
        return pds.FileSystemDataset.from_paths(
            [self._storage.full(f.path) for f in files],
            schema=schema,
            format=parquet_format(),
            filesystem=self._storage.arrow_filesystem,
            partitions=partitions,
        )

    def _missing_file(self, exc: FileNotFoundError) -> StorageError:
        return StorageError(
            f"{self.url}: version {self.version} refers to a missing file ({exc}); "
            "it may have been vacuumed"
        )

    def _read_error(self, files: Sequence[DataFile], exc: BaseException) -> StorageError:
        """The error for a read of ``files`` that failed with ``exc``: the damaged file named
        when one is found, else (the storage failed this time) a :class:`StorageError`."""
        damaged = damaged_file(self._storage, files, file_schema(self._state), exc)
        if damaged is not None:
            return damaged
        return StorageError(f"{self.url}: reading version {self.version} failed: {exc}")

    # -- reading -------------------------------------------------------------------------------

    def read_arrow(
        self,
        columns: Sequence[str] | None = None,
        predicates: Predicates = None,
        *,
        files: Sequence[DataFile] | None = None,
    ) -> pa.Table:
        """Return the rows matching ``predicates`` (DNF), with ``columns``, as a pyarrow Table.

        Files are pruned by partition values, secondary indices and statistics before any is
        opened; row groups by their Parquet statistics; the rest is filtered in Arrow.
        """
        columns = self._check_columns(columns)
        literals = normalize_predicates(predicates, self.schema)
        selected = self._select(literals) if files is None else list(files)
        if not selected:
            empty = self.schema.empty_table()
            return empty.select(columns) if columns is not None else empty
        dataset = self._arrow_dataset(selected)
        expression = to_expression(literals, self.schema) if literals else None
        try:
            table = dataset.to_table(columns=columns, filter=expression)
        except FileNotFoundError as exc:
            raise self._missing_file(exc) from exc
        except DAMAGE as exc:
            raise self._read_error(selected, exc) from exc
        # Arrow keeps the footers it read: checking them against the log reads nothing more
        expected = file_schema(self._state)
        by_path = {self._storage.full(f.path): f for f in selected}
        for fragment in dataset.get_fragments():
            f = by_path[fragment.path]
            problem = fragment_problem(fragment, f, expected)
            if problem is not None:
                raise corrupt_file(self._storage, f.path, "data file", problem)
        if expression is None and table.num_rows != sum(f.num_rows for f in selected):
            raise self._read_error(
                selected, StorageError(f"{self.url}: read {table.num_rows} rows")
            )
        return table

    def read(
        self, columns: Sequence[str] | None = None, predicates: Predicates = None
    ) -> pd.DataFrame:
        """Return the rows matching ``predicates`` as a pandas DataFrame (see ``read_arrow``)."""
        return self.read_arrow(columns, predicates).to_pandas()

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The commits up to this version, newest first: time, operation, files and rows."""
        if self._state.origin == "plateau":
            return [_history_row(_plateau_commit(self._state))]
        stop = 0 if limit is None else max(0, self.version - limit + 1)
        entries = _logstore.read_entries_down(self._storage, self.version, stop=stop)
        return [_history_row(c) for c in entries]

    def verify(
        self,
        *,
        progress: Callable[[FileCheck], None] | None = None,
        max_workers: int | None = None,
    ) -> VerifyReport:
        """Check every file of this version; return a report naming the bad ones.

        Each data file is read whole: it must exist, have the size and checksum the log
        recorded when it was written, and decode with Parquet's page checksums on, matching the
        log's rows and the dataset's columns. Each live secondary-index file must exist and
        decode. Nothing is changed; a damaged file is reported, not raised.

        Parameters
        ----------
        progress
            Called with each file's :class:`~hafen.datasets.FileCheck` as it is done.
        max_workers
            Files checked at once (default: the cores for local files, 8 for remote stores).

        Returns
        -------
        VerifyReport
            ``report.ok``, ``report.bad`` (the files with a ``problem``), ``report.files``.

        Examples
        --------
        >>> report = open_dataset("data/sales").verify()  # doctest: +SKIP
        >>> [(c.path, c.problem) for c in report.bad]  # doctest: +SKIP
        """
        return verify_files(self._storage, self._state, progress=progress, max_workers=max_workers)

    # -- changing ------------------------------------------------------------------------------

    def delete(self, predicates: Predicates, *, on_conflict: OnConflict = "raise") -> Dataset:
        """Remove the rows matching ``predicates``; return the new version.

        Whole files are dropped when their partition values match; other files holding matching
        rows are rewritten without them. A predicate naming an unknown column raises
        :class:`PredicateError` before anything changes.

        The version it lands as holds no row matching ``predicates``: a concurrent commit that
        changed a partition it rewrites or removes, or that added a file which may hold matching
        rows (judged by the file's partition values and statistics, anywhere in the dataset),
        makes it raise :class:`ConflictError` (nothing landed), or with ``on_conflict="retry"``
        plan again on the new version.
        """
        if predicates is None:
            raise PredicateError("delete needs predicates; to remove everything, overwrite")
        literals = normalize_predicates(predicates, self.schema)
        assert literals is not None
        current = self
        for _attempt in range(_commit_loop.retry_policy().attempts):
            try:
                return current._delete_once(literals)
            except ConflictError:
                if on_conflict != "retry":
                    raise
                current = open_dataset(self._storage)
        raise ConflictError(f"{self.url}: delete gave up under contention")

    def _delete_once(self, literals: list[list[Literal]]) -> Dataset:
        expression = to_expression(literals, self.schema)
        removes: list[tuple[str, str]] = []
        staged = StagedWrite(schema=self.schema)
        for f in self._select(literals):
            partition = self._partition_values(f.partition)
            whole = any(
                all(lit.column in partition and lit.matches(partition[lit.column]) for lit in c)
                for c in literals
            )
            if not whole:
                table = self.read_arrow(files=[f])
                keep = table.filter(~expression | expression.is_null())
                if keep.num_rows == table.num_rows:
                    continue
                if keep.num_rows:
                    rewritten = stage_table(
                        self._storage, keep, partition_on=self.partition_on, indices=self.indices
                    )
                    staged = StagedWrite.combine([staged, rewritten])
            removes.append((f.path, f.partition))
        if not removes:
            return self
        labels = sorted({label for _, label in removes})
        index_parts = _write_index_parts(self._storage, staged, self.schema, self.indices)

        def plan(state: DatasetState | None) -> Commit:
            return Commit(
                operation="delete",
                adds=list(staged.files),
                index_parts=list(index_parts),
                removes=list(removes),
                partitions_read=labels,
                # a file added concurrently, anywhere, may hold rows this delete must remove
                may_match=lambda f: any(self._may_hold(c, f) for c in literals),
                parameters={
                    "predicates": repr([[tuple(vars(x).values()) for x in c] for c in literals])
                },
            )

        return _commit(self._storage, self._state, staged, plan, retry=False)

    def vacuum(
        self,
        retain_versions: int | None = None,
        grace_period: str | float | None = None,
        *,
        dry_run: bool = False,
    ) -> VacuumReport:
        """Remove files no retained version references and older than ``grace_period``.

        The newest ``retain_versions`` versions stay readable (time travel); older log entries
        are retired (replaced by stubs that keep their version numbers taken, deleted once older
        than the ``log_retention`` setting). Files younger than the grace period are never
        removed, since an in-flight writer may be about to commit them.

        Raises :class:`ConfigError` for a retention or grace period that is not a positive whole
        number of versions or a finite duration.
        """
        settings = get_settings()
        retain = settings.retain_versions if retain_versions is None else retain_versions
        if isinstance(retain, bool) or not isinstance(retain, int) or retain < 1:
            raise ConfigError(f"retain_versions must be a whole number >= 1, got {retain!r}")
        grace = parse_duration(settings.grace_period if grace_period is None else grace_period)
        log_retention = parse_duration(settings.log_retention)
        if log_retention < _logstore.MIN_LOG_RETENTION:
            raise ConfigError(
                f"log_retention must be at least {_logstore.MIN_LOG_RETENTION:.0f} s, "
                f"got {settings.log_retention!r}"
            )
        storage = self._storage
        # the cutoff is taken before the log is read: a commit that lands after the read is
        # not seen, but its files are younger than the cutoff (a write commits only while its
        # files are younger than the grace period). Blob stores date files to the second.
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=grace + storage.modified_resolution)
        floor, base, newer = _retained(storage, retain)
        referenced = set(base.files) | {p.path for p in base.index_parts}
        for c in newer:
            referenced.update(f.path for f in c.adds)
            referenced.update(p.path for p in c.index_parts)
        referenced |= view_references(storage)
        report = VacuumReport()
        candidates: list[FileInfo] = []
        for directory in ("table", "indices", "_hafen/indices"):
            candidates.extend(storage.walk(directory))
        candidates.extend(i for i in storage.list(LOG_DIR) if "/.tmp-" in "/" + i.path)
        candidates.extend(storage.walk(SCRATCH_DIR))  # left by writers that died mid-job
        for info in candidates:
            if info.path in referenced or info.path.endswith("_common_metadata"):
                continue
            if info.modified is not None and info.modified > cutoff:
                report.kept_young += 1
                continue
            report.removed_files.append(info.path)
            report.bytes_freed += info.size
        report.removed_versions = _logstore.retire(storage, floor, dry_run=True)
        if dry_run:
            return report
        storage.delete(report.removed_files)
        if floor > 0:
            # the checkpoint at the oldest retained version comes first: readers start there
            # once the entries below it are retired
            if not storage.exists(checkpoint_path(floor)):
                _logstore.write_checkpoint(storage, base)
            report.removed_versions = _logstore.retire(storage, floor)
            old_checkpoints = [c for c in _logstore.list_checkpoints(storage) if c < floor]
            storage.delete([checkpoint_path(c) for c in old_checkpoints])
            _logstore.delete_retired(storage, floor, older_than=log_retention)
        return report


def _retained(storage: Storage, retain: int) -> tuple[int, DatasetState, list[Commit]]:
    """The oldest retained version, its state, and the entries after it up to the latest.

    A concurrent or earlier vacuum may have retired more than ``retain`` asks to drop; the
    retained versions then start above the newest retired entry.
    """
    for _ in range(5):
        latest = open_state(storage)
        if latest.origin != "hafen":
            raise DatasetNotFoundError(f"{storage.url}: nothing to vacuum (no hafen log)")
        wanted = max(0, latest.version - retain + 1)
        newer = _logstore.read_entries_down(storage, latest.version, stop=wanted + 1)
        if len(newer) == latest.version - wanted:
            floor = wanted
        else:  # the walk down met a retired entry: everything below it is retired too
            floor = newer[-1].version if newer else latest.version
        try:
            base = latest if floor == latest.version else open_state(storage, floor)
            len(base.files)  # the files of the oldest retained version, read now
        except VersionVacuumedError:
            continue  # a concurrent vacuum retired more meanwhile: look again
        return floor, base, [c for c in newer if c.version > floor]
    raise ConflictError(
        f"{storage.url}: another vacuum kept retiring versions while this one looked for the "
        "oldest retained version; nothing was removed (it has done the work: run again later)"
    )


def _plateau_commit(state: DatasetState) -> Commit:
    return Commit(
        operation="import",
        adds=list(state.files.values()),
        parameters={"source": "plateau"},
        version=0,
        timestamp=state.timestamp,
    )


def _history_row(c: Commit) -> dict[str, Any]:
    return {
        "version": c.version,
        "timestamp": c.timestamp,
        "operation": c.operation,
        "files_added": len(c.adds),
        "files_removed": len(c.removes),
        "rows_added": sum(f.num_rows for f in c.adds),
        "parameters": c.parameters,
    }


def open_dataset(
    url: str | Storage,
    *,
    version: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Dataset:
    """Open the dataset at ``url``, at its latest version or at ``version`` (time travel).

    Raises :class:`DatasetNotFoundError` when there is none, :class:`VersionNotFoundError` when
    the version does not exist or was vacuumed.

    >>> ds = open_dataset("data/sales")  # doctest: +SKIP
    """
    storage = storage_for(url, storage_options)
    if version is not None and version > MAX_VERSION:
        raise VersionNotFoundError(
            f"{storage.url}: version {version} does not exist (versions are below 2**63)"
        )
    return Dataset(storage, open_state(storage, version))


def _try_open(storage: Storage) -> DatasetState | None:
    try:
        return open_state(storage)
    except DatasetNotFoundError:
        return None


def _validate_layout(
    schema: pa.Schema, partition_on: Sequence[str], indices: Sequence[str]
) -> None:
    for kind, columns in (("partition", partition_on), ("index", indices)):
        if isinstance(columns, str):
            raise ConfigError(f"{kind} columns must be a list, got the string {columns!r}")
        missing = [c for c in columns if schema.get_field_index(c) < 0]
        if missing:
            raise SchemaError(
                f"{kind} columns {missing} are not in the data ({', '.join(schema.names)})"
            )
    for column in partition_on:
        validate_partition_type(column, schema.field(column).type)
    both = sorted(set(partition_on) & set(indices))
    if both:
        raise ConfigError(f"columns {both} are partition columns and need no secondary index")
    if len(schema.names) <= len(partition_on):
        raise SchemaError("a dataset needs at least one column besides its partition columns")


def _check_layout_matches(
    state: DatasetState, partition_on: Sequence[str] | None, indices: Sequence[str] | None
) -> None:
    if partition_on is not None and list(partition_on) != state.partition_on:
        raise SchemaError(
            f"partition_on {list(partition_on)} differs from the dataset's {state.partition_on}"
        )
    if indices is not None and sorted(indices) != sorted(state.indices):
        raise SchemaError(f"indices {list(indices)} differ from the dataset's {state.indices}")


def prepare_table(
    table: pa.Table,
    state: DatasetState | None,
    *,
    partition_on: Sequence[str] | None,
    indices: Sequence[str] | None,
    schema_mode: SchemaMode,
) -> tuple[pa.Table, pa.Schema, list[str], list[str]]:
    """Check ``table`` against the dataset and return it conformed, with the layout to use."""
    if schema_mode not in ("strict", "merge"):
        raise ConfigError(f"schema_mode must be 'strict' or 'merge', got {schema_mode!r}")
    if state is None:
        layout_p, layout_i = list(partition_on or []), list(indices or [])
        schema = normalize_schema(table.schema)
        _validate_layout(schema, layout_p, layout_i)
        return conform(table, schema), schema, layout_p, layout_i
    _check_layout_matches(state, partition_on, indices)
    if schema_mode == "merge":
        schema = merge_schemas(state.schema, table.schema)
        return conform(table, schema, allow_missing=True), schema, state.partition_on, state.indices
    return conform(table, state.schema), state.schema, state.partition_on, state.indices


def write_dataset(
    data: pd.DataFrame | pa.Table,
    url: str | Storage,
    *,
    partition_on: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    mode: Mode = "create",
    schema_mode: SchemaMode = "strict",
    on_conflict: OnConflict = "raise",
    storage_options: dict[str, Any] | None = None,
) -> Dataset:
    """Write ``data`` as a new version of the dataset at ``url`` in one atomic commit.

    Parameters
    ----------
    data
        A pandas DataFrame (its index is dropped) or a pyarrow Table.
    url
        The dataset's URL: a local path, ``memory://``, ``az://``, ``abfs://`` or ``s3://``.
    partition_on, indices
        Hive partition columns and secondary-index columns; fixed when the dataset is created.
    mode
        ``"create"`` (fails if it exists), ``"append"`` (creates if missing) or ``"overwrite"``
        (replaces the partitions present in ``data``; everything when unpartitioned).
    schema_mode
        ``"strict"``: the data must match the schema; ``"merge"``: new columns are added as
        nullable, missing ones are filled with nulls.
    on_conflict
        ``"raise"`` a :class:`ConflictError` when a concurrent commit replaced the same
        partitions, or ``"retry"`` on top of it.

    Returns
    -------
    Dataset
        The new version.

    Raises
    ------
    DatasetExistsError, SchemaError, ConflictError

    Examples
    --------
    >>> write_dataset(df, "data/sales", partition_on=["date"], mode="append")  # doctest: +SKIP
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if on_conflict not in ("raise", "retry"):
        raise ConfigError(f"on_conflict must be 'raise' or 'retry', got {on_conflict!r}")
    storage = storage_for(url, storage_options)
    table = to_arrow(data)
    state = _try_open(storage)
    if state is not None and mode == "create":
        raise DatasetExistsError(f"a dataset already exists at {storage.url} (mode='create')")
    conformed, _, layout_p, layout_i = prepare_table(
        table, state, partition_on=partition_on, indices=indices, schema_mode=schema_mode
    )
    staged = stage_table(
        storage, conformed, partition_on=layout_p, indices=layout_i, encode_index=True
    )
    return commit_staged(
        storage,
        [staged],
        mode=mode,
        partition_on=layout_p,
        indices=layout_i,
        schema_mode=schema_mode,
        on_conflict=on_conflict,
        base=state,
    )


def commit_staged(
    url: str | Storage,
    staged: Sequence[StagedWrite],
    *,
    mode: Mode = "append",
    partition_on: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    schema_mode: SchemaMode = "strict",
    on_conflict: OnConflict = "raise",
    base: DatasetState | None = None,
    storage_options: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> Dataset:
    """Commit files staged (possibly by many tasks) as one version; clean them up if it fails.

    This is the commit half of :func:`write_dataset`, for writers that stage files in parallel
    (:mod:`hafen.dask`, :mod:`hafen.sql`). After a :class:`ConflictError` or a schema error the
    staged files are deleted; after an unknown outcome they are kept.
    """
    storage = storage_for(url, storage_options)
    combined = StagedWrite.combine(staged)
    state = base if base is not None else _try_open(storage)
    if state is not None and mode == "create":
        _discard(storage, combined)
        raise DatasetExistsError(f"a dataset already exists at {storage.url} (mode='create')")
    try:
        schema = _staged_schema(combined, state, partition_on, indices, schema_mode)
    except HafenError:
        _discard(storage, combined)
        raise
    layout_p = list(partition_on or []) if state is None else state.partition_on
    layout_i = list(indices or []) if state is None else state.indices
    index_parts = _write_index_parts(storage, combined, schema, layout_i)
    params = {"mode": mode, **(parameters or {})}

    def plan(current: DatasetState | None) -> Commit:
        entry = Commit(
            operation="create" if current is None else mode,
            adds=list(combined.files),
            index_parts=list(index_parts),
            parameters=params,
        )
        if current is None:
            entry.schema = schema
            entry.metadata = {
                "partition_on": layout_p,
                "indices": layout_i,
                "dataset_id": uuid.uuid4().hex,
            }
            return entry
        if state is None:  # planned as a create, but a concurrent writer created it first
            _check_layout_matches(current, layout_p, layout_i)
            if schema_mode == "strict":
                conform(schema.empty_table(), current.schema)
        if schema_mode == "merge":
            merged = merge_schemas(current.schema, schema)
            if merged != current.schema:
                entry.schema = merged
        if mode == "overwrite":
            labels = {f.partition for f in combined.files} or (
                {""} if not current.partition_on else set()
            )
            entry.partitions_read = sorted(labels)
            entry.removes = [
                (f.path, f.partition) for f in current.files.values() if f.partition in labels
            ]
        return entry

    return _commit(
        storage, state, combined, plan, retry=on_conflict == "retry", exclusive=mode == "create"
    )


def _staged_schema(
    staged: StagedWrite,
    state: DatasetState | None,
    partition_on: Sequence[str] | None,
    indices: Sequence[str] | None,
    schema_mode: SchemaMode,
) -> pa.Schema:
    if staged.schema is None:
        if state is None:
            raise SchemaError("nothing was staged and no dataset exists to take a schema from")
        return state.schema
    schema = normalize_schema(staged.schema)
    if state is None:
        _validate_layout(schema, list(partition_on or []), list(indices or []))
        return schema
    _check_layout_matches(state, partition_on, indices)
    if schema_mode == "merge":
        return merge_schemas(state.schema, schema)
    conform(schema.empty_table(), state.schema)
    return state.schema


def _write_index_parts(
    storage: Storage, staged: StagedWrite, schema: pa.Schema, indices: Sequence[str]
) -> list[IndexPart]:
    parts = []
    commit_id = uuid.uuid4().hex
    for column in indices:
        entries = staged.index_entries.get(column)
        if entries is None or entries.num_rows == 0:
            continue
        path = f"_hafen/indices/{column}/{commit_id}.by-dataset-index.parquet"
        encoded = staged.encoded_indices.get(column)
        if encoded is not None:
            storage.write_bytes(path, encoded)
        else:
            write_index_part(storage, column, entries, schema.field(column).type, path)
        parts.append(IndexPart(column, path, -1, len(staged.files)))
    return parts


def _discard(storage: Storage, staged: StagedWrite) -> None:
    with contextlib.suppress(StorageError):  # else vacuum removes them after the grace period
        storage.delete([f.path for f in staged.files])


def _commit(
    storage: Storage,
    state: DatasetState | None,
    staged: StagedWrite,
    plan: Any,
    *,
    retry: bool,
    exclusive: bool = True,
) -> Dataset:
    settings = get_settings()
    grace = parse_duration(settings.grace_period)

    def staged_files_protected() -> None:
        # vacuum keeps unreferenced files only for its grace period: files older than that
        # may be gone, and a commit of them would name missing files
        age = time.time() - staged.started
        if staged.files and age > _STAGED_GRACE_SHARE * grace:
            raise ConflictError(
                f"{storage.url}: the files of this write were staged {age:.0f} s ago, too close "
                f"to vacuum's grace period ({settings.grace_period}) to commit safely; nothing "
                "was committed. Write again, or raise HAFEN_GRACE_PERIOD above the longest write"
            )

    try:
        new_state = _commit_loop.commit(
            storage,
            state,
            plan,
            retry_conflicts=retry,
            retry=_commit_loop.retry_policy(settings),
            checkpoint_interval=settings.checkpoint_interval,
            exclusive_create=exclusive,
            before_attempt=staged_files_protected,
        )
    except (ConflictError, DatasetExistsError, SchemaError):
        _discard(storage, staged)
        raise
    if not settings.plateau_view:
        return Dataset(storage, new_state)
    try:
        write_plateau_view(storage, new_state)
    except Exception as exc:  # the version landed: a retry would commit it twice
        warnings.warn(
            f"{storage.url}: version {new_state.version} landed, but plateau's metadata view "
            f"could not be written: {exc}",
            HafenWarning,
            stacklevel=3,
        )
    return Dataset(storage, new_state)
