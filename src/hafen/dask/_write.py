"""``write_ddf``: every Dask partition staged by a worker, then one commit from the client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from hafen.dask._common import as_column_list, check_columns, compute
from hafen.datasets._dataset import Dataset, storage_for
from hafen.datasets._schema import conform, normalize_schema, to_arrow
from hafen.datasets._transaction import StagingPlan, WriteTransaction
from hafen.datasets._validate import Mode, OnConflict, SchemaMode
from hafen.datasets._write import StagedWrite
from hafen.errors import ConfigError

if TYPE_CHECKING:
    import dask.dataframe as dd

    from hafen.datasets._storage import Storage

__all__ = ["write_ddf"]


def _stage_partition(
    pdf: pd.DataFrame, plan: StagingPlan, meta_schema: pa.Schema | None
) -> StagedWrite:
    """Task: conform one pandas partition and stage it; return the (small) StagedWrite."""
    table = to_arrow(pdf)
    if plan.base is None and meta_schema is not None:
        # a new dataset: cast to the types the client derived from ``meta`` (where known)
        fields = [
            meta_schema.field(n) if meta_schema.field(n).type != pa.null() else None
            for n in meta_schema.names
        ]
        known = pa.schema([f for f in fields if f is not None])
        if known.names:
            casted = conform(table.select(known.names), known)
            for name in known.names:
                table = table.set_column(table.column_names.index(name), name, casted[name])
    conformed = plan.prepare(table)
    if conformed.num_rows == 0:
        return StagedWrite(schema=conformed.schema)
    return plan.stage(conformed)


def write_ddf(
    ddf: dd.DataFrame,
    url: str | Storage | Dataset,
    *,
    partition_on: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    mode: Mode = "create",
    schema_mode: SchemaMode = "strict",
    on_conflict: OnConflict = "raise",
    storage_options: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    sort_by: Sequence[str] | None = None,
    row_group_size: int | None = None,
) -> Dataset:
    """Write a Dask DataFrame as one new version of a dataset: parallel files, one commit.

    Each Dask partition is converted, checked against the dataset's schema and staged as
    Parquet files by the worker that holds it (secondary-index entries are collected on the
    way); the client then commits every staged file at once. If any task fails, nothing is
    committed and the dataset stays at its previous version; files already staged are left
    as orphans that :meth:`~hafen.datasets.Dataset.vacuum` removes after its grace period.

    Parameters
    ----------
    ddf
        The data; its index is dropped. It is not modified.
    url
        The dataset's URL (a local path, ``memory://``, ``az://``, ``abfs://``, ``s3://``), or
        its :class:`~hafen.datasets.Dataset` (the new version goes on top of the latest).
    partition_on, indices
        Partition and secondary-index columns; they must match an existing dataset's.
    mode
        ``"create"``, ``"append"`` or ``"overwrite"``, as for :func:`hafen.write_dataset`.
    schema_mode
        ``"strict"`` or ``"merge"``, as for :func:`hafen.write_dataset`.
    on_conflict
        ``"raise"`` or ``"retry"`` when a concurrent commit touched the same partitions.
    storage_options
        fsspec options for the storage backend (over the ``storage_options`` setting).
    parameters
        Recorded with the new version's commit, beside hafen's own (see
        :meth:`~hafen.datasets.Dataset.history`): e.g. the watermark the data covers.
    sort_by, row_group_size
        Sort each file's rows by these columns; rows per Parquet row group. As for
        :func:`hafen.write_dataset`.

    Returns
    -------
    Dataset
        The new version.

    Raises
    ------
    ConfigError, SchemaError, DatasetExistsError
        Before any task runs, when the arguments or ``ddf``'s columns do not fit.
    ConflictError
        When a concurrent commit won; nothing landed.

    Examples
    --------
    >>> hafen.write_ddf(ddf, "data/sales", partition_on=["date"], mode="append")  # doctest: +SKIP
    """
    if not hasattr(ddf, "to_delayed") or not hasattr(ddf, "_meta"):
        raise ConfigError(f"write_ddf needs a dask DataFrame, got {type(ddf).__name__}")
    meta = ddf._meta
    if not isinstance(meta, pd.DataFrame):
        raise ConfigError(f"write_ddf needs a dask DataFrame, got a collection of {type(meta)}")
    columns = [str(c) for c in meta.columns]
    given_p = None if partition_on is None else as_column_list("partition_on", partition_on)
    given_i = None if indices is None else as_column_list("indices", indices)
    check_columns("partition", given_p or [], columns)
    check_columns("index", given_i or [], columns)

    storage = storage_for(url, storage_options)
    with WriteTransaction(
        storage,
        mode=mode,
        partition_on=given_p,
        indices=given_i,
        schema_mode=schema_mode,
        on_conflict=on_conflict,
        sort_by=sort_by,
        row_group_size=row_group_size,
    ) as tx:
        # the layout and the columns' types checked against the dataset, before any work;
        # columns whose type ``meta`` does not know get theirs from the data
        schema = normalize_schema(to_arrow(meta).schema)
        tx.validate(schema, types_known=False)
        plan = tx.plan  # the schema and layout, not the file list (which grows with the dataset)
        # Staged in the task that makes the partition (Dask fuses the two): a partition is never
        # a result waiting in memory for the task that writes it, so producers cannot pile up.
        staged = ddf.map_partitions(
            _stage_partition, plan, schema, meta=pd.Series([], dtype=object), enforce_metadata=False
        )
        tasks = staged.to_delayed()
        tx.add(compute(tasks))
        recorded: dict[str, Any] = {"writer": "write_ddf", "partitions": len(tasks)}
        if tx.sort_by:
            recorded["sort_by"] = tx.sort_by
        return Dataset(storage, tx.commit({**recorded, **(parameters or {})}))
