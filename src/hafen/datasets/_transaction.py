"""The write transaction every writer uses: validate once against the base version, stage files
from the client or from tasks, commit once.

:func:`~hafen.datasets.write_dataset`, :meth:`~hafen.datasets.Dataset.delete`,
:func:`hafen.write_ddf`, :func:`hafen.reshuffle` and :func:`hafen.extract` all write this way::

    with WriteTransaction(storage, mode="append", partition_on=["date"]) as tx:  # opens the base
        table = tx.prepare(table)   # layout and schema checked against the base, rows conformed
        tx.stage(table)             # on the client; tasks stage with tx.plan and tx.add the result
        state = tx.commit()         # one new version, or none

The transaction reads hafen's settings once, on the client, when it starts; tasks get what they
need of them in :class:`StagingPlan` (a worker's environment or working directory never changes a
result). Staged files that do not land are deleted: when the commit did not land
(:class:`ConflictError`, :class:`DatasetExistsError`, :class:`SchemaError`), and when the ``with``
block raises before the commit. After an unknown outcome (the commit may have landed) nothing is
deleted; :meth:`~hafen.datasets.Dataset.vacuum` removes what no version references.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyarrow as pa

from hafen.config import Settings, get_settings, parse_duration
from hafen.datasets import _commit
from hafen.datasets._actions import Commit, DatasetState
from hafen.datasets._indices import write_index_parts
from hafen.datasets._plateau import open_state, write_plateau_view
from hafen.datasets._schema import conform, merge_schemas, normalize_schema
from hafen.datasets._storage import Storage
from hafen.datasets._validate import (
    Mode,
    OnConflict,
    SchemaMode,
    check_layout_matches,
    check_options,
    check_same_schema,
    prepare_table,
    staged_schema,
    validate_layout,
    validate_sort_by,
)
from hafen.datasets._write import (
    DEFAULT_MAX_ROWS_PER_FILE,
    DEFAULT_ROW_GROUP_SIZE,
    SORTED_ROW_GROUP_SIZE,
    StagedWrite,
    StagingWriter,
    stage_table,
)
from hafen.errors import (
    ConfigError,
    ConflictError,
    DatasetExistsError,
    DatasetNotFoundError,
    HafenError,
    HafenWarning,
    SchemaError,
    StorageError,
)

__all__ = ["LATEST", "StagingPlan", "WriteTransaction", "discard"]

# a write commits only while its staged files are younger than this share of the grace period
_STAGED_GRACE_SHARE = 0.8


class _Latest:
    def __repr__(self) -> str:
        return "LATEST"


#: ``base=LATEST``: the transaction opens the latest version of the dataset as its base.
LATEST = _Latest()


def discard(storage: Storage, staged: Iterable[StagedWrite], *extra: str) -> None:
    """Delete staged files (and ``extra`` paths) that no commit will reference."""
    paths = [f.path for s in staged for f in s.files] + list(extra)
    if paths:
        with contextlib.suppress(StorageError):  # else vacuum removes them after the grace period
            storage.delete(paths)


# --- staging ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StagingPlan:
    """What staging needs, fixed on the client: small and picklable, for tasks to stage with.

    It carries the settings staging depends on, so that a task reads none of its own.
    """

    storage: Storage
    base: DatasetState | None  # the base version without its file list; None: a new dataset
    schema: pa.Schema | None  # the dataset schema rows are conformed to; None: from the rows
    partition_on: list[str]
    indices: list[str]
    schema_mode: SchemaMode
    dictionary: str  # the parquet_dictionary setting
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    sort_by: tuple[str, ...] = ()  # rows sorted by these columns in each staged file
    max_rows_per_file: int = DEFAULT_MAX_ROWS_PER_FILE

    def prepare(self, table: pa.Table) -> pa.Table:
        """``table`` checked against the base and conformed to the dataset schema."""
        conformed, _, _, _ = prepare_table(
            table,
            self.base,
            partition_on=self.partition_on,
            indices=self.indices,
            schema_mode=self.schema_mode,
        )
        return conformed

    def stage(
        self, table: pa.Table, *, encode_index: bool = False, max_workers: int | None = None
    ) -> StagedWrite:
        """Write ``table`` (conformed) as staged files; see :func:`.stage_table`."""
        return stage_table(
            self.storage,
            table,
            partition_on=self.partition_on,
            indices=self.indices,
            sort_by=self.sort_by,
            max_rows_per_file=self.max_rows_per_file,
            row_group_size=self.row_group_size,
            max_workers=max_workers,
            encode_index=encode_index,
            dictionary=self.dictionary,
        )

    def writer(self) -> StagingWriter:
        """A streaming writer of batches conformed to :attr:`schema` into staged files."""
        if self.schema is None:
            raise ConfigError("a streaming writer needs the dataset schema; validate first")
        if self.sort_by:
            raise ConfigError("a streaming writer cannot sort its files: stage tables instead")
        return StagingWriter(
            self.storage,
            self.schema,
            partition_on=self.partition_on,
            indices=self.indices,
            max_rows_per_file=self.max_rows_per_file,
            row_group_size=self.row_group_size,
            dictionary=self.dictionary,
        )


# --- the transaction ------------------------------------------------------------------------------

#: Plans the log entry of a commit from the version it lands on; the transaction adds its files.
Planner = Callable[[DatasetState | None], Commit]


class WriteTransaction:
    """One write to the dataset at ``storage``: its base version, its staged files, one commit.

    Opening it reads the settings and the base version (``base=LATEST``: the latest; or the
    state given, or None for none) and refuses ``mode="create"`` when a dataset exists. Then
    :meth:`prepare` or :meth:`validate` checks the data's layout and schema against the base,
    before any work; files are staged with :meth:`stage` (on the client) or with :attr:`plan`
    (in tasks, then :meth:`add`); :meth:`commit` lands them as one version.

    ``sort_by`` sorts the rows of each staged file by those columns (for this write only: it is
    not part of the dataset's layout); ``row_group_size`` is the rows per Parquet row group
    (default: :data:`~hafen.datasets._write.SORTED_ROW_GROUP_SIZE` with ``sort_by``, else
    :data:`~hafen.datasets._write.DEFAULT_ROW_GROUP_SIZE`).

    Raises :class:`ConfigError` (options), :class:`DatasetExistsError` (``mode="create"``).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        mode: Mode = "append",
        partition_on: Sequence[str] | None = None,
        indices: Sequence[str] | None = None,
        schema_mode: SchemaMode = "strict",
        on_conflict: OnConflict = "raise",
        base: DatasetState | _Latest | None = LATEST,
        settings: Settings | None = None,
        sort_by: Sequence[str] | None = None,
        row_group_size: int | None = None,
    ) -> None:
        check_options(mode, schema_mode, on_conflict)
        if isinstance(sort_by, str):
            raise ConfigError(f"sort_by must be a list of column names, got the string {sort_by!r}")
        self.sort_by = list(sort_by or [])
        if row_group_size is not None and (
            isinstance(row_group_size, bool)
            or not isinstance(row_group_size, int)
            or row_group_size < 1
        ):
            raise ConfigError(f"row_group_size must be a positive integer, got {row_group_size!r}")
        if row_group_size is None:
            row_group_size = SORTED_ROW_GROUP_SIZE if sort_by else DEFAULT_ROW_GROUP_SIZE
        self.row_group_size = row_group_size
        self.storage = storage
        self.mode: Mode = mode
        self.schema_mode: SchemaMode = schema_mode
        self.on_conflict: OnConflict = on_conflict
        self.settings = get_settings() if settings is None else settings
        self.base = _open_latest(storage) if isinstance(base, _Latest) else base
        if self.base is not None and mode == "create":
            raise DatasetExistsError(f"a dataset already exists at {storage.url} (mode='create')")
        self._given = (partition_on, indices)
        # the layout and schema written: the base's, or the data's once validated
        self.schema: pa.Schema | None = None
        self.partition_on: list[str] = list(partition_on or [])
        self.indices: list[str] = list(indices or [])
        if self.base is not None:
            self.schema = self.base.schema
            self.partition_on, self.indices = self.base.partition_on, self.base.indices
        self._staged: list[StagedWrite] = []

    def __enter__(self) -> WriteTransaction:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.discard()

    # -- validating ----------------------------------------------------------------------------

    def prepare(self, table: pa.Table) -> pa.Table:
        """Check ``table`` against the base (layout, schema mode) and return it conformed.

        Raises :class:`SchemaError` naming the columns that do not fit, :class:`ConfigError`
        for a layout that cannot be (a string for a list, a column both partition and index).
        """
        partition_on, indices = self._given
        conformed, schema, layout_p, layout_i = prepare_table(
            table,
            self.base,
            partition_on=partition_on,
            indices=indices,
            schema_mode=self.schema_mode,
        )
        self.schema, self.partition_on, self.indices = schema, layout_p, layout_i
        validate_sort_by(schema, self.sort_by)
        return conformed

    def validate(self, schema: pa.Schema, *, types_known: bool = True) -> pa.Schema | None:
        """Check data of ``schema`` against the base before any is staged; return the dataset
        schema rows are conformed to.

        ``types_known=False``: columns typed null are of types not known yet (Dask's ``meta``).
        For a new dataset the schema then comes from the staged files, and None is returned.
        """
        if types_known or self.base is not None:
            return self.prepare(schema.empty_table()).schema
        partition_on, indices = self._given
        layout_p, layout_i = list(partition_on or []), list(indices or [])
        validate_layout(normalize_schema(schema), layout_p, layout_i, types_known=False)
        validate_sort_by(schema, self.sort_by)
        self.partition_on, self.indices = layout_p, layout_i
        return None

    @property
    def plan(self) -> StagingPlan:
        """What tasks need to stage files for this transaction."""
        header = None
        if self.base is not None:  # tasks need the schema and layout, not the growing file list
            header = dataclasses.replace(self.base, files={}, index_parts=[])
        return StagingPlan(
            storage=self.storage,
            base=header,
            schema=self.schema,
            partition_on=list(self.partition_on),
            indices=list(self.indices),
            schema_mode=self.schema_mode,
            dictionary=self.settings.parquet_dictionary,
            row_group_size=self.row_group_size,
            sort_by=tuple(self.sort_by),
        )

    # -- staging -------------------------------------------------------------------------------

    def stage(
        self, table: pa.Table, *, encode_index: bool = False, max_workers: int | None = None
    ) -> StagedWrite:
        """Stage ``table`` (conformed by :meth:`prepare`) as files of this transaction.

        ``encode_index``: also encode the index files now, when this is the only staged write.
        """
        staged = self.plan.stage(table, encode_index=encode_index, max_workers=max_workers)
        self._staged.append(staged)
        return staged

    def add(self, staged: StagedWrite | Iterable[StagedWrite]) -> None:
        """Add files staged elsewhere (by tasks, from :attr:`plan`) to this transaction."""
        self._staged.extend([staged] if isinstance(staged, StagedWrite) else staged)

    def discard(self) -> None:
        """Delete the files staged so far that were not handed to a commit."""
        staged, self._staged = self._staged, []
        discard(self.storage, staged)

    # -- committing ----------------------------------------------------------------------------

    def commit(
        self, parameters: dict[str, Any] | None = None, *, planner: Planner | None = None
    ) -> DatasetState:
        """Commit every staged file as one new version; return its state.

        ``parameters`` are recorded in the log entry. ``planner`` plans an entry other than the
        ``mode``'s (a delete's); the transaction adds its files and index parts to it.
        Raises :class:`ConflictError` or :class:`DatasetExistsError` (nothing landed; the files
        are deleted), :class:`SchemaError` (the staged files do not fit; deleted), or
        :class:`~hafen.errors.CommitOutcomeUnknownError` (kept: it may have landed).
        """
        parts, self._staged = self._staged, []
        staged = StagedWrite.combine(parts)
        partition_on, indices = self._given
        try:
            if self.base is None:
                check_same_schema(parts)
            schema = staged_schema(staged, self.base, partition_on, indices, self.schema_mode)
            index_parts = write_index_parts(
                self.storage,
                staged.index_entries,
                staged.encoded_indices,
                schema,
                self.indices,
                len(staged.files),
            )
        except HafenError:
            discard(self.storage, [staged])
            raise
        plan = planner or self._planner(staged, schema, parameters)

        def planned(current: DatasetState | None) -> Commit:
            entry = plan(current)
            return dataclasses.replace(entry, adds=list(staged.files), index_parts=index_parts)

        return _land(
            self.storage,
            self.base,
            staged,
            planned,
            retry=self.on_conflict == "retry",
            exclusive=self.mode == "create",
            settings=self.settings,
            extra=[p.path for p in index_parts],
        )

    def _planner(
        self, staged: StagedWrite, schema: pa.Schema, parameters: dict[str, Any] | None
    ) -> Planner:
        """The log entry of this transaction's ``mode``, on the version it lands on."""
        base, mode, schema_mode = self.base, self.mode, self.schema_mode
        layout_p, layout_i = list(self.partition_on), list(self.indices)
        params = {"mode": mode, **(parameters or {})}

        def plan(current: DatasetState | None) -> Commit:
            if current is None:
                metadata = {
                    "partition_on": layout_p,
                    "indices": layout_i,
                    "dataset_id": uuid.uuid4().hex,
                }
                return Commit(
                    operation="create", schema=schema, metadata=metadata, parameters=params
                )
            if base is None:  # planned as a create, but a concurrent writer created it first
                check_layout_matches(current, layout_p, layout_i)
                if schema_mode == "strict":
                    conform(schema.empty_table(), current.schema)
            new_schema = None
            if schema_mode == "merge":
                merged = merge_schemas(current.schema, schema)
                new_schema = merged if merged != current.schema else None
            removes: list[tuple[str, str]] = []
            partitions_read = None
            if mode == "overwrite":
                labels = {f.partition for f in staged.files} or (
                    {""} if not current.partition_on else set()
                )
                partitions_read = sorted(labels)
                removes = [
                    (f.path, f.partition) for f in current.files.values() if f.partition in labels
                ]
            return Commit(
                operation=mode,
                schema=new_schema,
                removes=removes,
                partitions_read=partitions_read,
                parameters=params,
            )

        return plan


def _open_latest(storage: Storage) -> DatasetState | None:
    try:
        return open_state(storage)
    except DatasetNotFoundError:
        return None


def _land(
    storage: Storage,
    base: DatasetState | None,
    staged: StagedWrite,
    plan: Planner,
    *,
    retry: bool,
    exclusive: bool,
    settings: Settings,
    extra: Sequence[str] = (),
) -> DatasetState:
    """Land ``plan`` as the next version; delete ``staged`` (and ``extra``) if it did not land."""
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
        new_state = _commit.commit(
            storage,
            base,
            plan,
            retry_conflicts=retry,
            retry=_commit.retry_policy(settings),
            checkpoint_interval=settings.checkpoint_interval,
            exclusive_create=exclusive,
            before_attempt=staged_files_protected,
        )
    except (ConflictError, DatasetExistsError, SchemaError):
        discard(storage, [staged], *extra)
        raise
    if settings.plateau_view:
        try:
            write_plateau_view(storage, new_state)
        except Exception as exc:  # the version landed: a retry would commit it twice
            warnings.warn(
                f"{storage.url}: version {new_state.version} landed, but plateau's metadata "
                f"view could not be written: {exc}",
                HafenWarning,
                stacklevel=4,
            )
    return new_state
