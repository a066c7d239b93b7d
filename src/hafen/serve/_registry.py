"""The datasets an API serves, kept at their latest version without a restart.

A :class:`Registry` holds one open :class:`~hafen.datasets.Dataset` per name. Once
:meth:`Registry.start` has run (the API does so at start-up), a background thread checks every
``refresh`` seconds whether each dataset's next log entry exists (one ``exists`` call) and, if
so, opens the new version; it also rescans the root for datasets that appeared after start-up (a
first run of the pipeline). Requests then never wait for storage beyond their own lookup. Without
the thread (not started, or ``refresh=0``), a request makes those checks itself, at most once per
``refresh`` seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Any

from hafen.datasets import Dataset, open_dataset, storage_for
from hafen.errors import DatasetNotFoundError, HafenError

__all__ = ["DEFAULT_REFRESH", "Registry"]

_log = logging.getLogger(__name__)

DEFAULT_REFRESH = 1.0
#: How deep under the root datasets are looked for (``raw/sales`` is depth 2).
MAX_DEPTH = 2


@dataclasses.dataclass
class _Entry:
    url: str
    dataset: Dataset
    checked: float


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
        self._single = self._is_dataset(self.root)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.scan()

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
            for entry in list(self._entries.values()):
                try:
                    self._refresh(entry, time.monotonic())
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

    def _candidates(self) -> dict[str, str]:
        if self._single:
            return {self.root.rsplit("/", 1)[-1]: self.root}
        storage = storage_for(self.root)
        fs, base = storage.fs, storage.full("").rstrip("/")
        found: dict[str, str] = {}
        level = [""]
        for _ in range(MAX_DEPTH):
            deeper = []
            for rel in level:
                try:
                    children = fs.ls(f"{base}/{rel}".rstrip("/"), detail=True)
                except (FileNotFoundError, OSError):
                    continue
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
        """Find datasets under the root (new ones are opened; known ones keep their entry)."""
        candidates = self._candidates()
        now = time.monotonic()
        with self._lock:
            self._scanned = now
            for name, url in candidates.items():
                if name in self._entries:
                    continue
                try:
                    self._entries[name] = _Entry(url, open_dataset(url), now)
                except DatasetNotFoundError:
                    continue

    # -- access ---------------------------------------------------------------------------------

    def names(self) -> list[str]:
        if self._watcher is None and time.monotonic() - self._scanned > self.refresh:
            self.scan()
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
                raise DatasetNotFoundError(f"no dataset named {name!r} under {self.root}")
        if self._watcher is None and now - entry.checked > self.refresh:
            self._refresh(entry, now)
        return entry.dataset

    def _refresh(self, entry: _Entry, now: float) -> None:
        entry.checked = now  # first, so concurrent requests do not all check
        # one existence check when nothing changed; on an error keep serving the version we
        # have, and the next check tries again
        with contextlib.suppress(HafenError):
            entry.dataset = entry.dataset.latest()

    def versions(self) -> dict[str, int]:
        return {name: self.get(name).version for name in self.names()}

    def info(self, name: str) -> dict[str, Any]:
        ds = self.get(name)
        return {
            "name": name,
            "url": ds.url,
            "version": ds.version,
            "timestamp": ds.timestamp,
            "num_rows": ds.num_rows,
            "partition_on": ds.partition_on,
            "indices": ds.indices,
        }
