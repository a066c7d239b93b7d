"""``memory://``: one process, so the exclusive create is a check and set under a lock."""

from __future__ import annotations

import threading

from hafen.datasets._storage._base import Storage

__all__ = ["MemoryStorage"]

_MEMORY_LOCK = threading.Lock()


class MemoryStorage(Storage):
    """``memory://``: one process, so the exclusive create is a check and set under a lock."""

    schemes = ("memory",)
    modified_resolution = 0.0
    local = True

    def _put_if_absent(self, full: str, data: bytes) -> bool:
        with _MEMORY_LOCK:
            if self.fs.exists(full):
                return False
            self.fs.pipe_file(full, data)
            return True
