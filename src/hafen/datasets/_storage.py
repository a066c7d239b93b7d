"""Storage: one fsspec filesystem rooted at a dataset URL, with one atomic primitive.

Every guarantee of the commit log rests on :meth:`Storage.put_if_absent`, an exclusive create
that either writes the whole object or fails because it already exists:

=========  ==========================================================================
backend    primitive
=========  ==========================================================================
local      write a temporary file, then ``os.link`` it to the target (fails if taken)
memory     check and set under a process-wide lock (``memory://`` is one process)
az, abfs   a conditional upload (``If-None-Match: *``) through adlfs' blob client, tagged
           with a token in the blob's metadata (see :meth:`AzureStorage._put_if_absent`)
s3         a conditional PUT (``If-None-Match: *``) through s3fs' botocore client, tagged
           like Azure's (see :meth:`S3Storage._put_if_absent`)
=========  ==========================================================================

Everything else (writing data files, listing, deleting) needs no atomicity: data files get
unique names and become visible only through a log entry. All backend errors are translated to
:class:`~hafen.errors.StorageError` in :func:`map_storage_errors`, naming the path.

Azure credentials come from ``storage_options`` (any adlfs argument: ``connection_string``,
``account_name`` with ``account_key`` or ``sas_token``, ``credential``...), else from the
environment: ``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT_NAME`` with
``AZURE_STORAGE_ACCOUNT_KEY`` / ``AZURE_STORAGE_SAS_TOKEN`` / a service principal
(``AZURE_STORAGE_CLIENT_ID``, ``_CLIENT_SECRET``, ``_TENANT_ID``). An account key or a SAS
token with a ``blob_endpoint`` option or ``AZURE_STORAGE_BLOB_ENDPOINT`` (an emulator, a private
endpoint) becomes a connection string. The environment is read when a :class:`Storage` is built and
passed to adlfs explicitly, so fsspec's instance cache never hands out a filesystem built from
other credentials; a pickled :class:`Storage` carries only the explicit options.

S3 credentials come from ``storage_options`` (any s3fs argument: ``key`` and ``secret``,
``profile``, ``client_kwargs={"endpoint_url": ...}``...), else from the AWS SDK's own chain:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, an
instance or pod role. An S3-compatible service (MinIO, Ceph, an emulator) is reached through
``client_kwargs={"endpoint_url": ...}`` or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. The
endpoint and the access key variables are read when a :class:`Storage` is built and passed to
s3fs explicitly, for the same reason as on Azure.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import fsspec
import pyarrow.fs as pafs

from hafen._secrets import redact
from hafen.errors import HafenError, StorageError

__all__ = [
    "AzureStorage",
    "FileInfo",
    "LocalStorage",
    "MemoryStorage",
    "S3Storage",
    "Storage",
    "map_storage_errors",
]

_MEMORY_LOCK = threading.Lock()

# Azure: the exclusive create retries throttling (429, 503) and transient failures this many
# times, sleeping a random time up to AZURE_BACKOFF * 2**attempt (at most AZURE_MAX_BACKOFF, or
# the service's Retry-After) between attempts; then it gives up with an unknown outcome.
AZURE_ATTEMPTS = 6
AZURE_BACKOFF = 0.25
AZURE_MAX_BACKOFF = 8.0
_AZURE_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_AZURE_TOKEN_KEY = "hafen_put_token"
_AZURE_CREDENTIAL_KEYS = frozenset(
    {"connection_string", "account_key", "sas_token", "credential", "client_id", "anon"}
)
_AZURE_ENV = {
    "account_name": "AZURE_STORAGE_ACCOUNT_NAME",
    "account_key": "AZURE_STORAGE_ACCOUNT_KEY",
    "sas_token": "AZURE_STORAGE_SAS_TOKEN",
    "client_id": "AZURE_STORAGE_CLIENT_ID",
    "client_secret": "AZURE_STORAGE_CLIENT_SECRET",
    "tenant_id": "AZURE_STORAGE_TENANT_ID",
}


# S3: the exclusive create retries the same way (S3 answers 409 ConditionalRequestConflict to a
# conditional PUT racing another one on the same key, and asks to retry).
S3_ATTEMPTS = 6
_S3_TOKEN_KEY = "hafen-put-token"
_S3_RETRY_CODES = frozenset(
    {"ConditionalRequestConflict", "SlowDown", "Throttling", "ThrottlingException",
     "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
     "408", "409", "429", "500", "502", "503", "504"}
)  # fmt: skip
_S3_CREDENTIAL_KEYS = frozenset({"key", "secret", "token", "profile", "anon", "session"})
_S3_ENV = {
    "key": "AWS_ACCESS_KEY_ID",
    "secret": "AWS_SECRET_ACCESS_KEY",
    "token": "AWS_SESSION_TOKEN",
}


def _s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """Return s3fs arguments: ``options`` completed from the ``AWS_*`` environment."""
    out = dict(options)
    # listings must be fresh: another process may have committed since the last one
    out.setdefault("use_listings_cache", False)
    client_kwargs = dict(out.get("client_kwargs") or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in out:
        client_kwargs["endpoint_url"] = endpoint
    if client_kwargs:
        out["client_kwargs"] = client_kwargs
    if not _S3_CREDENTIAL_KEYS & out.keys() and os.environ.get("AWS_ACCESS_KEY_ID"):
        for key, variable in _S3_ENV.items():
            if os.environ.get(variable):
                out[key] = os.environ[variable]
    return out


def _s3_transient(exc: BaseException) -> bool:
    """Whether ``exc`` from botocore is worth retrying (conflict, throttling, 5xx, connection)."""
    from botocore.exceptions import ClientError, HTTPClientError

    if isinstance(exc, HTTPClientError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, ClientError):
        return _s3_code(exc) in _S3_RETRY_CODES
    return type(exc).__module__.split(".")[0] == "aiohttp"


def _s3_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    code = str(error.get("Code") or "")
    return "412" if status == 412 and not code else code


def _azure_options(options: dict[str, Any]) -> dict[str, Any]:
    """Return adlfs arguments: ``options`` completed from the ``AZURE_STORAGE_*`` environment."""
    out = dict(options)
    # listings must be fresh: another process may have committed since the last one
    out.setdefault("use_listings_cache", False)
    endpoint = out.pop("blob_endpoint", None) or os.environ.get("AZURE_STORAGE_BLOB_ENDPOINT")
    if not _AZURE_CREDENTIAL_KEYS & out.keys():
        connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection_string:
            out["connection_string"] = connection_string
        else:
            for key, variable in _AZURE_ENV.items():
                if key not in out and os.environ.get(variable):
                    out[key] = os.environ[variable]
    if endpoint and out.get("account_name") and out.get("account_key"):
        scheme = endpoint.split("://", 1)[0] if "://" in endpoint else "https"
        out["connection_string"] = (
            f"DefaultEndpointsProtocol={scheme};AccountName={out.pop('account_name')};"
            f"AccountKey={out.pop('account_key')};BlobEndpoint={endpoint.rstrip('/')};"
        )
    elif endpoint and out.get("sas_token"):
        out.pop("account_name", None)
        out["connection_string"] = (
            f"BlobEndpoint={endpoint.rstrip('/')};"
            f"SharedAccessSignature={out.pop('sas_token').lstrip('?')};"
        )
    return out


def _azure_transient(exc: BaseException) -> bool:
    """Whether ``exc`` from the Azure SDK is worth retrying (throttling, 5xx, connection)."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, HttpResponseError):
        return exc.status_code in _AZURE_RETRY_STATUS
    return type(exc).__module__.split(".")[0] == "aiohttp"


