"""Secondary indices: built while files are staged, stored as plateau's index files, looked up
when a read prunes files.

An index on column ``c`` maps each value of ``c`` to the files holding it. Each commit that adds
files writes one *index part* per indexed column (``_hafen/indices/<c>/<commit>...parquet``)
covering exactly its files; the log records the parts
(:class:`~hafen.datasets._actions.IndexPart`) and a lookup reads the live ones. The file format
is plateau's (Kartothek's), so that plateau reads hafen's indices: Parquet with columns
``(<c>, partition: list<string>)``, one row per value, the labels of the files holding it
(:func:`~hafen.datasets._actions.file_label`). The plateau metadata view
(:mod:`hafen.datasets._plateau`) merges parts into the one file plateau expects.

Entries ``(value, label)`` are collected while staging, from the same partition codes that split
the rows (:mod:`hafen.datasets._partitioning`), so building an index takes no second pass.
"""

from __future__ import annotations

import collections
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hafen.datasets._actions import DataFile, DatasetState, IndexPart, file_label
from hafen.datasets._integrity import DAMAGE
from hafen.datasets._parquet import write_pool
from hafen.datasets._partitioning import Codes, offsets, one_chunk, work_type
from hafen.datasets._predicates import Literal
from hafen.datasets._storage import Storage, map_storage_errors
from hafen.datasets._verify import check_index_file, corrupt_file
from hafen.errors import CorruptDataError, HafenWarning, StorageError

__all__ = [
    "StagedIndex",
    "allowed_labels",
    "clear_index_footers",
    "distinct_pairs",
    "encode_index_part",
    "file_entries",
    "index_entries",
    "index_footer_info",
    "index_lookup",
    "index_table",
    "read_index_part",
    "unique_values",
    "write_index_part",
    "write_index_parts",
]

INDEX_DIR = "_hafen/indices"

# --- labels and entries ---------------------------------------------------------------------


def _repeat(label: str, n: int) -> pa.DictionaryArray:
    """``label`` n times, dictionary-encoded: index entries stay small whatever the label."""
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([label], type=pa.string())
    )


def index_entries(table: pa.Table, indices: Sequence[str], label: str) -> dict[str, pa.Table]:
    """``column -> (value, label)`` rows of one file's ``table``, for each indexed column."""
    out = {}
    for column in indices:
        values = pc.unique(table.column(column)).drop_null()
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        out[column] = pa.table({"value": values, "label": _repeat(label, len(values))})
    return out


def unique_values(table: pa.Table, indices: Sequence[str]) -> dict[str, pa.Array]:
    """The distinct non-null values of each indexed column of ``table`` (one streamed batch)."""
    out = {}
    for column in indices:
        values = pc.unique(table.column(column)).drop_null()
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        out[column] = values
    return out


def file_entries(batches: Sequence[pa.Array], label: str) -> pa.Table:
    """``(value, label)`` rows of a streamed file: the :func:`unique_values` of its batches."""
    values = pc.unique(pa.concat_arrays(list(batches)))
    return pa.table({"value": values, "label": _repeat(label, len(values))})


_BITMAP_CELLS = 1 << 26  # (value, partition) pairs found with a bitmap up to this many cells


@dataclass
class StagedIndex:
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
        coded: Codes,
        basename: str,
        encode: bool,
    ) -> StagedIndex:
        codes, num_codes, label_of = coded
        pairs = {c: distinct_pairs(table.column(c), codes, num_codes) for c in indices}
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

    def complete(
        self, storage: Storage, files: Sequence[DataFile]
    ) -> tuple[dict[str, pa.Table], dict[str, bytes]]:
        """Return the index entries (and encoded index files, when built) of the files written."""
        files_of: dict[str, list[str]] = {}
        for f in files:
            files_of.setdefault(f.partition, []).append(f.path)
        if all(
            paths == [f"table/{_file_in(label, self.basename + '-0')}.parquet"]
            for label, paths in files_of.items()
        ):
            return self.entries, self.encoded
        code_of = {label: code for code, label in self.labels.items()}
        single = {
            code_of[label]: file_label(paths[0])
            for label, paths in files_of.items()
            if len(paths) == 1 and label in code_of
        }
        entries = {}
        for column, (values, pair_codes) in self.pairs.items():
            parts = [_entries(values, pair_codes, single, self.num_codes)]
            for label, paths in files_of.items():
                if len(paths) > 1 and label in code_of:
                    parts.extend(read_back_entries(storage, column, p) for p in paths)
            schema = parts[0].schema
            entries[column] = pa.concat_tables(p.cast(schema) for p in parts)
        return entries, {}


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


