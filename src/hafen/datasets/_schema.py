"""Dataset schemas: checking data against them, merging them, and partition values as text."""

from __future__ import annotations

import base64
import datetime as dt
import math
import urllib.parse
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from hafen.errors import SchemaError

__all__ = [
    "NULL_PARTITION",
    "conform",
    "decode_partition_value",
    "encode_partition_value",
    "merge_schemas",
    "partition_label",
    "schema_from_b64",
    "schema_to_b64",
    "to_arrow",
]

NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
# a string value that reads like the null marker is written with its first "_" escaped: any URL
# decoder (plateau's, hafen's) reads the string back, and the bare marker stays null
_LITERAL_NULL_TEXT = "%5F" + NULL_PARTITION[1:]


def to_arrow(data: Any) -> pa.Table:
    """Return ``data`` (a DataFrame or a pyarrow Table) as a Table, without its pandas index."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pd.DataFrame):
        names = [str(c) for c in data.columns]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate column names: {names}")
        try:
            table = pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SchemaError(f"cannot convert the DataFrame to Arrow: {exc}") from exc
        return table.replace_schema_metadata(None)
    raise SchemaError(f"expected a pandas DataFrame or a pyarrow Table, got {type(data).__name__}")


def _normalize_type(t: pa.DataType) -> pa.DataType:
    """Collapse physical variants that mean the same logical type."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_dictionary(t):
        return pa.dictionary(pa.int32(), _normalize_type(t.value_type))
    if pa.types.is_large_list(t):
        return pa.list_(_normalize_type(t.value_type))
    return t


def normalize_schema(schema: pa.Schema) -> pa.Schema:
    """Return ``schema`` without metadata and with canonical physical types."""
    return pa.schema(
        [pa.field(f.name, _normalize_type(f.type), nullable=True) for f in schema],
    )


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    source, target = _normalize_type(source), _normalize_type(target)
    if source == target or pa.types.is_null(source):
        return True
    if pa.types.is_dictionary(target) and not pa.types.is_dictionary(source):
        return _normalize_type(target.value_type) == source
    if pa.types.is_dictionary(source) and not pa.types.is_dictionary(target):
        return _normalize_type(source.value_type) == target
    if pa.types.is_integer(source) and pa.types.is_integer(target):
        return target.bit_width >= source.bit_width and (
            pa.types.is_signed_integer(target) or not pa.types.is_signed_integer(source)
        )
    if pa.types.is_floating(source) and pa.types.is_floating(target):
        return target.bit_width >= source.bit_width
    if pa.types.is_timestamp(source) and pa.types.is_timestamp(target):
        return source.tz == target.tz
    return False


def _describe(t: pa.DataType) -> str:
    return str(t).replace("large_string", "string")


def conform(table: pa.Table, schema: pa.Schema, *, allow_missing: bool = False) -> pa.Table:
    """Cast ``table`` to ``schema``'s column order and types, or raise :class:`SchemaError`.

    Missing columns are filled with nulls only when ``allow_missing``; extra columns are an error.
    The error lists every offending column with both types.
    """
    problems: list[str] = []
    names = set(table.column_names)
    extra = [n for n in table.column_names if schema.get_field_index(n) < 0]
    if extra:
        problems.append("columns not in the dataset schema: " + ", ".join(map(repr, extra)))
    missing = [f.name for f in schema if f.name not in names]
    if missing and not allow_missing:
        problems.append("columns missing from the data: " + ", ".join(map(repr, missing)))
    for field in schema:
        if field.name in names:
            actual = table.schema.field(field.name).type
            if not _castable(actual, field.type):
                problems.append(
                    f"column {field.name!r}: the dataset has {_describe(field.type)}, "
                    f"the data has {_describe(actual)}"
                )
    if problems:
        raise SchemaError("data does not match the dataset schema: " + "; ".join(problems))
    columns = []
    for field in schema:
        if field.name in names:
            column = table.column(field.name)
            if column.type != field.type:
                try:
                    column = column.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SchemaError(
                        f"column {field.name!r}: cannot cast {_describe(column.type)} to "
                        f"{_describe(field.type)}: {exc}"
                    ) from exc
            columns.append(column)
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def merge_schemas(base: pa.Schema, new: pa.Schema) -> pa.Schema:
    """Return ``base`` with ``new``'s extra columns appended (nullable); types must agree."""
    conflicts = [
        f"column {f.name!r}: the dataset has {_describe(base.field(f.name).type)}, "
        f"the data has {_describe(f.type)}"
        for f in new
        if base.get_field_index(f.name) >= 0 and not _castable(f.type, base.field(f.name).type)
    ]
    if conflicts:
        raise SchemaError("cannot merge schemas: " + "; ".join(conflicts))
    fields = list(base)
    fields.extend(
        pa.field(f.name, _normalize_type(f.type), nullable=True)
        for f in new
        if base.get_field_index(f.name) < 0
    )
    return pa.schema(fields)


