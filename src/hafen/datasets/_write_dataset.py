"""Writing a table as a new version: :func:`write_dataset`, and :func:`commit_staged` for files
staged apart; both are thin callers of the one write transaction
(:class:`~hafen.datasets._transaction.WriteTransaction`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from hafen.datasets._actions import DatasetState
from hafen.datasets._dataset import Dataset, storage_for
from hafen.datasets._schema import to_arrow
from hafen.datasets._storage import Storage
from hafen.datasets._transaction import LATEST, WriteTransaction, discard
from hafen.datasets._validate import Mode, OnConflict, SchemaMode
from hafen.datasets._write import StagedWrite
from hafen.errors import HafenError

__all__ = ["commit_staged", "write_dataset"]


def write_dataset(
    data: pd.DataFrame | pa.Table,
    url: str | Storage | Dataset,
    *,
    partition_on: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    mode: Mode = "create",
    schema_mode: SchemaMode = "strict",
    on_conflict: OnConflict = "raise",
    storage_options: dict[str, Any] | None = None,
    sort_by: Sequence[str] | None = None,
    row_group_size: int | None = None,
) -> Dataset:
    """Write ``data`` as a new version of the dataset at ``url`` in one atomic commit.

    Parameters
    ----------
    data
        A pandas DataFrame (its index is dropped) or a pyarrow Table.
    url
        The dataset's URL: a local path, ``memory://``, ``az://``, ``abfs://`` or ``s3://``
        (or a :class:`Dataset`, whose latest version is written on).
    partition_on, indices
        Hive partition columns and secondary-index columns; fixed when the dataset is created.
    mode
        ``"create"`` (fails if it exists), ``"append"`` (creates if missing) or ``"overwrite"``
        (replaces the partitions present in ``data``; everything when unpartitioned).
    schema_mode
        ``"strict"``: the data must match the schema; ``"merge"``: new columns are added as
        nullable, missing ones are filled with nulls.
    on_conflict
        ``"raise"`` a :class:`ConflictError` when a concurrent commit replaced the same
        partitions, or ``"retry"`` on top of it.
    storage_options
        fsspec options for the storage backend (over the ``storage_options`` setting).
    sort_by
        Sort the rows of each file written by these columns (ascending, nulls last). A lookup
        on the first of them (``==``, ``in``, a range) then decodes only the row groups that
        hold its values, which Arrow finds by their statistics. For this write only.
    row_group_size
        Rows per Parquet row group: 8,192 with ``sort_by``, else 262,144, by default.

    Returns
    -------
    Dataset
        The new version.

    Raises
    ------
    DatasetExistsError
        With ``mode="create"``, when the dataset exists.
    SchemaError
        When ``data`` does not match the dataset's schema (or its layout).
    ConflictError
        When a concurrent commit won and ``on_conflict="raise"``; nothing landed.

    Examples
    --------
    >>> write_dataset(df, "data/sales", partition_on=["date"], mode="append")  # doctest: +SKIP
    """
    storage = storage_for(url, storage_options)
    with WriteTransaction(
        storage,
        mode=mode,
        partition_on=partition_on,
        indices=indices,
        schema_mode=schema_mode,
        on_conflict=on_conflict,
        sort_by=sort_by,
        row_group_size=row_group_size,
    ) as tx:
        tx.stage(tx.prepare(to_arrow(data)), encode_index=True)
        # the history says which files of the dataset were written sorted
        return Dataset(storage, tx.commit({"sort_by": tx.sort_by} if tx.sort_by else None))


def commit_staged(
    url: str | Storage | Dataset,
    staged: Sequence[StagedWrite],
    *,
    mode: Mode = "append",
    partition_on: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    schema_mode: SchemaMode = "strict",
    on_conflict: OnConflict = "raise",
    base: DatasetState | None = None,
    storage_options: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> Dataset:
    """Commit files staged apart (:func:`~hafen.datasets._write.stage_table`) as one version.

    A :class:`WriteTransaction` on ``base`` (default: the latest version) with the files added:
    after a :class:`ConflictError` or a schema error they are deleted, after an unknown outcome
    they are kept.
    """
    storage = storage_for(url, storage_options)
    try:
        tx = WriteTransaction(
            storage,
            mode=mode,
            partition_on=partition_on,
            indices=indices,
            schema_mode=schema_mode,
            on_conflict=on_conflict,
            base=LATEST if base is None else base,
        )
    except HafenError:
        discard(storage, staged)
        raise
    tx.add(staged)
    return Dataset(storage, tx.commit(parameters))
