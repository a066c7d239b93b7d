"""Filtered reads of only the row groups that may match, with each file's footer kept.

A lookup (``product_id == 123``, a range of it) on files sorted by that column matches one small
row group in each file it opens. Arrow's dataset scanner gets there too, but parses every file's
footer on every read and pays its machinery per file. This module reads such lookups directly:

- **Footers are kept per process**, keyed by the file's path, size and recorded checksum. A data
  file is never rewritten (a new write is a new file under a new name), so a kept footer stays
  true. Each footer is checked against the log when it is first read (as every read checks it:
  :func:`~hafen.datasets._integrity.footer_problem`); pages are still checked against their
  checksums on every read, so damage to a file after its footer was kept is still an error, or
  the original values, never different ones.
- **Row groups are chosen by their statistics** (integer and float columns: the minimum and
  maximum of each group, as arrays), so a file's groups are chosen without a loop in Python.
- **The files are read in parallel**, each file's chosen row groups and needed columns only;
  Arrow decodes without the GIL.

:func:`read_matching` returns None whenever a read is not such a lookup (no literal on a numeric
column of the files, a file whose columns need a cast, categorical partition columns); the
caller then reads with Arrow's dataset scanner as before.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hafen.datasets._actions import DataFile, DatasetState
from hafen.datasets._indices import clear_index_footers
from hafen.datasets._predicates import Literal
from hafen.datasets._storage import Storage
from hafen.datasets._verify import checked_footer, file_schema

__all__ = ["MAX_FOOTERS", "clear_footers", "footer_cache_info", "read_matching"]

#: Footers kept per process (least recently used out first); one of a file of a dozen row
#: groups and a few columns takes a few kilobytes.
MAX_FOOTERS = 4096

#: Literals of an ``in`` with more values than this do not choose row groups (Arrow filters).
_MAX_IN_VALUES = 256


@dataclass
class _Footer:
    """A data file's footer, its Arrow schema and its row groups' bounds per column."""

    metadata: pq.FileMetaData
    schema: pa.Schema
    _bounds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | None] = field(
        default_factory=dict
    )
    _matches: dict[tuple[str, ...], bool] = field(default_factory=dict)

    def matches(self, stored: Sequence[str], schema: pa.Schema) -> bool:
        """Whether every column of ``stored`` is in the file with the type of ``schema``."""
        key = tuple(stored)
        known = self._matches.get(key)
        if known is None:
            known = True
            for name in stored:
                index = self.schema.get_field_index(name)
                if index < 0 or self.schema.field(index).type != schema.field(name).type:
                    known = False
                    break
            self._matches[key] = known
        return known

    def dictionary_encoded(self, column: str, groups: Sequence[int]) -> bool:
        """Whether ``column`` is stored with a dictionary page in each of ``groups``."""
        leaf = self.metadata.schema.names.index(column)
        return all(self.metadata.row_group(g).column(leaf).has_dictionary_page for g in groups)

    def bounds(self, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Each row group's (minimum, maximum, whether both are known) of a numeric column,
        or None when the column has no usable statistics."""
        if column in self._bounds:
            return self._bounds[column]
        found = None
        index = self.schema.get_field_index(column)
        type_ = self.schema.field(index).type if index >= 0 else None
        if type_ is not None and (pa.types.is_integer(type_) or pa.types.is_floating(type_)):
            leaf = self.metadata.schema.names.index(column)
            groups = self.metadata.num_row_groups
            lo = np.zeros(groups, dtype=np.float64 if pa.types.is_floating(type_) else object)
            hi = lo.copy()
            known = np.zeros(groups, dtype=bool)
            for i in range(groups):
                st = self.metadata.row_group(i).column(leaf).statistics
                if st is not None and st.has_min_max:
                    lo[i], hi[i], known[i] = st.min, st.max, True
            if lo.dtype == object:  # uint64 past int64 stays Python ints
                with contextlib.suppress(OverflowError):
                    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
            found = lo, hi, known
        self._bounds[column] = found
        return found


