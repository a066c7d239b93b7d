"""Kartothek/plateau compatibility: importing their datasets, and keeping a plateau view of ours.

A plateau dataset ``UUID`` in a store at ``ROOT`` is the hafen dataset at ``ROOT/UUID``: its
metadata is ``ROOT/UUID.by-dataset-metadata.json`` (format version 4, JSON), its files live under
``ROOT/UUID/table/`` without partition columns, its indices are Parquet files of
``(value, partition: list<label>)``. hafen uses the same file layout and index format (the format
is written and read in :mod:`hafen.datasets._indices`), so importing is a metadata translation,
and after each commit hafen rewrites plateau's metadata file as a view of the latest version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hafen.datasets._actions import (
    Commit,
    DataFile,
    DatasetState,
    IndexPart,
    file_label,
    log_path,
    now,
)
from hafen.datasets._indices import read_index_part, write_index_part
from hafen.datasets._logstore import load_state
from hafen.datasets._schema import normalize_schema, plateau_label
from hafen.datasets._storage import Storage, map_storage_errors
from hafen.errors import (
    CorruptMetadataError,
    DatasetError,
    DatasetNotFoundError,
    VersionNotFoundError,
)

__all__ = [
    "adopt_plateau",
    "import_plateau",
    "open_state",
    "view_references",
    "write_plateau_view",
]

METADATA_SUFFIX = ".by-dataset-metadata.json"
TABLE = "table"
COMMON_METADATA = "table/_common_metadata"


def dataset_uuid(storage: Storage) -> str:
    return storage.root.rsplit("/", 1)[-1]


def _relative(storage: Storage, key: str) -> str:
    prefix = dataset_uuid(storage) + "/"
    if not key.startswith(prefix):
        raise CorruptMetadataError(
            f"{storage.sibling(METADATA_SUFFIX)}: {key!r} is outside {prefix}"
        )
    return key[len(prefix) :]


def import_plateau(storage: Storage) -> DatasetState | None:
    """Return a plateau dataset at ``storage`` as version 0 of a hafen state, or None."""
    meta_path = storage.sibling(METADATA_SUFFIX)
    if not storage.exists_full(meta_path):
        if storage.exists_full(storage.sibling(".by-dataset-metadata.msgpack.zstd")):
            raise DatasetError(
                f"{storage.url}: plateau metadata stored as msgpack is not supported; use JSON"
            )
        return None
    raw = storage.read_full(meta_path)
    try:
        meta = json.loads(raw)
        version = meta["dataset_metadata_version"]
        partitions = meta.get("partitions", {})
        partition_keys = list(meta.get("partition_keys", []))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptMetadataError(
            f"{meta_path}: cannot be read as plateau metadata ({exc})"
        ) from exc
    if version != 4:
        raise DatasetError(
            f"{meta_path}: plateau metadata version {version}; hafen reads version 4"
        )
    paths = []
    for label, body in partitions.items():
        tables = body.get("files", {})
        if set(tables) - {TABLE}:
            raise DatasetError(
                f"{meta_path}: partition {label!r} has tables {sorted(tables)}; hafen reads "
                f"datasets with the single table {TABLE!r}"
            )
        if TABLE in tables:
            paths.append(_relative(storage, tables[TABLE]))
    common = storage.full(COMMON_METADATA)
    fs = storage.arrow_filesystem
    try:
        with map_storage_errors(common):
            schema = pq.read_schema(common, filesystem=fs)
    except FileNotFoundError as exc:
        if not paths or not storage.exists(paths[0]):
            return None  # a leftover of a dataset whose directory was deleted: nothing to lose
        raise CorruptMetadataError(
            f"{common}: plateau's schema file is missing, but {meta_path} describes a dataset "
            "here; if the dataset was deleted, remove that leftover metadata file too"
        ) from exc
    except pa.ArrowInvalid as exc:
        raise CorruptMetadataError(f"{common}: cannot be read ({exc})") from exc

    def describe(path: str) -> DataFile:
        full = storage.full(path)
        with map_storage_errors(full):
            md = pq.read_metadata(full, filesystem=fs)
            size = storage.size(path)
        label = file_label(path).rsplit("/", 1)[0] if "/" in file_label(path) else ""
        label = plateau_label(label)
        return DataFile(path, label, md.num_rows, size, 0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        files = list(pool.map(describe, paths))
    indices = meta.get("indices", {})
    parts = []
    for column, key in indices.items():
        if not isinstance(key, str):
            raise DatasetError(f"{meta_path}: index {column!r} is not stored in a file")
        parts.append(IndexPart(column, _relative(storage, key), 0))
    created = meta.get("metadata", {}).get("creation_time") or dt.datetime.now(dt.UTC).isoformat()
    return DatasetState(
        version=0,
        timestamp=created,
        schema=normalize_schema(schema),
        partition_on=partition_keys,
        indices=sorted(indices),
        files={f.path: f for f in files},
        index_parts=parts,
        dataset_id=meta.get("dataset_uuid", dataset_uuid(storage)),
        origin="plateau",
        source=hashlib.sha256(raw).hexdigest(),
    )


def metadata_digest(storage: Storage) -> str | None:
    """The SHA-256 of the plateau metadata file at ``storage`` now (None: there is none)."""
    try:
        raw = storage.read_full(storage.sibling(METADATA_SUFFIX))
    except FileNotFoundError:
        return None
    return hashlib.sha256(raw).hexdigest()


def open_state(storage: Storage, version: int | None = None) -> DatasetState:
    """The state at ``version`` (latest when None) from hafen's log, or, when there is none, a
    plateau dataset's as version 0 (its only version).

    Raises :class:`DatasetNotFoundError` when there is neither.
    """
    return load_state(storage, version, without_log=_without_log)


def _without_log(storage: Storage, version: int | None) -> DatasetState:
    state = import_plateau(storage)
    if state is None:
        raise DatasetNotFoundError(f"no dataset at {storage.url}")
    if version not in (None, 0):
        raise VersionNotFoundError(
            f"{storage.url}: version {version} does not exist; the only version is 0"
        )
    return state


def adopt_plateau(storage: Storage, state: DatasetState) -> DatasetState:
    """Record a plateau dataset's current content as version 0 of a hafen log; return the
    latest state (this import, or what another writer committed first)."""
    entry = Commit(
        operation="import",
        adds=list(state.files.values()),
        index_parts=list(state.index_parts),
        schema=state.schema,
        metadata={
            "partition_on": state.partition_on,
            "indices": state.indices,
            "dataset_id": state.dataset_id,
        },
        parameters={"source": "plateau"},
        version=0,
        timestamp=now(),
    )
    payload = json.dumps(entry.to_json(), separators=(",", ":")).encode()
    storage.put_if_absent(log_path(0), payload)
    return open_state(storage)


def write_plateau_view(storage: Storage, state: DatasetState) -> None:
    """Rewrite plateau's metadata file as a view of ``state``, until it shows the latest version.

    Concurrent writers may finish out of order; each rechecks the latest version after writing
    and rewrites the view from it, so the last one to finish leaves the newest view.
    """
    for _ in range(5):
        _write_view_once(storage, state)
        if not storage.exists(log_path(state.version + 1)):
            return
        state = open_state(storage)


def _write_view_once(storage: Storage, state: DatasetState) -> None:
    name = dataset_uuid(storage)
    partitions = {
        file_label(f.path): {"files": {TABLE: f"{name}/{f.path}"}} for f in state.files.values()
    }
    indices = {}
    for column in state.indices:
        live = state.live_index_parts(column)
        if not live:
            continue
        merged = _merged_index(storage, state, column, live)
        indices[column] = f"{name}/{merged}"
    meta = {
        "dataset_metadata_version": 4,
        "dataset_uuid": name,
        "partition_keys": state.partition_on,
        "partitions": partitions,
        "indices": indices,
        "metadata": {"creation_time": state.timestamp, "hafen_version": state.version},
    }
    common = storage.full(COMMON_METADATA)
    schema = state.schema
    write_schema = True
    if storage.exists(COMMON_METADATA):
        with map_storage_errors(common):
            try:
                existing = pq.read_schema(common, filesystem=storage.arrow_filesystem)
                write_schema = normalize_schema(existing) != schema
            except pa.ArrowInvalid:
                write_schema = True
    if write_schema:
        ordered = pa.schema(
            [schema.field(c) for c in state.partition_on]
            + [f for f in schema if f.name not in state.partition_on]
        )
        ordered = _with_pandas_metadata(ordered)
        with map_storage_errors(common):
            storage.create_parent(common)
            pq.write_metadata(ordered, common, filesystem=storage.arrow_filesystem)
    storage.write_full(storage.sibling(METADATA_SUFFIX), json.dumps(meta).encode())


def _with_pandas_metadata(schema: pa.Schema) -> pa.Schema:
    """Add the pandas metadata plateau reads from ``_common_metadata``, keeping the types."""
    empty = schema.empty_table().to_pandas()
    try:
        return pa.Table.from_pandas(empty, schema=schema, preserve_index=False).schema
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return schema


def _merged_index(storage: Storage, state: DatasetState, column: str, live: list[IndexPart]) -> str:
    """Return one index file covering exactly the live files, writing it when needed."""
    if len(live) == 1 and live[0].files:
        still = sum(1 for f in state.files.values() if f.version == live[0].version)
        if still == live[0].files:  # every file the part covers is live: use it as it is
            return live[0].path
    live_labels = {file_label(f.path) for f in state.files.values()}
    entries = pa.concat_tables(read_index_part(storage, p, None) for p in live)
    entries = entries.filter(pc.is_in(entries.column("label"), pa.array(sorted(live_labels))))
    path = f"indices/{column}/{state.version:020d}-{uuid.uuid4().hex[:8]}.by-dataset-index.parquet"
    write_index_part(storage, column, entries, state.schema.field(column).type, path)
    return path


def view_references(storage: Storage) -> set[str]:
    """The files plateau's current view refers to (relative paths), for vacuum to keep."""
    meta_path = storage.sibling(METADATA_SUFFIX)
    if not storage.exists_full(meta_path):
        return set()
    try:
        meta: dict[str, Any] = json.loads(storage.read_full(meta_path))
    except ValueError:
        return set()
    refs = {COMMON_METADATA}
    prefix = dataset_uuid(storage) + "/"
    for body in meta.get("partitions", {}).values():
        refs.update(k[len(prefix) :] for k in body.get("files", {}).values())
    refs.update(k[len(prefix) :] for k in meta.get("indices", {}).values() if isinstance(k, str))
    return refs
