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

from hafen.datasets._storage._azure import AzureStorage
from hafen.datasets._storage._base import FileInfo, Storage, map_storage_errors
from hafen.datasets._storage._local import LocalStorage
from hafen.datasets._storage._memory import MemoryStorage
from hafen.datasets._storage._s3 import S3Storage

__all__ = [
    "AzureStorage",
    "FileInfo",
    "LocalStorage",
    "MemoryStorage",
    "S3Storage",
    "Storage",
    "map_storage_errors",
]
