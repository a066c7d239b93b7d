"""The two task kinds of a reshuffle: split source files into pieces, and build one file per group.

A *group* is one (target partition, bucket) pair: the rows that end up in one output file.

Map task (:func:`split_files`): streams a few source files in record batches, buffering at most
``chunk_bytes``; each full buffer is cut into one piece per group, and every piece is written to
the scratch area as an Arrow IPC file named after the task, the flush and the group's place in
it (``m00003/f0001-00017.arrow``). Names are deterministic, so a task recomputed after a worker
died overwrites its own pieces instead of adding rows; the task returns the list of its pieces,
and only listed pieces are ever read.

Reduce task (:func:`build_groups`): for each group it is given, reads the group's pieces (at most
``chunk_bytes`` at a time), sorts them, and stages the file with
:func:`hafen.datasets.stage_table`, which also collects the secondary-index entries. Nothing is
committed here; the client commits every staged file at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hafen.datasets import (
    DataFile,
    StagedWrite,
    Storage,
    map_storage_errors,
    partition_label,
    stage_table,
)

__all__ = ["Piece", "ReshuffleSpec", "bucket_of", "build_groups", "split_files"]

_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
_BATCH_ROWS = 64 * 1024


@dataclass(frozen=True)
class ReshuffleSpec:
    """Everything a task needs, fixed on the client; small and picklable."""

    source: Storage
    source_state: Any  # the pinned source DatasetState, without its file list
    target: Storage
    schema: pa.Schema  # the output schema (source columns selected, conformed to the target)
    columns: list[str]  # source columns to read (the output's columns)
    filter: Any  # a pyarrow expression over the source, or None
    partition_on: list[str]
    num_buckets: int
    bucket_by: list[str]
    sort_by: list[str]
    indices: list[str]
    scratch: str  # scratch directory, relative to the target root
    chunk_bytes: int  # the most bytes of rows one task holds before splitting or writing


@dataclass(frozen=True)
class Piece:
    """One intermediate file: the rows of one group that one map flush produced."""

    label: str  # the target partition's Hive label
    bucket: int
    path: str  # relative to the target root
    num_rows: int
    nbytes: int  # in-memory size of its rows


def bucket_of(table: pa.Table, bucket_by: Sequence[str], num_buckets: int) -> np.ndarray:
    """Return each row's bucket: a stable hash of ``bucket_by`` modulo ``num_buckets``.

    The hash is pandas' ``hash_pandas_object`` (SipHash with a fixed key): the same values give
    the same bucket in every process and every run.
    """
    if num_buckets == 1 or table.num_rows == 0:
        return np.zeros(table.num_rows, dtype=np.int64)
    frame = table.select(list(bucket_by)).to_pandas()
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return (hashes % np.uint64(num_buckets)).astype(np.int64)


def _group_codes(table: pa.Table, partition_on: Sequence[str], buckets: np.ndarray) -> np.ndarray:
    """Dense-ish int64 codes, one per (partition values, bucket) combination."""
    n = table.num_rows
    codes = np.zeros(n, dtype=np.int64)
    for name in partition_on:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        encoded = pc.dictionary_encode(column.combine_chunks(), null_encoding="encode")
        indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        codes = codes * len(encoded.dictionary) + indices
        if len(encoded.dictionary) > 1 and codes.max(initial=0) > 2**40:
            codes = np.unique(codes, return_inverse=True)[1].astype(np.int64)  # re-densify
    return codes * (int(buckets.max(initial=0)) + 1) + buckets


def _scan(spec: ReshuffleSpec, files: Sequence[DataFile]) -> Any:
    """Yield the source files' rows as record batches, a few at a time (bounded memory)."""
    import pyarrow.dataset as pds

    schema = spec.source_state.schema
    partitions = []
    for f in files:
        expr = pc.scalar(True)
        for column, value in spec.source_state.partition_values(f.partition).items():
            if value is None:
                expr = expr & pc.field(column).is_null()
            else:
                expr = expr & (pc.field(column) == pa.scalar(value, schema.field(column).type))
        partitions.append(expr)
    dataset = pds.FileSystemDataset.from_paths(
        [spec.source.full(f.path) for f in files],
        schema=schema,
        format=pds.ParquetFileFormat(),
        filesystem=spec.source.arrow_filesystem,
        partitions=partitions,
    )
    return dataset.to_batches(
        columns=spec.columns,
        filter=spec.filter,
        batch_size=_BATCH_ROWS,
        batch_readahead=1,
        fragment_readahead=1,
        use_threads=False,
    )


