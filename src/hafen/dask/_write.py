"""``write_ddf``: every Dask partition staged by a worker, then one commit from the client."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import pyarrow as pa

from hafen.dask._common import as_column_list, check_columns, compute, try_open
from hafen.errors import ConfigError, DatasetExistsError, SchemaError, StorageError

if TYPE_CHECKING:
    import dask.dataframe as dd

    from hafen.datasets import Dataset, StagedWrite, Storage

__all__ = ["write_ddf"]

Mode = Literal["create", "append", "overwrite"]
SchemaMode = Literal["strict", "merge"]
OnConflict = Literal["raise", "retry"]
MODES = ("create", "append", "overwrite")
SCHEMA_MODES = ("strict", "merge")


def _stage_partition(
    pdf: pd.DataFrame,
    storage: Storage,
    state: Any,
    partition_on: list[str],
    indices: list[str],
    schema_mode: SchemaMode,
    schema: pa.Schema | None,
) -> StagedWrite:
    """Task: conform one pandas partition and stage it; return the (small) StagedWrite."""
    from hafen.datasets import StagedWrite, conform, prepare_table, stage_table, to_arrow

    table = to_arrow(pdf)
    if state is None and schema is not None:
        # a new dataset: cast to the types the client derived from ``meta`` (where known)
        fields = [
            schema.field(n) if schema.field(n).type != pa.null() else None for n in schema.names
        ]
        known = pa.schema([f for f in fields if f is not None])
        if known.names:
            casted = conform(table.select(known.names), known)
            for name in known.names:
                table = table.set_column(table.column_names.index(name), name, casted[name])
    conformed, file_schema, layout_p, layout_i = prepare_table(
        table, state, partition_on=partition_on, indices=indices, schema_mode=schema_mode
    )
    if conformed.num_rows == 0:
        return StagedWrite(schema=file_schema)
    return stage_table(storage, conformed, partition_on=layout_p, indices=layout_i)


def _meta_schema(meta: pd.DataFrame) -> pa.Schema:
    from hafen.datasets import normalize_schema, to_arrow

    return normalize_schema(to_arrow(meta).schema)


def write_ddf(
    ddf: dd.DataFrame,
    url: str,
    *,
    partition_on: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    mode: Mode = "create",
    schema_mode: SchemaMode = "strict",
    on_conflict: OnConflict = "raise",
    storage_options: dict[str, Any] | None = None,
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
        The dataset's URL (a local path, ``memory://``, ``az://``, ``abfs://``, ``s3://``).
    partition_on, indices
        Partition and secondary-index columns; they must match an existing dataset's.
    mode
        ``"create"``, ``"append"`` or ``"overwrite"``, as for :func:`hafen.write_dataset`.
    schema_mode
        ``"strict"`` or ``"merge"``, as for :func:`hafen.write_dataset`.
    on_conflict
        ``"raise"`` or ``"retry"`` when a concurrent commit touched the same partitions.
    storage_options
        fsspec options for the storage backend.

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
    from hafen.datasets import commit_staged, prepare_table, storage_for

    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if schema_mode not in SCHEMA_MODES:
        raise ConfigError(f"schema_mode must be 'strict' or 'merge', got {schema_mode!r}")
    if on_conflict not in ("raise", "retry"):
        raise ConfigError(f"on_conflict must be 'raise' or 'retry', got {on_conflict!r}")
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
    existing = try_open(storage)
    state = None if existing is None else existing.state
    if state is not None and mode == "create":
        raise DatasetExistsError(f"a dataset already exists at {storage.url} (mode='create')")
    schema = _meta_schema(meta)
    if state is None:
        layout_p, layout_i = given_p or [], given_i or []
        both = sorted(set(layout_p) & set(layout_i))
        if both:
            raise ConfigError(f"columns {both} are partition columns and need no secondary index")
        if len(columns) <= len(layout_p):
            raise SchemaError("a dataset needs at least one column besides its partition columns")
        typed = pa.schema([f for f in schema if f.type != pa.null()])
        prepare_table(
            typed.empty_table(),
            None,
            partition_on=[c for c in layout_p if c in typed.names],
            indices=[c for c in layout_i if c in typed.names],
            schema_mode=schema_mode,
        )
    else:
        # checks the layout and the columns' types against the dataset, before any work
        _, _, layout_p, layout_i = prepare_table(
            schema.empty_table(),
            state,
            partition_on=given_p,
            indices=given_i,
            schema_mode=schema_mode,
        )
    from dask import delayed

    stage = delayed(_stage_partition, pure=False)
    # tasks need the schema and layout, not the file list (which grows with the dataset)
    header = None if state is None else dataclasses.replace(state, files={}, index_parts=[])
    tasks = [
        stage(part, storage, header, layout_p, layout_i, schema_mode, schema)
        for part in ddf.to_delayed()
    ]
    staged = compute(tasks)
    if state is None:
        _check_same_schema(storage, staged)
    return commit_staged(
        storage,
        staged,
        mode=mode,
        partition_on=layout_p,
        indices=layout_i,
        schema_mode=schema_mode,
        on_conflict=on_conflict,
        base=state,
        parameters={"writer": "write_ddf", "partitions": len(tasks)},
    )


def _check_same_schema(storage: Storage, staged: list[StagedWrite]) -> None:
    """A new dataset's files must agree on types the client could not know from ``meta``."""
    from hafen.datasets import normalize_schema

    schemas = [normalize_schema(s.schema) for s in staged if s.schema is not None and s.files]
    if not schemas:
        return
    first = schemas[0]
    for other in schemas[1:]:
        if other != first:
            differ = [
                f"{f.name!r} ({f.type} vs {other.field(f.name).type})"
                for f in first
                if other.get_field_index(f.name) >= 0 and other.field(f.name).type != f.type
            ]
            with contextlib.suppress(StorageError):  # else vacuum removes them later
                storage.delete([f.path for s in staged for f in s.files])
            raise SchemaError(
                "the Dask partitions have different column types: " + ", ".join(differ)
            )
