"""Parquet files as hafen writes them: compression, which columns get a dictionary, and the
column statistics the log records for each file (so that reads prune files without opening them).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "COMPRESSION",
    "DICTIONARY_CHOICES",
    "column_stats",
    "dictionary_columns",
    "file_stats",
    "write_pool",
]

#: Values of the ``parquet_dictionary`` setting (see :func:`dictionary_columns`).
DICTIONARY_CHOICES = ("auto", "always")

_MAX_STAT_STRING = 64


COMPRESSION = "snappy"


@functools.cache
def write_pool() -> pa.MemoryPool:
    """The Arrow memory pool of the buffers a write makes and frees (reordered rows, encoded
    files): jemalloc, where pyarrow has it and ``ARROW_DEFAULT_MEMORY_POOL`` chooses no pool.

    Arrow's default on Linux, mimalloc, maps huge pages: a write's new buffers were then
    faulted in 2 MiB at a time, and in a virtual machine zeroing those pages took up to a third
    of a write's time (benchmarks/README.md, issue 19, fifth round). jemalloc's small pages cost
    a fraction of that, and it returns freed memory to the system just as promptly.
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return pa.default_memory_pool()
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.default_memory_pool()


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


def dictionary_columns(
    table: pa.Table, rows_per_group: int, choice: str = "auto"
) -> list[str] | bool:
    """Return the columns of ``table`` worth dictionary-encoding in Parquet (True: all).

    Arrow dictionary-encodes every column until a dictionary outgrows its page (1 MiB), so a
    column of distinct floats gets a dictionary as large as its data, which costs time to build
    and bytes to store. A strided sample of each column estimates how many distinct values a
    row group of ``rows_per_group`` rows holds; the column is dictionary-encoded when its
    dictionary and indices would take at most half the bytes of its plain values (building a
    dictionary is the costliest part of encoding a column: it has to pay for itself).
    Categorical columns always are. ``choice="always"`` (the ``parquet_dictionary`` setting,
    read by the caller), or a nested schema, keeps Arrow's default.
    """
    if choice == "always" or any(pa.types.is_nested(t) for t in table.schema.types):
        return True
    n = table.num_rows
    rows = max(1, min(rows_per_group, n))
    positions = np.linspace(0, n - 1, min(n, _DICTIONARY_SAMPLE), dtype=np.int64)
    chosen = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        type_ = column.type
        if pa.types.is_dictionary(type_) or pa.types.is_boolean(type_) or n == 0:
            chosen.append(name)  # a categorical; or a type Parquet never gives a dictionary
            continue
        sample = _take_sorted(column, positions) if n > _DICTIONARY_SAMPLE else column
        size = len(sample) - sample.null_count
        try:
            distinct = pc.count_distinct(sample).as_py()
        except pa.ArrowNotImplementedError:  # a type Arrow cannot count (null): its default
            distinct = 0
        per_group = _distinct_per_group(distinct, size, n, rows)
        if size == 0 or _dictionary_pays(per_group, rows, _plain_bytes(sample, size)):
            chosen.append(name)
    return chosen


def _plain_bytes(sample: pa.Array | pa.ChunkedArray, size: int) -> float:
    """Bytes per non-null value of ``sample`` in Parquet's PLAIN encoding, about."""
    try:
        return sample.type.bit_width / 8
    except ValueError:  # variable width: its values and 4-byte offsets, as PLAIN's lengths
        return sample.nbytes / size


def _dictionary_pays(distinct: float, rows: int, value_bytes: float) -> bool:
    """Whether ``distinct`` values of ``value_bytes`` each, plus an index per row, take at most
    half the bytes of ``rows`` plain values."""
    index_bits = max(1, math.ceil(math.log2(max(2.0, distinct))))
    return distinct * value_bytes + rows * index_bits / 8 <= rows * value_bytes / 2


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


def file_stats(metadata: pq.FileMetaData, schema: pa.Schema) -> dict[str, tuple[Any, Any, int]]:
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
