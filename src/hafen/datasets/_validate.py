"""What a write may ask, and whether it fits the dataset it writes to: the modes, the layout
(partition and index columns) and the schema, checked against the base version before any work,
and again for what tasks staged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pyarrow as pa

from hafen.datasets._actions import DatasetState
from hafen.datasets._schema import (
    conform,
    merge_schemas,
    normalize_schema,
    validate_partition_type,
)
from hafen.datasets._write import StagedWrite, sort_order
from hafen.errors import ConfigError, SchemaError

__all__ = [
    "MODES",
    "Mode",
    "OnConflict",
    "SchemaMode",
    "check_layout_matches",
    "check_options",
    "check_same_schema",
    "prepare_table",
    "staged_schema",
    "validate_layout",
    "validate_sort_by",
]

Mode = Literal["create", "append", "overwrite"]
SchemaMode = Literal["strict", "merge"]
OnConflict = Literal["raise", "retry"]
MODES: tuple[Mode, ...] = ("create", "append", "overwrite")
SCHEMA_MODES: tuple[SchemaMode, ...] = ("strict", "merge")
ON_CONFLICT: tuple[OnConflict, ...] = ("raise", "retry")


def check_options(mode: str, schema_mode: str = "strict", on_conflict: str = "raise") -> None:
    """Raise :class:`ConfigError` for a ``mode``, ``schema_mode`` or ``on_conflict`` not known."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if schema_mode not in SCHEMA_MODES:
        raise ConfigError(f"schema_mode must be 'strict' or 'merge', got {schema_mode!r}")
    if on_conflict not in ON_CONFLICT:
        raise ConfigError(f"on_conflict must be 'raise' or 'retry', got {on_conflict!r}")


def _check_present(kind: str, columns: Sequence[str], schema: pa.Schema) -> None:
    """Raise :class:`SchemaError` naming the ``columns`` that are not in ``schema``."""
    missing = [c for c in columns if schema.get_field_index(c) < 0]
    if missing:
        raise SchemaError(
            f"{kind} columns {missing} are not in the data ({', '.join(schema.names)})"
        )


def validate_sort_by(schema: pa.Schema, sort_by: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for a ``sort_by`` that is not a list of distinct column names,
    :class:`SchemaError` for a column not in ``schema``."""
    if (
        isinstance(sort_by, str)
        or not all(isinstance(c, str) for c in sort_by)
        or len(set(sort_by)) != len(sort_by)
    ):
        raise ConfigError(f"sort_by must be a list of distinct column names, got {sort_by!r}")
    _check_present("sort_by", sort_by, schema)
    for name in sort_by:
        type_ = schema.field(name).type
        if type_ == pa.null():
            continue  # a type not known yet (Dask's meta): checked when the rows are sorted
        try:
            sort_order(schema.empty_table(), [name])
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise SchemaError(
                f"sort_by column {name!r} is of type {type_}, which cannot be sorted"
            ) from None


def validate_layout(
    schema: pa.Schema,
    partition_on: Sequence[str],
    indices: Sequence[str],
    *,
    types_known: bool = True,
) -> None:
    """Check a new dataset's layout against its ``schema``.

    With ``types_known=False``, columns typed null are of a type not known yet (Dask's
    ``meta``): their partition types are checked when the data is staged.
    """
    for kind, columns in (("partition", partition_on), ("index", indices)):
        if isinstance(columns, str):
            raise ConfigError(f"{kind} columns must be a list, got the string {columns!r}")
        _check_present(kind, columns, schema)
    for column in partition_on:
        type_ = schema.field(column).type
        if types_known or type_ != pa.null():
            validate_partition_type(column, type_)
    both = sorted(set(partition_on) & set(indices))
    if both:
        raise ConfigError(f"columns {both} are partition columns and need no secondary index")
    if len(schema.names) <= len(partition_on):
        raise SchemaError("a dataset needs at least one column besides its partition columns")


def check_layout_matches(
    state: DatasetState, partition_on: Sequence[str] | None, indices: Sequence[str] | None
) -> None:
    """Raise :class:`SchemaError` when a given layout differs from the dataset's."""
    if partition_on is not None and list(partition_on) != state.partition_on:
        raise SchemaError(
            f"partition_on {list(partition_on)} differs from the dataset's {state.partition_on}"
        )
    if indices is not None and sorted(indices) != sorted(state.indices):
        raise SchemaError(f"indices {list(indices)} differ from the dataset's {state.indices}")


def prepare_table(
    table: pa.Table,
    state: DatasetState | None,
    *,
    partition_on: Sequence[str] | None,
    indices: Sequence[str] | None,
    schema_mode: SchemaMode,
) -> tuple[pa.Table, pa.Schema, list[str], list[str]]:
    """Check ``table`` against the dataset and return it conformed, with the layout to use."""
    if schema_mode not in SCHEMA_MODES:
        raise ConfigError(f"schema_mode must be 'strict' or 'merge', got {schema_mode!r}")
    if state is None:
        layout_p, layout_i = list(partition_on or []), list(indices or [])
        schema = normalize_schema(table.schema)
        validate_layout(schema, layout_p, layout_i)
        return conform(table, schema), schema, layout_p, layout_i
    check_layout_matches(state, partition_on, indices)
    if schema_mode == "merge":
        schema = merge_schemas(state.schema, table.schema)
        return conform(table, schema, allow_missing=True), schema, state.partition_on, state.indices
    return conform(table, state.schema), state.schema, state.partition_on, state.indices


def staged_schema(
    staged: StagedWrite,
    state: DatasetState | None,
    partition_on: Sequence[str] | None,
    indices: Sequence[str] | None,
    schema_mode: SchemaMode,
) -> pa.Schema:
    """The schema of the version a commit of ``staged`` makes, checked against the base."""
    if staged.schema is None:
        if state is None:
            raise SchemaError("nothing was staged and no dataset exists to take a schema from")
        return state.schema
    schema = normalize_schema(staged.schema)
    if state is None:
        validate_layout(schema, list(partition_on or []), list(indices or []))
        return schema
    check_layout_matches(state, partition_on, indices)
    if schema_mode == "merge":
        return merge_schemas(state.schema, schema)
    conform(schema.empty_table(), state.schema)
    return state.schema


def check_same_schema(parts: Sequence[StagedWrite]) -> None:
    """The parts of a new dataset, staged apart, must agree on their column types."""
    schemas = [normalize_schema(s.schema) for s in parts if s.schema is not None and s.files]
    first = schemas[0] if schemas else None
    for other in schemas[1:]:
        if other != first:
            assert first is not None
            differ = [
                f"{f.name!r} ({f.type} vs {other.field(f.name).type})"
                for f in first
                if other.get_field_index(f.name) >= 0 and other.field(f.name).type != f.type
            ]
            raise SchemaError(
                "the parts staged apart have different column types: " + ", ".join(differ)
            )
