"""Ready JSON bodies for the plain point lookup, made without Arrow compute calls and cached.

The FastAPI route answers ``GET /forecasts`` generically: rows from
:class:`~hafen.serve._lookup.Lookup`, then a dozen Arrow compute calls (filter, range, sort,
casts) and ``json.dumps`` of row dicts. On the 28 rows of a point lookup that is about half a
millisecond of CPU, nearly all of it fixed per-call overhead. The fast path (``_fast.py``) asks
:class:`ForecastBodies` instead:

- **Prepared files.** A data file is prepared once: stably sorted by (store, product, date) --
  so rows that tie keep the order the route's stable sort gives them --, its columns as NumPy
  arrays, and the row range of every (store, product) in a dict. Prepared files are kept least
  recently used out, within a byte budget; like the decoded files of ``Lookup``, they never go
  stale, because a data file is never rewritten.
- **Rendering.** A lookup takes the (store, product) range, narrows it to the days asked for
  with a binary search and writes the rows with string formatting that reproduces ``json.dumps``
  byte for byte: ints and floats as their ``repr``, NaN and null as ``null``, dates as Arrow's
  ISO text. (A test compares every such body with the route's.)
- **Bodies.** The body is cached under the request's query string, least recently used out
  within a byte budget, for the version it was made from: the cache is emptied as soon as the
  registry hands out a newer version, so an answer never names or shows an older one.

Which files: the partition's (the store's); when it has several, the product index narrows them
on a first lookup, as the route does. Once every file of the partition is prepared, the prepared
ranges say which files hold the product, and the index is not read again.

Anything not handled exactly like the route -- columns of other types, nulls in the key or date
columns, an infinite value, an unknown store or product (a 404), a malformed query -- is answered
``None`` so that the route answers it.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hafen.datasets import Dataset
from hafen.errors import HafenError
from hafen.serve._fast import parse_lookup
from hafen.serve._lookup import Lookup

__all__ = ["DEFAULT_BODY_CACHE_BYTES", "DEFAULT_PREPARED_BYTES", "ForecastBodies"]

DEFAULT_BODY_CACHE_BYTES = 64 * 2**20
DEFAULT_PREPARED_BYTES = 128 * 2**20
#: Bytes counted per (store, product) range of a prepared file, for its dict entry.
GROUP_OVERHEAD = 200
#: Bytes counted per cached body beyond its length (key, dict entry).
BODY_OVERHEAD = 200
EPOCH = dt.date(1970, 1, 1)
_float_repr = float.__repr__  # what json.dumps writes for a finite float


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """One data file, sorted, as arrays; ``groups`` maps (store, product) to a row range."""

    groups: dict[tuple[int, int], tuple[int, int]]
    days: np.ndarray[Any, Any]  # int32 days since 1970-01-01, ascending within a group
    day_text: dict[int, str]  # day -> the text Arrow's cast to string gives
    values: tuple[np.ndarray[Any, Any], ...]  # the value columns, float, NaN where null
    infinite: bool  # whether any value is infinite (then each range is checked)
    nbytes: int


_UNSUPPORTED = _Prepared({}, np.empty(0, np.int32), {}, (), False, 0)  # answered by the route


class ForecastBodies:
    """JSON bodies of ``GET /forecasts?store_id=&product_id=[&from=][&to=]``, as the route's.

    Parameters
    ----------
    lookup
        Where the files are found and decoded (shared with the routes).
    name
        The dataset's name in the body (``"dataset": name``).
    columns
        The row fields, in order: partition column, key column, date column, then value columns
        (floats); the route writes the same ones.
    prepared_bytes, body_bytes
        Budgets of the prepared files and of the cached bodies.
    """

    def __init__(
        self,
        lookup: Lookup,
        *,
        name: str,
        columns: Sequence[str],
        prepared_bytes: int = DEFAULT_PREPARED_BYTES,
        body_bytes: int = DEFAULT_BODY_CACHE_BYTES,
    ) -> None:
        self.lookup = lookup
        self.name = name
        self.columns = list(columns)
        self.partition, self.key, self.date, *values = self.columns
        self.value_columns = values
        self.prepared_bytes = prepared_bytes
        self.body_bytes = body_bytes
        self._lock = threading.Lock()
        self._prepared: collections.OrderedDict[str, _Prepared] = collections.OrderedDict()
        self._prepared_size = 0
        self._bodies: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bodies_size = 0
        self._version: tuple[str, str, int] | None = None
        # "store_id": S, "product_id": P, "date": "   and   ", "forecast": %s, "baseline": %s}
        names = [json.dumps(c).replace("%", "%%") for c in self.columns]
        self._head = "{" + names[0] + ": %d, " + names[1] + ": %d, " + names[2] + ': "'
        self._tail = '"' + "".join(f", {n}: %s" for n in names[3:]) + "}"
        # {"dataset": "forecasts", "version": V, "store_id": S, "product_id": P, "rows": [
        self._prefix = (
            "{"
            + f'"dataset": {json.dumps(self.name).replace("%", "%%")}, "version": %d, '
            + f"{names[0]}: %d, {names[1]}: %d, "
            + '"rows": ['
        )
        self.hits = self.misses = 0  # body cache, for tests and the benchmark

    # -- the cached answer ----------------------------------------------------------------------

    def get(self, ds: Dataset, query: bytes) -> bytes | None:
        """The body for URL query ``query`` against ``ds`` (the latest version), or None."""
        # the dataset id too: a dataset deleted and recreated reuses the version numbers
        version = (ds.url, ds.state.dataset_id, ds.version)
        with self._lock:
            if version != self._version:  # a new version: no body of the old one survives
                self._bodies.clear()
                self._bodies_size = 0
                self._version = version
            body = self._bodies.get(query)
            if body is not None:
                self._bodies.move_to_end(query)
                self.hits += 1
                return body
        parsed = parse_lookup(query)
        if parsed is None:
            return None
        try:
            body = self.render(ds, *parsed)
        except (HafenError, OSError, pa.ArrowException):
            return None  # the route answers, with its error handling
        if body is None:
            return None
        with self._lock:
            self.misses += 1
            if self._version == version and query not in self._bodies:
                self._bodies[query] = body
                self._bodies_size += len(query) + len(body) + BODY_OVERHEAD
                while self._bodies_size > self.body_bytes and self._bodies:
                    old_query, old = self._bodies.popitem(last=False)
                    self._bodies_size -= len(old_query) + len(old) + BODY_OVERHEAD
        return body

    # -- rendering ------------------------------------------------------------------------------

    def render(
        self,
        ds: Dataset,
        store_id: int,
        product_id: int,
        start: dt.date | None,
        end: dt.date | None,
    ) -> bytes | None:
        """The body of one lookup, made from prepared files (no cache of bodies)."""
        partition = (self.partition, store_id)
        files = self.lookup.partition_files(ds, partition)
        if not files:
            return None
        if len(files) > 1 and not self._all_prepared(ds, files):
            files = self.lookup.files(ds, partition, (self.key, product_id))  # the index
        low = None if start is None else (start - EPOCH).days
        high = None if end is None else (end - EPOCH).days
        group = (store_id, product_id)
        found = False
        pieces: list[tuple[list[int], list[str]]] = []
        for f in files:
            prepared = self._prepare(ds, f)
            if prepared is _UNSUPPORTED:
                return None
            span = prepared.groups.get(group)
            if span is None:
                continue
            found = True
            a, b = span
            days = prepared.days
            if low is not None:
                a += int(np.searchsorted(days[a:b], low, side="left"))
            if high is not None:
                b = a + int(np.searchsorted(days[a:b], high, side="right"))
            if a >= b:
                continue
            encoded = []
            for values in prepared.values:
                chunk = values[a:b]
                if prepared.infinite and np.isinf(chunk).any():
                    return None  # json.dumps refuses it: the route answers (an error)
                encoded.append(["null" if x != x else _float_repr(x) for x in chunk.tolist()])
            text = prepared.day_text
            head, tail = self._head % group, self._tail
            chunk_days = days[a:b].tolist()
            rows = [
                head + text[d] + tail % fields
                for d, fields in zip(chunk_days, zip(*encoded, strict=True), strict=True)
            ]
            pieces.append((chunk_days, rows))
        if not found:
            return None  # not in this version: the route's 404
        if len(pieces) == 1:
            rows = pieces[0][1]
        else:  # several files: by day, ties in file order (the route's stable sort)
            merged = [
                (d, row)
                for chunk_days, chunk in pieces
                for d, row in zip(chunk_days, chunk, strict=True)
            ]
            merged.sort(key=lambda item: item[0])
            rows = [row for _, row in merged]
        prefix = self._prefix % (ds.version, store_id, product_id)
        return (prefix + ", ".join(rows) + "]}").encode()

    # -- prepared files -------------------------------------------------------------------------

    @staticmethod
    def _file_key(ds: Dataset, f: Any) -> str:
        return ds.url + "/" + f.path

    def _all_prepared(self, ds: Dataset, files: Sequence[Any]) -> bool:
        with self._lock:
            return all(self._file_key(ds, f) in self._prepared for f in files)

    def _prepare(self, ds: Dataset, f: Any) -> _Prepared:
        key = self._file_key(ds, f)
        with self._lock:
            prepared = self._prepared.get(key)
            if prepared is not None:
                self._prepared.move_to_end(key)
                return prepared
        # the prepared arrays are this file's cached form: the Arrow table is not kept twice
        prepared = self._build(self.lookup.table(ds, f, self.columns, keep=False))
        with self._lock:
            if key not in self._prepared:
                self._prepared[key] = prepared
                self._prepared_size += prepared.nbytes
                while self._prepared_size > self.prepared_bytes and len(self._prepared) > 1:
                    _, old = self._prepared.popitem(last=False)
                    self._prepared_size -= old.nbytes
        return prepared

    def _build(self, table: pa.Table) -> _Prepared:
        store, product, date = (table.column(c) for c in (self.partition, self.key, self.date))
        values = [table.column(c) for c in self.value_columns]
        if not (
            pa.types.is_integer(store.type)
            and pa.types.is_integer(product.type)
            and date.type == pa.date32()
            and all(v.type in (pa.float32(), pa.float64()) for v in values)
            and store.null_count == product.null_count == date.null_count == 0
        ):
            return _UNSUPPORTED
        order = pc.sort_indices(
            table,
            sort_keys=[
                (self.partition, "ascending"),
                (self.key, "ascending"),
                (self.date, "ascending"),
            ],
        )
        table = table.take(order)
        stores = table.column(self.partition).to_numpy()
        products = table.column(self.key).to_numpy()
        days = np.ascontiguousarray(table.column(self.date).cast(pa.int32()).to_numpy())
        arrays = tuple(
            np.ascontiguousarray(table.column(c).to_numpy(zero_copy_only=False))
            for c in self.value_columns
        )
        n = len(days)
        if n:
            change = np.flatnonzero((stores[1:] != stores[:-1]) | (products[1:] != products[:-1]))
            starts = np.concatenate([[0], change + 1])
            stops = np.concatenate([change + 1, [n]])
            keys = zip(stores[starts].tolist(), products[starts].tolist(), strict=True)
            spans = zip(starts.tolist(), stops.tolist(), strict=True)
            groups = dict(zip(keys, spans, strict=True))
        else:
            groups = {}
        unique = np.unique(days)
        texts = pa.array(unique, pa.int32()).cast(pa.date32()).cast(pa.string()).to_pylist()
        day_text = dict(zip(unique.tolist(), texts, strict=True))
        infinite = any(bool(np.isinf(a).any()) for a in arrays)
        nbytes = days.nbytes + sum(a.nbytes for a in arrays) + GROUP_OVERHEAD * len(groups)
        return _Prepared(groups, days, day_text, arrays, infinite, nbytes + 100 * len(day_text))