def _write_piece(storage: Storage, path: str, table: pa.Table) -> None:
    full = storage.full(path)
    fs = storage.arrow_filesystem
    with map_storage_errors(full):
        if storage.protocol == "file":
            fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
        with (
            fs.open_output_stream(full) as sink,
            pa.ipc.new_file(sink, table.schema, options=_IPC_OPTIONS) as writer,
        ):
            writer.write_table(table, max_chunksize=_BATCH_ROWS)


def _read_piece(storage: Storage, path: str) -> pa.Table:
    full = storage.full(path)
    with map_storage_errors(full), storage.arrow_filesystem.open_input_file(full) as source:
        return pa.ipc.open_file(source).read_all()


def _flush(
    spec: ReshuffleSpec, task: int, flush: int, batches: list[pa.RecordBatch]
) -> list[Piece]:
    from hafen.datasets import conform

    table = conform(pa.Table.from_batches(batches), spec.schema)
    batches.clear()
    buckets = bucket_of(table, spec.bucket_by, spec.num_buckets)
    codes = _group_codes(table, spec.partition_on, buckets)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], len(order)]
    sorted_buckets = buckets[order]
    table = table.take(pa.array(order))
    del codes, order
    pieces = []
    for k, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        piece = table.slice(start, end - start)
        values = [piece.column(c)[0].as_py() for c in spec.partition_on]
        label = partition_label(spec.partition_on, values)
        path = f"{spec.scratch}/m{task:05d}/f{flush:04d}-{k:05d}.arrow"
        _write_piece(spec.target, path, piece)
        pieces.append(Piece(label, int(sorted_buckets[start]), path, piece.num_rows, piece.nbytes))
    return pieces


def split_files(spec: ReshuffleSpec, task: int, files: Sequence[DataFile]) -> list[Piece]:
    """Map task: split ``files`` into per-group pieces in the scratch area; return them."""
    pieces: list[Piece] = []
    buffered: list[pa.RecordBatch] = []
    size = 0
    flush = 0
    for batch in _scan(spec, files):
        if batch.num_rows == 0:
            continue
        buffered.append(batch)
        size += batch.nbytes
        if size >= spec.chunk_bytes:
            pieces.extend(_flush(spec, task, flush, buffered))
            flush, size = flush + 1, 0
    if buffered:
        pieces.extend(_flush(spec, task, flush, buffered))
    pa.default_memory_pool().release_unused()
    return pieces


def _chunks(pieces: Sequence[Piece], limit: int) -> list[list[Piece]]:
    """Consecutive runs of pieces holding at most ``limit`` bytes (at least one piece each)."""
    out: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for piece in pieces:
        if current and size + piece.nbytes > limit:
            out.append(current)
            current, size = [], 0
        current.append(piece)
        size += piece.nbytes
    if current:
        out.append(current)
    return out


def build_groups(spec: ReshuffleSpec, groups: Sequence[Sequence[Piece]]) -> StagedWrite:
    """Reduce task: stage one output file per group (more if a group exceeds the chunk size)."""
    staged = []
    for pieces in groups:
        ordered = sorted(pieces, key=lambda p: p.path)  # source order when not sorted
        for chunk in _chunks(ordered, spec.chunk_bytes):
            table = pa.concat_tables([_read_piece(spec.target, p.path) for p in chunk])
            if spec.sort_by:
                table = table.sort_by([(c, "ascending") for c in spec.sort_by])
            staged.append(
                stage_table(
                    spec.target, table, partition_on=spec.partition_on, indices=spec.indices
                )
            )
            del table
    pa.default_memory_pool().release_unused()
    return StagedWrite.combine(staged) if staged else StagedWrite(schema=spec.schema)
