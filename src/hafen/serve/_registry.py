"""The datasets an API serves, kept at their latest version without a restart.

A :class:`Registry` holds one open :class:`~hafen.datasets.Dataset` per name. Once
:meth:`Registry.start` has run (the API does so at start-up), a background thread checks every
``refresh`` seconds whether each dataset's next log entry exists (one ``exists`` call) and, if
so, opens the new version; it also rescans the root for datasets that appeared after start-up (a
first run of the pipeline). Requests then never wait for storage beyond their own lookup. Without
the thread (not started, or ``refresh=0``), a request makes those checks itself, at most once per
``refresh`` seconds.

A newer log entry is not the only change to follow: a dataset can be deleted and recreated under
the same name (``hafen demo --fresh``), with fewer versions than before, or vacuumed under the
version held. Each check therefore also re-opens the latest version and compares its identity
(``dataset_id``, version, commit id) with the one held, and a dataset that vanished is dropped
(requests answer 404 until a rescan finds it again). :meth:`Registry.reopen` does the same on
demand, for a request whose lookup failed on the version it held.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from hafen._secrets import get_logger
from hafen.datasets import Dataset, open_dataset
from hafen.datasets._dataset import storage_for
from hafen.datasets._storage import map_storage_errors
from hafen.errors import DatasetNotFoundError, HafenError

__all__ = ["DEFAULT_REFRESH", "Registry", "identity"]

_log = get_logger(__name__)

DEFAULT_REFRESH = 1.0
#: How deep under the root datasets are looked for (``raw/sales`` is depth 2).
MAX_DEPTH = 2


@dataclasses.dataclass
class _Entry:
    url: str
    dataset: Dataset
    checked: float


def identity(ds: Dataset) -> tuple[str, str, int, str]:
    """What tells two opened versions apart, also across a delete and recreate of the dataset
    (the version number alone repeats then): URL, dataset id, version and commit id."""
    state = ds.state
    return (ds.url, state.dataset_id, state.version, state.commit_id)


class Registry:
    """Datasets under ``root`` by name (their path below it), each at its latest version.

    ``root`` is either a folder of datasets or one dataset (then named by its last path part).
    """

    def __init__(self, root: str, *, refresh: float = DEFAULT_REFRESH) -> None:
        self.root = root.rstrip("/") or root
        self.refresh = refresh
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._scanned = 0.0
        self._broken: dict[str, BaseException] = {}  # why a dataset found by the scan is not open
        self._scan_error: BaseException | None = None  # why the last scan failed
        self._single: bool | None = None  # whether the root is one dataset, once storage says
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        try:
            self.scan()
        except (HafenError, OSError) as exc:  # storage down at start-up: 503s until it is back
            _log.warning("looking for datasets under %s failed: %s", self.root, exc)

    # -- the background check -------------------------------------------------------------------

    def start(self) -> None:
        """Check for new versions and datasets in a background thread (none if refresh is 0)."""
        if self.refresh <= 0 or self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(
            target=self._watch, name="hafen-serve-refresh", daemon=True
        )
        self._watcher.start()

    def stop(self) -> None:
        """Stop the background thread; requests check for themselves again."""
        watcher, self._watcher = self._watcher, None
        self._stop.set()
        if watcher is not None:
            watcher.join(timeout=max(5.0, 2 * self.refresh))

    def _watch(self) -> None:
        while not self._stop.wait(self.refresh):
            # the thread must outlive a failed round, or the served versions would never move
            # again; the next round tries again
            try:
                self.scan()
            except Exception:
                _log.warning("rescanning %s failed", self.root, exc_info=True)
            for name, entry in list(self._entries.items()):
                try:
                    self._refresh(name, entry, time.monotonic())
                except Exception:
                    _log.warning("checking %s for a new version failed", entry.url, exc_info=True)

    # -- discovery -------------------------------------------------------------------------------

    @staticmethod
    def _is_dataset(url: str) -> bool:
        try:
            storage = storage_for(url)
            return bool(storage.exists("_hafen") or storage.exists("_hafen/log"))
        except (HafenError, OSError, ValueError):
            return False

    def _candidates(self, single: bool) -> dict[str, str]:
        """Datasets under the root by name; raises the storage's error (not a missing folder)."""
        if single:
            return {self.root.rsplit("/", 1)[-1]: self.root}
        storage = storage_for(self.root)
        fs, base = storage.fs, storage.full("").rstrip("/")
        found: dict[str, str] = {}
        level = [""]
        for _ in range(MAX_DEPTH):
            deeper = []
            for rel in level:
                folder = f"{base}/{rel}".rstrip("/")
                try:
                    with map_storage_errors(folder):
                        children = fs.ls(folder, detail=True)
                except FileNotFoundError:
                    continue  # not there (yet), or deleted meanwhile
                for child in children:
                    if child.get("type") != "directory":
                        continue
                    name = child["name"].rstrip("/").rsplit("/", 1)[-1]
                    if name.startswith(("_", ".")):
                        continue
                    sub = f"{rel}/{name}".lstrip("/")
                    url = f"{self.root}/{sub}"
                    if fs.exists(f"{base}/{sub}/_hafen"):
                        found[sub] = url
                    else:
                        deeper.append(sub)
            level = deeper
        return found

    def scan(self) -> None:
        """Find datasets under the root (new ones are opened; known ones keep their entry).

        Raises the storage's error when the root cannot be listed (the datasets held are kept).
        """
        single = self._single if self._single is not None else self._is_dataset(self.root)
        try:
            candidates = self._candidates(single)
        except (HafenError, OSError) as exc:
            self._scan_error, self._scanned = exc, time.monotonic()
            raise
        if single or candidates:  # an outage may have hidden the root's own log
            self._single = single
        self._scan_error = None
        now = time.monotonic()
        with self._lock:
            self._scanned = now
            self._broken = {}
            for name, url in candidates.items():
                if name in self._entries:
                    continue
                try:
                    self._entries[name] = _Entry(url, open_dataset(url), now)
                except DatasetNotFoundError:
                    continue
                except (HafenError, OSError) as exc:  # the others are still served
                    self._broken[name] = exc
                    _log.warning("opening %s failed: %s", url, exc)

    # -- access ---------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The datasets served; raises the storage's error when there are none for want of it."""
        if self._watcher is None and time.monotonic() - self._scanned > self.refresh:
            try:
                self.scan()
            except (HafenError, OSError):
                if not self._entries:
                    raise
        if self._scan_error is not None and not self._entries:
            raise self._scan_error.with_traceback(None)
        return sorted(self._entries)

    def get(self, name: str) -> Dataset:
        """The latest version of dataset ``name``; raises :class:`DatasetNotFoundError`."""
        entry = self._entries.get(name)
        now = time.monotonic()
        if entry is None:
            if now - self._scanned > self.refresh:
                self.scan()
                entry = self._entries.get(name)
            if entry is None:
                if self._scan_error is not None:  # it may well exist: say why we cannot tell
                    raise self._scan_error.with_traceback(None)
                broken = self._broken.get(name)
                if broken is not None:
                    raise broken.with_traceback(None)
                raise DatasetNotFoundError(f"no dataset named {name!r}")
        if self._watcher is None and now - entry.checked > self.refresh:
            self._refresh(name, entry, now)
            entry = self._entries.get(name)
            if entry is None:
                raise DatasetNotFoundError(f"no dataset named {name!r}")
        return entry.dataset

    def reopen(self, name: str) -> Dataset:
        """Dataset ``name`` re-opened at its latest version now, whatever the refresh interval.

        For a request whose lookup failed on the version held (its files vacuumed, the dataset
        deleted or recreated). Raises :class:`DatasetNotFoundError` when it is gone, and the
        storage's error when the latest version cannot be opened.
        """
        entry = self._entries.get(name)
        if entry is None:
            return self.get(name)
        entry.checked = time.monotonic()
        try:
            self._adopt(entry, self._newest(entry))
        except DatasetNotFoundError:
            self._drop(name, entry)
            raise DatasetNotFoundError(f"no dataset named {name!r}") from None
        return entry.dataset

    def _refresh(self, name: str, entry: _Entry, now: float) -> None:
        entry.checked = now  # first, so concurrent requests do not all check
        try:
            self._adopt(entry, self._newest(entry))
        except DatasetNotFoundError:
            self._drop(name, entry)  # deleted: 404 until a rescan finds it again
        except (HafenError, OSError) as exc:
            # keep serving the version we have; the next check tries again
            _log.warning("checking %s for a new version failed: %s", entry.url, exc)

    @staticmethod
    def _newest(entry: _Entry) -> Dataset:
        # latest() also notices a dataset vacuumed past the version held, or deleted and
        # recreated with as many versions or fewer: two small reads when nothing changed
        return entry.dataset.latest()

    def _adopt(self, entry: _Entry, fresh: Dataset) -> None:
        """Serve ``fresh`` unless it is the version held (keep the object, and what is cached
        for it) or an older version of the same dataset (a concurrent check got further)."""
        with self._lock:
            current = entry.dataset
            if identity(fresh) == identity(current):
                return
            same = fresh.state.dataset_id == current.state.dataset_id
            if same and fresh.version < current.version:
                return  # never backwards within one dataset
            entry.dataset = fresh

    def _drop(self, name: str, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(name) is entry:
                del self._entries[name]
                self._scanned = 0.0  # look for it again on the next request or round
        _log.info("dataset %s is gone; it is no longer served", name)

    def versions(self) -> dict[str, int]:
        versions = {}
        for name in self.names():
            try:
                versions[name] = self.get(name).version
            except DatasetNotFoundError:
                continue  # deleted since it was listed
        return versions

    def info(self, name: str) -> dict[str, Any]:
        """What the API shows of a dataset: its name and metadata, never where it is stored."""
        return describe(name, self.get(name))


def describe(name: str, ds: Dataset) -> dict[str, Any]:
    """Name, version, time, rows and layout of ``ds`` (no URL, path or credential)."""
    return {
        "name": name,
        "version": ds.version,
        "timestamp": ds.timestamp,
        "num_rows": ds.num_rows,
        "partition_on": ds.partition_on,
        "indices": ds.indices,
    }
