"""The log store: reading log entries and checkpoints, the state cache, retiring old entries.

Opening the latest version never lists the log: it reads the checkpoint the hint names and then
the entries after it until the first one that does not exist (entries are created in order, so
there are no holes). A process also remembers the last state it saw of each dataset and, after
checking that the entry it was built from is still there, only reads the entries added since.
Opening or committing therefore costs the entries since the last checkpoint (or since the last
time this process looked), not the number of versions; reading a checkpoint costs its files.

Vacuum retires old log entries by replacing them with stubs (:func:`retire`), so their names
stay taken and no writer can create them again; it deletes a stub only once it is
:data:`MIN_LOG_RETENTION` old (:func:`delete_retired`).

This module knows only hafen's own log: a dataset without one (a plateau dataset) is opened by
:func:`hafen.datasets._plateau.open_state`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from hafen.config import get_settings
from hafen.datasets._actions import (
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    LAST_CHECKPOINT,
    LOG_DIR,
    Commit,
    DataFile,
    DatasetState,
    LazyFiles,
    checkpoint_path,
    log_path,
    now,
    replay,
    version_of,
)
from hafen.datasets._storage import Storage
from hafen.errors import (
    CorruptMetadataError,
    DatasetNotFoundError,
    StorageError,
    VersionNotFoundError,
    VersionVacuumedError,
)

__all__ = [
    "MIN_LOG_RETENTION",
    "clear_state_cache",
    "delete_retired",
    "entries_from_if_current",
    "files_at",
    "holds_commit",
    "latest_version",
    "list_checkpoints",
    "list_versions",
    "load_state",
    "read_checkpoint",
    "read_commit",
    "read_commits",
    "read_entries_down",
    "read_entries_from",
    "remember",
    "retire",
    "write_checkpoint",
]

# A writer whose base was last seen to be the latest more than half this long ago reads the log
# again before its exclusive create, so the entry it creates cannot be one that was used,
# retired and deleted since: a commit can never land below versions vacuum has retired.
MIN_LOG_RETENTION = 3600.0


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
    found = (version_of(info.path) for info in storage.list(LOG_DIR))
    return sorted(v for v in found if v is not None)


def latest_version(storage: Storage) -> int | None:
    """The newest committed version, from one listing of the log (None: no hafen log)."""
    versions = list_versions(storage)
    return versions[-1] if versions else None


def list_checkpoints(storage: Storage) -> list[int]:
    found = (version_of(info.path) for info in storage.list(CHECKPOINT_DIR))
    return sorted(v for v in found if v is not None)


def read_checkpoint(storage: Storage, version: int) -> DatasetState:
    path = checkpoint_path(version)
    data = _parse(storage, path)
    try:
        return DatasetState.from_json(data)
    except (KeyError, ValueError, TypeError, pa.ArrowInvalid) as exc:
        raise CorruptMetadataError(f"{storage.full(path)}: malformed checkpoint ({exc})") from exc


def load_state(
    storage: Storage,
    version: int | None = None,
    *,
    versions: list[int] | None = None,
    without_log: Callable[[Storage, int | None], DatasetState] | None = None,
) -> DatasetState:
    """Return the state at ``version`` (latest when None) from the newest checkpoint below it.

    ``versions`` (the log's listing, when the caller already has it) selects the listing-based
    path; without it the log is not listed unless something is missing or inconsistent, in
    which case the listing gives the precise error. A version whose log entry vacuum retired
    raises :class:`VersionVacuumedError`. When there is no log at all, ``without_log(storage,
    version)`` answers (it opens a dataset of another format), else
    :class:`DatasetNotFoundError`.
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
        if not versions and without_log is not None:
            return without_log(storage, version)
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
        newer = entries_from_if_current(storage, cached)
        if newer is not None:
            return remember(storage, replay(cached, newer) if newer else cached, started)
        _CACHE.drop(storage.url)  # deleted, recreated or vacuumed past it meanwhile
    base = _state_from_hint(storage)
    if base is not None:
        newer = entries_from_if_current(storage, base)
        if newer is not None:
            return remember(storage, replay(base, newer), started)
    base = _newest_checkpoint(storage)  # no usable hint: the checkpoints' listing is short
    start = 0 if base is None else base.version + 1
    entries = read_entries_from(storage, start)
    if base is None and not entries:
        return None
    return remember(storage, replay(base, entries), started)


def entries_from_if_current(storage: Storage, state: DatasetState) -> list[Commit] | None:
    """The entries after ``state``, or None when its own entry is gone, retired or replaced."""
    try:
        entries = read_entries_from(storage, state.version)
    except VersionVacuumedError:
        return None
    if not entries or entries[0].commit_id != state.commit_id:
        return None
    return entries[1:]


def remember(storage: Storage, state: DatasetState, observed: float) -> DatasetState:
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


def _read_present(
    storage: Storage,
    versions: range,
    absent: tuple[type[Exception], ...] = (FileNotFoundError,),
) -> list[Commit | None]:
    """The entries of ``versions``, None for each that raises one of ``absent``."""

    def one(v: int) -> Commit | None:
        try:
            return read_commit(storage, v)
        except absent:
            return None

    if len(versions) == 1 or storage.local:
        return [one(v) for v in versions]
    with ThreadPoolExecutor(max_workers=len(versions)) as pool:
        return list(pool.map(one, versions))


def _load_listed(storage: Storage, version: int | None, versions: list[int]) -> DatasetState:
    if not versions:
        raise DatasetNotFoundError(f"no dataset at {storage.url}")
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
    return get_settings().state_cache


_CACHE = _StateCache()
clear_state_cache = _CACHE.clear


def read_commits(storage: Storage, versions: range | list[int]) -> list[Commit]:
    """Read log entries, in parallel when there are several (remote stores answer slowly)."""
    if len(versions) <= 2 or storage.local:
        return [read_commit(storage, v) for v in versions]
    with ThreadPoolExecutor(max_workers=min(16, len(versions))) as pool:
        return list(pool.map(lambda v: read_commit(storage, v), versions))


def read_entries_down(storage: Storage, top: int, *, stop: int = 0) -> list[Commit]:
    """The consecutive entries from ``top`` down to ``stop``, ending early at a retired one.

    Newest first; the list ends at the first entry that is missing or vacuumed.
    """
    found: list[Commit] = []
    batch = 1 if storage.local else 8
    v = top
    while v >= stop:
        versions = range(v, max(stop, v - batch + 1) - 1, -1)
        for entry in _read_present(storage, versions, (FileNotFoundError, VersionVacuumedError)):
            if entry is None:
                return found
            found.append(entry)
        v = versions[-1] - 1
        batch = min(2 * batch, 16)
    return found


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
        retired_at = now()
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
        v = version_of(info.path)
        if v is not None and v < below and info.modified is not None and info.modified < cutoff:
            old.append(v)
    old.sort()
    storage.delete([log_path(v) for v in old])
    return old


def write_checkpoint(storage: Storage, state: DatasetState) -> None:
    """Write the whole state at its version, then point the hint at it unless one is newer."""
    payload = json.dumps(state.to_json(), separators=(",", ":")).encode()
    storage.write_bytes(checkpoint_path(state.version), payload)
    hint = _read_hint(storage)
    if hint is None or hint["version"] < state.version:
        header = {"version": state.version, "state": state.to_json(with_files=False)}
        storage.write_bytes(LAST_CHECKPOINT, json.dumps(header, separators=(",", ":")).encode())


def _once(load: Callable[[], dict[str, DataFile]]) -> Callable[[], dict[str, DataFile]]:
    lock = threading.Lock()
    box: list[dict[str, DataFile]] = []

    def once() -> dict[str, DataFile]:
        with lock:
            if not box:
                box.append(load())
            return box[0]

    return once
