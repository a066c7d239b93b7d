"""``read_ddf``: a dataset version as a Dask DataFrame, planned on the client, read by workers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from hafen.dask._common import as_column_list, check_columns, to_pandas
from hafen.datasets._actions import DataFile
from hafen.datasets._dataset import Dataset, open_dataset
from hafen.datasets._predicates import normalize_predicates
from hafen.datasets._storage import Storage
from hafen.errors import ConfigError

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["read_ddf"]

#: Without ``files_per_partition``, small files are packed into one Dask partition up to this
#: many bytes on storage (Parquet-compressed; several times as much in memory).
DEFAULT_PARTITION_BYTES = 64 * 1024 * 1024

Predicates = Sequence[Sequence[tuple[str, str, Any]]] | None


@dataclasses.dataclass(frozen=True)
class _Part:
    """The plan of one Dask partition: which files, and which extra equality predicates."""

    files: tuple[DataFile, ...]
    predicates: Any  # the DNF to apply, or None
    start: int | None  # first row number when the row count is known


def _read_part(
    part: _Part, storage: Storage, state: Any, columns: list[str] | None = None
) -> pd.DataFrame:
    """Task: read one partition's files of the pinned version and convert to pandas.

    ``columns`` is also how Dask pushes a projection down (``ddf[["a", "b"]]``).
    """
    # ``state`` carries the schema and layout only; the files to read are given explicitly
    ds = Dataset(storage, state)
    table = ds.read_arrow(columns, predicates=part.predicates, files=list(part.files))
    df = to_pandas(table)
    if part.start is not None:
        df.index = pd.RangeIndex(part.start, part.start + len(df))
    return df


def _pack(files: list[DataFile], files_per_partition: int | None) -> list[list[DataFile]]:
    groups: list[list[DataFile]] = []
    current: list[DataFile] = []
    size = 0
    for f in files:
        full = (
            len(current) >= files_per_partition
            if files_per_partition is not None
            else current and size + f.size > DEFAULT_PARTITION_BYTES
        )
        if full:
            groups.append(current)
            current, size = [], 0
        current.append(f)
        size += f.size
    if current:
        groups.append(current)
    return groups


def _and(predicates: Predicates, extra: list[tuple[str, str, Any]]) -> Any:
    if predicates is None:
        return [extra]
    return [[*conjunction, *extra] for conjunction in predicates]


def _dispatch_parts(
    ds: Dataset, files: list[DataFile], predicates: Predicates, dispatch_by: list[str]
) -> list[_Part]:
    """One partition per value combination of ``dispatch_by``, sorted by value."""
    if all(c in ds.partition_on for c in dispatch_by):
        groups: dict[tuple[Any, ...], list[DataFile]] = {}
        for f in files:
            values = ds.state.partition_values(f.partition)
            groups.setdefault(tuple(values[c] for c in dispatch_by), []).append(f)
        keys = sorted(groups, key=_sort_key)
        return [_Part(tuple(groups[k]), predicates, None) for k in keys]
    # other columns: find the values present, then let each task prune by (index, statistics)
    values = ds.read_arrow(dispatch_by, predicates=predicates)
    combos = values.group_by(dispatch_by, use_threads=False).aggregate([]).to_pylist()
    # a set: group_by tells 0.0 from -0.0, which are one value (== matches both)
    keys = sorted({tuple(c[name] for name in dispatch_by) for c in combos}, key=_sort_key)
    parts = []
    for key in keys:
        extra = [(c, "==", v) for c, v in zip(dispatch_by, key, strict=True)]
        predicate = _and(predicates, extra)
        parts.append(_Part(tuple(ds.files(predicate)), predicate, None))
    return parts


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, v if v is not None else 0) for v in key)


def read_ddf(
    url: str | Storage | Dataset,
    *,
    columns: Sequence[str] | None = None,
    predicates: Predicates = None,
    version: int | None = None,
    dispatch_by: Sequence[str] | None = None,
    files_per_partition: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dd.DataFrame:
    """Return one version of a dataset as a lazy Dask DataFrame.

    The version is fixed when this is called: a commit landing while the graph runs changes
    nothing it returns. Files are pruned on the client (partition values, secondary indices,
    statistics); each Dask partition reads one file, a group of small files, or, with
    ``dispatch_by``, all rows with one combination of the given columns' values.

    Parameters
    ----------
    url
        The dataset's URL, or an open :class:`~hafen.datasets.Dataset` (its version is used,
        unless ``version`` says otherwise).
    columns
        Columns to read; all by default.
    predicates
        Filters in disjunctive normal form, e.g. ``[[("date", ">=", d0)]]``.
    version
        The version to read; the latest by default.
    dispatch_by
        Columns whose value combinations each make one Dask partition (partition columns are
        planned from file names alone; others cost one read of those columns on the client).
    files_per_partition
        Files per Dask partition; by default files are packed up to 64 MiB (on storage) each.
    storage_options
        fsspec options for the storage backend (over the ``storage_options`` setting).

    Returns
    -------
    dask.dataframe.DataFrame
        With a RangeIndex and known divisions when the number of rows is known from the
        metadata (no predicates, no ``dispatch_by``), unknown divisions otherwise.

    Raises
    ------
    DatasetNotFoundError, VersionNotFoundError, SchemaError, PredicateError, ConfigError
        On the client, before any task is built.

    Examples
    --------
    >>> ddf = hafen.read_ddf("data/sales", columns=["store_id", "qty"])  # doctest: +SKIP
    """
    import dask
    import dask.dataframe as dd

    if isinstance(url, Dataset):
        ds = url if version is None else open_dataset(url.storage, version=version)
    else:
        ds = open_dataset(url, version=version, storage_options=storage_options)
    names = ds.schema.names
    selected = None if columns is None else as_column_list("columns", columns)
    if selected is not None:
        check_columns("requested", selected, names)
    dispatch = as_column_list("dispatch_by", dispatch_by)
    check_columns("dispatch_by", dispatch, names)
    if files_per_partition is not None and (
        not isinstance(files_per_partition, int) or files_per_partition < 1
    ):
        raise ConfigError(
            f"files_per_partition must be a positive integer, not {files_per_partition!r}"
        )
    normalize_predicates(predicates, ds.schema)  # raises PredicateError on the client
    files = sorted(ds.files(predicates), key=lambda f: (f.partition, f.path))

    if dispatch:
        parts = _dispatch_parts(ds, files, predicates, dispatch)
        divisions = None
    else:
        groups = _pack(files, files_per_partition)
        if predicates is None:
            parts, start = [], 0
            for g in groups:
                parts.append(_Part(tuple(g), None, start))
                start += sum(f.num_rows for f in g)
            divisions = _divisions(parts, start)
        else:
            parts = [_Part(tuple(g), predicates, None) for g in groups]
            divisions = None
    if not parts:
        parts = [_Part((), predicates, 0 if predicates is None else None)]
        divisions = None
    schema = ds.schema if selected is None else pa.schema([ds.schema.field(c) for c in selected])
    meta = to_pandas(schema.empty_table())
    if divisions is None:
        meta.index = pd.RangeIndex(0)
    state = dataclasses.replace(ds.state, files={}, index_parts=[])
    # Dask would turn every object column into strings, dates included; the partitions
    # already have the dtypes Dataset.read gives (pandas' own string dtype for strings)
    with dask.config.set({"dataframe.convert-string": False}):
        return dd.from_map(
            _read_part,
            parts,
            args=[ds.storage, state],
            columns=selected,
            meta=meta,
            divisions=divisions,
            label="hafen-read",
            enforce_metadata=False,
        )


def _divisions(parts: list[_Part], total: int) -> tuple[int, ...] | None:
    """Divisions of a global RangeIndex, when no partition is empty (dask needs them distinct)."""
    starts = [p.start for p in parts if p.start is not None]
    if len(starts) != len(parts) or total == 0:
        return None
    bounds = [*starts, total - 1]
    if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
        return None
    return tuple(bounds)
