"""Local files: writes replace by rename; the exclusive create is ``os.link``."""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs

from hafen.datasets._storage._base import Storage, map_storage_errors

__all__ = ["LocalStorage"]


class LocalStorage(Storage):
    """Local files: writes replace atomically (rename); the exclusive create is ``os.link``."""

    schemes = ("", "file", "local")
    modified_resolution = 0.0
    local = True
    has_directories = True

    @property
    def arrow_filesystem(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem()

    def _write(self, full: str, data: bytes) -> None:
        directory = os.path.dirname(full)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, full)

    def _put_if_absent(self, full: str, data: bytes) -> bool:
        directory = os.path.dirname(full)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, full)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def create_parent(self, full: str) -> None:
        with map_storage_errors(full):
            os.makedirs(os.path.dirname(full), exist_ok=True)

    def makedirs(self, path: str) -> None:
        full = self.full(path)
        with map_storage_errors(full):
            os.makedirs(full, exist_ok=True)