_footers: collections.OrderedDict[tuple[str, int, str], _Footer] = collections.OrderedDict()
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}


def clear_footers() -> None:
    """Forget every kept footer, of data files and of index files (a new process's start)."""
    with _lock:
        _footers.clear()
        _stats.update(hits=0, misses=0)
    clear_index_footers()


def footer_cache_info() -> dict[str, int]:
    """Footers kept, and lookups of them that found one (hits) or read the file (misses)."""
    with _lock:
        return {"size": len(_footers), **_stats}


def _footer(storage: Storage, f: DataFile, expected: pa.Schema) -> _Footer:
    """The footer of data file ``f``, kept after its first read; checked against the log."""
    full = storage.full(f.path)
    key = (full, f.size, f.checksum or "")
    with _lock:
        kept = _footers.get(key)
        if kept is not None:
            _footers.move_to_end(key)
            _stats["hits"] += 1
            return kept
        _stats["misses"] += 1
    metadata = pq.read_metadata(full, filesystem=storage.arrow_filesystem)
    footer = _Footer(metadata, checked_footer(storage, f, metadata, expected))
    if f.checksum is not None:  # hafen wrote it, under a name of its own: it never changes
        with _lock:
            _footers[key] = footer
            while len(_footers) > MAX_FOOTERS:
                _footers.popitem(last=False)
    return footer


def _prunes(literals: list[list[Literal]], partition_on: Sequence[str], schema: pa.Schema) -> bool:
    """Whether every conjunction has a literal that row-group bounds can answer."""

    return all(
        any(lit.column not in partition_on and _answerable(lit, schema) for lit in conjunction)
        for conjunction in literals
    )


def _answerable(lit: Literal, schema: pa.Schema) -> bool:
    """Whether row-group bounds can answer ``lit``: a comparison or a short ``in`` with values
    (not null) on a numeric column."""
    if lit.value is None or lit.op in ("!=", "not in"):
        return False
    type_ = schema.field(lit.column).type
    if not (pa.types.is_integer(type_) or pa.types.is_floating(type_)):
        return False
    return lit.op != "in" or (
        len(lit.value) <= _MAX_IN_VALUES and all(v is not None for v in lit.value)
    )


def _groups(footer: _Footer, literals: list[list[Literal]], partition: dict[str, Any]) -> list[int]:
    """The row groups of a file that may hold rows matching ``literals`` (DNF)."""
    groups = footer.metadata.num_row_groups
    chosen = np.zeros(groups, dtype=bool)
    for conjunction in literals:
        mask = np.ones(groups, dtype=bool)
        for lit in conjunction:
            if lit.column in partition:
                if not lit.matches(partition[lit.column]):
                    mask[:] = False
                continue
            if lit.value is None or lit.op in ("!=", "not in"):
                continue
            bounds = footer.bounds(lit.column)
            if bounds is None:
                continue
            lo, hi, known = bounds
            try:
                mask &= ~known | _may_hold(lit, lo, hi)
            except (TypeError, OverflowError):  # not comparable as numbers: not pruned
                continue
        chosen |= mask
    return np.flatnonzero(chosen).tolist()


def _may_hold(lit: Literal, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    if lit.op == "in":
        out = np.zeros(len(lo), dtype=bool)
        for v in lit.value:
            out |= (lo <= v) & (v <= hi)
        return out
    v = lit.value
    if lit.op == "==":
        return (lo <= v) & (v <= hi)
    if lit.op == "<":
        return lo < v
    if lit.op == "<=":
        return lo <= v
    return hi > v if lit.op == ">" else hi >= v


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()

#: Threads reading a lookup's files on local disk: one per core (Arrow decodes without the
#: GIL; more threads only share the cores). Remote stores wait on the network: twice as many.
LOCAL_THREADS = os.cpu_count() or 1

#: Files whose chosen row groups hold more rows than this are filtered as they are read (each
#: by itself); smaller ones are filtered together, by one mask over all of them.
_FILTER_AS_READ_ROWS = 1 << 16


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max(4, 2 * (os.cpu_count() or 1)), thread_name_prefix="hafen-row-groups"
            )
        return _pool


