"""Reading the files of one version: an Arrow dataset of them with their partition values, and
what was read checked against the log (each file's footer, the rows), with errors naming a
missing or damaged file rather than returning different values.

:class:`~hafen.datasets.Dataset` chooses the files (partition values, indices, statistics);
this module reads them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from hafen.datasets._actions import DataFile, DatasetState
from hafen.datasets._integrity import DAMAGE, fragment_problem, parquet_format
from hafen.datasets._predicates import Literal
from hafen.datasets._row_groups import read_matching
from hafen.datasets._storage import Storage
from hafen.datasets._verify import checked_footer, corrupt_file, damaged_file, file_schema
from hafen.errors import StorageError

__all__ = ["read_table", "scan_batches"]

#: The partition values of a file's partition label, ``{column: value}``.
PartitionValues = Callable[[str], dict[str, Any]]


def read_table(
    storage: Storage,
    state: DatasetState,
    files: Sequence[DataFile],
    partition_values: PartitionValues,
    *,
    columns: list[str] | None,
    expression: pc.Expression | None,
    literals: list[list[Literal]] | None = None,
) -> pa.Table:
    """The rows of ``files`` matching ``expression``, with ``columns``, as one table.

    A lookup (``literals`` on a numeric column of the files) reads only the row groups whose
    statistics may match (:mod:`hafen.datasets._row_groups`); a read of a few whole files
    (a service's first read of a file) reads each by itself (:func:`_read_whole`); other reads
    go through Arrow's dataset scanner.
    """
    if expression is None and len(files) <= _DIRECT_FILES:
        with _read_errors(storage, state, files):
            whole = _read_whole(storage, state, files, partition_values, columns)
        if whole is not None:
            return whole
    if literals and expression is not None:
        with _read_errors(storage, state, files):
            found = read_matching(
                storage,
                state,
                files,
                partition_values,
                literals,
                columns=columns,
                expression=expression,
            )
        if found is not None:
            return found
    dataset = _arrow_dataset(storage, state, files, partition_values)
    with _read_errors(storage, state, files):
        table = dataset.to_table(columns=columns, filter=expression)
    # Arrow keeps the footers it read: checking them against the log reads nothing more
    expected = file_schema(state)
    by_path = {storage.full(f.path): f for f in files}
    for fragment in dataset.get_fragments():
        f = by_path[fragment.path]
        problem = fragment_problem(fragment, f, expected)
        if problem is not None:
            raise corrupt_file(storage, f.path, "data file", problem)
    if expression is None and table.num_rows != sum(f.num_rows for f in files):
        raise _read_error(
            storage, state, files, StorageError(f"{storage.url}: read {table.num_rows} rows")
        )
    return table


#: Reads of at most this many whole files read each by itself, without the set-up of Arrow's
#: dataset scanner (which costs more than reading one small file).
_DIRECT_FILES = 4


def _read_whole(
    storage: Storage,
    state: DatasetState,
    files: Sequence[DataFile],
    partition_values: PartitionValues,
    columns: list[str] | None,
) -> pa.Table | None:
    """Every row of ``files``, with ``columns``, each file read by itself; None when a file
    needs a column cast or filled, or only partition columns are asked for (Arrow's scanner
    does those). Each file's footer is read and checked against the log on every read (none
    is kept: a footer damaged since an earlier read is found), and its pages against their
    checksums."""
    schema = state.schema
    partition_on = list(state.partition_on)
    if not files or any(pa.types.is_dictionary(schema.field(c).type) for c in partition_on):
        return None
    wanted = list(columns) if columns is not None else schema.names
    stored = [n for n in wanted if n not in partition_on]
    if not stored:
        return None
    expected = file_schema(state)
    out_schema = pa.schema([schema.field(n) for n in wanted])
    tables = []
    for f in files:
        with storage.arrow_filesystem.open_input_file(storage.full(f.path)) as source:
            parquet = pq.ParquetFile(
                source,
                page_checksum_verification=True,
                pre_buffer=not storage.local,
            )
            physical = checked_footer(storage, f, parquet.metadata, expected)
            for name in stored:
                index = physical.get_field_index(name)
                if index < 0 or physical.field(index).type != schema.field(name).type:
                    return None  # a column to fill or cast
            table = parquet.read(columns=stored, use_threads=False)
        if table.num_rows != f.num_rows:
            raise _read_error(
                storage, state, [f], StorageError(f"{f.path}: read {table.num_rows} rows")
            )
        if len(stored) < len(wanted):
            partition = partition_values(f.partition)
            for name in partition_on:
                if name in wanted:
                    value = pa.scalar(partition.get(name), schema.field(name).type)
                    table = table.append_column(
                        schema.field(name), pa.repeat(value, table.num_rows)
                    )
        tables.append(table.select(wanted))
    return (pa.concat_tables(tables) if len(tables) > 1 else tables[0]).cast(out_schema)


def scan_batches(
    storage: Storage,
    state: DatasetState,
    files: Sequence[DataFile],
    partition_values: PartitionValues,
    *,
    columns: list[str] | None,
    expression: pc.Expression | None,
    batch_size: int,
) -> Iterator[pa.RecordBatch]:
    """The rows of ``files`` as record batches, one file at a time (bounded memory)."""
    scanner = _arrow_dataset(storage, state, files, partition_values).scanner(
        columns=columns,
        filter=expression,
        batch_size=batch_size,
        batch_readahead=1,
        fragment_readahead=1,
        use_threads=False,
    )
    return _checked(storage, state, files, scanner, counted=expression is None)


def _checked(
    storage: Storage,
    state: DatasetState,
    files: Sequence[DataFile],
    scanner: pds.Scanner,
    *,
    counted: bool,
) -> Iterator[pa.RecordBatch]:
    """The batches of ``scanner``, each file's footer checked before its first batch."""
    by_path = {storage.full(f.path): f for f in files}
    expected = file_schema(state)
    rows: dict[str, int] = {}
    batches = iter(scanner.scan_batches())
    while True:
        try:
            tagged = next(batches)
        except StopIteration:
            break
        except (FileNotFoundError, *DAMAGE) as exc:
            raise _failed_read(storage, state, files, exc) from exc
        path = tagged.fragment.path
        if path not in rows:
            problem = fragment_problem(tagged.fragment, by_path[path], expected)
            if problem is not None:
                raise corrupt_file(storage, by_path[path].path, "data file", problem)
            rows[path] = 0
        rows[path] += tagged.record_batch.num_rows
        yield tagged.record_batch
    if counted:
        for path, f in by_path.items():
            if rows.get(path, 0) != f.num_rows:
                raise _read_error(
                    storage, state, [f], StorageError(f"{path}: read {rows.get(path, 0)} rows")
                )


