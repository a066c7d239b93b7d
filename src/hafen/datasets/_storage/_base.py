"""The storage interface: :class:`Storage`, its paths, listings and error translation.

A backend subclasses :class:`Storage`, names its URL schemes in ``schemes`` and implements the
exclusive create in ``_put_if_absent``; ``Storage(url)`` returns the subclass of the URL's scheme.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import fsspec
import pyarrow.fs as pafs

from hafen._secrets import redact
from hafen.errors import HafenError, StorageError

__all__ = ["FileInfo", "Storage", "map_storage_errors"]


@contextlib.contextmanager
def map_storage_errors(path: str) -> Iterator[None]:
    """Translate backend errors into :class:`StorageError` naming ``path``.

    The message never holds a credential: a backend that echoes a SAS token, an account key or
    a connection string has it masked (:func:`hafen._secrets.redact`).
    """
    try:
        yield
    except HafenError:
        raise
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RuntimeError, TimeoutError) as exc:
        raise _storage_error(path, exc) from _cause(exc)
    except Exception as exc:  # SDK errors (azure.core, botocore) share no base class
        if type(exc).__module__.split(".")[0] in {"azure", "botocore", "aiohttp", "s3fs", "adlfs"}:
            raise _storage_error(path, exc) from _cause(exc)
        raise


def _storage_error(path: str, exc: BaseException) -> StorageError:
    return StorageError(redact(f"{path}: {type(exc).__name__}: {exc}"))


def _cause(exc: BaseException) -> BaseException | None:
    """``exc``, unless its message holds a credential (then no cause, so no traceback shows it)."""
    return exc if redact(str(exc)) == str(exc) else None


@dataclass(frozen=True)
class FileInfo:
    """A stored object: its path relative to the storage root, size and modification time."""

    path: str
    size: int
    modified: dt.datetime | None


def _modified(info: dict[str, Any]) -> dt.datetime | None:
    for key in ("mtime", "last_modified", "LastModified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return dt.datetime.fromtimestamp(value, tz=dt.UTC)
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None


class Storage:
    """A filesystem rooted at ``url``; all paths given to its methods are relative to that root.

    ``Storage(url, options)`` returns the subclass of the URL's backend (:class:`LocalStorage`,
    :class:`MemoryStorage`, :class:`AzureStorage`, :class:`S3Storage`); each has its own
    exclusive create (:meth:`put_if_absent`). Any other fsspec URL gives a plain
    :class:`Storage`, which reads and writes but refuses the exclusive create, so no dataset
    can be committed there.
    """

    #: the URL schemes this class serves (``""``: a path without a scheme)
    schemes: ClassVar[tuple[str, ...]] = ()
    #: how coarse the backend's last-modified times are, in seconds (blob stores: 1)
    modified_resolution: ClassVar[float] = 1.0
    #: whether the files are on this machine (disk or memory): a read costs no round trip, so
    #: reading one file at a time is as fast as batching, and scratch files are not compressed
    local: ClassVar[bool] = False
    #: whether directories exist apart from the files in them (local disk): a writer creates a
    #: file's directory first, and empty directories stay behind unless removed
    has_directories: ClassVar[bool] = False
    _backends: ClassVar[dict[str, type[Storage]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for scheme in cls.schemes:
            Storage._backends[scheme] = cls

    def __new__(cls, url: str, storage_options: dict[str, Any] | None = None) -> Storage:
        if cls is Storage:
            scheme = fsspec.core.split_protocol(str(url))[0] or ""
            cls = Storage._backends.get(scheme, Storage)
        return super().__new__(cls)

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        options = dict(storage_options or {})
        backend_options = self._backend_options(options)
        with map_storage_errors(self.url):
            try:
                fs, root = fsspec.core.url_to_fs(self.url, **backend_options)
            except ImportError as exc:
                raise StorageError(
                    f"{self.url}: a package this backend needs is missing: {exc}"
                ) from exc
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/")
        self.storage_options = options
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol: str = {"abfs": "az", "abfss": "az", "s3a": "s3"}.get(protocol, protocol)

    def _backend_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The fsspec arguments for ``options`` (a backend completes them from its environment)."""
        return options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Storage, (self.url, self.storage_options))

    # -- paths -------------------------------------------------------------------------------

    def full(self, path: str) -> str:
        """Return the backend path of ``path``."""
        return f"{self.root}/{path}" if path else self.root

    def relative(self, full_path: str) -> str:
        full_path = full_path.rstrip("/")
        prefix = self.root + "/"
        if full_path.startswith(prefix):
            return full_path[len(prefix) :]
        # some backends drop a leading slash in listings
        stripped = prefix.lstrip("/")
        if full_path.startswith(stripped):
            return full_path[len(stripped) :]
        return full_path

    def sibling(self, suffix: str) -> str:
        """Return the backend path of a file beside the root: ``ROOT`` + ``suffix``."""
        return self.root + suffix

    @property
    def arrow_filesystem(self) -> pafs.FileSystem:
        """A pyarrow filesystem over the same backend (native for local files)."""
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    # -- reading and writing -------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes:
        full = self.full(path)
        with map_storage_errors(full):
            return self.fs.cat_file(full)

    def read_full(self, full_path: str) -> bytes:
        with map_storage_errors(full_path):
            return self.fs.cat_file(full_path)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path``, replacing it; atomic on local files (rename)."""
        self.write_full(self.full(path), data)

    def write_full(self, full_path: str, data: bytes) -> None:
        with map_storage_errors(full_path):
            self._write(full_path, data)

    def _write(self, full: str, data: bytes) -> None:
        self.fs.pipe_file(full, data)

    def put_if_absent(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` only if it does not exist; return whether it was created.

        The create is all-or-nothing: a reader never sees part of ``data``. Every guarantee of
        the commit log rests on it; each backend implements it in :meth:`_put_if_absent`.
        """
        full = self.full(path)
        with map_storage_errors(full):
            return self._put_if_absent(full, data)

    def _put_if_absent(self, full: str, data: bytes) -> bool:
        raise StorageError(
            f"{self.url}: the {self.protocol!r} backend has no exclusive create; "
            "hafen supports local paths, memory://, az:// / abfs:// and s3://"
        )

    def exists(self, path: str) -> bool:
        full = self.full(path)
        with map_storage_errors(full):
            return bool(self.fs.exists(full))

    def exists_full(self, full_path: str) -> bool:
        with map_storage_errors(full_path):
            return bool(self.fs.exists(full_path))

    def list(self, path: str) -> list[FileInfo]:
        """List the files directly in directory ``path`` (empty if it does not exist)."""
        full = self.full(path)
        with map_storage_errors(full):
            try:
                entries = self.fs.ls(full, detail=True)
            except FileNotFoundError:
                return []
        return [
            FileInfo(self.relative(e["name"]), int(e.get("size") or 0), _modified(e))
            for e in entries
            if e.get("type") != "directory"
        ]

    def walk(self, path: str) -> builtins.list[FileInfo]:
        """List every file below directory ``path``, recursively."""
        full = self.full(path)
        with map_storage_errors(full):
            try:
                found = self.fs.find(full, detail=True)
            except FileNotFoundError:
                return []
        return [
            FileInfo(self.relative(name), int(e.get("size") or 0), _modified(e))
            for name, e in found.items()
            if e.get("type") != "directory"
        ]

    def size(self, path: str) -> int:
        full = self.full(path)
        with map_storage_errors(full):
            return int(self.fs.size(full))

    def delete(self, paths: builtins.list[str]) -> None:
        if not paths:
            return
        full = [self.full(p) for p in paths]
        with map_storage_errors(full[0]):
            try:
                self.fs.rm(full)
            except FileNotFoundError:
                for one in full:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(one)

    def create_parent(self, full: str) -> None:
        """Create the directory a file at the full path ``full`` is about to be written in,
        where directories exist."""

    def makedirs(self, path: str) -> None:
        """Create directory ``path`` where directories exist (object stores have none)."""
