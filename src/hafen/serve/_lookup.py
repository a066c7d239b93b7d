"""Point lookups by partition value and indexed key, with bounded caches.

A lookup ``store_id == s and product_id == p`` asks the dataset which files may hold the rows
(:meth:`~hafen.datasets.Dataset.files`): the partition value selects the store's files; when
there are several, the product index selects the ones that hold the product (with one, the
index could only say whether the product is there, which the file itself answers once cached).
Only those files are read. Two caches make repeated lookups cheap, and both are safe because a
version never changes and a data file is never rewritten:

- the pruned file lists per (dataset, version, predicate), so the index is read once per key;
- the decoded columns of each file (bounded by :data:`DEFAULT_CACHE_BYTES`, least recently used
  out first), so a popular store's file is read from storage once.

A new version has new file lists; files it shares with the previous version stay cached. (The
fast path of the point lookup keeps its own, prepared form of a file instead: see
:mod:`hafen.serve._answers`.)
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hafen.datasets import Dataset

__all__ = ["DEFAULT_CACHE_BYTES", "Lookup"]

DEFAULT_CACHE_BYTES = 256 * 2**20
MAX_FILE_LISTS = 100_000


class Lookup:
    """Rows of one partition value and key, read through the caches described above."""

    def __init__(self, *, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._tables: collections.OrderedDict[tuple[str, str], pa.Table] = collections.OrderedDict()
        self._bytes = 0
        self._file_lists: collections.OrderedDict[tuple[Any, ...], list[Any]] = (
            collections.OrderedDict()
        )
        self.reads = 0  # files read from storage, for tests and the benchmark

    def _files(self, ds: Dataset, conjunction: list[tuple[str, str, Any]]) -> list[Any]:
        # the dataset id too: a dataset deleted and recreated reuses the version numbers
        key = (ds.url, ds.state.dataset_id, ds.version, tuple(conjunction))
        with self._lock:
            files = self._file_lists.get(key)
            if files is not None:
                self._file_lists.move_to_end(key)
                return files
        files = ds.files([conjunction])
        with self._lock:
            self._file_lists[key] = files
            while len(self._file_lists) > MAX_FILE_LISTS:
                self._file_lists.popitem(last=False)
        return files

    def partition_files(self, ds: Dataset, partition: tuple[str, Any]) -> list[Any]:
        """The files of one partition value of ``ds`` (cached per version)."""
        return self._files(ds, [(partition[0], "==", partition[1])])

    def files(
        self, ds: Dataset, partition: tuple[str, Any], key: tuple[str, Any] | None
    ) -> list[Any]:
        """The files that may hold ``partition`` and ``key``: the partition's files, narrowed by
        the index on ``key`` when there are several (cached per version and key)."""
        conjunction = [(partition[0], "==", partition[1])]
        files = self._files(ds, conjunction)
        if key is not None and len(files) > 1:
            files = self._files(ds, [*conjunction, (key[0], "==", key[1])])
        return files

    def table(self, ds: Dataset, f: Any, columns: Sequence[str], *, keep: bool = True) -> pa.Table:
        """``columns`` of data file ``f`` of ``ds``, decoded once (least recently used out).

        With ``keep=False`` a table read from storage is not cached (for a caller that keeps
        its own form of it); one already cached is still used.
        """
        key = (ds.url + "/" + f.path, ",".join(columns))
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
        table = ds.read_arrow(columns=list(columns), files=[f])
        self.reads += 1
        if not keep:
            return table
        with self._lock:
            if key not in self._tables:
                self._tables[key] = table
                self._bytes += table.nbytes
                while self._bytes > self.max_bytes and len(self._tables) > 1:
                    _, old = self._tables.popitem(last=False)
                    self._bytes -= old.nbytes
        return table

    def rows(
        self,
        ds: Dataset,
        partition: tuple[str, Any],
        key: tuple[str, Any] | None,
        columns: Sequence[str],
    ) -> pa.Table:
        """Rows with ``partition`` (column, value) and, if given, ``key`` (column, value).

        ``columns`` must include the key column; the result has ``columns`` in that order.
        """
        parts = []
        for f in self.files(ds, partition, key):
            table = self.table(ds, f, columns)
            if key is not None:
                values = table.column(key[0])
                table = table.filter(pc.equal(values, pa.scalar(key[1], type=values.type)))
            if partition[0] in table.column_names:
                table = table.filter(pc.equal(table.column(partition[0]), pa.scalar(partition[1])))
            parts.append(table)
        if not parts:
            return ds.schema.empty_table().select(list(columns))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def between(table: pa.Table, column: str, low: Any, high: Any) -> pa.Table:
    """Rows whose ``column`` lies in ``[low, high]`` (either bound may be None); a null lies
    in no range."""
    if low is None and high is None:
        return table
    values = table.column(column)
    mask = np.ones(table.num_rows, dtype=bool)
    for compare, bound in ((pc.greater_equal, low), (pc.less_equal, high)):
        if bound is not None:
            inside = pc.fill_null(compare(values, pa.scalar(bound, type=values.type)), False)
            mask &= inside.to_numpy(zero_copy_only=False)
    return table.filter(pa.array(mask))
