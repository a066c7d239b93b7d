"""Datasets: the :class:`Dataset` handle of one version (describing, planning and reading it,
deleting rows and vacuuming), :func:`open_dataset`, and :func:`write_dataset`.

Writing goes through one :class:`~hafen.datasets._transaction.WriteTransaction`, here as in
:mod:`hafen.dask` and :mod:`hafen.sql`; vacuum lives in :mod:`hafen.datasets._vacuum`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from hafen.config import Settings, get_settings
from hafen.datasets import _commit, _logstore
from hafen.datasets._actions import Commit, DataFile, DatasetState, file_label, log_path
from hafen.datasets._indices import allowed_labels, index_lookup
from hafen.datasets._integrity import DAMAGE, fragment_problem, parquet_format
from hafen.datasets._plateau import open_state
from hafen.datasets._predicates import Literal, could_match, normalize_predicates, to_expression
from hafen.datasets._schema import decode_partition_value, to_arrow
from hafen.datasets._storage import Storage
from hafen.datasets._transaction import (
    LATEST,
    Mode,
    OnConflict,
    SchemaMode,
    WriteTransaction,
    discard,
)
from hafen.datasets._vacuum import VacuumReport, vacuum
from hafen.datasets._verify import (
    FileCheck,
    VerifyReport,
    corrupt_file,
    damaged_file,
    file_schema,
    verify_files,
)
from hafen.datasets._write import StagedWrite
from hafen.errors import (
    ConflictError,
    HafenError,
    PredicateError,
    SchemaError,
    StorageError,
    VersionNotFoundError,
)

__all__ = [
    "Dataset",
    "commit_staged",
    "open_dataset",
    "storage_for",
    "write_dataset",
]

Predicates = Sequence[Sequence[tuple[str, str, Any]]] | None
MAX_VERSION = 2**63 - 1  # versions are 64-bit integers, as in Delta Lake


def storage_for(
    url: str | Storage | Dataset, storage_options: dict[str, Any] | None = None
) -> Storage:
    """Return the :class:`Storage` of a dataset URL (the ``storage_options`` setting as defaults
    under ``storage_options``); a :class:`Storage` or a :class:`Dataset` gives its own."""
    if isinstance(url, Dataset):
        return url.storage
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
            allowed = allowed_labels(self._storage, self._state, conjunction, self.is_latest)
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

    def index_lookup(self, column: str, values: Sequence[Any]) -> set[str]:
        """Labels of the files holding any of ``values`` in indexed ``column``.

        Raises :class:`CorruptDataError` naming the index file when one is missing or damaged
        (a read with predicates then warns and reads without the index instead).
        """
        return index_lookup(self._storage, self._state, column, values)

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
        *,
        predicates: Predicates = None,
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
        *,
        predicates: Predicates = None,
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
        self, columns: Sequence[str] | None = None, *, predicates: Predicates = None
    ) -> pd.DataFrame:
        """Return the rows matching ``predicates`` as a pandas DataFrame (see ``read_arrow``)."""
        return self.read_arrow(columns, predicates=predicates).to_pandas()

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
        settings = get_settings()
        current = self
        for _attempt in range(_commit.retry_policy(settings).attempts):
            try:
                return current._delete_once(literals, settings)
            except ConflictError:
                if on_conflict != "retry":
                    raise
                current = open_dataset(self._storage)
        raise ConflictError(f"{self.url}: delete gave up under contention")

    def _delete_once(self, literals: list[list[Literal]], settings: Settings) -> Dataset:
        expression = to_expression(literals, self.schema)
        removes: list[tuple[str, str]] = []
        with WriteTransaction(self._storage, base=self._state, settings=settings) as tx:
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
                        tx.stage(keep)
                removes.append((f.path, f.partition))
            if not removes:
                return self
            labels = sorted({label for _, label in removes})

            def plan(state: DatasetState | None) -> Commit:
                return Commit(
                    operation="delete",
                    removes=list(removes),
                    partitions_read=labels,
                    # a file added concurrently, anywhere, may hold rows this delete must remove
                    may_match=lambda f: any(self._may_hold(c, f) for c in literals),
                    parameters={
                        "predicates": repr([[tuple(vars(x).values()) for x in c] for c in literals])
                    },
                )

            return Dataset(self._storage, tx.commit(planner=plan))

    def vacuum(
        self,
        *,
        retain_versions: int | None = None,
        grace_period: str | float | None = None,
        dry_run: bool = False,
    ) -> VacuumReport:
        """Remove files no retained version references and older than ``grace_period``.

        The newest ``retain_versions`` versions stay readable (time travel); older log entries
        are retired (replaced by stubs that keep their version numbers taken, deleted once older
        than the ``log_retention`` setting). Files younger than the grace period are never
        removed, since an in-flight writer may be about to commit them.

        Parameters
        ----------
        retain_versions
            Versions kept readable, the newest first (default: the ``retain_versions`` setting).
        grace_period
            Unreferenced files younger than this are kept, e.g. ``"1h"`` or seconds (default:
            the ``grace_period`` setting).
        dry_run
            Report what would be removed, and remove nothing.

        Returns
        -------
        VacuumReport

        Raises
        ------
        ConfigError
            For a retention or grace period that is not a positive whole number of versions or
            a finite duration.

        Examples
        --------
        >>> ds = open_dataset("data/sales")  # doctest: +SKIP
        >>> ds.vacuum(retain_versions=10, grace_period="1h")  # doctest: +SKIP
        """
        return vacuum(
            self._storage,
            retain_versions=retain_versions,
            grace_period=grace_period,
            dry_run=dry_run,
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
    url: str | Storage | Dataset,
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


def write_dataset(
    data: pd.DataFrame | pa.Table,
    url: str | Storage | Dataset,
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
        The dataset's URL: a local path, ``memory://``, ``az://``, ``abfs://`` or ``s3://``
        (or a :class:`Dataset`, whose latest version is written on).
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
    storage_options
        fsspec options for the storage backend (over the ``storage_options`` setting).

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
    storage = storage_for(url, storage_options)
    with WriteTransaction(
        storage,
        mode=mode,
        partition_on=partition_on,
        indices=indices,
        schema_mode=schema_mode,
        on_conflict=on_conflict,
    ) as tx:
        tx.stage(tx.prepare(to_arrow(data)), encode_index=True)
        return Dataset(storage, tx.commit())


def commit_staged(
    url: str | Storage | Dataset,
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
    """Commit files staged apart (:func:`~hafen.datasets._write.stage_table`) as one version.

    A :class:`WriteTransaction` on ``base`` (default: the latest version) with the files added:
    after a :class:`ConflictError` or a schema error they are deleted, after an unknown outcome
    they are kept.
    """
    storage = storage_for(url, storage_options)
    try:
        tx = WriteTransaction(
            storage,
            mode=mode,
            partition_on=partition_on,
            indices=indices,
            schema_mode=schema_mode,
            on_conflict=on_conflict,
            base=LATEST if base is None else base,
        )
    except HafenError:
        discard(storage, staged)
        raise
    tx.add(staged)
    return Dataset(storage, tx.commit(parameters))
