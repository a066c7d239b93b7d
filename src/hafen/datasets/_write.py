"""Staging: writing Parquet files that no version references yet.

Files are written under ``table/<partition>/<uuid>.parquet`` without their partition columns
(as Kartothek does); they become part of the dataset only when a commit adds them. Staging is
what runs in parallel (on Dask workers, in database extraction tasks); the commit runs once.
Secondary-index entries are collected while the files are written, so building an index takes
no second pass over the data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from hafen.config import get_settings
from hafen.datasets._actions import DataFile, file_label
from hafen.datasets._integrity import HashingFileSystem, HashingSink, checksum_of
from hafen.datasets._schema import NULL_PARTITION, partition_label
from hafen.datasets._storage import Storage, map_storage_errors
from hafen.errors import StorageError

__all__ = ["StagedWrite", "StagingWriter", "stage_table"]

DEFAULT_ROW_GROUP_SIZE = 256 * 1024
DEFAULT_MAX_ROWS_PER_FILE = 8 * 1024 * 1024
_MAX_STAT_STRING = 64
_COMPRESSION = "snappy"


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


def _stat_value(value: Any, type_: pa.DataType) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp | dt.datetime):
        # fixed-width UTC text, so that text order is time order when statistics are merged
        stamp = pd.Timestamp(value)
        if getattr(type_, "tz", None) is not None:
            stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return stamp.isoformat(timespec="nanoseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return value if len(value) <= _MAX_STAT_STRING else None
    if isinstance(value, bool | int | float):
        return value
    return None


def _stats_supported(type_: pa.DataType) -> bool:
    return (
        pa.types.is_integer(type_)
        or pa.types.is_floating(type_)
        or pa.types.is_date(type_)
        or pa.types.is_timestamp(type_)
        or pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
    )


def column_stats(table: pa.Table) -> dict[str, tuple[Any, Any, int]]:
    """Return ``column -> (min, max, null_count)`` as JSON-ready values for prunable columns."""
    stats = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not _stats_supported(column.type) or column.null_count == len(column):
            continue
        mm = pc.min_max(column)
        lo = _stat_value(mm["min"].as_py(), column.type)
        hi = _stat_value(mm["max"].as_py(), column.type)
        if lo is not None and hi is not None:
            stats[name] = (lo, hi, column.null_count)
    return stats


_DICTIONARY_SAMPLE = 4096


def dictionary_columns(table: pa.Table, rows_per_group: int) -> list[str] | bool:
    """Return the columns of ``table`` worth dictionary-encoding in Parquet (True: all).

    Arrow dictionary-encodes every column until a dictionary outgrows its page (1 MiB), so a
    column of distinct floats gets a dictionary as large as its data, which costs time to build
    and bytes to store. A strided sample of each column estimates how many distinct values a
    row group of ``rows_per_group`` rows holds; the column is dictionary-encoded when that is
    at most half of its rows. Categorical columns always are. The ``parquet_dictionary``
    setting ``always`` (or a nested schema) keeps Arrow's default.
    """
    if get_settings().parquet_dictionary == "always" or any(
        pa.types.is_nested(t) for t in table.schema.types
    ):
        return True
    n = table.num_rows
    rows = max(1, min(rows_per_group, n))
    positions = np.linspace(0, n - 1, min(n, _DICTIONARY_SAMPLE), dtype=np.int64)
    chosen = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_dictionary(column.type) or n == 0:
            chosen.append(name)
            continue
        sample = _take_sorted(column, positions) if n > _DICTIONARY_SAMPLE else column
        size = len(sample) - sample.null_count
        try:
            distinct = pc.count_distinct(sample).as_py()
        except pa.ArrowNotImplementedError:  # a type Arrow cannot count (null): its default
            distinct = 0
        if _distinct_per_group(distinct, size, n, rows) <= rows / 2:
            chosen.append(name)
    return chosen


def _take_sorted(column: pa.ChunkedArray, positions: np.ndarray) -> pa.Array:
    """``column.take(positions)`` for sorted positions, a chunk at a time (a take from a
    chunked array first concatenates its chunks)."""
    pieces = []
    start = 0
    for chunk in column.chunks:
        lo, hi = np.searchsorted(positions, [start, start + len(chunk)])
        if hi > lo:
            pieces.append(chunk.take(pa.array(positions[lo:hi] - start)))
        start += len(chunk)
    return pa.concat_arrays(pieces) if pieces else pa.array([], column.type)


def _distinct_per_group(distinct: int, sample: int, total: int, rows: int) -> float:
    """Expected distinct values among ``rows`` rows of a column with ``distinct`` values in a
    sample of ``sample`` of its ``total`` rows, its values assumed spread evenly."""
    if sample == total or sample == 0:
        return min(distinct, rows)
    if distinct >= sample:
        return rows  # nothing repeated: as many as there are rows, as far as can be told

    def seen(values: float, draws: float) -> float:  # distinct values among draws
        return values * -math.expm1(-draws / values)

    lo, hi = float(distinct), float(total)  # values in the column: seen(v, sample) == distinct
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if seen(mid, sample) < distinct else (lo, mid)
    return seen(hi, rows)


_SPLIT_ROWS = 1 << 16  # rows reordered at a time: small enough for the gather to stay in cache


def _partition_codes(keys: pa.Table) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """Return a dense code per row for its combination of key values, and the combinations."""
    codes = np.zeros(keys.num_rows, dtype=np.int64)
    values: list[list[Any]] = []
    radix = 1
    for column in reversed(keys.columns):
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        encoded = pc.dictionary_encode(column, null_encoding="encode").combine_chunks()
        codes += encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64) * radix
        radix *= max(len(encoded.dictionary), 1)
        values.insert(0, encoded.dictionary.to_pylist())
    if len(values) == 1:
        return codes, [(v,) for v in values[0]]
    present, dense = np.unique(codes, return_inverse=True)
    combos = []
    for code in present.tolist():
        combo: list[Any] = []
        for options in reversed(values):
            code, index = divmod(code, len(options))
            combo.insert(0, options[index])
        combos.append(tuple(combo))
    return dense.astype(np.int64), combos


def split_by_partition(
    table: pa.Table, partition_on: Sequence[str]
) -> list[tuple[tuple[Any, ...], pa.Table]]:
    """Split ``table`` into ``(partition values, rows without partition columns)`` groups.

    Rows keep their order within a group. The table is reordered a slice at a time, as
    pyarrow's dataset writer does, which is several times faster than one gather over it all.
    """
    if not partition_on:
        return [((), table)]
    codes, combos = _partition_codes(table.select(list(partition_on)))
    data = table.drop_columns(list(partition_on))
    pieces: dict[int, list[pa.Table]] = {}
    for start in range(0, table.num_rows, _SPLIT_ROWS):
        block = codes[start : start + _SPLIT_ROWS]
        order = np.argsort(block, kind="stable")
        counts = np.bincount(block, minlength=len(combos))
        reordered = data.slice(start, _SPLIT_ROWS).take(pa.array(order))
        offset = 0
        for code in np.flatnonzero(counts).tolist():
            n = int(counts[code])
            pieces.setdefault(code, []).append(reordered.slice(offset, n))
            offset += n
    # one contiguous chunk per group: the Parquet writer encodes it twice as fast as many slices
    return [
        (combos[code], pa.concat_tables(pieces[code]).combine_chunks()) for code in sorted(pieces)
    ]


def _write_file(
    storage: Storage,
    path: str,
    table: pa.Table,
    row_group_size: int,
) -> tuple[int, str]:
    """Write ``table`` as one Parquet file at ``path``; return its size and checksum."""
    full = storage.full(path)
    fs = storage.arrow_filesystem
    with map_storage_errors(full):
        if storage.protocol == "file":
            fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
        sink = HashingSink(fs.open_output_stream(full))
        with sink.stream() as stream:
            pq.write_table(
                table,
                stream,
                row_group_size=row_group_size,
                compression=_COMPRESSION,
                use_dictionary=dictionary_columns(table, row_group_size),
                write_statistics=True,
                write_page_checksum=True,
            )
    return sink.size, sink.checksum


def _repeat(label: str, n: int) -> pa.DictionaryArray:
    """``label`` n times, dictionary-encoded: index entries stay small whatever the label."""
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([label], type=pa.string())
    )


def _index_entries(table: pa.Table, indices: Sequence[str], label: str) -> dict[str, pa.Table]:
    out = {}
    for column in indices:
        values = pc.unique(table.column(column)).drop_null()
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        out[column] = pa.table({"value": values, "label": _repeat(label, len(values))})
    return out


_LABEL_COLUMN = "__hafen_partition__"
_BITMAP_CELLS = 1 << 26  # (value, partition) pairs found with a bitmap up to this many cells


def _file_stats(metadata: pq.FileMetaData, schema: pa.Schema) -> dict[str, tuple[Any, Any, int]]:
    """Return :func:`column_stats` of a written file, from its Parquet row-group statistics."""
    stats: dict[str, tuple[Any, Any, int]] = {}
    leaf = 0
    for field_ in schema:
        j, leaf = leaf, leaf + _leaf_count(field_.type)
        if not _stats_supported(field_.type):
            continue
        lo = hi = None
        nulls = 0
        complete = True
        for i in range(metadata.num_row_groups):
            column = metadata.row_group(i).column(j)
            st = column.statistics
            if st is None or not st.has_null_count:
                complete = False
                break
            nulls += st.null_count
            if st.has_min_max:
                lo = st.min if lo is None else min(lo, st.min)
                hi = st.max if hi is None else max(hi, st.max)
            elif st.null_count != metadata.row_group(i).num_rows:
                complete = False  # values without statistics: this column cannot prune
                break
        if not complete or lo is None or hi is None:
            continue
        lo, hi = _stat_value(lo, field_.type), _stat_value(hi, field_.type)
        if lo is not None and hi is not None:
            stats[field_.name] = (lo, hi, nulls)
    return stats


def _leaf_count(type_: pa.DataType) -> int:
    """The number of Parquet leaf columns a field of ``type_`` is stored as."""
    if pa.types.is_struct(type_):
        return sum(_leaf_count(type_.field(i).type) for i in range(type_.num_fields))
    if pa.types.is_map(type_):
        return _leaf_count(type_.key_type) + _leaf_count(type_.item_type)
    if isinstance(type_, pa.ListType | pa.LargeListType | pa.FixedSizeListType):
        return _leaf_count(type_.value_type)
    if isinstance(type_, pa.ListViewType | pa.LargeListViewType):
        return _leaf_count(type_.value_type)
    return 1


def stage_table(
    storage: Storage,
    table: pa.Table,
    *,
    partition_on: Sequence[str] = (),
    indices: Sequence[str] = (),
    max_rows_per_file: int = DEFAULT_MAX_ROWS_PER_FILE,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    max_workers: int | None = None,
    encode_index: bool = False,
) -> StagedWrite:
    """Write ``table`` (already conformed to the dataset schema) as staged files.

    Arrow's dataset writer splits the rows by partition and encodes the files on its own
    threads (``max_workers=1`` keeps it to one); rows keep their order within a partition.
    Each file's row count and column statistics come from the Parquet footer it wrote.
    With ``encode_index`` the index files are also encoded, ready for a commit of this write
    alone (:func:`hafen.datasets.write_dataset`); writes combined before their commit skip it.
    """
    started = time.time()
    partition_on = list(partition_on)
    if table.num_rows == 0:
        return _stage_empty(storage, table, partition_on)
    keys = table.select(partition_on)
    coded: _Codes | None = None
    partitioning: pds.Partitioning | None = None
    data = table
    if not partition_on:
        coded = np.zeros(table.num_rows, dtype=np.int32), 1, lambda code: ""
    elif all(_hive_names_like_hafen(field_) for field_ in keys.schema):
        # Arrow names these directories exactly as partition_label does: no codes to compute
        partitioning = pds.HivePartitioning(
            keys.schema, null_fallback=NULL_PARTITION, segment_encoding="none"
        )
    else:  # a dictionary column of hafen's labels becomes the directory path
        coded = codes, _, label_of = _hashed_codes(keys, partition_on)
        labels = [label_of(code) for code in range(coded[1])]
        data = table.drop_columns(partition_on).append_column(
            _LABEL_COLUMN,
            pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(labels)),
        )
        partitioning = pds.DirectoryPartitioning(
            pa.schema([data.schema.field(_LABEL_COLUMN)]), segment_encoding="none"
        )
    basename = uuid.uuid4().hex

    def build_index() -> _StagedIndex:
        return _StagedIndex.build(
            table, indices, coded or _key_codes(keys, partition_on), basename, encode_index
        )

    # the index is built (and encoded) while Arrow writes the files
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(build_index) if indices else None
        written = _write_partitioned(
            storage,
            data,
            partitioning,
            basename,
            dictionary_columns(table.drop_columns(partition_on), row_group_size),
            max_rows_per_file,
            row_group_size,
            max_workers,
        )
        index = future.result() if future else None
    file_schema = table.drop_columns(partition_on).schema
    staged = StagedWrite(schema=table.schema, started=started)
    for path, num_rows, size, metadata, checksum in sorted(written):
        label = path[len("table/") :].rsplit("/", 1)[0] if partition_on else ""
        stats = _file_stats(metadata, file_schema)
        staged.files.append(DataFile(path, label, num_rows, size, -1, stats, checksum))
    if index is not None:
        index.complete(storage, staged)
    return staged


@dataclass
class _StagedIndex:
    """The secondary-index entries of a table being staged.

    They are built before the files exist, on the guess that Arrow writes each partition as the
    single file ``<partition>/<basename>-0.parquet``; :meth:`complete` checks the guess against
    the files written and falls back to the files' real names (reading back the values of
    partitions split into several files) when it was wrong.
    """

    pairs: dict[str, tuple[pa.Array, np.ndarray]]  # column -> distinct (value, code) pairs
    labels: dict[int, str]  # partition label of every code in a pair
    num_codes: int
    basename: str
    entries: dict[str, pa.Table]
    encoded: dict[str, bytes]

    @classmethod
    def build(
        cls,
        table: pa.Table,
        indices: Sequence[str],
        coded: _Codes,
        basename: str,
        encode: bool,
    ) -> _StagedIndex:
        from hafen.datasets._plateau import encode_index_part

        codes, num_codes, label_of = coded
        pairs = {c: _distinct_pairs(table.column(c), codes, num_codes) for c in indices}
        present = np.zeros(num_codes, dtype=bool)
        for _, pair_codes in pairs.values():
            present[pair_codes] = True
        used = {code: label_of(code) for code in np.flatnonzero(present).tolist()}
        guessed = {code: _file_in(label, f"{basename}-0") for code, label in used.items()}
        entries = {
            column: _entries(values, pair_codes, guessed, num_codes)
            for column, (values, pair_codes) in pairs.items()
        }
        encoded = {}
        if encode:
            for column, rows in entries.items():
                encoded[column] = encode_index_part(column, rows, table.schema.field(column).type)
        return cls(pairs, used, num_codes, basename, entries, encoded)

    def complete(self, storage: Storage, staged: StagedWrite) -> None:
        """Set ``staged``'s index entries for the files it really holds."""
        files_of: dict[str, list[str]] = {}
        for f in staged.files:
            files_of.setdefault(f.partition, []).append(f.path)
        if all(
            paths == [f"table/{_file_in(label, self.basename + '-0')}.parquet"]
            for label, paths in files_of.items()
        ):
            staged.index_entries = self.entries
            staged.encoded_indices = self.encoded
            return
        code_of = {label: code for code, label in self.labels.items()}
        single = {
            code_of[label]: file_label(paths[0])
            for label, paths in files_of.items()
            if len(paths) == 1 and label in code_of
        }
        staged.index_entries = {}
        for column, (values, pair_codes) in self.pairs.items():
            parts = [_entries(values, pair_codes, single, self.num_codes)]
            for label, paths in files_of.items():
                if len(paths) > 1 and label in code_of:
                    parts.extend(_read_back_entries(storage, column, p) for p in paths)
            schema = parts[0].schema
            staged.index_entries[column] = pa.concat_tables(p.cast(schema) for p in parts)


