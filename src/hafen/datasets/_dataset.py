"""Datasets: the :class:`Dataset` handle of one version (describing it, choosing the files a
read needs, reading, deleting rows, vacuuming) and :func:`open_dataset`.

Reading files is :mod:`hafen.datasets._scan`; a delete writes through the one
:class:`~hafen.datasets._transaction.WriteTransaction`, as :func:`~hafen.datasets.write_dataset`
(:mod:`hafen.datasets._write_dataset`), :mod:`hafen.dask` and :mod:`hafen.sql` do; vacuum is
:mod:`hafen.datasets._vacuum`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from hafen.config import Settings, get_settings
from hafen.datasets import _commit, _logstore
from hafen.datasets._actions import Commit, DataFile, DatasetState, file_label, log_path
from hafen.datasets._indices import allowed_labels, index_lookup
from hafen.datasets._plateau import metadata_digest, open_state
from hafen.datasets._predicates import Literal, could_match, normalize_predicates, to_expression
from hafen.datasets._scan import read_table, scan_batches
from hafen.datasets._schema import decode_partition_value
from hafen.datasets._storage import Storage
from hafen.datasets._transaction import WriteTransaction
from hafen.datasets._vacuum import VacuumReport, vacuum
from hafen.datasets._validate import OnConflict
from hafen.datasets._verify import FileCheck, VerifyReport, verify_files
from hafen.errors import ConflictError, PredicateError, SchemaError, VersionNotFoundError

__all__ = ["Dataset", "open_dataset", "storage_for"]

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


def _decoded_stats(
    state: DatasetState, f: DataFile, columns: set[str] | None = None
) -> dict[str, tuple[Any, Any, int]]:
    """The log's statistics of ``f`` as values of the columns' types (only ``columns``)."""
    out = {}
    for column, (lo, hi, nulls) in f.stats.items():
        if columns is not None and column not in columns:
            continue
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
        A plateau dataset hafen has not committed to is the newest while its plateau metadata
        is the one it was read from and hafen's log is still empty.
        """
        if self._state.origin == "plateau":
            return metadata_digest(self._storage) == self._state.source and not (
                _logstore.list_versions(self._storage)
            )
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
        # only the statistics of the columns the conjunction names outside the partition
        named = {lit.column for lit in conjunction if lit.column not in partition}
        stats = _decoded_stats(self._state, f, named) if f.stats and named else {}
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
        return scan_batches(
            self._storage,
            self._state,
            selected,
            self._partition_values,
            columns=columns,
            expression=expression,
            batch_size=batch_size,
        )

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

        Parameters
        ----------
        columns
            Columns to read; all by default.
        predicates
            Filters in disjunctive normal form: a list of AND-ed lists of ``(column, op,
            value)``, e.g. ``[[("date", ">=", d0), ("store_id", "in", [1, 2])]]``.
        files
            Read only these files of this version (as :meth:`files` lists them).

        Returns
        -------
        pyarrow.Table
            Partition columns included, with the dataset's types.

        Raises
        ------
        SchemaError
            For a column the dataset does not have.
        PredicateError
            For a predicate on an unknown column, an unknown operator or a value of the
            wrong type.

        Examples
        --------
        >>> ds = open_dataset("data/sales")  # doctest: +SKIP
        >>> ds.read_arrow(["store_id", "qty"], predicates=[[("qty", ">", 0)]])  # doctest: +SKIP
        """
        columns = self._check_columns(columns)
        literals = normalize_predicates(predicates, self.schema)
        selected = self._select(literals) if files is None else list(files)
        if not selected:
            empty = self.schema.empty_table()
            return empty.select(columns) if columns is not None else empty
        expression = to_expression(literals, self.schema) if literals else None
        return read_table(
            self._storage,
            self._state,
            selected,
            self._partition_values,
            columns=columns,
            expression=expression,
            literals=literals,
        )

    def read(
        self, columns: Sequence[str] | None = None, *, predicates: Predicates = None
    ) -> pd.DataFrame:
        """Return the rows matching ``predicates`` as a pandas DataFrame.

        Parameters
        ----------
        columns
            Columns to read; all by default.
        predicates
            Filters in disjunctive normal form, as for :meth:`read_arrow`.

        Returns
        -------
        pandas.DataFrame
            With a RangeIndex.

        Examples
        --------
        >>> ds = open_dataset("data/sales")  # doctest: +SKIP
        >>> ds.read(predicates=[[("date", "==", date(2024, 1, 2))]])  # doctest: +SKIP
        """
        return self.read_arrow(columns, predicates=predicates).to_pandas()

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The commits up to this version, newest first: time, operation, files and rows.

        Parameters
        ----------
        limit
            At most this many commits (the newest); all retained ones by default.

        Returns
        -------
        list of dict
            One per commit: ``version``, ``timestamp``, ``operation``, ``files_added``,
            ``files_removed``, ``rows_added`` and ``parameters``.

        Examples
        --------
        >>> [c["operation"] for c in open_dataset("data/sales").history(limit=3)]  # doctest: +SKIP
        ['delete', 'append', 'create']
        """
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

        Parameters
        ----------
        predicates
            The rows to remove, in disjunctive normal form, as for :meth:`read_arrow`.
        on_conflict
            ``"raise"`` or ``"retry"`` when a concurrent commit interferes, as above.

        Returns
        -------
        Dataset
            The new version.

        Raises
        ------
        PredicateError
            For a predicate on an unknown column, before anything changes.
        ConflictError
            When a concurrent commit interferes and ``on_conflict="raise"``; nothing landed.

        Examples
        --------
        >>> ds = open_dataset("data/sales")  # doctest: +SKIP
        >>> ds.delete([[("store_id", "==", 7)]]).version  # doctest: +SKIP
        4
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

    Parameters
    ----------
    url
        The dataset's URL: a local path, ``memory://``, ``az://``, ``abfs://`` or ``s3://``.
    version
        The version to open; the latest by default.
    storage_options
        fsspec options for the storage backend (over the ``storage_options`` setting).

    Returns
    -------
    Dataset
        That version; it does not change when later commits land.

    Raises
    ------
    DatasetNotFoundError
        When there is no dataset at ``url``.
    VersionNotFoundError
        When the version does not exist or was vacuumed.

    Examples
    --------
    >>> ds = open_dataset("data/sales")  # doctest: +SKIP
    >>> old = open_dataset("data/sales", version=3)  # doctest: +SKIP
    """
    storage = storage_for(url, storage_options)
    if version is not None and version > MAX_VERSION:
        raise VersionNotFoundError(
            f"{storage.url}: version {version} does not exist (versions are below 2**63)"
        )
    return Dataset(storage, open_state(storage, version))
