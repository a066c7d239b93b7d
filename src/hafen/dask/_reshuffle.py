"""``reshuffle``: a dataset rewritten with another partitioning, in memory bounded by a budget.

The scheme has two phases of Dask tasks and one commit, planned on the client:

1. **Map.** Source files are packed into tasks; each task streams its files in record batches,
   and whenever it holds ``chunk_bytes`` of rows it cuts them into one *piece* per
   (target partition, bucket) group and writes each piece to a scratch area under the
   destination (``<dst>/_hafen/scratch/reshuffle-<id>/``). A task returns the list of its pieces.
2. **Reduce.** The client groups the listed pieces by (partition, bucket); each task reads the
   pieces of one group at a time, at most ``chunk_bytes`` at once, sorts them by ``sort_by`` and
   stages the output file (secondary-index entries are collected while it is written).
3. **Commit.** The client commits every staged file at once, in the write transaction
   (:class:`~hafen.datasets._transaction.WriteTransaction`) that checked the destination before
   any task ran and gave the tasks their :class:`~hafen.datasets._transaction.StagingPlan`. The
   scratch area is removed whatever happens (if the client itself dies, the next reshuffle into
   the same destination sweeps that scratch area once it is older than the grace period).

Memory: a task never holds more than ``chunk_bytes`` of rows plus the copies a split or a sort
needs (at most about three more), so :data:`TASK_MEMORY_FACTOR` chunks fit in one task's share of
the budget: ``(budget * BUDGET_FILL - WORKER_BASELINE) / threads_per_worker``. The data's size
only changes the number of tasks and pieces, never a task's memory.

Failures: piece names are deterministic per (task, flush, group), so a map task recomputed after
its worker died rewrites the same pieces; the reduce reads only pieces listed by map results, so
a half-written piece of a dead attempt is never read. Output files are staged under fresh names
and only the ones returned to the client are committed; a failed run leaves the destination at
its previous version (staged files of finished reduce tasks become orphans for ``vacuum``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from hafen.config import parse_duration
from hafen.dask._buckets import Piece, ReshuffleSpec, build_groups, split_files
from hafen.dask._common import (
    as_column_list,
    check_columns,
    cluster_shape,
    compute,
    resolve_budget,
)
from hafen.datasets._actions import DataFile
from hafen.datasets._dataset import Dataset, open_dataset, storage_for
from hafen.datasets._predicates import normalize_predicates
from hafen.datasets._storage import Storage
from hafen.datasets._transaction import WriteTransaction
from hafen.datasets._vacuum import SCRATCH_DIR
from hafen.datasets._validate import Mode
from hafen.datasets._write import StagedWrite
from hafen.errors import ConfigError, StorageError

__all__ = ["reshuffle"]

#: Resident memory of an idle worker process (Python, Dask, pandas, pyarrow), in bytes.
WORKER_BASELINE = 256 * 1024 * 1024
#: The share of the budget a plan fills, leaving headroom for allocator fragmentation.
BUDGET_FILL = 0.7
#: A task's share of the budget holds this many chunks (rows, plus split or sort copies).
TASK_MEMORY_FACTOR = 4
MIN_CHUNK_BYTES = 4 * 1024 * 1024
#: Parquet on storage is about this many times smaller than the same rows in Arrow.
PARQUET_EXPANSION = 3

Predicates = Sequence[Sequence[tuple[str, str, Any]]] | None


def chunk_bytes_for(budget: int, threads_per_worker: int) -> int:
    """Return the bytes of rows one task may hold, or raise if ``budget`` is too small."""
    per_task = (budget * BUDGET_FILL - WORKER_BASELINE) / max(threads_per_worker, 1)
    chunk = int(per_task // TASK_MEMORY_FACTOR)
    if chunk < MIN_CHUNK_BYTES:
        need = int(
            (MIN_CHUNK_BYTES * TASK_MEMORY_FACTOR * threads_per_worker + WORKER_BASELINE)
            / BUDGET_FILL
        )
        raise ConfigError(
            f"memory_budget of {budget / 2**20:.0f} MiB is too small for "
            f"{threads_per_worker} thread(s) per worker; give at least {need / 2**20:.0f} MiB "
            "or use fewer threads per worker"
        )
    return chunk


def _default_bucket_by(
    partition_on: list[str], indices: list[str], sort_by: list[str], columns: list[str]
) -> list[str]:
    for candidate in (indices, sort_by):
        useful = [c for c in candidate if c not in partition_on]  # constant within a partition
        if useful:
            return useful
    return [c for c in columns if c not in partition_on]


def _pack_files(files: list[DataFile], target: int) -> list[list[DataFile]]:
    groups: list[list[DataFile]] = []
    current: list[DataFile] = []
    size = 0
    for f in files:
        estimate = f.size * PARQUET_EXPANSION
        if current and size + estimate > target:
            groups.append(current)
            current, size = [], 0
        current.append(f)
        size += estimate
    if current:
        groups.append(current)
    return groups


def _pack_groups(groups: list[list[Piece]], target: int) -> list[list[list[Piece]]]:
    tasks: list[list[list[Piece]]] = []
    current: list[list[Piece]] = []
    size = 0
    for pieces in groups:
        nbytes = sum(p.nbytes for p in pieces)
        if current and size + nbytes > target:
            tasks.append(current)
            current, size = [], 0
        current.append(pieces)
        size += nbytes
    if current:
        tasks.append(current)
    return tasks


def _remove_stale_scratch(storage: Storage, grace_period: str) -> list[str]:
    """Remove scratch areas of runs whose client died, once older than the grace period.

    A run removes its own scratch area in all cases its client survives; this sweeps what a
    killed client left. Areas with any file younger than ``grace_period`` are kept: they may
    belong to a reshuffle into the same destination that is running now.
    """
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_duration(grace_period))
    newest: dict[str, dt.datetime | None] = {}
    for info in storage.walk(SCRATCH_DIR):
        run = info.path[len(SCRATCH_DIR) + 1 :].split("/", 1)[0]
        seen = newest.get(run, info.modified)
        if seen is None or info.modified is None:
            newest[run] = None  # unknown age: keep
        else:
            newest[run] = max(seen, info.modified)
    stale = [run for run, when in newest.items() if when is not None and when < cutoff]
    for run in stale:
        with contextlib.suppress(FileNotFoundError, StorageError, OSError):
            storage.fs.rm(storage.full(f"{SCRATCH_DIR}/{run}"), recursive=True)
    return stale


def _remove_scratch(storage: Storage, scratch: str, created_root: bool) -> None:
    """Remove the scratch area, and the directories this run created around it."""
    with contextlib.suppress(FileNotFoundError, StorageError, OSError):
        storage.fs.rm(storage.full(scratch), recursive=True)
    if not storage.has_directories:
        return
    import os

    for path in (SCRATCH_DIR, "_hafen", "") if created_root else (SCRATCH_DIR,):
        with contextlib.suppress(OSError):  # not empty: something else lives there
            os.rmdir(storage.full(path))


def reshuffle(
    src: str | Storage | Dataset,
    dst: str | Storage | Dataset,
    partition_on: Sequence[str],
    *,
    num_buckets: int = 1,
    bucket_by: Sequence[str] | None = None,
    sort_by: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    memory_budget: str | int | None = None,
    columns: Sequence[str] | None = None,
    predicates: Predicates = None,
    version: int | None = None,
    mode: Mode = "create",
    storage_options: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> Dataset:
    """Rewrite a dataset with another partitioning, with bounded memory per worker.

    Every output partition (one value combination of ``partition_on``) gets up to
    ``num_buckets`` files; a row goes to the bucket given by a stable hash of its ``bucket_by``
    values, so equal values share one file per partition. Each file is sorted by ``sort_by``.
    A (partition, bucket) group too large for the memory budget is written as several files,
    each sorted, rather than exceed the budget.
    Secondary ``indices`` are built while the files are written. The source is read at one
    version and never changed; the destination gets one new version, or none if anything fails.

    Runs on the default Dask client when there is one (else Dask's local scheduler). Peak
    memory per worker stays under ``memory_budget`` whatever the size of the data: see the
    module documentation of :mod:`hafen.dask._reshuffle` for the scheme.

    Parameters
    ----------
    src
        The source dataset's URL, or an open :class:`~hafen.datasets.Dataset` (its version is
        read, unless ``version`` says otherwise).
    dst
        The destination's URL (or its :class:`~hafen.datasets.Dataset`); a new dataset unless
        ``mode`` says otherwise.
    partition_on
        The output's partition columns (may be empty: one unpartitioned set of buckets).
    num_buckets
        Files per output partition, at least 1.
    bucket_by
        Columns hashed to choose a row's bucket. Default: the ``indices`` (so that an index
        lookup finds one file per partition), else ``sort_by``, else every output column;
        partition columns left out in each case.
    sort_by
        Columns each output file is sorted by (ascending, nulls last).
    indices
        Secondary-index columns of the output.
    memory_budget
        Peak memory per worker, e.g. ``"1GiB"``. Default: the ``memory_budget`` setting
        (``HAFEN_MEMORY_BUDGET``), else the workers' memory limit, else 1 GiB. A budget above
        a worker's memory limit is lowered to that limit.
    columns, predicates, version
        Which columns and rows of which source version to take; all of the latest by default.
    mode
        ``"create"`` (the default), ``"append"`` or ``"overwrite"`` (replaces the output
        partitions written), as for :func:`hafen.write_dataset`.
    storage_options
        fsspec options for both storage backends (over the ``storage_options`` setting).
    parameters
        Recorded with the new version's commit, beside hafen's own (see
        :meth:`~hafen.datasets.Dataset.history`): e.g. the watermark the data covers.

    Returns
    -------
    Dataset
        The new version of the destination.

    Raises
    ------
    ConfigError, SchemaError, PredicateError, DatasetNotFoundError, DatasetExistsError
        On the client, before any task runs, when an argument does not fit.
    ConflictError
        When a concurrent commit to the destination won; nothing landed.

    Examples
    --------
    >>> hafen.reshuffle("data/sales", "data/by_store", partition_on=["store_id"],
    ...                 num_buckets=4, sort_by=["product_id"], indices=["product_id"])
    ... # doctest: +SKIP
    """
    # -- every check before any work -----------------------------------------------------------
    layout_p = as_column_list("partition_on", partition_on)
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 1:
        raise ConfigError(f"num_buckets must be an integer of at least 1, got {num_buckets!r}")
    if isinstance(src, Dataset):
        source = src if version is None else open_dataset(src.storage, version=version)
    else:
        source = open_dataset(src, version=version, storage_options=storage_options)
    selected = source.schema.names if columns is None else as_column_list("columns", columns)
    check_columns("requested", selected, source.schema.names)
    layout_i = as_column_list("indices", indices)
    sort = as_column_list("sort_by", sort_by)
    for kind, names in (("partition", layout_p), ("index", layout_i), ("sort_by", sort)):
        check_columns(kind, names, selected)
    if bucket_by is None:
        buckets = _default_bucket_by(layout_p, layout_i, sort, selected)
    else:
        buckets = as_column_list("bucket_by", bucket_by)
        check_columns("bucket_by", buckets, selected)
        constant = [c for c in buckets if c in layout_p]
        if constant:
            raise ConfigError(
                f"bucket_by columns {constant} are partition columns: every row of a partition "
                "has the same value, so all would land in one bucket"
            )
        if num_buckets > 1 and not buckets:
            raise ConfigError("bucket_by is empty but num_buckets > 1")
    normalize_predicates(predicates, source.schema)  # refuse bad predicates before any work

    target = storage_for(dst, storage_options)
    if target.url == source.storage.url:
        raise ConfigError(f"reshuffle needs a destination other than its source ({target.url})")
    with WriteTransaction(target, mode=mode, partition_on=layout_p, indices=layout_i) as tx:
        schema = tx.validate(pa.schema([source.schema.field(c) for c in selected]))
        shape = cluster_shape()
        budget = resolve_budget(memory_budget, shape, tx.settings)
        chunk = chunk_bytes_for(budget, shape.threads_per_worker)
        run_id = uuid.uuid4().hex[:16]
        spec = ReshuffleSpec(
            source=source.storage,
            source_state=dataclasses.replace(source.state, files={}, index_parts=[]),
            plan=tx.plan,
            columns=list(selected),
            predicates=predicates,
            num_buckets=num_buckets,
            bucket_by=buckets if num_buckets > 1 else [],
            sort_by=sort,
            scratch=f"{SCRATCH_DIR}/reshuffle-{run_id}",
            chunk_bytes=chunk,
        )
        created_root = not target.exists("")
        if not created_root:
            _remove_stale_scratch(target, tx.settings.grace_period)
        try:
            staged = _run(spec, source, run_id, shape.workers * shape.threads_per_worker)
            tx.add(staged or [StagedWrite(schema=schema)])
            parameters = {
                "writer": "reshuffle",
                "source": source.url,
                "source_version": source.version,
                "num_buckets": num_buckets,
                "bucket_by": spec.bucket_by,
                "sort_by": sort,
                **(parameters or {}),
            }
            return Dataset(target, tx.commit(parameters))
        finally:
            _remove_scratch(target, spec.scratch, created_root)


def _run(spec: ReshuffleSpec, source: Dataset, run_id: str, slots: int) -> list[StagedWrite]:
    """Plan and run the map and reduce tasks; return what the reduce tasks staged."""
    from dask import delayed

    files = sorted(source.files(spec.predicates), key=lambda f: (f.partition, f.path))
    slots = max(1, slots)
    chunk = spec.chunk_bytes
    total = sum(f.size for f in files) * PARQUET_EXPANSION
    per_map = max(1, min(TASK_MEMORY_FACTOR * chunk, math.ceil(total / (2 * slots))))
    split = delayed(split_files, pure=False)
    build = delayed(build_groups, pure=False)
    maps = [
        split(spec, i, group, dask_key_name=f"hafen-reshuffle-split-{run_id}-{i}")
        for i, group in enumerate(_pack_files(files, per_map))
    ]
    by_group: dict[tuple[str, int], list[Piece]] = {}
    for pieces in compute(maps):
        for p in pieces:
            by_group.setdefault((p.label, p.bucket), []).append(p)
    groups = [by_group[k] for k in sorted(by_group)]
    written = sum(p.nbytes for g in groups for p in g)
    per_reduce = max(1, min(chunk, math.ceil(written / (2 * slots))))
    reduces = [
        build(spec, work, dask_key_name=f"hafen-reshuffle-build-{run_id}-{j}")
        for j, work in enumerate(_pack_groups(groups, per_reduce))
    ]
    return compute(reduces)