def _retry_after(exc: BaseException | None) -> float:
    response = getattr(exc, "response", None)
    try:
        return float(response.headers.get("Retry-After", 0)) if response is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


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

    def makedirs(self, path: str) -> None:
        """Create directory ``path`` where directories exist (object stores have none)."""


class LocalStorage(Storage):
    """Local files: writes replace atomically (rename); the exclusive create is ``os.link``."""

    schemes = ("", "file", "local")
    modified_resolution = 0.0

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

    def makedirs(self, path: str) -> None:
        full = self.full(path)
        with map_storage_errors(full):
            os.makedirs(full, exist_ok=True)


class MemoryStorage(Storage):
    """``memory://``: one process, so the exclusive create is a check and set under a lock."""

    schemes = ("memory",)
    modified_resolution = 0.0

    def _put_if_absent(self, full: str, data: bytes) -> bool:
        with _MEMORY_LOCK:
            if self.fs.exists(full):
                return False
            self.fs.pipe_file(full, data)
            return True


class AzureStorage(Storage):
    """Azure Blob Storage (adlfs): a conditional upload tagged with a token, retried safely."""

    schemes = ("az", "abfs", "abfss")

    def _backend_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return _azure_options(options)

    def _put_if_absent(self, full: str, data: bytes) -> bool:
        """Conditional upload (``If-None-Match: *``), retried without ever committing twice.

        Each call tags its blob with a random token in the blob's metadata. An attempt that
        fails after the service may have stored the blob (a dropped connection, a 5xx) is
        retried; if the retry finds the blob already there, its token says whether it is this
        call's own write (success) or another writer's (lost the race). Throttling and
        transient failures are retried with exponential backoff and jitter; when the attempts
        run out a :class:`StorageError` says the outcome is unknown.
        """
        from fsspec.asyn import sync

        container, blob, _ = self.fs.split_path(full)
        token = uuid.uuid4().hex
        last: BaseException | None = None
        for attempt in range(AZURE_ATTEMPTS):
            if attempt:
                pause = random.uniform(0, min(AZURE_MAX_BACKOFF, AZURE_BACKOFF * 2**attempt))
                time.sleep(max(pause, min(_retry_after(last), AZURE_MAX_BACKOFF)))
            try:
                return sync(self.fs.loop, self._azure_create, container, blob, data, token)
            except Exception as exc:
                if not _azure_transient(exc):
                    raise
                last = exc
        raise StorageError(
            f"{full}: Azure did not confirm the exclusive create after {AZURE_ATTEMPTS} "
            f"attempts; the blob may or may not exist: {type(last).__name__}: {last}"
        ) from last

    async def _azure_create(self, container: str, blob: str, data: bytes, token: str) -> bool:
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        metadata = {"is_directory": "false", _AZURE_TOKEN_KEY: token}
        async with self.fs.service_client.get_blob_client(container=container, blob=blob) as bc:
            try:
                # retry_total=0: this method's caller owns the retries and their outcome
                await bc.upload_blob(data, overwrite=False, metadata=metadata, retry_total=0)
            except (ResourceExistsError, ResourceModifiedError):
                properties = await bc.get_blob_properties(retry_total=0)
                return (properties.metadata or {}).get(_AZURE_TOKEN_KEY) == token
        self.fs.invalidate_cache(f"{container}/{blob}")
        return True


