"""Rows to partitions: a code per row for its partition, the partition's label, and the split.

Staging writes each partition's rows to its own directory; the codes computed here name those
directories (:func:`hafen.datasets._schema.partition_label`) and tell the secondary-index builder
which partition each row went to, without a second pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hafen.datasets._schema import partition_label

__all__ = [
    "Codes",
    "hashed_codes",
    "key_codes",
    "offsets",
    "one_chunk",
    "partition_codes",
    "split_by_partition",
    "work_type",
]

_SPLIT_ROWS = 1 << 16  # rows reordered at a time: small enough for the gather to stay in cache


def partition_codes(keys: pa.Table) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
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
    codes, combos = partition_codes(table.select(list(partition_on)))
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


# a code per row for its partition, the number of codes, and the partition label of a code
Codes = tuple[np.ndarray, int, Callable[[int], str]]


def hashed_codes(keys: pa.Table, partition_on: list[str]) -> Codes:
    codes, combos = partition_codes(keys)
    return codes, len(combos), lambda code: partition_label(partition_on, combos[code])


_MAX_KEY_CODES = 1 << 20


def key_codes(keys: pa.Table, partition_on: list[str]) -> Codes:
    """Return the partition codes of ``keys``: integer keys get theirs by arithmetic on the
    values (each key's offset from its minimum, null after the maximum, in mixed radix), which
    is several times faster than hashing them; other keys, or integers spanning too many
    combinations, are hashed."""
    if not all(pa.types.is_integer(t) for t in keys.schema.types):
        return hashed_codes(keys, partition_on)
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
            return hashed_codes(keys, partition_on)
        if lo is None:
            digit.fill(0)
        else:
            array = one_chunk(column)
            filled = pc.fill_null(array, lo) if array.null_count else array
            offsets(filled.to_numpy(), lo, digit)
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


def one_chunk(column: pa.ChunkedArray) -> pa.Array:
    """``column`` as one array, without a copy when it has one chunk."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def work_type(ints: np.ndarray) -> type[np.integer[Any]]:
    """An integer type wide enough for ``ints`` minus its minimum."""
    return np.uint64 if ints.dtype == np.uint64 else np.int64


def offsets(ints: np.ndarray, lo: int, out: np.ndarray) -> None:
    """``ints - lo`` into ``out`` (known to be small), without overflow in ``ints``' type."""
    work = work_type(ints)
    np.subtract(ints, np.array(lo, dtype=work), out=out, dtype=work, casting="unsafe")