def _arrow_dataset(
    storage: Storage,
    state: DatasetState,
    files: Sequence[DataFile],
    partition_values: PartitionValues,
) -> pds.FileSystemDataset:
    schema = state.schema
    partitions = []
    for f in files:
        values = partition_values(f.partition)
        key = tuple((c, v, schema.field(c).type) for c, v in values.items())
        partitions.append(_partition_expression(f.partition, key))
    return pds.FileSystemDataset.from_paths(
        [storage.full(f.path) for f in files],
        schema=schema,
        format=parquet_format(),
        filesystem=storage.arrow_filesystem,
        partitions=partitions,
    )


@functools.lru_cache(maxsize=16384)
def _partition_expression(
    label: str, values: tuple[tuple[str, Any, pa.DataType], ...]
) -> pc.Expression:
    """The expression a file with partition ``values`` (column, value, type) satisfies; kept,
    since every read of a dataset builds one for each of its files. The partition's ``label``
    is part of the key: equal values are not always the same (0.0 and -0.0)."""
    expr = pc.scalar(True)
    for column, value, type_ in values:
        if value is None:
            # a null dictionary scalar would become a dictionary holding a null, which
            # neither filters nor converts to pandas: Arrow fills the column with nulls
            if not pa.types.is_dictionary(type_):
                expr = expr & pc.field(column).is_null()
        else:
            expr = expr & (pc.field(column) == pa.scalar(value, type=type_))
    return expr


@contextlib.contextmanager
def _read_errors(
    storage: Storage, state: DatasetState, files: Sequence[DataFile]
) -> Iterator[None]:
    """Turn a failed read of ``files`` into hafen's error (:func:`_failed_read`)."""
    try:
        yield
    except (FileNotFoundError, *DAMAGE) as exc:
        raise _failed_read(storage, state, files, exc) from exc


def _failed_read(
    storage: Storage, state: DatasetState, files: Sequence[DataFile], exc: BaseException
) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        return _missing_file(storage, state, exc)
    return _read_error(storage, state, files, exc)


def _missing_file(storage: Storage, state: DatasetState, exc: FileNotFoundError) -> StorageError:
    return StorageError(
        f"{storage.url}: version {state.version} refers to a missing file ({exc}); "
        "it may have been vacuumed"
    )


def _read_error(
    storage: Storage, state: DatasetState, files: Sequence[DataFile], exc: BaseException
) -> StorageError:
    """The error for a read of ``files`` that failed with ``exc``: the damaged file named when
    one is found, else (the storage failed this time) a :class:`StorageError`."""
    damaged = damaged_file(storage, files, file_schema(state), exc)
    if damaged is not None:
        return damaged
    return StorageError(f"{storage.url}: reading version {state.version} failed: {exc}")
