"""Staging: writing Parquet files that no version references yet.

Files are written under ``table/<partition>/<uuid>.parquet`` without their partition columns
(as Kartothek does); they become part of the dataset only when a commit adds them
(:mod:`hafen.datasets._transaction`). Staging is what runs in parallel (on Dask workers, in
database extraction tasks); the commit runs once. Secondary-index entries are collected while
the files are written (:mod:`hafen.datasets._indices`), so building an index takes no second
pass over the data.

Code here runs inside tasks, so it reads no settings of its own: the one that matters, the
``parquet_dictionary`` setting, is the ``dictionary`` argument, which the write transaction reads
on the client (left ``None``, it is read where the call runs).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hafen.datasets._actions import DataFile, file_label
from hafen.datasets._indices import StagedIndex, file_entries, unique_values
from hafen.datasets._integrity import HashingSink, checksum_of
from hafen.datasets._parquet import (
    COMPRESSION,
    column_stats,
    dictionary_columns,
    file_stats,
    write_pool,
)
from hafen.datasets._partitioning import (
    Codes,
    key_codes,
    offsets,
    one_chunk,
    split_by_partition,
)
from hafen.datasets._schema import partition_label
from hafen.datasets._storage import Storage, map_storage_errors
from hafen.errors import StorageError

__all__ = [
    "DEFAULT_MAX_ROWS_PER_FILE",
    "DEFAULT_ROW_GROUP_SIZE",
    "SORTED_ROW_GROUP_SIZE",
    "StagedWrite",
    "StagingWriter",
    "sort_rows",
    "stage_table",
]

DEFAULT_ROW_GROUP_SIZE = 256 * 1024

#: Rows per row group of files sorted by ``sort_by``: a lookup of one value of the first sort
#: column decodes one such group per file (Arrow skips the others by their statistics).
SORTED_ROW_GROUP_SIZE = 8 * 1024


DEFAULT_MAX_ROWS_PER_FILE = 8 * 1024 * 1024


@dataclass
class StagedWrite:
    """Files written but not yet committed, with the index entries collected on the way.

    Small and picklable: it travels from the task that wrote the files to the one commit.
    """

    files: list[DataFile] = field(default_factory=list)
    schema: pa.Schema | None = None
    index_entries: dict[str, pa.Table] = field(default_factory=dict)  # column -> (value, label)
    # column -> the index file of these entries, encoded, when this write is committed alone
    encoded_indices: dict[str, bytes] = field(default_factory=dict)
    # when (time.time()) the first of these files began to be written: vacuum's grace period
    # protects them only that long
    started: float = field(default_factory=time.time)

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @staticmethod
    def combine(parts: Iterable[StagedWrite]) -> StagedWrite:
        parts = list(parts)
        if len(parts) == 1:  # committed alone: its encoded index files stay valid
            (one,) = parts
            return StagedWrite(
                list(one.files),
                one.schema,
                dict(one.index_entries),
                dict(one.encoded_indices),
                one.started,
            )
        out = StagedWrite(started=min((p.started for p in parts), default=time.time()))
        entries: dict[str, list[pa.Table]] = {}
        for part in parts:
            out.files.extend(part.files)
            out.schema = out.schema or part.schema
            for column, table in part.index_entries.items():
                entries.setdefault(column, []).append(table)
        out.index_entries = {c: pa.concat_tables(ts) for c, ts in entries.items()}
        return out


def _write_file(
    storage: Storage, path: str, table: pa.Table, row_group_size: int, dictionary: str
) -> tuple[int, str]:
    """Write ``table`` as one Parquet file at ``path``; return its size and checksum."""
    full = storage.full(path)
    fs = storage.arrow_filesystem
    with map_storage_errors(full):
        storage.create_parent(full)
        sink = HashingSink(fs.open_output_stream(full))
        with sink.stream() as stream:
            pq.write_table(
                table,
                stream,
                row_group_size=row_group_size,
                compression=COMPRESSION,
                use_dictionary=dictionary_columns(table, row_group_size, dictionary),
                write_statistics=True,
                write_page_checksum=True,
                memory_pool=write_pool(),
            )
    return sink.size, sink.checksum


def stage_table(
    storage: Storage,
    table: pa.Table,
    *,
    partition_on: Sequence[str] = (),
    indices: Sequence[str] = (),
    sort_by: Sequence[str] = (),
    max_rows_per_file: int = DEFAULT_MAX_ROWS_PER_FILE,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    max_workers: int | None = None,
    encode_index: bool = False,
    dictionary: str | None = None,
) -> StagedWrite:
    """Write ``table`` (already conformed to the dataset schema) as staged files.

    The rows are grouped by partition (and sorted by ``sort_by`` within each; each file then
    records that order in its Parquet metadata), and the files are encoded and written on
    ``max_workers`` threads (by default the cores for local files, more for remote stores;
    ``max_workers=1`` keeps it to one). Rows keep their order within a partition otherwise.
    Each file's row count and column statistics come from the Parquet footer it wrote.
    With ``encode_index`` the index files are also encoded, ready for a commit of this write
    alone (:func:`hafen.datasets.write_dataset`); writes combined before their commit skip it.
    ``dictionary`` is the ``parquet_dictionary`` setting (see
    :func:`~hafen.datasets._parquet.dictionary_columns`); ``None`` reads it from the settings.
    """
    started = time.time()
    partition_on = list(partition_on)
    dictionary = _dictionary_choice(dictionary)
    if table.num_rows == 0:
        return _stage_empty(storage, table, partition_on, dictionary)
    keys = table.select(partition_on)
    coded: Codes = (
        key_codes(keys, partition_on)
        if partition_on
        else (np.zeros(table.num_rows, dtype=np.int32), 1, lambda code: "")
    )
    basename = uuid.uuid4().hex

    def build_index() -> StagedIndex:
        return StagedIndex.build(table, indices, coded, basename, encode_index)

    data = table.drop_columns(partition_on)
    if max_workers is None:
        max_workers = (os.cpu_count() or 1) if storage.local else REMOTE_WORKERS
    # the index is built (and encoded) on the threads writing the files, first: the longest job
    with ThreadPoolExecutor(max(1, max_workers)) as pool:
        future = pool.submit(build_index) if indices else None
        written = _write_partitioned(
            storage,
            data,
            _partition_order(table, coded, sort_by) if sort_by else None,
            coded,
            basename,
            _file_options(
                data,
                sort_by,
                row_group_size,
                max_rows_per_file,
                _rows_per_partition(coded),
                dictionary,
            ),
            max_rows_per_file,
            pool,
        )
        index = future.result() if future else None
    staged = StagedWrite(schema=table.schema, started=started)
    for path, num_rows, size, metadata, checksum in sorted(written):
        label = path[len("table/") :].rsplit("/", 1)[0] if partition_on else ""
        stats = file_stats(metadata, data.schema)
        staged.files.append(DataFile(path, label, num_rows, size, -1, stats, checksum))
    if index is not None:
        staged.index_entries, staged.encoded_indices = index.complete(storage, staged.files)
    return staged


def _partition_order(table: pa.Table, coded: Codes, sort_by: Sequence[str]) -> np.ndarray:
    """The rows of ``table`` grouped by partition code, sorted by ``sort_by`` within."""
    codes = coded[0]
    keys = table.select(list(sort_by)).append_column(_CODE_COLUMN, pa.array(codes, pa.int32()))
    order = _radix_order(keys, [_CODE_COLUMN, *sort_by])
    if order is None:
        return np.asarray(sort_order(keys, [_CODE_COLUMN, *sort_by])).astype(np.int64)
    return order


_CODE_COLUMN = "__hafen_partition_code__"


def sort_rows(table: pa.Table, sort_by: Sequence[str]) -> pa.Table:
    """``table`` ordered by ``sort_by`` (ascending, nulls last; equal keys keep their order)."""
    if not sort_by or table.num_rows < 2:
        return table
    order = _radix_order(table, sort_by)
    if order is None:
        return table.take(sort_order(table, sort_by))
    return table.take(pa.array(order))


def sort_order(table: pa.Table, sort_by: Sequence[str]) -> pa.Array:
    """Arrow's stable sort order of ``table`` by ``sort_by``; dictionary columns (categoricals)
    by their values. Raises an ``ArrowException`` for a type Arrow cannot sort."""
    keys = {}
    for i, name in enumerate(sort_by):
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        keys[f"k{i}"] = column
    return pc.sort_indices(pa.table(keys), sort_keys=[(k, "ascending") for k in keys])


_DIGIT = 1 << 16


def _radix_order(table: pa.Table, sort_by: Sequence[str]) -> np.ndarray | None:
    """The stable sort order of ``table`` by ``sort_by`` as 16-bit digits, least significant
    first (numpy sorts 16-bit integers by radix, several times faster than a comparison sort),
    or None unless every key is an integer column without nulls spanning under 2**32 values."""
    digits: list[np.ndarray] = []
    for name in reversed(sort_by):
        column = table.column(name)
        if not pa.types.is_integer(column.type) or column.null_count:
            return None
        bounds = pc.min_max(column)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if hi - lo >= _DIGIT * _DIGIT:
            return None
        ints = one_chunk(column).to_numpy()
        offset: np.ndarray[Any, np.dtype[np.int64]] = np.empty(len(ints), dtype=np.int64)
        offsets(ints, lo, offset)
        digits.append((offset & (_DIGIT - 1)).astype(np.uint16))
        if hi - lo >= _DIGIT:
            digits.append((offset >> 16).astype(np.uint16))
    order = np.argsort(digits[0], kind="stable")
    for digit in digits[1:]:
        order = order[np.argsort(digit[order], kind="stable")]
    return order


def _rows_per_partition(coded: Codes) -> int:
    """The rows in the partition of a row picked at random, on average (from a sample)."""
    codes, num_codes, _ = coded
    if num_codes == 1:
        return len(codes)
    sample = codes[:: max(1, len(codes) // 4096)]
    share = np.bincount(sample) / len(sample)
    return max(1, int(len(codes) * float(share @ share)))


def _file_options(
    data: pa.Table,
    sort_by: Sequence[str],
    row_group_size: int,
    max_rows_per_file: int,
    rows_per_partition: int,
    dictionary: str,
) -> _FileOptions:
    """How the files of ``data`` (partition columns dropped) are encoded: dictionaries are
    chosen for row groups of ``rows_per_partition`` rows at most, as the files will hold."""
    groups = min(row_group_size, max_rows_per_file, rows_per_partition)
    chosen = dictionary_columns(data, groups, dictionary)
    delta = _delta_columns(data.schema, sort_by, chosen)
    if isinstance(chosen, list):
        chosen = [c for c in chosen if c not in delta]
    return _FileOptions(
        chosen,
        _sorting_columns(data.schema, sort_by),
        max(1, min(row_group_size, max_rows_per_file)),
        dict.fromkeys(delta, "DELTA_BINARY_PACKED") or None,
    )


def _delta_columns(
    schema: pa.Schema, sort_by: Sequence[str], dictionary: list[str] | bool
) -> list[str]:
    """The integer columns of files of ``schema`` that DELTA_BINARY_PACKED stores: those of
    ``sort_by`` (sorted, successive values differ little: a few bits each) and those without a
    ``dictionary`` (unsorted too: the differences of ids between 0 and 50,000 take 18 bits
    against plain's 64, and decode faster than a dictionary or snappy-compressed plain values);
    none when Arrow's choice of dictionaries is kept (``True``). plateau, DuckDB and polars
    read it."""
    if isinstance(dictionary, bool):
        return []
    names = [*sort_by, *(f.name for f in schema if f.name not in dictionary)]
    return [
        name
        for name in dict.fromkeys(names)
        if schema.get_field_index(name) >= 0 and pa.types.is_integer(schema.field(name).type)
    ]


def _sorting_columns(schema: pa.Schema, sort_by: Sequence[str]) -> list[pq.SortingColumn] | None:
    """The Parquet ``sorting_columns`` of files of ``schema`` sorted by ``sort_by``; partition
    columns, which are not in the files, hold one value per file and are left out."""
    columns = [
        pq.SortingColumn(schema.get_field_index(name))
        for name in sort_by
        if schema.get_field_index(name) >= 0
    ]
    return columns or None


def _dictionary_choice(dictionary: str | None) -> str:
    if dictionary is not None:
        return dictionary
    from hafen.config import get_settings

    return get_settings().parquet_dictionary


def _stage_empty(
    storage: Storage, table: pa.Table, partition_on: list[str], dictionary: str
) -> StagedWrite:
    """An empty table stages no file when partitioned, one empty file otherwise."""
    staged = StagedWrite(schema=table.schema)
    if not partition_on:
        path = f"table/{uuid.uuid4().hex}.parquet"
        size, checksum = _write_file(storage, path, table, DEFAULT_ROW_GROUP_SIZE, dictionary)
        staged.files.append(DataFile(path, "", 0, size, -1, {}, checksum))
    return staged


#: A staged file's path, rows, size, footer and checksum.
_Written = tuple[str, int, int, pq.FileMetaData, str]


@dataclass(frozen=True)
class _FileOptions:
    """How each staged file is encoded."""

    dictionary: list[str] | bool
    sorting: list[pq.SortingColumn] | None
    row_group_size: int
    encodings: dict[str, str] | None = None  # column -> Parquet encoding, besides dictionaries


#: Threads writing staged files to a remote store (the uploads wait on the network).
REMOTE_WORKERS = 8


def _write_partitioned(
    storage: Storage,
    data: pa.Table,
    order: np.ndarray | None,
    coded: Codes,
    basename: str,
    options: _FileOptions,
    max_rows_per_file: int,
    pool: ThreadPoolExecutor,
) -> list[_Written]:
    """Write the rows of ``data`` grouped by partition code (in ``order`` when given, else in
    their own order within each partition) as one file per partition (more past
    ``max_rows_per_file``), ``table/<label>/<basename>-<i>.parquet``, the files encoded in
    parallel on ``pool``; return each file's path, rows, size, footer and checksum. The files
    written are deleted again when one of them fails."""
    codes, num_codes, label_of = coded
    jobs: list[tuple[str, Callable[[], pa.Table]]] = []

    def add(code: int, rows: int, part: Callable[[int, int], pa.Table]) -> None:
        label = label_of(code)
        for i, start in enumerate(range(0, rows, max_rows_per_file)):
            name = f"{basename}-{i}.parquet"  # as StagedIndex guesses for a partition's first
            path = f"table/{label}/{name}" if label else f"table/{name}"
            jobs.append((path, partial(part, start, min(max_rows_per_file, rows - start))))

    blocks = _grouped(data, coded, pool) if order is None else None
    if blocks is not None:
        rows = blocks.rows()
        for code in np.flatnonzero(rows).tolist():
            add(code, int(rows[code]), partial(blocks.partition, code))
    else:
        if order is None and num_codes == 1:
            order = np.arange(len(codes))
        elif order is None:  # many partitions: one stable order of them all
            narrow = codes.astype(np.uint16) if num_codes <= _DIGIT else codes
            order = np.argsort(narrow, kind="stable")  # radix for 16-bit integers
        if any(column.num_chunks > 1 for column in data.columns):
            # a take from several chunks first concatenates them
            data = data.combine_chunks(memory_pool=write_pool())
        counts = np.bincount(codes, minlength=num_codes)
        ends = np.cumsum(counts)
        for code in np.flatnonzero(counts).tolist():
            rows = order[ends[code] - counts[code] : ends[code]]
            add(code, len(rows), partial(_rows_of, data, rows))

    def write(job: tuple[str, Callable[[], pa.Table]]) -> _Written:
        path, part = job
        return (path, *_write_file_buffered(storage, path, part(), options))

    futures = [pool.submit(write, job) for job in jobs]
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        # files still being written land first, or they would outlive the delete
        wait(futures)
        with contextlib.suppress(StorageError):
            storage.delete([path for path, _ in jobs])
        raise


def _rows_of(data: pa.Table, order: np.ndarray, start: int, n: int) -> pa.Table:
    """Rows ``start`` to ``start + n`` of ``data`` in ``order``."""
    rows = order[start : start + n]
    if rows[-1] - rows[0] == len(rows) - 1 and bool(np.all(rows[1:] > rows[:-1])):
        return data.slice(int(rows[0]), len(rows))  # one ascending run
    return pc.take(data, pa.array(rows), memory_pool=write_pool())


_BLOCK_ROWS = 1 << 16  # rows reordered at a time: small enough for the gather to stay in cache
_MAX_BLOCK_CODES = 4096  # more partitions than this: one global order (fewer, larger pieces)


def _grouped(data: pa.Table, coded: Codes, pool: ThreadPoolExecutor) -> _Blocks | None:
    """The rows of ``data`` reordered by partition code a block of rows at a time on ``pool``
    (about half the CPU of one gather over the whole table, whose reads miss the cache); None
    for a single partition or too many to split this way."""
    codes, num_codes, _ = coded
    if num_codes == 1 or num_codes > _MAX_BLOCK_CODES:
        return None
    narrow = codes.astype(np.uint16)

    def split(start: int) -> tuple[pa.Table, np.ndarray]:
        block = narrow[start : start + _BLOCK_ROWS]
        order = np.argsort(block, kind="stable")  # a radix sort for 16-bit integers
        bounds = np.zeros(num_codes + 1, dtype=np.int64)
        np.cumsum(np.bincount(block, minlength=num_codes), out=bounds[1:])
        # the order is a permutation of the block's rows: Arrow need not check its bounds
        block_rows = data.slice(start, len(block))
        return (
            pc.take(block_rows, pa.array(order), boundscheck=False, memory_pool=write_pool()),
            bounds,
        )

    reordered, bounds = zip(*pool.map(split, range(0, len(codes), _BLOCK_ROWS)), strict=True)
    return _Blocks(list(reordered), np.stack(bounds))


@dataclass(frozen=True)
class _Blocks:
    """Blocks of rows, each reordered by partition code: the rows of code ``c`` in block ``b``
    are ``tables[b][bounds[b, c] : bounds[b, c + 1]]``."""

    tables: list[pa.Table]
    bounds: np.ndarray

    def rows(self) -> np.ndarray:
        """The rows of each code."""
        return np.diff(self.bounds, axis=1).sum(axis=0)

    def partition(self, code: int, start: int, n: int) -> pa.Table:
        """Rows ``start`` to ``start + n`` of code ``code`` as one chunk."""
        starts = self.bounds[:, code].tolist()
        ends = self.bounds[:, code + 1].tolist()
        pieces = [
            table.slice(lo, hi - lo)
            for table, lo, hi in zip(self.tables, starts, ends, strict=True)
            if hi > lo
        ]
        return pa.concat_tables(pieces).slice(start, n).combine_chunks(memory_pool=write_pool())


def _write_file_buffered(
    storage: Storage, path: str, table: pa.Table, options: _FileOptions
) -> tuple[int, int, pq.FileMetaData, str]:
    """Encode ``table`` as a Parquet file in memory, hash it and store it at ``path``; return
    its rows, size, footer and checksum. (Arrow encodes, and zlib-ng hashes, without the GIL.)"""
    buffer = pa.BufferOutputStream(memory_pool=write_pool())
    footer: list[pq.FileMetaData] = []
    pq.write_table(
        table,
        buffer,
        row_group_size=options.row_group_size,
        compression=COMPRESSION,
        use_dictionary=options.dictionary,
        write_statistics=True,
        write_page_checksum=True,
        sorting_columns=options.sorting,
        column_encoding=options.encodings,
        metadata_collector=footer,
        memory_pool=write_pool(),
    )
    data = buffer.getvalue()
    checksum = checksum_of(memoryview(data))
    full = storage.full(path)
    with map_storage_errors(full):
        storage.create_parent(full)
        with storage.arrow_filesystem.open_output_stream(full) as out:
            out.write(data)
    return table.num_rows, data.size, footer[0], checksum


class StagingWriter:
    """Stream record batches into staged files, one open file per partition.

    >>> with StagingWriter(storage, schema, partition_on=["date"]) as w:  # doctest: +SKIP
    ...     for batch in batches:
    ...         w.write(batch)
    >>> staged = w.staged
    """

    def __init__(
        self,
        storage: Storage,
        schema: pa.Schema,
        *,
        partition_on: Sequence[str] = (),
        indices: Sequence[str] = (),
        max_rows_per_file: int = DEFAULT_MAX_ROWS_PER_FILE,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
        dictionary: str | None = None,
    ) -> None:
        self.storage = storage
        self.schema = schema
        self.partition_on = list(partition_on)
        self.indices = list(indices)
        self.max_rows_per_file = max_rows_per_file
        self.row_group_size = row_group_size
        self.staged = StagedWrite(schema=schema)
        self._file_schema = pa.schema([f for f in schema if f.name not in self.partition_on])
        self._open: dict[str, tuple[str, pq.ParquetWriter, HashingSink, list[Any]]] = {}
        self._rows: dict[str, int] = {}
        self._entries: dict[str, list[pa.Table]] = {}
        self._choice = _dictionary_choice(dictionary)  # the parquet_dictionary setting
        self._dictionary: list[str] | bool | None = None  # chosen from the first rows
        self._encodings: dict[str, str] | None = None

    def __enter__(self) -> StagingWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        for values, part in split_by_partition(table, self.partition_on):
            label = partition_label(self.partition_on, values)
            self._write_part(label, part)

    def _write_part(self, label: str, part: pa.Table) -> None:
        if label not in self._open:
            name = uuid.uuid4().hex
            path = f"table/{label}/{name}.parquet" if label else f"table/{name}.parquet"
            full = self.storage.full(path)
            fs = self.storage.arrow_filesystem
            with map_storage_errors(full):
                self.storage.create_parent(full)
                sink = HashingSink(fs.open_output_stream(full))
                if self._dictionary is None:
                    self._dictionary = dictionary_columns(part, self.row_group_size, self._choice)
                    delta = _delta_columns(self._file_schema, (), self._dictionary)
                    self._encodings = dict.fromkeys(delta, "DELTA_BINARY_PACKED") or None
                writer = pq.ParquetWriter(
                    sink.stream(),
                    self._file_schema,
                    compression=COMPRESSION,
                    use_dictionary=self._dictionary,
                    column_encoding=self._encodings,
                    write_page_checksum=True,
                    memory_pool=write_pool(),
                )
            self._open[label] = (path, writer, sink, [])
            self._rows[label] = 0
        path, writer, sink, chunks = self._open[label]
        with map_storage_errors(self.storage.full(path)):
            writer.write_table(part, row_group_size=self.row_group_size)
        chunks.append(_summary(part, self.indices))
        self._rows[label] += part.num_rows
        if self._rows[label] >= self.max_rows_per_file:
            self._finish(label)

    def _finish(self, label: str) -> None:
        path, writer, sink, chunks = self._open.pop(label)
        with map_storage_errors(self.storage.full(path)):
            writer.close()
            sink.close()
        stats: dict[str, tuple[Any, Any, int]] = {}
        for summary in chunks:
            for column, (lo, hi, nulls) in summary["stats"].items():
                if column in stats:
                    a, b, n = stats[column]
                    stats[column] = (min(a, lo), max(b, hi), n + nulls)
                else:
                    stats[column] = (lo, hi, nulls)
        self.staged.files.append(
            DataFile(path, label, self._rows.pop(label), sink.size, -1, stats, sink.checksum)
        )
        if not chunks:
            return
        for column in self.indices:
            entries = file_entries([s["index"][column] for s in chunks], file_label(path))
            self._entries.setdefault(column, []).append(entries)

    def abort(self) -> None:
        """Close and delete every file written so far; nothing of this writer is committed."""
        paths = [path for path, *_ in self._open.values()]
        for _, writer, sink, _ in self._open.values():
            with contextlib.suppress(Exception):
                writer.close()
                sink.close()
        self._open.clear()
        paths += [f.path for f in self.staged.files]
        self.staged = StagedWrite(schema=self.schema)
        self._entries.clear()
        with contextlib.suppress(StorageError):
            self.storage.delete(paths)

    def close(self) -> StagedWrite:
        for label in list(self._open):
            self._finish(label)
        self.staged.index_entries = {c: pa.concat_tables(ts) for c, ts in self._entries.items()}
        return self.staged


def _summary(part: pa.Table, indices: Sequence[str]) -> dict[str, Any]:
    """What a file's log entry and index entries need of one written batch."""
    return {"stats": column_stats(part), "index": unique_values(part, indices)}