class S3Storage(Storage):
    """S3 (s3fs): a conditional PUT tagged with a token, retried safely."""

    schemes = ("s3", "s3a")

    def _backend_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return _s3_options(options)

    def _put_if_absent(self, full: str, data: bytes) -> bool:
        """Conditional PUT (``If-None-Match: *``), retried without ever committing twice.

        As on Azure, each call tags its object with a random token (user metadata): a PUT that
        the SDK or this loop retries after the object was stored (a dropped connection, a 5xx)
        meets 412 PreconditionFailed, and the token says whether the object is this call's own
        write (success) or another writer's (lost the race). 409 ConditionalRequestConflict (a
        racing conditional PUT still in flight), throttling and transient failures are retried
        with exponential backoff and jitter; when the attempts run out a :class:`StorageError`
        says the outcome is unknown.
        """
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(full)
        token = uuid.uuid4().hex
        last: BaseException | None = None
        for attempt in range(S3_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(AZURE_MAX_BACKOFF, AZURE_BACKOFF * 2**attempt)))
            try:
                created: bool = sync(self.fs.loop, self._s3_create, bucket, key, data, token)
            except Exception as exc:
                if not _s3_transient(exc):
                    raise
                last = exc
            else:
                self.fs.invalidate_cache(full)
                return created
        raise StorageError(
            f"{full}: S3 did not confirm the exclusive create after {S3_ATTEMPTS} "
            f"attempts; the object may or may not exist: {type(last).__name__}: {last}"
        ) from last

    async def _s3_create(self, bucket: str, key: str, data: bytes, token: str) -> bool:
        from botocore.exceptions import ClientError

        await self.fs.set_session()  # s3fs builds its client on first use
        client = await self.fs.get_s3(bucket)
        try:
            await client.put_object(
                Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", Metadata={_S3_TOKEN_KEY: token}
            )
        except ClientError as exc:
            if _s3_code(exc) not in ("PreconditionFailed", "412"):
                raise
            head = await client.head_object(Bucket=bucket, Key=key)
            return bool((head.get("Metadata") or {}).get(_S3_TOKEN_KEY) == token)
        return True
