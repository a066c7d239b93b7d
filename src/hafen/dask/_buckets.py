"""The two task kinds of a reshuffle: split source files into pieces, and build one file per group.

A *group* is one (target partition, bucket) pair: the rows that end up in one output file.

Map task (:func:`split_files`): streams a few source files in record batches, buffering at most
``chunk_bytes``; each full buffer is ordered by group and written to the scratch area as one Arrow
IPC file (a *run*, ``m00003-f0001.arrow`` for task 3's second flush) in which every group's rows
are consecutive record batches: a *piece*. Names are deterministic, so a task recomputed after a
worker died rewrites its own runs instead of adding rows; the task returns the list of its pieces
(file, first batch, batch count), and only listed pieces are ever read.

Reduce task (:func:`build_groups`): for each group it is given, reads the group's pieces (at most
``chunk_bytes`` at a time, only their batches), sorts them, and stages the file with
:class:`~hafen.datasets._transaction.StagingPlan` of the write transaction, which also collects
the secondary-index entries. Nothing is committed here; the client commits every staged file at
once. No task reads hafen's settings: what staging needs of them is in the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hafen.datasets._actions import DataFile
from hafen.datasets._dataset import Dataset
from hafen.datasets._schema import conform, partition_label
from hafen.datasets._storage import Storage, map_storage_errors
from hafen.datasets._transaction import StagingPlan
from hafen.datasets._write import StagedWrite

__all__ = ["Piece", "ReshuffleSpec", "bucket_of", "build_groups", "split_files"]

_BATCH_ROWS = 64 * 1024


@dataclass(frozen=True)
class ReshuffleSpec:
    """Everything a task needs, fixed on the client; small and picklable."""

    source: Storage
    source_state: Any  # the pinned source DatasetState, without its file list
    plan: StagingPlan  # how the output is staged: target, schema, layout, settings
    columns: list[str]  # source columns to read (the output's columns)
    predicates: Any  # DNF predicates over the source, or None
    num_buckets: int
    bucket_by: list[str]
    sort_by: list[str]
    scratch: str  # scratch directory, relative to the target root
    chunk_bytes: int  # the most bytes of rows one task holds before splitting or writing

    @property
    def target(self) -> Storage:
        return self.plan.storage

    @property
    def schema(self) -> pa.Schema:
        """The output schema (source columns selected, conformed to the target)."""
        assert self.plan.schema is not None
        return self.plan.schema

    @property
    def partition_on(self) -> list[str]:
        return self.plan.partition_on


@dataclass(frozen=True)
class Piece:
    """The rows of one group that one map flush produced: a run of batches in a scratch file."""

    label: str  # the target partition's Hive label
    bucket: int
    path: str  # the flush's Arrow IPC file, relative to the target root
    first_batch: int  # the piece is record batches first_batch .. first_batch + num_batches - 1
    num_batches: int
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
    source = Dataset(spec.source, spec.source_state)
    return source.scan_batches(
        spec.columns, predicates=spec.predicates, files=files, batch_size=_BATCH_ROWS
    )


def _ipc_options(storage: Storage) -> pa.ipc.IpcWriteOptions:
    # local scratch files are read back at once (from the page cache): compressing costs more
    # CPU than it saves; remote ones cross the network twice
    return pa.ipc.IpcWriteOptions(compression=None if storage.local else "lz4")


def _write_run(
    spec: ReshuffleSpec, path: str, table: pa.Table, bounds: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Write ``table`` (rows sorted by group) as one IPC file; return each group's batches."""
    storage = spec.target
    full = storage.full(path)
    fs = storage.arrow_filesystem
    runs = []
    with map_storage_errors(full):
        storage.create_parent(full)
        with (
            fs.open_output_stream(full) as sink,
            pa.ipc.new_file(sink, table.schema, options=_ipc_options(storage)) as writer,
        ):
            written = 0
            for start, end in bounds:
                batches = table.slice(start, end - start).to_batches(max_chunksize=_BATCH_ROWS)
                for batch in batches:
                    writer.write_batch(batch)
                runs.append((written, len(batches)))
                written += len(batches)
    return runs


class _Runs:
    """Open scratch files of one reduce task, so each is opened (and its footer read) once."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.open: dict[str, tuple[Any, pa.ipc.RecordBatchFileReader]] = {}

    def read(self, piece: Piece) -> list[pa.RecordBatch]:
        full = self.storage.full(piece.path)
        with map_storage_errors(full):
            if piece.path not in self.open:
                source = self.storage.arrow_filesystem.open_input_file(full)
                self.open[piece.path] = (source, pa.ipc.open_file(source))
            reader = self.open[piece.path][1]
            return [
                reader.get_batch(i)
                for i in range(piece.first_batch, piece.first_batch + piece.num_batches)
            ]

    def close(self) -> None:
        for source, _ in self.open.values():
            source.close()
        self.open.clear()


def _flush(
    spec: ReshuffleSpec, task: int, flush: int, batches: list[pa.RecordBatch]
) -> list[Piece]:
    table = conform(pa.Table.from_batches(batches), spec.schema)
    batches.clear()
    buckets = bucket_of(table, spec.bucket_by, spec.num_buckets)
    codes = _group_codes(table, spec.partition_on, buckets)
    # Arrow sorts small-range integers by counting: stable, and linear in the rows
    order = pc.array_sort_indices(pa.array(codes)).to_numpy()
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], len(order)]
    sorted_buckets = buckets[order]
    table = table.take(pa.array(order))
    del codes, order, sorted_codes
    bounds = list(zip(starts.tolist(), ends.tolist(), strict=True))
    path = f"{spec.scratch}/m{task:05d}-f{flush:04d}.arrow"  # the same when recomputed
    runs = _write_run(spec, path, table, bounds)
    pieces = []
    for (start, end), (first, count) in zip(bounds, runs, strict=True):
        values = [table.column(c)[start].as_py() for c in spec.partition_on]
        label = partition_label(spec.partition_on, values)
        nbytes = table.slice(start, end - start).nbytes
        pieces.append(
            Piece(label, int(sorted_buckets[start]), path, first, count, end - start, nbytes)
        )
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
    runs = _Runs(spec.target)
    try:
        for pieces in groups:
            ordered = sorted(pieces, key=lambda p: (p.path, p.first_batch))  # source order
            for chunk in _chunks(ordered, spec.chunk_bytes):
                batches = [b for p in chunk for b in runs.read(p)]
                table = pa.Table.from_batches(batches, schema=spec.schema)
                del batches
                if spec.sort_by:
                    table = table.sort_by([(c, "ascending") for c in spec.sort_by])
                staged.append(spec.plan.stage(table))
                del table
    finally:
        runs.close()
    pa.default_memory_pool().release_unused()
    return StagedWrite.combine(staged) if staged else StagedWrite(schema=spec.schema)