def read_back_entries(storage: Storage, column: str, path: str) -> pa.Table:
    """``(value, label)`` rows of a written file, from its values."""
    full = storage.full(path)
    with map_storage_errors(full):
        read = pq.read_table(
            full,
            columns=[column],
            filesystem=storage.arrow_filesystem,
            page_checksum_verification=True,
        )
    return index_entries(read, [column], file_label(path))[column]


def distinct_pairs(
    column: pa.ChunkedArray, codes: np.ndarray, num_codes: int
) -> tuple[pa.Array, np.ndarray]:
    """Return the distinct (non-null value, partition code) pairs, sorted by value then code."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    array = one_chunk(column) if isinstance(column, pa.ChunkedArray) else column
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


def _distinct_int_pairs(
    array: pa.Array, codes: np.ndarray, num_codes: int
) -> tuple[pa.Array, np.ndarray] | None:
    """:func:`distinct_pairs` of integers spanning a small range: offsets from the minimum are
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
    offsets(ints, lo, keys)
    keys *= num_codes
    keys += codes
    seen = np.zeros((hi - lo + 1) * num_codes, dtype=bool)
    seen[keys] = True
    offset, pair_codes = np.divmod(np.flatnonzero(seen).astype(np.int32), num_codes)
    work = work_type(ints)
    values = (offset.astype(work) + np.array(lo, dtype=work)).astype(ints.dtype)
    return pa.array(values, type=array.type), pair_codes


# --- the index file format (plateau's) ------------------------------------------------------


_INDEX_GROUP_LABELS = 1 << 16  # labels per row group of an index file


def write_index_part(
    storage: Storage, column: str, entries: pa.Table, type_: pa.DataType, path: str
) -> None:
    """Write index entries ``(value, label)`` as a plateau index file at ``path``."""
    storage.write_bytes(path, encode_index_part(column, entries, type_))


