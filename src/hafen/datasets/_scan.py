"""Reading the files of one version: an Arrow dataset of them with their partition values, and
what was read checked against the log (each file's footer, the rows), with errors naming a
missing or damaged file rather than returning different values.

:class:`~hafen.datasets.Dataset` chooses the files (partition values, indices, statistics);
this module reads them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from hafen.datasets._actions import DataFile, DatasetState
from hafen.datasets._integrity import DAMAGE, fragment_problem, parquet_format
from hafen.datasets._predicates import Literal
from hafen.datasets._row_groups import read_matching
from hafen.datasets._storage import Storage
from hafen.datasets._verify import corrupt_file, damaged_file, file_schema
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
    statistics may match (:mod:`hafen.datasets._row_groups`); other reads go through Arrow's
    dataset scanner.
    """
    if literals and expression is not None:
        try:
            found = read_matching(
                storage,
                state,
                files,
                partition_values,
                literals,
                columns=columns,
                expression=expression,
            )
        except FileNotFoundError as exc:
            raise _missing_file(storage, state, exc) from exc
        except DAMAGE as exc:
            raise _read_error(storage, state, files, exc) from exc
        if found is not None:
            return found
    dataset = _arrow_dataset(storage, state, files, partition_values)
    try:
        table = dataset.to_table(columns=columns, filter=expression)
    except FileNotFoundError as exc:
        raise _missing_file(storage, state, exc) from exc
    except DAMAGE as exc:
        raise _read_error(storage, state, files, exc) from exc
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
        except FileNotFoundError as exc:
            raise _missing_file(storage, state, exc) from exc
        except DAMAGE as exc:
            raise _read_error(storage, state, files, exc) from exc
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
        partitions.append(_partition_expression(key))
    return pds.FileSystemDataset.from_paths(
        [storage.full(f.path) for f in files],
        schema=schema,
        format=parquet_format(),
        filesystem=storage.arrow_filesystem,
        partitions=partitions,
    )


@functools.lru_cache(maxsize=16384)
def _partition_expression(values: tuple[tuple[str, Any, pa.DataType], ...]) -> pc.Expression:
    """The expression a file with partition ``values`` (column, value, type) satisfies; kept,
    since every read of a dataset builds one for each of its files."""
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
