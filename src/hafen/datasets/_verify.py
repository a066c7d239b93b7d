"""Verifying a version: every file present, of the recorded size and checksum, and decodable.

:meth:`hafen.datasets.Dataset.verify` (and ``hafen dataset verify``) check each file of a
version the thorough way (see :mod:`hafen.datasets._integrity`): the file is read whole, its
size and CRC-32 compared with the log's, and it is decoded with page checksums on. A read that
fails uses the same check to find out which file is damaged, and to tell damage (the bytes are
wrong, every time) from a failure of the storage (reading them failed this time).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from hafen.datasets._actions import DataFile, DatasetState, IndexPart
from hafen.datasets._integrity import DAMAGE, checksum_of, footer_problem
from hafen.datasets._storage import Storage
from hafen.errors import CorruptDataError, StorageError

__all__ = [
    "FileCheck",
    "VerifyReport",
    "check_data_file",
    "check_index_file",
    "checked_footer",
    "verify_files",
]

_BATCH_ROWS = 64 * 1024
REMOTE_WORKERS = 8


@dataclass(frozen=True)
class FileCheck:
    """The outcome of checking one file of a version."""

    path: str  # relative to the dataset root
    kind: Literal["data", "index"]
    size: int  # bytes read (0 when the file could not be read)
    problem: str | None = None  # what is wrong with it; None when it is sound
    checksum: bool = False  # whether a recorded checksum was compared

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class VerifyReport:
    """What :meth:`~hafen.datasets.Dataset.verify` found, file by file."""

    url: str
    version: int
    files: list[FileCheck] = field(default_factory=list)

    @property
    def bad(self) -> list[FileCheck]:
        """The files that are missing, damaged or unreadable."""
        return [c for c in self.files if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.bad

    @property
    def bytes_checked(self) -> int:
        return sum(c.size for c in self.files)

    @property
    def without_checksum(self) -> int:
        """Data files the log has no checksum of (written before hafen recorded them)."""
        return sum(1 for c in self.files if c.kind == "data" and not c.checksum)


def _read(storage: Storage, path: str) -> bytes | str:
    """The file's bytes, or why they could not be read."""
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        return "is missing"
    except StorageError as exc:
        return f"cannot be read ({exc})"


def check_data_file(storage: Storage, f: DataFile, expected: pa.Schema) -> FileCheck:
    """Check data file ``f``: present, of its recorded size and checksum, decodable.

    ``expected`` is the dataset schema without its partition columns. The file is decoded
    only when its bytes match the log (a file known to be damaged needs no more reading).
    """
    data = _read(storage, f.path)
    if isinstance(data, str):
        return FileCheck(f.path, "data", 0, data)
    size = len(data)
    if size != f.size:
        return FileCheck(f.path, "data", size, f"is {size} bytes, the log records {f.size}")
    if f.checksum is not None:
        actual = checksum_of(data)
        if actual != f.checksum:
            problem = f"has checksum {actual}, the log records {f.checksum}"
            return FileCheck(f.path, "data", size, problem, checksum=True)
    return FileCheck(
        f.path, "data", size, _decode_data(data, f, expected), checksum=f.checksum is not None
    )


def _decode_data(data: bytes, f: DataFile, expected: pa.Schema) -> str | None:
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        metadata = parquet.metadata
        groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        problem = footer_problem(f, parquet.schema_arrow, metadata.num_rows, groups, expected)
        if problem is not None:
            return problem
        rows = 0
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, use_threads=False):
            batch.validate(full=True)  # offsets in range, strings valid UTF-8
            rows += batch.num_rows
    except DAMAGE as exc:
        return f"cannot be decoded ({type(exc).__name__}: {exc})"
    if rows != f.num_rows:
        return f"decodes to {rows} rows, the log records {f.num_rows}"
    return None


def check_index_file(storage: Storage, part: IndexPart) -> FileCheck:
    """Check secondary-index file ``part``: present, decodable, shaped as plateau's indices.

    The log records no size or checksum of index files; their pages carry checksums.
    """
    data = _read(storage, part.path)
    if isinstance(data, str):
        return FileCheck(part.path, "index", 0, data)
    return FileCheck(part.path, "index", len(data), decode_index(data, part.column))


