"""The commit model: data files, index parts, a dataset's state, commits, replay and conflicts.

Pure: nothing here reads or writes storage. A commit is a small list of typed actions (add,
remove, index, schema, metadata) and a read set; :func:`replay` applies commits to a state
without changing it, and :func:`conflicts` says whether a commit read something that commits
which landed since changed. The log store (:mod:`hafen.datasets._logstore`) reads and writes
these as JSON; the commit loop (:mod:`hafen.datasets._commit`) lands them.

Layout under a dataset root::

    _hafen/log/00000000000000000000.json          version 0 (created exclusively)
    _hafen/log/00000000000000000001.json          version 1 ...
    _hafen/checkpoints/00000000000000000100.json  the whole state at version 100
    _hafen/_last_checkpoint                       {"version": 100}: a hint, never required
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from hafen._version import __version__
from hafen.datasets._schema import (
    decode_partition_value,
    parse_label,
    schema_from_b64,
    schema_to_b64,
)
from hafen.errors import CorruptMetadataError, DatasetNotFoundError

__all__ = [
    "CHECKPOINT_DIR",
    "FORMAT_VERSION",
    "LAST_CHECKPOINT",
    "LOG_DIR",
    "Commit",
    "DataFile",
    "DatasetState",
    "IndexPart",
    "LazyFiles",
    "checkpoint_path",
    "conflicts",
    "file_label",
    "log_path",
    "now",
    "replay",
    "version_of",
]

LOG_DIR = "_hafen/log"
CHECKPOINT_DIR = "_hafen/checkpoints"
LAST_CHECKPOINT = "_hafen/_last_checkpoint"
FORMAT_VERSION = 1
_WIDTH = 20


def log_path(version: int) -> str:
    return f"{LOG_DIR}/{version:0{_WIDTH}d}.json"


def checkpoint_path(version: int) -> str:
    return f"{CHECKPOINT_DIR}/{version:0{_WIDTH}d}.json"


def file_label(path: str) -> str:
    """Return plateau's label of a data file: its path below ``table/`` without the suffix."""
    return path[len("table/") : -len(".parquet")]


def version_of(name: str) -> int | None:
    """The version a log entry's or checkpoint's file name stands for (None: not one)."""
    stem = name.rsplit("/", 1)[-1]
    if not stem.endswith(".json") or stem.startswith("."):
        return None
    stem = stem[: -len(".json")]
    return int(stem) if stem.isdigit() and len(stem) == _WIDTH else None