def read_matching(
    storage: Storage,
    state: DatasetState,
    files: Sequence[DataFile],
    partition_values: Callable[[str], dict[str, Any]],
    literals: list[list[Literal]],
    *,
    columns: list[str] | None,
    expression: pc.Expression,
) -> pa.Table | None:
    """The rows of ``files`` matching ``literals`` (``expression``), reading only the row groups
    whose statistics may match; None when the read is not a lookup this path answers.

    When no literal is on a partition column, the files' rows are filtered together (one mask
    over all of them, instead of one per file), and string columns stored with a dictionary
    are read as dictionaries, so that only the rows kept are decoded to strings.
    """
    schema = state.schema
    partition_on = list(state.partition_on)
    if not files or not _prunes(literals, partition_on, schema):
        return None
    if any(pa.types.is_dictionary(schema.field(c).type) for c in partition_on):
        return None
    wanted = list(columns) if columns is not None else schema.names
    needed = {lit.column for conjunction in literals for lit in conjunction} | set(wanted)
    stored = [n for n in schema.names if n in needed and n not in partition_on]
    expected = file_schema(state)
    simple = all(
        lit.column in partition_on or _answerable(lit, schema)
        for conjunction in literals
        for lit in conjunction
    )
    # no literal on a partition column: one mask for the rows of every file
    together = simple and not any(
        lit.column in partition_on for conjunction in literals for lit in conjunction
    )
    strings = [n for n in stored if together and _is_string(schema.field(n).type)]
    out_schema = pa.schema([schema.field(n) for n in wanted])

    def read(f: DataFile) -> pa.Table | None:
        footer = _footer(storage, f, expected)
        if not footer.matches(stored, schema):
            raise _NotALookup  # a column to fill or cast: Arrow's scanner does that
        partition = partition_values(f.partition)
        groups = _groups(footer, literals, partition)
        if not groups:
            return None
        dictionaries = [n for n in strings if footer.dictionary_encoded(n, groups)]
        with storage.arrow_filesystem.open_input_file(storage.full(f.path)) as source:
            parquet = pq.ParquetFile(
                source,
                metadata=footer.metadata,
                page_checksum_verification=True,
                # reads coalesced ahead pay off over a network; on local disk they cost a fifth
                pre_buffer=not storage.local,
                read_dictionary=dictionaries or None,
            )
            table = parquet.read_row_groups(groups, columns=stored, use_threads=False)
        if together:
            if table.column_names != stored:  # in the order of every other file's
                table = table.select(stored)
            if table.num_rows > _FILTER_AS_READ_ROWS:  # bound what is held until the mask
                mask = _row_mask(table, literals, partition)
                table = table if mask is None else table.filter(mask)
            return table
        if simple:  # partition literals are answered per file: filter, then add the columns
            mask = _row_mask(table, literals, partition)
            table = table if mask is None else table.filter(mask)
        for name in partition_on:
            if name in (wanted if simple else needed):
                value = pa.scalar(partition.get(name), schema.field(name).type)
                table = table.append_column(schema.field(name), pa.repeat(value, table.num_rows))
        return (table if simple else table.filter(expression)).select(wanted)

    def read_some(some: Sequence[DataFile]) -> list[pa.Table | None]:
        return [read(f) for f in some]

    threads = LOCAL_THREADS if storage.local else _executor()._max_workers
    workers = max(1, min(len(files), threads))
    batches = [files[i::workers] for i in range(workers)]
    try:
        pooled = workers > 1
        results = list(_executor().map(read_some, batches)) if pooled else [read_some(files)]
    except _NotALookup:
        return None
    # back in the files' order
    tables: list[pa.Table | None] = [None] * len(files)
    for i, batch in enumerate(results):
        for j, table in enumerate(batch):
            tables[i + j * workers] = table
    if together:
        plain = pa.schema([schema.field(n) for n in stored])
        return _filter_together(
            tables, files, literals, partition_values, wanted, out_schema, plain
        )
    found = [t for t in tables if t is not None and t.num_rows]
    if not found:
        return out_schema.empty_table()
    return (pa.concat_tables(found) if len(found) > 1 else found[0]).cast(out_schema)