def decode_index(data: bytes, column: str) -> str | None:
    """What is wrong with index file bytes ``data`` of ``column``; None if they decode."""
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        schema = parquet.schema_arrow
        if schema.names != [column, "partition"] or not pa.types.is_list(schema.field(1).type):
            return f"has columns {schema.names}, not [{column!r}, 'partition' (labels)]"
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, use_threads=False):
            batch.validate(full=True)
    except DAMAGE as exc:
        return f"cannot be decoded ({type(exc).__name__}: {exc})"
    return None


def file_schema(state: DatasetState) -> pa.Schema:
    """The columns a data file of ``state`` holds: the schema without the partition columns."""
    return pa.schema([f for f in state.schema if f.name not in state.partition_on])


def verify_files(
    storage: Storage,
    state: DatasetState,
    *,
    progress: Callable[[FileCheck], None] | None = None,
    max_workers: int | None = None,
) -> VerifyReport:
    """Check every data and live index file of ``state`` (see :func:`check_data_file`).

    Files are checked in parallel (``max_workers``; by default the cores for local files, 8
    for remote stores); ``progress`` is called with each result as it comes. The report lists
    them in the order of the log.
    """
    expected = file_schema(state)
    jobs: list[Callable[[], FileCheck]] = [
        functools.partial(check_data_file, storage, f, expected)
        for f in sorted(state.files.values(), key=lambda f: f.path)
    ]
    parts = [p for column in state.indices for p in state.live_index_parts(column)]
    jobs += [functools.partial(check_index_file, storage, p) for p in parts]
    if max_workers is None:
        max_workers = (os.cpu_count() or 1) if storage.local else REMOTE_WORKERS
    results: list[FileCheck | None] = [None] * len(jobs)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(jobs) or 1))) as pool:
        futures = {pool.submit(job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            check = future.result()
            results[futures[future]] = check
            if progress is not None:
                progress(check)
    return VerifyReport(storage.url, state.version, [c for c in results if c is not None])


def damaged_file(
    storage: Storage, files: Sequence[DataFile], expected: pa.Schema, failure: BaseException
) -> CorruptDataError | None:
    """The error naming the first of ``files`` that is damaged, or None when all are sound.

    Used after a read of ``files`` failed with ``failure``: a damaged file fails every time, a
    failure of the storage need not. Files the failure's message names are checked first.
    """
    hint = str(failure)
    named = [f for f in files if storage.full(f.path) in hint]
    rest = [f for f in files if storage.full(f.path) not in hint]
    for f in named + rest:
        check = check_data_file(storage, f, expected)
        if check.problem is not None:
            problem = f"{check.problem} (the read failed: {type(failure).__name__}: {hint})"
            return corrupt_file(storage, f.path, "data file", problem)
    return None


def checked_footer(
    storage: Storage, f: DataFile, metadata: pq.FileMetaData, expected: pa.Schema
) -> pa.Schema:
    """The Arrow schema of data file ``f``'s footer ``metadata``, after checking the footer
    against what the log records of ``f``; :class:`CorruptDataError` naming the file if it
    disagrees or is damaged."""
    try:
        schema = metadata.schema.to_arrow_schema()
        groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        problem = footer_problem(f, schema, metadata.num_rows, groups, expected)
    except DAMAGE as exc:
        problem = f"has a damaged footer ({type(exc).__name__}: {exc})"
    if problem is not None:
        raise corrupt_file(storage, f.path, "data file", problem)
    return schema


def corrupt_file(storage: Storage, path: str, kind: str, problem: str) -> CorruptDataError:
    """:class:`CorruptDataError` naming ``path`` (relative to ``storage``'s root) by its URL.

    ``problem`` completes "the data file ..." (``kind``), e.g. "is missing".
    """
    where = f"{storage.url}/{path}"
    return CorruptDataError(
        f"{where}: the {kind} {problem}; `hafen dataset verify {storage.url}` checks every "
        "file of a version",
        path=where,
    )