def now() -> str:
    """The time as log entries record it (UTC, ISO 8601, milliseconds)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class DataFile:
    """One Parquet file of a dataset, as the log records it."""

    path: str  # relative to the dataset root, e.g. "table/date=2024-01-01/<uuid>.parquet"
    partition: str  # the Hive label, e.g. "date=2024-01-01"; "" when unpartitioned
    num_rows: int
    size: int
    version: int = -1  # the version that added it
    stats: Mapping[str, tuple[Any, Any, int]] = field(default_factory=dict)  # min, max, nulls
    # "crc32:<8 hex digits>" of the file's bytes, computed as they were written (see
    # hafen.datasets._integrity); None for files logged before hafen recorded checksums
    checksum: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "partition": self.partition,
            "rows": self.num_rows,
            "size": self.size,
        }
        if self.stats:
            out["stats"] = {k: list(v) for k, v in self.stats.items()}
        if self.checksum is not None:
            out["checksum"] = self.checksum
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], version: int) -> DataFile:
        stats = {k: (v[0], v[1], v[2]) for k, v in data.get("stats", {}).items()}
        return cls(
            data["path"],
            data["partition"],
            data["rows"],
            data["size"],
            version,
            stats,
            data.get("checksum"),
        )


@dataclass(frozen=True)
class IndexPart:
    """A secondary-index file covering the files one commit added: rows (value, [labels])."""

    column: str
    path: str
    version: int
    files: int = 0  # how many data files it covers (0: unknown)


class LazyFiles(MutableMapping[str, DataFile]):
    """The files of a state, read from its checkpoint only when first needed.

    Opening the latest version to append needs the schema and the layout, not the file list,
    which can be large: the state after a checkpoint keeps the commits applied since then as
    pending adds and removes, and applies them once the checkpoint's files are read.
    """

    def __init__(
        self,
        load: Callable[[], dict[str, DataFile]],
        pending: list[tuple[str, DataFile | None]] | None = None,
        *,
        rebuild: Callable[[int], dict[str, DataFile]] | None = None,
        version: int = -1,
    ) -> None:
        self._load_base = load  # shared between copies; reads the checkpoint at most once
        self._pending: list[tuple[str, DataFile | None]] = list(pending or [])
        self._data: dict[str, DataFile] | None = None
        # when a vacuum removed the checkpoint ``load`` reads, the files at ``version`` are
        # rebuilt from a newer checkpoint instead (replay keeps ``version`` current)
        self._rebuild = rebuild
        self.version = version

    def _files(self) -> dict[str, DataFile]:
        if self._data is None:
            try:
                data = dict(self._load_base())
            except FileNotFoundError:
                if self._rebuild is None:
                    raise
                self._data, self._pending = dict(self._rebuild(self.version)), []
                return self._data
            for path, f in self._pending:
                if f is None:
                    data.pop(path, None)
                else:
                    data[path] = f
            self._data, self._pending = data, []
        return self._data

    def remove(self, path: str) -> None:
        """Remove ``path`` if present, without reading the checkpoint."""
        if self._data is None:
            self._pending.append((path, None))
        else:
            self._data.pop(path, None)

    def add(self, f: DataFile) -> None:
        """Add or replace ``f``, without reading the checkpoint."""
        if self._data is None:
            self._pending.append((f.path, f))
        else:
            self._data[f.path] = f

    def copy(self) -> LazyFiles | dict[str, DataFile]:
        if self._data is not None:
            return dict(self._data)
        return LazyFiles(
            self._load_base, self._pending, rebuild=self._rebuild, version=self.version
        )

    def __getitem__(self, path: str) -> DataFile:
        return self._files()[path]

    def __setitem__(self, path: str, f: DataFile) -> None:
        self._files()[path] = f

    def __delitem__(self, path: str) -> None:
        del self._files()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files())

    def __len__(self) -> int:
        return len(self._files())

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (self._files(),)  # a state sent to a worker carries its files


@dataclass
class DatasetState:
    """Everything known about one version of a dataset."""

    version: int
    timestamp: str
    schema: pa.Schema
    partition_on: list[str]
    indices: list[str]
    files: MutableMapping[str, DataFile]  # a dict, or LazyFiles until the file list is needed
    index_parts: list[IndexPart]
    dataset_id: str
    origin: str = "hafen"  # "plateau" for a plateau dataset hafen has not committed to yet
    commit_id: str = ""  # the id of the log entry of ``version`` ("" when unknown)
    # origin "plateau": the SHA-256 of the plateau metadata file this state was read from
    source: str = field(default="", compare=False)
    # when (time.time()) the entry after ``version`` was last seen absent: 0.0 = never
    observed: float = field(default=0.0, compare=False)

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files.values())

    def live_index_parts(self, column: str) -> list[IndexPart]:
        versions = {f.version for f in self.files.values()}
        return [p for p in self.index_parts if p.column == column and p.version in versions]

    def partition_values(self, label: str) -> dict[str, Any]:
        return {
            col: decode_partition_value(text, self.schema.field(col).type)
            for col, text in parse_label(label)
        }

    def copy(self) -> DatasetState:
        files = self.files.copy() if isinstance(self.files, LazyFiles) else dict(self.files)
        return dataclasses.replace(self, files=files, index_parts=list(self.index_parts))

    def to_json(self, *, with_files: bool = True) -> dict[str, Any]:
        files = (
            [dict(f.to_json(), version=f.version) for f in self.files.values()]
            if with_files
            else None
        )
        return {
            "format": FORMAT_VERSION,
            "version": self.version,
            "timestamp": self.timestamp,
            "schema": schema_to_b64(self.schema),
            "partition_on": self.partition_on,
            "indices": self.indices,
            "dataset_id": self.dataset_id,
            "files": files,
            "index_parts": [dataclasses.asdict(p) for p in self.index_parts],
            "commit_id": self.commit_id,
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], files: MutableMapping[str, DataFile] | None = None
    ) -> DatasetState:
        """Read a checkpoint, or a header (``files`` given: the state's files, not in ``data``)."""
        if files is None:
            files = {}
            for item in data["files"]:
                f = DataFile.from_json(item, item["version"])
                files[f.path] = f
        return cls(
            version=data["version"],
            timestamp=data["timestamp"],
            schema=schema_from_b64(data["schema"]),
            partition_on=list(data["partition_on"]),
            indices=list(data["indices"]),
            files=files,
            index_parts=[IndexPart(**p) for p in data["index_parts"]],
            dataset_id=data["dataset_id"],
            commit_id=data.get("commit_id", ""),
        )


@dataclass(frozen=True)
class Commit:
    """One log entry: what a commit does (actions) and what it relied on (read set).

    A value: the commit loop numbers a planned entry with :func:`dataclasses.replace`.
    """

    operation: str  # create | append | overwrite | delete | import
    adds: list[DataFile] = field(default_factory=list)
    removes: list[tuple[str, str]] = field(default_factory=list)  # (path, partition label)
    index_parts: list[IndexPart] = field(default_factory=list)
    schema: pa.Schema | None = None  # set when the commit creates or changes the schema
    metadata: dict[str, Any] | None = None  # partition_on, indices, dataset_id on create
    partitions_read: list[str] | None = None  # labels whose content this commit depends on
    parameters: dict[str, Any] = field(default_factory=dict)
    commit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    version: int = -1
    read_version: int = -1
    timestamp: str = ""
    # rows this commit depends on the absence of (a delete's predicate): whether a file added
    # since it read may hold some; judged from the log entry alone (partition values, stats)
    # and not recorded in the log
    may_match: Callable[[DataFile], bool] | None = field(default=None, repr=False, compare=False)

    def touched(self) -> set[str]:
        """The partition labels this commit changed."""
        return {f.partition for f in self.adds} | {label for _, label in self.removes}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "version": self.version,
            "timestamp": self.timestamp,
            "operation": self.operation,
            "commit_id": self.commit_id,
            "read_version": self.read_version,
            "writer": f"hafen {__version__}",
            "parameters": self.parameters,
            "actions": [],
        }
        if self.partitions_read is not None:
            out["partitions_read"] = sorted(self.partitions_read)
        actions = out["actions"]
        if self.metadata is not None:
            actions.append({"metadata": self.metadata})
        if self.schema is not None:
            actions.append({"schema": schema_to_b64(self.schema)})
        actions.extend({"remove": {"path": p, "partition": label}} for p, label in self.removes)
        actions.extend({"add": f.to_json()} for f in self.adds)
        actions.extend(
            {"index": {"column": p.column, "path": p.path, "files": p.files}}
            for p in self.index_parts
        )
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Commit:
        version = data["version"]
        adds: list[DataFile] = []
        removes: list[tuple[str, str]] = []
        index_parts: list[IndexPart] = []
        schema: pa.Schema | None = None
        metadata: dict[str, Any] | None = None
        for action in data["actions"]:
            ((kind, body),) = action.items()
            if kind == "add":
                adds.append(DataFile.from_json(body, version))
            elif kind == "remove":
                removes.append((body["path"], body["partition"]))
            elif kind == "index":
                index_parts.append(
                    IndexPart(body["column"], body["path"], version, body.get("files", 0))
                )
            elif kind == "schema":
                schema = schema_from_b64(body)
            elif kind == "metadata":
                metadata = dict(body)
            else:
                raise ValueError(f"unknown action {kind!r}")
        return cls(
            operation=data["operation"],
            adds=adds,
            removes=removes,
            index_parts=index_parts,
            schema=schema,
            metadata=metadata,
            parameters=dict(data.get("parameters", {})),
            commit_id=data["commit_id"],
            version=version,
            read_version=data.get("read_version", -1),
            timestamp=data["timestamp"],
            partitions_read=data.get("partitions_read"),
        )