def _filter_together(
    tables: list[pa.Table | None],
    files: Sequence[DataFile],
    literals: list[list[Literal]],
    partition_values: Callable[[str], dict[str, Any]],
    wanted: list[str],
    out_schema: pa.Schema,
    plain: pa.Schema,
) -> pa.Table:
    """The rows of each file's ``tables`` (its chosen row groups, in the files' order) matching
    ``literals``, none of them on a partition column, filtered by one mask over all of them;
    the partition columns are added to the rows kept. ``plain`` is the schema of the tables
    without dictionaries."""
    kept = [(t, f) for t, f in zip(tables, files, strict=True) if t is not None and t.num_rows]
    if not kept:
        return out_schema.empty_table()
    pieces = [t for t, _ in kept]
    if any(t.schema != pieces[0].schema for t in pieces):
        # a string column stored with a dictionary in some files, without in others: decoded
        pieces = [t.cast(plain) for t in pieces]
    whole = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
    mask = _row_mask(whole, literals, {})
    if mask is not None:
        flags = pc.fill_null(mask, False)  # Kleene: a null drops the row
        chunks = flags.chunks if isinstance(flags, pa.ChunkedArray) else [flags]
        keep = np.concatenate([c.to_numpy(zero_copy_only=False) for c in chunks])
        whole = whole.filter(pa.array(keep))
    else:
        keep = None
    added = [f for f in out_schema if f.name not in whole.column_names]
    if added:
        starts = np.cumsum([0] + [t.num_rows for t, _ in kept[:-1]])
        rows_per_file = (
            np.add.reduceat(keep, starts).astype(np.int64)
            if keep is not None
            else np.array([t.num_rows for t, _ in kept], dtype=np.int64)
        )
        which = pa.array(np.repeat(np.arange(len(kept), dtype=np.int32), rows_per_file))
        for field_ in added:
            values = [partition_values(f.partition).get(field_.name) for _, f in kept]
            column = pa.array(values, field_.type).take(which)
            whole = whole.append_column(field_, column)
    return whole.select(wanted).cast(out_schema)


def _is_string(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_binary(type_)


_COMPARE = {
    "==": pc.equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


def _row_mask(
    table: pa.Table, literals: list[list[Literal]], partition: dict[str, Any]
) -> pa.ChunkedArray | pa.Array | None:
    """The rows of ``table`` (one file's) matching ``literals``, each a comparison or ``in``
    on a numeric column or a literal on a partition column, as
    :func:`~hafen.datasets._predicates.to_expression` evaluates them (Kleene logic: a null
    drops the row); None when every row matches. (Cheaper than Arrow's filter by expression.)"""
    disjunction = None
    for conjunction in literals:
        term = None
        for lit in conjunction:
            if lit.column in partition:
                if lit.matches(partition[lit.column]):
                    continue
                break
            column = table.column(lit.column)
            if lit.op == "in":
                match = pc.is_in(column, value_set=pa.array(lit.value, column.type))
            else:
                match = _COMPARE[lit.op](column, pa.scalar(lit.value, column.type))
            term = match if term is None else pc.and_kleene(term, match)
        else:
            if term is None:
                return None  # the partition alone matches: every row
            disjunction = term if disjunction is None else pc.or_kleene(disjunction, term)
    if disjunction is None:  # no conjunction matches this partition
        return pa.array(np.zeros(table.num_rows, dtype=bool))
    return disjunction


class _NotALookup(Exception):
    """A file this path does not read as it is (raised inside the workers, caught above)."""