def _file_in(partition: str, name: str) -> str:
    """The file label of file ``name`` in ``partition``."""
    return f"{partition}/{name}" if partition else name


def _entries(
    values: pa.Array, pair_codes: np.ndarray, file_of: dict[int, str], num_codes: int
) -> pa.Table:
    """``(value, label)`` rows of the pairs whose partition code has a file in ``file_of``."""
    position = np.full(max(num_codes, 1), -1, dtype=np.int32)
    position[list(file_of)] = np.arange(len(file_of), dtype=np.int32)
    label_index = position[pair_codes]
    keep = label_index >= 0
    if not keep.all():
        values = values.filter(pa.array(keep))
        label_index = label_index[keep]
    return pa.table(
        {
            "value": values,
            "label": pa.DictionaryArray.from_arrays(
                pa.array(label_index, pa.int32()), pa.array(list(file_of.values()), pa.string())
            ),
        }
    )


def _read_back_entries(storage: Storage, column: str, path: str) -> pa.Table:
    """``(value, label)`` rows of a written file, from its values."""
    full = storage.full(path)
    with map_storage_errors(full):
        read = pq.read_table(
            full,
            columns=[column],
            filesystem=storage.arrow_filesystem,
            page_checksum_verification=True,
        )
    return _index_entries(read, [column], file_label(path))[column]


