"""The commit log: typed actions, a pure replay, a conflict check, and the optimistic commit.

Layout under a dataset root::

    _hafen/log/00000000000000000000.json          version 0 (created exclusively)
    _hafen/log/00000000000000000001.json          version 1 ...
    _hafen/checkpoints/00000000000000000100.json  the whole state at version 100
    _hafen/_last_checkpoint                       {"version": 100}: a hint, never required

A commit is the exclusive creation of the next log entry (:meth:`Storage.put_if_absent`). A
writer that loses the race reads what landed, asks :func:`conflicts` whether it touched what this
commit read, and either rebases onto it or raises :class:`ConflictError`.

Opening the latest version never lists the log: it reads the checkpoint the hint names and then
the entries after it until the first one that does not exist (entries are created in order, so
there are no holes). A process also remembers the last state it saw of each dataset and, after
checking that the entry it was built from is still there, only reads the entries added since.
Opening or committing therefore costs the entries since the last checkpoint (or since the last
time this process looked), not the number of versions; reading a checkpoint costs its files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from hafen import __version__
from hafen.datasets._schema import decode_partition_value, schema_from_b64, schema_to_b64
from hafen.datasets._storage import Storage
from hafen.errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    CorruptMetadataError,
    DatasetExistsError,
    DatasetNotFoundError,
    HafenWarning,
    StorageError,
    VersionNotFoundError,
    VersionVacuumedError,
)

__all__ = [
    "Commit",
    "DataFile",
    "DatasetState",
    "IndexPart",
    "clear_state_cache",
    "commit",
    "conflicts",
    "latest_version",
    "load_state",
    "replay",
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


def _version_of(name: str) -> int | None:
    stem = name.rsplit("/", 1)[-1]
    if not stem.endswith(".json") or stem.startswith("."):
        return None
    stem = stem[: -len(".json")]
    return int(stem) if stem.isdigit() and len(stem) == _WIDTH else None


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


def _once(load: Callable[[], dict[str, DataFile]]) -> Callable[[], dict[str, DataFile]]:
    lock = threading.Lock()
    box: list[dict[str, DataFile]] = []

    def once() -> dict[str, DataFile]:
        with lock:
            if not box:
                box.append(load())
            return box[0]

    return once


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
    # when (time.time()) the entry after ``version`` was last seen absent: 0.0 = never
    observed: float = field(default=0.0, compare=False)

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files.values())

    def live_index_parts(self, column: str) -> list[IndexPart]:
        versions = {f.version for f in self.files.values()}
        return [p for p in self.index_parts if p.column == column and p.version in versions]

    def partition_values(self, label: str) -> dict[str, Any]:
        from hafen.datasets._schema import parse_label

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


@dataclass
class Commit:
    """One log entry: what a commit does (actions) and what it relied on (read set)."""

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
        c = cls(
            operation=data["operation"],
            parameters=dict(data.get("parameters", {})),
            commit_id=data["commit_id"],
            version=version,
            read_version=data.get("read_version", -1),
            timestamp=data["timestamp"],
            partitions_read=data.get("partitions_read"),
        )
        for action in data["actions"]:
            ((kind, body),) = action.items()
            if kind == "add":
                c.adds.append(DataFile.from_json(body, version))
            elif kind == "remove":
                c.removes.append((body["path"], body["partition"]))
            elif kind == "index":
                c.index_parts.append(
                    IndexPart(body["column"], body["path"], version, body.get("files", 0))
                )
            elif kind == "schema":
                c.schema = schema_from_b64(body)
            elif kind == "metadata":
                c.metadata = dict(body)
            else:
                raise ValueError(f"unknown action {kind!r}")
        return c


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


# -- reading the log ------------------------------------------------------------------------------


def _parse(storage: Storage, path: str) -> dict[str, Any]:
    raw = storage.read_bytes(path)
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or "version" not in data:
            raise ValueError("not a hafen log object")
        return data
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptMetadataError(
            f"{storage.full(path)}: cannot be read ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt"
        ) from exc


def read_commit(storage: Storage, version: int) -> Commit:
    """The log entry of ``version``; :class:`VersionVacuumedError` when vacuum retired it."""
    path = log_path(version)
    data = _parse(storage, path)
    if data.get("vacuumed"):
        raise VersionVacuumedError(
            f"{storage.url}: version {version} was vacuumed",
            version=version,
            commit_id=str(data.get("commit_id", "")),
        )
    try:
        commit_ = Commit.from_json(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptMetadataError(f"{storage.full(path)}: malformed log entry ({exc})") from exc
    if commit_.version != version:
        raise CorruptMetadataError(
            f"{storage.full(path)}: holds version {commit_.version}, expected {version}"
        )
    return commit_


def holds_commit(storage: Storage, version: int, commit_id: str) -> bool:
    """Whether the log entry of ``version`` is still the commit ``commit_id``, not retired."""
    try:
        data = _parse(storage, log_path(version))
    except FileNotFoundError:
        return False
    return not data.get("vacuumed") and data.get("commit_id") == commit_id


def list_versions(storage: Storage) -> list[int]:
    found = (_version_of(info.path) for info in storage.list(LOG_DIR))
    return sorted(v for v in found if v is not None)


def latest_version(storage: Storage) -> int | None:
    """The newest committed version, from one listing of the log (None: no hafen log)."""
    versions = list_versions(storage)
    return versions[-1] if versions else None


def list_checkpoints(storage: Storage) -> list[int]:
    found = (_version_of(info.path) for info in storage.list(CHECKPOINT_DIR))
    return sorted(v for v in found if v is not None)


def read_checkpoint(storage: Storage, version: int) -> DatasetState:
    path = checkpoint_path(version)
    data = _parse(storage, path)
    try:
        return DatasetState.from_json(data)
    except (KeyError, ValueError, TypeError, pa.ArrowInvalid) as exc:
        raise CorruptMetadataError(f"{storage.full(path)}: malformed checkpoint ({exc})") from exc


def load_state(
    storage: Storage, version: int | None = None, *, versions: list[int] | None = None
) -> DatasetState:
    """Return the state at ``version`` (latest when None) from the newest checkpoint below it.

    ``versions`` (the log's listing, when the caller already has it) selects the listing-based
    path; without it the log is not listed unless something is missing or inconsistent, in
    which case the listing gives the precise error. A version whose log entry vacuum retired
    raises :class:`VersionVacuumedError`.
    """
    try:
        if versions is None:
            try:
                state = (
                    _load_latest(storage) if version is None else _load_version(storage, version)
                )
            except FileNotFoundError:
                state = None
            if state is not None:
                return state
            versions = list_versions(storage)
        return _load_listed(storage, version, versions)
    except VersionVacuumedError as exc:
        if version is None or exc.version == version:
            raise
        raise VersionVacuumedError(
            f"{storage.url}: version {version} was vacuumed", version=version
        ) from None


_LOAD_ATTEMPTS = 5  # a vacuum that retires entries while they are read makes a load start over


def _load_latest(storage: Storage) -> DatasetState | None:
    """The latest state without listing the log (None: cannot tell; list it instead)."""
    for _ in range(_LOAD_ATTEMPTS):
        try:
            return _load_latest_once(storage)
        except VersionVacuumedError:
            continue  # the checkpoint we started from was overtaken by a vacuum: start over
    return None


def _load_latest_once(storage: Storage) -> DatasetState | None:
    started = time.time()  # the entry after the result is absent at some moment after this
    cached = _CACHE.get(storage.url)
    if cached is not None:
        newer = _entries_from_if_current(storage, cached)
        if newer is not None:
            return _remember(storage, replay(cached, newer) if newer else cached, started)
        _CACHE.drop(storage.url)  # deleted, recreated or vacuumed past it meanwhile
    base = _state_from_hint(storage)
    if base is not None:
        newer = _entries_from_if_current(storage, base)
        if newer is not None:
            return _remember(storage, replay(base, newer), started)
    base = _newest_checkpoint(storage)  # no usable hint: the checkpoints' listing is short
    start = 0 if base is None else base.version + 1
    entries = read_entries_from(storage, start)
    if base is None and not entries:
        return None
    return _remember(storage, replay(base, entries), started)


def _entries_from_if_current(storage: Storage, state: DatasetState) -> list[Commit] | None:
    """The entries after ``state``, or None when its own entry is gone, retired or replaced."""
    try:
        entries = read_entries_from(storage, state.version)
    except VersionVacuumedError:
        return None
    if not entries or entries[0].commit_id != state.commit_id:
        return None
    return entries[1:]


def _remember(storage: Storage, state: DatasetState, observed: float) -> DatasetState:
    """``state`` marked as seen to be the latest at ``observed``, and cached."""
    state = dataclasses.replace(state, observed=observed)
    _CACHE.put(storage.url, state)
    return state


def _state_from_hint(storage: Storage) -> DatasetState | None:
    """The state the hint describes, its files to be read from its checkpoint when needed."""
    hint = _read_hint(storage)
    if hint is None or not isinstance(hint.get("state"), dict):
        return None
    version = hint["version"]
    try:
        files = LazyFiles(
            _once(lambda: _checkpoint_files(storage, version)),
            rebuild=lambda at: files_at(storage, at),
            version=version,
        )
        state = DatasetState.from_json(hint["state"], files=files)
    except (KeyError, ValueError, TypeError, pa.ArrowInvalid):
        return None
    if state.version != version or not state.commit_id:
        return None
    return state


def _load_version(storage: Storage, version: int) -> DatasetState | None:
    """The state at ``version`` without listing the log (None: cannot tell; list it instead)."""
    if version < 0:
        return None
    cached = _CACHE.get(storage.url)
    if cached is not None and cached.version <= version:
        try:
            current = read_commit(storage, cached.version).commit_id == cached.commit_id
        except (FileNotFoundError, VersionVacuumedError):
            current = False
        if current:
            return replay(cached, read_commits(storage, range(cached.version + 1, version + 1)))
    checkpoints = [c for c in list_checkpoints(storage) if c <= version]
    start, base = 0, None
    if checkpoints:
        base = read_checkpoint(storage, checkpoints[-1])
        start = checkpoints[-1] + 1
    # a missing entry raises FileNotFoundError: the listing then names what is missing
    return replay(base, read_commits(storage, range(start, version + 1)))


def files_at(storage: Storage, version: int) -> dict[str, DataFile]:
    """The files of ``version``, from the newest checkpoint at or below it and the entries after.

    Raises :class:`VersionVacuumedError` when vacuum has retired what that takes.
    """
    for _ in range(_LOAD_ATTEMPTS):
        checkpoints = [c for c in list_checkpoints(storage) if c <= version]
        try:
            base = read_checkpoint(storage, checkpoints[-1]) if checkpoints else None
            start = checkpoints[-1] + 1 if checkpoints else 0
            return dict(replay(base, read_commits(storage, range(start, version + 1))).files)
        except FileNotFoundError:
            continue  # a checkpoint or an entry went while we read: look again
        except VersionVacuumedError:
            break
    raise VersionVacuumedError(
        f"{storage.url}: version {version} was vacuumed; open the dataset again", version=version
    )


def _checkpoint_files(storage: Storage, version: int) -> dict[str, DataFile]:
    return dict(read_checkpoint(storage, version).files)  # FileNotFoundError: rebuild instead


def _newest_checkpoint(storage: Storage) -> DatasetState | None:
    for _ in range(_LOAD_ATTEMPTS):
        checkpoints = list_checkpoints(storage)
        if not checkpoints:
            return None
        try:
            return read_checkpoint(storage, checkpoints[-1])
        except FileNotFoundError:
            continue  # removed by a vacuum that wrote a newer one: list again
    raise StorageError(f"{storage.full(CHECKPOINT_DIR)}: checkpoints keep vanishing while read")


def _read_hint(storage: Storage) -> dict[str, Any] | None:
    """``{"version": N, "state": <the state at N without files>}`` or None when unusable."""
    try:
        hint = json.loads(storage.read_bytes(LAST_CHECKPOINT))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None  # only a hint: a missing or damaged one costs a listing of the checkpoints
    if not isinstance(hint, dict):
        return None
    version = hint.get("version")
    return hint if isinstance(version, int) and version >= 0 else None


def read_entries_from(storage: Storage, start: int) -> list[Commit]:
    """The consecutive log entries from ``start`` up to the first that does not exist."""
    found: list[Commit] = []
    batch = 1
    while True:
        versions = range(start + len(found), start + len(found) + batch)
        for entry in _read_present(storage, versions):
            if entry is None:
                return found
            found.append(entry)
        batch = min(2 * batch, 16)


def _read_present(storage: Storage, versions: range) -> list[Commit | None]:
    def one(v: int) -> Commit | None:
        try:
            return read_commit(storage, v)
        except FileNotFoundError:
            return None

    if len(versions) == 1 or storage.protocol in _LOCAL:
        return [one(v) for v in versions]
    with ThreadPoolExecutor(max_workers=len(versions)) as pool:
        return list(pool.map(one, versions))


def _load_listed(storage: Storage, version: int | None, versions: list[int]) -> DatasetState:
    if not versions:
        from hafen.datasets._plateau import import_plateau

        state = import_plateau(storage)
        if state is None:
            raise DatasetNotFoundError(f"no dataset at {storage.url}")
        if version not in (None, 0):
            raise VersionNotFoundError(
                f"{storage.url}: version {version} does not exist; the only version is 0"
            )
        return state
    latest = versions[-1]
    target = latest if version is None else version
    checkpoints = [c for c in list_checkpoints(storage) if c <= target]
    base: DatasetState | None = None
    start = versions[0]
    if checkpoints:
        base = read_checkpoint(storage, checkpoints[-1])
        start = checkpoints[-1] + 1
    if target > latest or target < 0:
        raise VersionNotFoundError(
            f"{storage.url}: version {target} does not exist; the latest version is {latest}"
        )
    if base is None and (start != 0 or target < versions[0]):
        raise VersionVacuumedError(f"{storage.url}: version {target} was vacuumed", version=target)
    present = set(versions)
    missing = [v for v in range(start, target + 1) if v not in present]
    if missing:
        raise CorruptMetadataError(
            f"{storage.full(log_path(missing[0]))}: log entry for version {missing[0]} is missing"
        )
    return replay(base, read_commits(storage, range(start, target + 1)))


class _StateCache:
    """The last state this process saw of each dataset, by URL (bounded, thread-safe).

    States are never mutated (:func:`replay` copies), so sharing them is safe; a cached state
    is only used after checking that the log entry it was built from still exists unchanged.
    """

    def __init__(self, size: int = 32) -> None:
        self._states: OrderedDict[str, DatasetState] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, url: str) -> DatasetState | None:
        if not _cache_enabled():
            return None
        with self._lock:
            state = self._states.get(url)
            if state is not None:
                self._states.move_to_end(url)
            return state

    def put(self, url: str, state: DatasetState) -> None:
        if not state.commit_id or state.origin != "hafen" or not _cache_enabled():
            return
        with self._lock:
            known = self._states.get(url)
            if known is not None and known.version > state.version:
                return  # keep the newer one another thread put
            self._states[url] = state
            self._states.move_to_end(url)
            while len(self._states) > self._size:
                self._states.popitem(last=False)

    def drop(self, url: str) -> None:
        with self._lock:
            self._states.pop(url, None)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()


def _cache_enabled() -> bool:
    from hafen.config import get_settings

    return get_settings().state_cache


_CACHE = _StateCache()
clear_state_cache = _CACHE.clear


_LOCAL = {"file", "memory"}


def read_commits(storage: Storage, versions: range | list[int]) -> list[Commit]:
    """Read log entries, in parallel when there are several (remote stores answer slowly)."""
    if len(versions) <= 2 or storage.protocol in _LOCAL:
        return [read_commit(storage, v) for v in versions]
    with ThreadPoolExecutor(max_workers=min(16, len(versions))) as pool:
        return list(pool.map(lambda v: read_commit(storage, v), versions))


def read_entries_down(storage: Storage, top: int, *, stop: int = 0) -> list[Commit]:
    """The consecutive entries from ``top`` down to ``stop``, ending early at a retired one.

    Newest first; the list ends at the first entry that is missing or vacuumed.
    """
    found: list[Commit] = []
    batch = 1 if storage.protocol in _LOCAL else 8
    v = top
    while v >= stop:
        versions = range(v, max(stop, v - batch + 1) - 1, -1)
        for entry in _read_retained(storage, versions):
            if entry is None:
                return found
            found.append(entry)
        v = versions[-1] - 1
        batch = min(2 * batch, 16)
    return found


def _read_retained(storage: Storage, versions: range) -> list[Commit | None]:
    def one(v: int) -> Commit | None:
        try:
            return read_commit(storage, v)
        except (FileNotFoundError, VersionVacuumedError):
            return None

    if len(versions) == 1 or storage.protocol in _LOCAL:
        return [one(v) for v in versions]
    with ThreadPoolExecutor(max_workers=len(versions)) as pool:
        return list(pool.map(one, versions))


def retire(storage: Storage, below: int, *, dry_run: bool = False) -> list[int]:
    """Replace the log entries below ``below`` with stubs, oldest first; return their versions.

    A stub keeps the entry's name taken (so no writer can create that version again) and its
    commit id, and drops the rest. Entries already retired, or missing, end the walk down: the
    retired ones always form a prefix of the log.
    """
    todo: list[tuple[int, dict[str, Any]]] = []
    for v in range(below - 1, -1, -1):
        try:
            data = _parse(storage, log_path(v))
        except FileNotFoundError:
            break
        except CorruptMetadataError:
            data = {"version": v}  # a damaged old entry is retired like any other
        if data.get("vacuumed"):
            break
        todo.append((v, data))
    todo.reverse()
    if not dry_run:
        retired_at = _now()
        for v, data in todo:
            stub = {
                "format": FORMAT_VERSION,
                "version": v,
                "commit_id": data.get("commit_id", ""),
                "timestamp": data.get("timestamp", ""),
                "operation": data.get("operation", ""),
                "vacuumed": retired_at,
            }
            storage.write_bytes(log_path(v), json.dumps(stub, separators=(",", ":")).encode())
    return [v for v, _ in todo]


def delete_retired(storage: Storage, below: int, *, older_than: float) -> list[int]:
    """Delete the stubs below ``below`` last written more than ``older_than`` seconds ago."""
    if older_than < MIN_LOG_RETENTION:
        raise ValueError(f"stubs younger than {MIN_LOG_RETENTION} s must be kept")
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
    old = []
    for info in storage.list(LOG_DIR):
        v = _version_of(info.path)
        if v is not None and v < below and info.modified is not None and info.modified < cutoff:
            old.append(v)
    old.sort()
    storage.delete([log_path(v) for v in old])
    return old


# -- committing ----------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


# Vacuum retires old log entries by replacing them with stubs, so their names stay taken and no
# writer can create them again; it deletes a stub only once it is MIN_LOG_RETENTION old. A
# writer whose base was last seen to be the latest more than half that long ago reads the log
# again before its exclusive create, so the entry it creates cannot be one that was used,
# retired and deleted since: a commit can never land below versions vacuum has retired.
MIN_LOG_RETENTION = 3600.0


def commit(
    storage: Storage,
    base: DatasetState | None,
    plan: Callable[[DatasetState | None], Commit],
    *,
    retry_conflicts: bool = False,
    max_attempts: int = 50,
    checkpoint_interval: int = 50,
    exclusive_create: bool = True,
    before_attempt: Callable[[], None] | None = None,
) -> DatasetState:
    """Land the commit ``plan(state)`` as the next version; return the new state.

    ``plan`` builds the commit from the state it applies to; it is called again with fresh
    state after a conflict when ``retry_conflicts`` is set. Raises :class:`ConflictError`
    (nothing landed) or :class:`DatasetExistsError` when a create loses to another and
    ``exclusive_create`` is set; without it, the losing create is re-planned on top.
    ``before_attempt`` runs before every attempt and may raise to give up (nothing landed).
    Once the entry is created, nothing raises: a checkpoint that cannot be written is a
    :class:`HafenWarning`.
    """
    state = base
    if state is not None and state.origin == "plateau":
        state = _adopt_plateau(storage, state)

    def planned(on: DatasetState | None) -> Commit:
        # the version it was planned on: landing on top of commits it does not conflict with
        # does not make it have read them
        entry = plan(on)
        entry.read_version = -1 if on is None else on.version
        return entry

    entry = planned(state)
    for attempt in range(max_attempts):
        if before_attempt is not None:
            before_attempt()
        if state is not None and time.time() - state.observed > MIN_LOG_RETENTION / 2:
            state, entry = _catch_up(storage, state, entry, planned, retry_conflicts)
        entry.version = 0 if state is None else state.version + 1
        entry.timestamp = _now()
        payload = json.dumps(entry.to_json(), separators=(",", ":")).encode()
        attempted = time.time()
        try:
            created = storage.put_if_absent(log_path(entry.version), payload)
        except StorageError as exc:
            raise CommitOutcomeUnknownError(
                f"{storage.full(log_path(entry.version))}: the commit may or may not have "
                f"landed: {exc}"
            ) from exc
        if created:
            return _landed(storage, state, entry, attempted, checkpoint_interval)
        if state is None:
            if exclusive_create:
                raise DatasetExistsError(f"a dataset was created at {storage.url} concurrently")
            # another writer created it first: become an ordinary commit on top of theirs
            state = load_state(storage)
            entry = planned(state)
            continue
        # back off before reading what landed, so the next create follows the read at once
        time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
        state, entry = _catch_up(storage, state, entry, planned, retry_conflicts)
    raise ConflictError(
        f"{storage.url}: gave up after {max_attempts} attempt(s) to commit under contention "
        "(HAFEN_COMMIT_RETRIES sets how many retries follow the first)"
    )


def _catch_up(
    storage: Storage,
    state: DatasetState,
    entry: Commit,
    plan: Callable[[DatasetState | None], Commit],
    retry_conflicts: bool,
) -> tuple[DatasetState, Commit]:
    """The latest state after ``state`` and the commit to land on it (re-planned if needed).

    Raises :class:`ConflictError` when what landed meanwhile conflicts with ``entry`` and
    ``retry_conflicts`` is not set.
    """
    started = time.time()
    # the base's own entry is read again: only while it is still there can the absence of the
    # next one mean that it was never created (rather than created, retired and deleted)
    landed = _entries_from_if_current(storage, state)
    if landed is None:
        # the base is older than every retained version: what landed since cannot be checked
        fresh = load_state(storage)
        reasons = (
            []
            if entry.partitions_read is None and entry.may_match is None
            else [f"the commits after version {state.version} were vacuumed before this one"]
        )
    else:
        fresh = replay(state, landed) if landed else state
        reasons = conflicts(entry, landed)
    fresh = dataclasses.replace(fresh, observed=started)
    if reasons:
        if not retry_conflicts:
            raise ConflictError(
                f"{storage.url}: {entry.operation} based on version {state.version} "
                f"conflicts with concurrent commits: {'; '.join(reasons)}"
            )
        entry = plan(fresh)
    elif entry.schema is not None and fresh.schema != state.schema:
        entry = plan(fresh)
    return fresh, entry


def _landed(
    storage: Storage,
    state: DatasetState | None,
    entry: Commit,
    attempted: float,
    checkpoint_interval: int,
) -> DatasetState:
    """The state after ``entry``, which has just landed; never raises for what follows."""
    new_state = replay(state, [entry])
    new_state.observed = attempted  # no entry after ours could exist before ours did
    if entry.version > 0 and entry.version % checkpoint_interval == 0:
        try:
            write_checkpoint(storage, new_state)
        except Exception as exc:  # the version stands; opening reads a few more entries
            warnings.warn(
                f"{storage.url}: version {entry.version} landed, but its checkpoint "
                f"could not be written: {exc}",
                HafenWarning,
                stacklevel=4,
            )
    _CACHE.put(storage.url, new_state)
    return new_state


def _adopt_plateau(storage: Storage, state: DatasetState) -> DatasetState:
    """Record a plateau dataset's current content as version 0 of a hafen log."""
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
        timestamp=_now(),
    )
    payload = json.dumps(entry.to_json(), separators=(",", ":")).encode()
    storage.put_if_absent(log_path(0), payload)
    return load_state(storage)


def write_checkpoint(storage: Storage, state: DatasetState) -> None:
    """Write the whole state at its version, then point the hint at it unless one is newer."""
    payload = json.dumps(state.to_json(), separators=(",", ":")).encode()
    storage.write_bytes(checkpoint_path(state.version), payload)
    hint = _read_hint(storage)
    if hint is None or hint["version"] < state.version:
        header = {"version": state.version, "state": state.to_json(with_files=False)}
        storage.write_bytes(LAST_CHECKPOINT, json.dumps(header, separators=(",", ":")).encode())
