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
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from hafen.datasets._actions import DataFile, file_label
from hafen.datasets._indices import StagedIndex, file_entries, unique_values
from hafen.datasets._integrity import HashingFileSystem, HashingSink, checksum_of
from hafen.datasets._parquet import COMPRESSION, column_stats, dictionary_columns, file_stats
from hafen.datasets._partitioning import (
    Codes,
    hashed_codes,
    hive_names_like_hafen,
    key_codes,
    offsets,
    one_chunk,
    split_by_partition,
)
from hafen.datasets._schema import NULL_PARTITION, partition_label
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
            )
    return sink.size, sink.checksum


_LABEL_COLUMN = "__hafen_partition__"


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

    Arrow's dataset writer splits the rows by partition and encodes the files on its own
    threads (``max_workers=1`` keeps it to one); rows keep their order within a partition, or
    are sorted by ``sort_by`` (each file then records that order in its Parquet metadata).
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
    if sort_by:  # grouped by partition too: Arrow's writer then splits contiguous runs
        table = sort_rows(table, [*partition_on, *sort_by])
    keys = table.select(partition_on)
    coded: Codes | None = None
    partitioning: pds.Partitioning | None = None
    data = table
    if not partition_on:
        coded = np.zeros(table.num_rows, dtype=np.int32), 1, lambda code: ""
    elif all(hive_names_like_hafen(field_) for field_ in keys.schema):
        # Arrow names these directories exactly as partition_label does: no codes to compute
        partitioning = pds.HivePartitioning(
            keys.schema, null_fallback=NULL_PARTITION, segment_encoding="none"
        )
    else:  # a dictionary column of hafen's labels becomes the directory path
        coded = codes, _, label_of = hashed_codes(keys, partition_on)
        labels = [label_of(code) for code in range(coded[1])]
        data = table.drop_columns(partition_on).append_column(
            _LABEL_COLUMN,
            pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(labels)),
        )
        partitioning = pds.DirectoryPartitioning(
            pa.schema([data.schema.field(_LABEL_COLUMN)]), segment_encoding="none"
        )
    basename = uuid.uuid4().hex

    def build_index() -> StagedIndex:
        return StagedIndex.build(
            table, indices, coded or key_codes(keys, partition_on), basename, encode_index
        )

    # the index is built (and encoded) while Arrow writes the files
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(build_index) if indices else None
        written = _write_partitioned(
            storage,
            data,
            partitioning,
            basename,
            dictionary_columns(table.drop_columns(partition_on), row_group_size, dictionary),
            _sorting_columns(table.drop_columns(partition_on).schema, sort_by),
            max_rows_per_file,
            row_group_size,
            max_workers,
        )
        index = future.result() if future else None
    file_schema = table.drop_columns(partition_on).schema
    staged = StagedWrite(schema=table.schema, started=started)
    for path, num_rows, size, metadata, checksum in sorted(written):
        label = path[len("table/") :].rsplit("/", 1)[0] if partition_on else ""
        stats = file_stats(metadata, file_schema)
        staged.files.append(DataFile(path, label, num_rows, size, -1, stats, checksum))
    if index is not None:
        staged.index_entries, staged.encoded_indices = index.complete(storage, staged.files)
    return staged


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


def _write_partitioned(
    storage: Storage,
    data: pa.Table,
    partitioning: pds.Partitioning | None,
    basename: str,
    dictionary: list[str] | bool,
    sorting: list[pq.SortingColumn] | None,
    max_rows_per_file: int,
    row_group_size: int,
    max_workers: int | None,
) -> list[tuple[str, int, int, pq.FileMetaData, str]]:
    """Write ``data`` with Arrow's dataset writer; return each file's path, rows, size, footer
    and checksum (computed from the bytes as they are written)."""
    base = storage.full("table")
    written: list[tuple[str, int, int, pq.FileMetaData]] = []
    # On local disk and in memory, Arrow writes natively and each file is hashed from the page
    # cache as soon as it is closed, beside the files still being written: a Python sink under
    # Arrow's writer threads costs a third of the write. Remote stores hash the bytes on their
    # way out rather than download them again.
    read_back = storage.modified_resolution == 0
    hashing = None if read_back else HashingFileSystem(storage.arrow_filesystem)
    hashers = ThreadPoolExecutor(1) if read_back else None
    hashed: dict[str, Future[str]] = {}

    def visit(f: pds.WrittenFile) -> None:
        if not f.path.startswith(base + "/"):
            raise StorageError(f"{f.path}: written outside {base}")
        path = f"table/{f.path[len(base) + 1 :]}"
        written.append((path, f.metadata.num_rows, f.size, f.metadata))
        if hashers is not None:
            hashed[path] = hashers.submit(lambda: checksum_of(storage.read_bytes(path)))

    group = max(1, min(row_group_size, max_rows_per_file))
    fmt = pds.ParquetFileFormat()
    with map_storage_errors(base), hashers or contextlib.nullcontext():
        pds.write_dataset(
            # whole chunks, not Arrow's default 128Ki-row slices: a single chunk reaches its
            # files in order by itself, and preserve_order (which costs a sixth of the write)
            # is needed only to keep several chunks in order
            pds.dataset(data).scanner(
                batch_size=max(data.num_rows, 1), use_threads=max_workers != 1
            ),
            base,
            format=fmt,
            file_options=fmt.make_write_options(
                compression=COMPRESSION,
                use_dictionary=dictionary,
                write_page_checksum=True,
                sorting_columns=sorting,
            ),
            filesystem=storage.arrow_filesystem if hashing is None else hashing.filesystem,
            partitioning=partitioning,
            basename_template=basename + "-{i}.parquet",  # {i} counts files per directory
            existing_data_behavior="overwrite_or_ignore",
            max_rows_per_file=max_rows_per_file,
            min_rows_per_group=group,
            max_rows_per_group=group,
            preserve_order=len(data.to_batches()) > 1,
            max_partitions=max(1024, data.num_rows),  # Arrow's default is 1024
            create_dir=storage.has_directories,
            file_visitor=visit,
        )
    if hashing is None:
        return [
            (path, rows, size, metadata, hashed[path].result())
            for path, rows, size, metadata in written
        ]
    return [
        (path, rows, size, metadata, hashing.checksum(storage.full(path)))
        for path, rows, size, metadata in written
    ]


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
                writer = pq.ParquetWriter(
                    sink.stream(),
                    self._file_schema,
                    compression=COMPRESSION,
                    use_dictionary=self._dictionary,
                    write_page_checksum=True,
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