def encode_index_part(column: str, entries: pa.Table, type_: pa.DataType) -> bytes:
    """Return the plateau index file of entries ``(value, label)``."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    table = index_table(column, entries, type_)
    sink = pa.BufferOutputStream(memory_pool=write_pool())
    # statistics of the value column only: those of millions of labels cost time, prune nothing;
    # row groups of about _INDEX_GROUP_LABELS labels, so that a lookup decodes one of them
    labels = max(1, len(entries))
    rows = min(max(1024, _INDEX_GROUP_LABELS * table.num_rows // labels), 1 << 20)
    pq.write_table(
        table,
        sink,
        row_group_size=rows,
        write_statistics=[column],
        write_page_checksum=True,
        memory_pool=write_pool(),
    )
    return sink.getvalue().to_pybytes()


def index_table(column: str, entries: pa.Table, type_: pa.DataType) -> pa.Table:
    """Group ``(value, label)`` rows into plateau's index layout ``(value, [labels])``.

    Entries already sorted by value (as :func:`hafen.datasets._write.stage_table` collects them) are
    not sorted again; dictionary-encoded labels stay encoded (plateau reads them as strings).
    """
    entries = entries.combine_chunks()
    values = entries.column("value").cast(type_).combine_chunks()
    labels = entries.column("label").combine_chunks()
    if not _is_sorted(values):
        order = pc.sort_indices(values)
        values, labels = values.take(order), labels.take(order)
    n = len(values)
    if n == 0:
        starts = np.zeros(0, dtype=np.int32)
    else:
        # a new group starts wherever the sorted value differs from the one before it
        changed = pc.not_equal(values.slice(1), values.slice(0, n - 1))
        starts = np.concatenate(
            [[0], np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1]
        ).astype(np.int32)
    bounds = pa.array(np.append(starts, n).astype(np.int32))
    return pa.table(
        {
            column: values.take(pa.array(starts)),
            "partition": pa.ListArray.from_arrays(bounds, labels),
        }
    )


def _is_sorted(values: pa.Array) -> bool:
    """True when ``values`` (without nulls) never decrease; NaN counts as unsorted."""
    n = len(values)
    if n < 2:
        return True
    if values.null_count:
        return False
    ordered = pc.less_equal(values.slice(0, n - 1), values.slice(1))
    return bool(pc.all(ordered).as_py())


def read_index_part(storage: Storage, part: IndexPart, values: list[Any] | None) -> pa.Table:
    """Return ``(value, label)`` rows of an index file, only for ``values`` when given.

    With ``values``, only the row groups whose value statistics admit one of them are read.
    Raises :class:`CorruptDataError` naming the file when it is missing or damaged (read again
    whole to tell damage from a failure of the storage).
    """
    try:
        return _read_index_part(storage, part, values)
    except FileNotFoundError as exc:
        raise corrupt_file(storage, part.path, "index file", "is missing") from exc
    except CorruptDataError:
        raise
    except DAMAGE as exc:
        try:
            storage.read_bytes(part.path)
        except FileNotFoundError:
            raise corrupt_file(storage, part.path, "index file", "is missing") from exc
        except StorageError:
            raise  # the storage fails to give the bytes at all: an outage, not damage
        check = check_index_file(storage, part)
        if check.problem is not None:
            raise corrupt_file(storage, part.path, "index file", check.problem) from exc
        if isinstance(exc, StorageError):
            raise  # sound when read whole: the storage failed this time
        raise StorageError(
            f"{storage.full(part.path)}: reading the index file failed: {type(exc).__name__}: {exc}"
        ) from exc


def _read_index_part(storage: Storage, part: IndexPart, values: list[Any] | None) -> pa.Table:
    full = storage.full(part.path)
    with map_storage_errors(full):
        if values is None:
            table = pq.read_table(
                full, filesystem=storage.arrow_filesystem, page_checksum_verification=True
            )
        else:
            table = _read_index_values(storage, full, values)
    if table.num_columns != 2 or table.column_names[1] != "partition":
        raise pa.ArrowInvalid(f"unexpected columns {table.column_names}")
    column = table.column(0)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if values is not None:
        mask = pc.is_in(column, value_set=pa.array(values, type=column.type))
        table = table.filter(mask)
        column = table.column(0)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
    lists = table.column("partition").combine_chunks()
    labels = pc.list_flatten(lists).cast(pa.string())
    labels.validate(full=True)  # valid UTF-8, or an error rather than a mangled label
    return pa.table({"value": column.take(pc.list_parent_indices(lists)), "label": labels})


def _read_index_values(storage: Storage, full: str, values: list[Any]) -> pa.Table:
    """The row groups of index file ``full`` whose value statistics admit one of ``values``
    (all its rows of other values too: the caller filters), its footer kept per process."""
    with storage.arrow_filesystem.open_input_file(full) as source:
        key = (full, source.size())
        footer = _kept_index_footer(key)
        if footer is None:
            footer = _IndexFooter(pq.read_metadata(source))
        groups = footer.groups(values)
        if groups:
            reader = pq.ParquetFile(
                source,
                metadata=footer.metadata,
                page_checksum_verification=True,
                pre_buffer=not storage.local,
            )
            # one group at a time: the labels' dictionaries differ between row groups, and
            # Arrow reads a list of dictionaries from several groups at once only as one chunk
            pieces = [reader.read_row_group(g, use_threads=False) for g in groups]
            table = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
        else:
            table = footer.metadata.schema.to_arrow_schema().empty_table()
    _keep_index_footer(key, footer)  # read without error: kept
    return table


@dataclass
class _IndexFooter:
    """An index file's footer and each row group's bounds of its value column."""

    metadata: pq.FileMetaData
    _bounds: list[tuple[Any, Any] | None] | None = None

    def groups(self, values: list[Any]) -> list[int]:
        """The row groups that may hold one of ``values`` (all without usable statistics)."""
        if self._bounds is None:
            bounds: list[tuple[Any, Any] | None] = []
            for i in range(self.metadata.num_row_groups):
                st = self.metadata.row_group(i).column(0).statistics
                known = st is not None and st.has_min_max
                bounds.append((st.min, st.max) if known else None)
            self._bounds = bounds
        chosen = []
        for i, bound in enumerate(self._bounds):
            if bound is None:
                chosen.append(i)
                continue
            lo, hi = bound
            try:
                if any(lo <= v <= hi for v in values):
                    chosen.append(i)
            except TypeError:  # not comparable with the statistics: read the group
                chosen.append(i)
        return chosen


#: Index files' footers kept per process (least recently used out first), keyed by the file's
#: path and size: an index file is written once under a name of its own.
MAX_INDEX_FOOTERS = 1024

_index_footers: collections.OrderedDict[tuple[str, int], _IndexFooter] = collections.OrderedDict()
_index_lock = threading.Lock()
_index_stats = {"hits": 0, "misses": 0}


def _kept_index_footer(key: tuple[str, int]) -> _IndexFooter | None:
    with _index_lock:
        kept = _index_footers.get(key)
        if kept is None:
            _index_stats["misses"] += 1
            return None
        _index_footers.move_to_end(key)
        _index_stats["hits"] += 1
        return kept


def _keep_index_footer(key: tuple[str, int], footer: _IndexFooter) -> None:
    with _index_lock:
        _index_footers[key] = footer
        while len(_index_footers) > MAX_INDEX_FOOTERS:
            _index_footers.popitem(last=False)


def clear_index_footers() -> None:
    """Forget every kept index footer."""
    with _index_lock:
        _index_footers.clear()
        _index_stats.update(hits=0, misses=0)


def index_footer_info() -> dict[str, int]:
    """Index footers kept, and lookups of them that found one (hits) or read it (misses)."""
    with _index_lock:
        return {"size": len(_index_footers), **_index_stats}


# --- a commit's index parts, and lookups ------------------------------------------------------


def write_index_parts(
    storage: Storage,
    entries: dict[str, pa.Table],
    encoded: dict[str, bytes],
    schema: pa.Schema,
    indices: Sequence[str],
    num_files: int,
) -> list[IndexPart]:
    """Write one index part per indexed column for the ``num_files`` files of one commit.

    ``entries`` are their ``(value, label)`` rows by column; ``encoded`` the index files already
    encoded (by :func:`hafen.datasets._write.stage_table`), which are written as they are.
    """
    parts = []
    commit_id = uuid.uuid4().hex
    for column in indices:
        rows = entries.get(column)
        if rows is None or rows.num_rows == 0:
            continue
        path = f"{INDEX_DIR}/{column}/{commit_id}.by-dataset-index.parquet"
        data = encoded.get(column)
        if data is not None:
            storage.write_bytes(path, data)
        else:
            write_index_part(storage, column, rows, schema.field(column).type, path)
        parts.append(IndexPart(column, path, -1, num_files))
    return parts


def index_lookup(
    storage: Storage, state: DatasetState, column: str, values: Sequence[Any]
) -> set[str]:
    """Labels of the files of ``state`` holding any of ``values`` in indexed ``column``.

    Raises :class:`CorruptDataError` naming the index file when one is missing or damaged.
    """
    labels: set[str] = set()
    for part in state.live_index_parts(column):
        table = read_index_part(storage, part, list(values))
        labels.update(table.column("label").to_pylist())
    return labels


def allowed_labels(
    storage: Storage,
    state: DatasetState,
    conjunction: Sequence[Literal],
    is_latest: Callable[[], bool],
) -> set[str] | None:
    """Labels of the files that may match ``conjunction`` according to the indices, or None
    when no index applies.

    A damaged index of the latest version is skipped with a :class:`HafenWarning` (the index
    only prunes: without it a read opens more files, for the same rows); of an older version
    it raises, since the version may have been vacuumed and the caller should open the latest.
    """
    allowed: set[str] | None = None
    for lit in conjunction:
        if lit.column not in state.indices or lit.op not in ("==", "in"):
            continue
        values = list(lit.value) if lit.op == "in" else [lit.value]
        if any(v is None for v in values):
            continue  # indices do not record nulls
        try:
            labels = index_lookup(storage, state, lit.column, values) if values else set()
        except CorruptDataError as exc:
            if not is_latest():
                raise
            warnings.warn(
                f"{exc}; reading without the index on {lit.column!r}", HafenWarning, stacklevel=5
            )
            continue
        allowed = labels if allowed is None else allowed & labels
    return allowed
