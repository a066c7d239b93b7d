"""Reading the files of one version: an Arrow dataset of them with their partition values, and
what was read checked against the log (each file's footer, the rows), with errors naming a
missing or damaged file rather than returning different values.

:class:`~hafen.datasets.Dataset` chooses the files (partition values, indices, statistics);
this module reads them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from hafen.datasets._actions import DataFile, DatasetState
from hafen.datasets._integrity import DAMAGE, fragment_problem, parquet_format
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
    filtered_on: Sequence[str] = (),
) -> pa.Table:
    """The rows of ``files`` matching ``expression`` (on the columns ``filtered_on``), with
    ``columns``, as one table."""
    if expression is not None and filtered_on and _plain_layout(state):
        return _read_selective(
            storage, state, files, partition_values, columns, expression, filtered_on
        )
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


# -- filtered reads: only the row groups that may match, file by file ----------------------------
#
# A filtered read (a lookup) decodes few rows of each file: then Arrow's dataset scanner costs
# more than the decoding, about 40% of the wall time of a point lookup of 100 files. Each file is
# read on its own instead, on a thread pool: its footer (checked against the log), the row groups
# whose statistics and partition values may satisfy the filter (Arrow's ``subset``), only the
# columns needed, then filtered. Files whose columns differ from the dataset's (an older schema)
# go through the scanner, which conforms them.


def _plain_layout(state: DatasetState) -> bool:
    """Whether the partition columns' values can be filled in as they are (not dictionaries)."""
    return not any(pa.types.is_dictionary(state.schema.field(c).type) for c in state.partition_on)


_Read = tuple[DataFile, pds.ParquetFileFragment, "pa.Table | None"]


def _read_selective(
    storage: Storage,
    state: DatasetState,
    files: Sequence[DataFile],
    partition_values: PartitionValues,
    columns: list[str] | None,
    expression: pc.Expression,
    filtered_on: Sequence[str],
) -> pa.Table:
    schema = state.schema
    wanted = list(schema.names) if columns is None else columns
    needed = sorted(set(wanted) | set(filtered_on), key=schema.get_field_index)
    expected = file_schema(state)
    in_files = [n for n in expected.names if n in needed]
    fmt = parquet_format()
    filesystem = storage.arrow_filesystem

    def read(f: DataFile) -> _Read:
        values = partition_values(f.partition)
        key = tuple((c, v, schema.field(c).type) for c, v in values.items())
        full = storage.full(f.path)
        fragment = fmt.make_fragment(
            full, filesystem, partition_expression=_partition_expression(key)
        )
        groups = [g.id for g in fragment.subset(expression, schema=schema).row_groups]
        if not groups or fragment.physical_schema != expected:
            return f, fragment, None
        with filesystem.open_input_file(full) as source:
            parquet = pq.ParquetFile(
                source,
                metadata=fragment.metadata,
                page_checksum_verification=True,
                pre_buffer=True,  # the chunks of the groups read in few requests
            )
            table = parquet.read_row_groups(groups, columns=in_files, use_threads=False)
        n = table.num_rows
        arrays = [
            _constant(values[name], schema.field(name).type, n)
            if name in values
            else table.column(name)
            for name in needed
        ]
        part = pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in needed]))
        return f, fragment, part.filter(expression).select(wanted)

    try:
        if len(files) == 1:
            results = [read(files[0])]
        else:
            with ThreadPoolExecutor(min(len(files), _READERS)) as pool:
                results = list(pool.map(read, files))
    except FileNotFoundError as exc:
        raise _missing_file(storage, state, exc) from exc
    except DAMAGE as exc:
        raise _read_error(storage, state, files, exc) from exc
    tables = []
    others = []
    for f, fragment, table in results:
        problem = fragment_problem(fragment, f, expected)
        if problem is not None:
            raise corrupt_file(storage, f.path, "data file", problem)
        if table is not None:
            tables.append(table)
        elif fragment.physical_schema != expected:
            others.append(f)
    if others:  # files of an older schema: Arrow's scanner conforms them
        dataset = _arrow_dataset(storage, state, others, partition_values)
        try:
            tables.append(dataset.to_table(columns=wanted, filter=expression))
        except FileNotFoundError as exc:
            raise _missing_file(storage, state, exc) from exc
        except DAMAGE as exc:
            raise _read_error(storage, state, others, exc) from exc
    target = pa.schema([schema.field(n) for n in wanted])
    if not tables:
        return target.empty_table()
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


_READERS = 8  # files read at once: decoding releases the GIL, remote reads wait on the network


def _constant(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    """A partition column of ``n`` rows holding ``value``."""
    if value is None:
        return pa.nulls(n, type_)
    return pa.repeat(pa.scalar(value, type=type_), n)


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