def _hive_names_like_hafen(field_: pa.Field) -> bool:
    """True when Arrow's Hive directory names for this key are hafen's partition labels."""
    return pa.types.is_integer(field_.type) and urllib.parse.quote(field_.name, safe="") == (
        field_.name
    )


# a code per row for its partition, the number of codes, and the partition label of a code
_Codes = tuple[np.ndarray, int, Callable[[int], str]]


def _hashed_codes(keys: pa.Table, partition_on: list[str]) -> _Codes:
    codes, combos = _partition_codes(keys)
    return codes, len(combos), lambda code: partition_label(partition_on, combos[code])


_MAX_KEY_CODES = 1 << 20


def _key_codes(keys: pa.Table, partition_on: list[str]) -> _Codes:
    """Return the partition codes of ``keys``: integer keys get theirs by arithmetic on the
    values (each key's offset from its minimum, null after the maximum, in mixed radix), which
    is several times faster than hashing them; other keys, or integers spanning too many
    combinations, are hashed."""
    if not all(pa.types.is_integer(t) for t in keys.schema.types):
        return _hashed_codes(keys, partition_on)
    n = keys.num_rows
    codes = np.zeros(n, dtype=np.int32)
    digit = codes if keys.num_columns == 1 else np.empty(n, dtype=np.int32)
    digits: list[tuple[int, int, int]] = []  # (minimum, values, span) per key, last key first
    radix = 1
    for column in reversed(keys.columns):
        bounds = pc.min_max(column)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        width = 0 if lo is None else hi - lo + 1
        span = width + (column.null_count > 0)
        if radix * span > _MAX_KEY_CODES:
            return _hashed_codes(keys, partition_on)
        if lo is None:
            digit.fill(0)
        else:
            array = _one_chunk(column)
            filled = pc.fill_null(array, lo) if array.null_count else array
            _offsets(filled.to_numpy(), lo, digit)
            if array.null_count:
                digit[pc.is_null(array).to_numpy(zero_copy_only=False)] = width
        if digit is not codes:
            digit *= radix
            codes += digit
        digits.append((lo or 0, width, span))
        radix *= span

    def label_of(code: int) -> str:
        values: list[Any] = []
        for lo, width, span in digits:
            code, d = divmod(code, span)
            values.insert(0, None if d == width else lo + d)
        return partition_label(partition_on, tuple(values))

    return codes, radix, label_of