def replay(state: DatasetState | None, commits: Iterable[Commit]) -> DatasetState:
    """Return the state after applying ``commits`` to ``state`` (which is left unchanged)."""
    current = state.copy() if state is not None else None
    for c in commits:
        if current is None:
            if c.metadata is None or c.schema is None:
                raise CorruptMetadataError(
                    f"log entry {c.version} does not create the dataset but no earlier one exists"
                )
            current = DatasetState(
                version=c.version,
                timestamp=c.timestamp,
                schema=c.schema,
                partition_on=list(c.metadata["partition_on"]),
                indices=list(c.metadata["indices"]),
                files={},
                index_parts=[],
                dataset_id=c.metadata["dataset_id"],
            )
        elif c.schema is not None:
            current.schema = c.schema
        if c.metadata is not None and current.version != c.version:
            current.indices = list(c.metadata.get("indices", current.indices))
        files = current.files
        for path, _ in c.removes:
            if isinstance(files, LazyFiles):
                files.remove(path)
            else:
                files.pop(path, None)
        for f in c.adds:
            f = f if f.version == c.version else dataclasses.replace(f, version=c.version)
            if isinstance(files, LazyFiles):
                files.add(f)
            else:
                files[f.path] = f
        if isinstance(files, LazyFiles):
            files.version = c.version
        current.index_parts.extend(
            p if p.version == c.version else dataclasses.replace(p, version=c.version)
            for p in c.index_parts
        )
        current.version = c.version
        current.timestamp = c.timestamp
        current.commit_id = c.commit_id
        current.observed = 0.0
    if current is None:
        raise DatasetNotFoundError("no log entries")
    return current


def conflicts(mine: Commit, landed: Iterable[Commit]) -> list[str]:
    """Return why ``mine`` conflicts with the commits that landed since it read; [] if it doesn't.

    Appends never conflict. A commit that replaces or deletes (it has a read set) conflicts with
    any landed commit that changed one of the partitions it read, and a delete also with any
    that added a file which may hold rows it deletes (``mine.may_match``), wherever it added it.
    """
    if mine.partitions_read is None and mine.may_match is None:
        return []
    read = set(mine.partitions_read or ())
    reasons = []
    for other in landed:
        if other.operation == "import":
            continue
        hit = read & other.touched()
        if hit:
            shown = ", ".join(sorted(repr(label or "<all>") for label in hit)[:5])
            reasons.append(f"version {other.version} ({other.operation}) changed {shown}")
            continue
        added = [f for f in other.adds if mine.may_match is not None and mine.may_match(f)]
        if added:
            shown = ", ".join(sorted({repr(f.partition or "<all>") for f in added})[:5])
            reasons.append(
                f"version {other.version} ({other.operation}) added {len(added)} file(s) that "
                f"may hold rows it {mine.operation}s, in {shown}"
            )
    return reasons