def schema_to_b64(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_b64(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


# -- partition values --------------------------------------------------------------------------


def encode_partition_value(value: Any) -> str:
    """Return a partition value as the text of its Hive path segment (before URL quoting)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NULL_PARTITION
    if isinstance(value, pd.Timestamp | dt.datetime):
        return str(pd.Timestamp(value))
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def decode_partition_value(text: str | None, type_: pa.DataType) -> Any:
    """Parse the text of a Hive path segment as a value of ``type_`` (None: the null marker,
    as :func:`parse_label` gives it)."""
    if text is None:
        return None
    t = type_.value_type if pa.types.is_dictionary(type_) else type_
    try:
        if pa.types.is_integer(t):
            return int(text)
        if pa.types.is_floating(t):
            return float(text)
        if pa.types.is_boolean(t):
            if text not in {"True", "False", "true", "false"}:
                raise ValueError(text)
            return text in {"True", "true"}
        if pa.types.is_date(t):
            return dt.date.fromisoformat(text)
        if pa.types.is_timestamp(t):
            stamp = pd.Timestamp(text)
            if t.tz is not None:
                stamp = stamp.tz_localize(t.tz) if stamp.tzinfo is None else stamp.tz_convert(t.tz)
            return stamp if stamp.nanosecond else stamp.to_pydatetime()  # keep nanoseconds
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return text
    except ValueError as exc:
        raise SchemaError(f"partition value {text!r} is not a valid {t}") from exc
    raise SchemaError(f"partition columns of type {t} are not supported")


def _quote_value(value: Any) -> str:
    text = urllib.parse.quote(encode_partition_value(value), safe="")
    if text == NULL_PARTITION and not _is_null(value):
        return _LITERAL_NULL_TEXT  # the string "__HIVE_DEFAULT_PARTITION__" is not a null
    return text


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def partition_label(partition_on: Sequence[str], values: Sequence[Any]) -> str:
    """Return the Hive path of a partition, e.g. ``date=2024-01-01/store_id=3`` (URL-quoted).

    A null is ``__HIVE_DEFAULT_PARTITION__``, as in Hive, Spark and Arrow; the string of that
    text is written URL-escaped (``%5F_HIVE_DEFAULT_PARTITION__``), so that both read back.
    """
    return "/".join(
        f"{urllib.parse.quote(col, safe='')}={_quote_value(v)}"
        for col, v in zip(partition_on, values, strict=True)
    )


def parse_label(label: str) -> list[tuple[str, str | None]]:
    """Return the ``(column, text)`` pairs of a Hive path, unquoted; the text of a null is None."""
    pairs: list[tuple[str, str | None]] = []
    for segment in label.split("/"):
        if "=" not in segment:
            continue
        key, _, value = segment.partition("=")
        text = None if value == NULL_PARTITION else urllib.parse.unquote(value)
        pairs.append((urllib.parse.unquote(key), text))
    return pairs


def plateau_label(label: str) -> str:
    """hafen's label of a partition plateau wrote: plateau refuses nulls in partition columns,
    so its ``__HIVE_DEFAULT_PARTITION__`` is that string, which hafen writes escaped."""
    return "/".join(
        f"{segment[: -len(NULL_PARTITION)]}{_LITERAL_NULL_TEXT}"
        if segment.endswith("=" + NULL_PARTITION)
        else segment
        for segment in label.split("/")
    )


def validate_partition_type(name: str, type_: pa.DataType) -> None:
    t = type_.value_type if pa.types.is_dictionary(type_) else type_
    if not (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_date(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
    ):
        raise SchemaError(f"partition column {name!r} has type {t}, which cannot be a partition")