def _stage_empty(storage: Storage, table: pa.Table, partition_on: list[str]) -> StagedWrite:
    """An empty table stages no file when partitioned, one empty file otherwise."""
    staged = StagedWrite(schema=table.schema)
    if not partition_on:
        path = f"table/{uuid.uuid4().hex}.parquet"
        size, checksum = _write_file(storage, path, table, DEFAULT_ROW_GROUP_SIZE)
        staged.files.append(DataFile(path, "", 0, size, -1, {}, checksum))
    return staged


def _write_partitioned(
    storage: Storage,
    data: pa.Table,
    partitioning: pds.Partitioning | None,
    basename: str,
    dictionary: list[str] | bool,
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
                compression=_COMPRESSION, use_dictionary=dictionary, write_page_checksum=True
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
            create_dir=storage.protocol == "file",
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


def _distinct_pairs(
    column: pa.ChunkedArray, codes: np.ndarray, num_codes: int
) -> tuple[pa.Array, np.ndarray]:
    """Return the distinct (non-null value, partition code) pairs, sorted by value then code."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    array = _one_chunk(column) if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_integer(array.type):
        found = _distinct_int_pairs(array, codes, num_codes)
        if found is not None:
            return found
    encoded = pc.dictionary_encode(array)
    dictionary = encoded.dictionary
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(dictionary), dtype=np.int64)
    rank[order] = np.arange(len(dictionary), dtype=np.int64)
    indices = encoded.indices
    row_codes = codes
    if indices.null_count:
        valid = pc.is_valid(indices).to_numpy(zero_copy_only=False)
        indices, row_codes = indices.filter(pa.array(valid)), codes[valid]
    keys = rank[indices.to_numpy()] * num_codes + row_codes
    if len(dictionary) * num_codes <= _BITMAP_CELLS:
        seen = np.zeros(len(dictionary) * num_codes, dtype=bool)
        seen[keys] = True
        pairs = np.flatnonzero(seen)
    else:
        pairs = np.unique(keys)
    value_rank, pair_codes = np.divmod(pairs, num_codes)
    return dictionary.take(pa.array(order[value_rank])), pair_codes


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
                if self.storage.protocol == "file":
                    fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
                sink = HashingSink(fs.open_output_stream(full))
                if self._dictionary is None:
                    self._dictionary = dictionary_columns(part, self.row_group_size)
                writer = pq.ParquetWriter(
                    sink.stream(),
                    self._file_schema,
                    compression=_COMPRESSION,
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
        flabel = file_label(path)
        for column in self.indices:
            values = pa.concat_arrays([s["index"][column] for s in chunks]) if chunks else None
            if values is None:
                continue
            values = pc.unique(values)
            self._entries.setdefault(column, []).append(
                pa.table({"value": values, "label": _repeat(flabel, len(values))})
            )

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
    index = {}
    for column in indices:
        values = pc.unique(part.column(column)).drop_null()
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        index[column] = values
    return {"stats": column_stats(part), "index": index}


def _distinct_int_pairs(
    array: pa.Array, codes: np.ndarray, num_codes: int
) -> tuple[pa.Array, np.ndarray] | None:
    """:func:`_distinct_pairs` of integers spanning a small range: offsets from the minimum are
    the ranks, so nothing is hashed or sorted. None when the range is too wide for a bitmap."""
    bounds = pc.min_max(array)
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    if lo is None or (hi - lo + 1) * num_codes > _BITMAP_CELLS:
        return None
    if array.null_count:
        valid = pc.is_valid(array).to_numpy(zero_copy_only=False)
        array, codes = array.filter(pa.array(valid)), codes[valid]
    ints = array.to_numpy()
    keys = np.empty(len(ints), dtype=np.int32)  # fits: the bitmap has at most 2**26 cells
    _offsets(ints, lo, keys)
    keys *= num_codes
    keys += codes
    seen = np.zeros((hi - lo + 1) * num_codes, dtype=bool)
    seen[keys] = True
    offset, pair_codes = np.divmod(np.flatnonzero(seen).astype(np.int32), num_codes)
    work = _work_type(ints)
    values = (offset.astype(work) + np.array(lo, dtype=work)).astype(ints.dtype)
    return pa.array(values, type=array.type), pair_codes


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    """``column`` as one array, without a copy when it has one chunk."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _work_type(ints: np.ndarray) -> type[np.integer[Any]]:
    """An integer type wide enough for ``ints`` minus its minimum."""
    return np.uint64 if ints.dtype == np.uint64 else np.int64


def _offsets(ints: np.ndarray, lo: int, out: np.ndarray) -> None:
    """``ints - lo`` into ``out`` (known to be small), without overflow in ``ints``' type."""
    work = _work_type(ints)
    np.subtract(ints, np.array(lo, dtype=work), out=out, dtype=work, casting="unsafe")
