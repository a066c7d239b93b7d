"""The one exception hierarchy of hafen.

Every error hafen raises on purpose derives from :class:`HafenError`; where a builtin fits, the
class inherits it too, so ``except FileNotFoundError`` keeps working::

    HafenError
    ├── ConfigError (ValueError)             a setting or argument is invalid
    ├── StorageError (OSError)               the storage backend failed; path in the message
    │   └── CorruptDataError                 a data or index file is damaged; names the file
    ├── DatasetError
    │   ├── DatasetNotFoundError (FileNotFoundError)
    │   ├── DatasetExistsError (FileExistsError)
    │   ├── VersionNotFoundError (LookupError)
    │   │   └── VersionVacuumedError         the version's log entry was retired by vacuum
    │   ├── CorruptMetadataError             a metadata or log file cannot be read; names the file
    │   ├── SchemaError (ValueError)         data does not match the dataset schema; names columns
    │   ├── PredicateError (ValueError)      a predicate is malformed or names an unknown column
    │   └── CommitError
    │       ├── ConflictError                the commit did NOT land; safe to retry
    │       └── CommitOutcomeUnknownError    the commit may or may not have landed
    ├── LimitError (ValueError)              a cluster-wide limit is unknown or misconfigured
    ├── LeaseTimeoutError (TimeoutError)     a lease on a limit was not granted in time
    ├── ReplicationError                     replication or drain could not be carried out
    ├── TransportError (ConnectionError)     the hafen:// transport gave up a connection
    └── SQLError                             the relational database refused or failed

Commit errors keep the distinction that matters to a caller: after :class:`ConflictError` nothing
was committed and files the writer staged may be removed; after
:class:`CommitOutcomeUnknownError` nothing may be removed, since the commit may have landed.

:class:`HafenWarning` (a ``UserWarning``) reports what went wrong without stopping an operation
that succeeded, such as a commit that landed but whose checkpoint or plateau view was not written.
"""

from __future__ import annotations

__all__ = [
    "CommitError",
    "CommitOutcomeUnknownError",
    "ConfigError",
    "ConflictError",
    "CorruptDataError",
    "CorruptMetadataError",
    "DatasetError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "HafenError",
    "HafenWarning",
    "LeaseTimeoutError",
    "LimitError",
    "PredicateError",
    "ReplicationError",
    "SQLError",
    "SchemaError",
    "StorageError",
    "TransportError",
    "VersionNotFoundError",
    "VersionVacuumedError",
]


class HafenError(Exception):
    """Root of every error hafen raises on purpose."""


class ConfigError(HafenError, ValueError):
    """A setting or an argument is invalid."""


class StorageError(HafenError, OSError):
    """The storage backend failed; the message names the path."""


class CorruptDataError(StorageError):
    """A data or index file is damaged or missing; the message (and ``path``) name the file.

    Raised when a file's bytes do not match the checksum the log recorded, a Parquet page fails
    its checksum, or the file cannot be decoded or disagrees with what the log says of it (rows,
    columns). Reading it again returns the same bytes: restore the file, or remove it from the
    dataset (e.g. overwrite its partition).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:  # keeps ``path`` across processes (Dask)
        return (type(self), (str(self),), {"path": self.path})


class DatasetError(HafenError):
    """Something is wrong with a dataset."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No dataset exists at the given URL."""


class DatasetExistsError(DatasetError, FileExistsError):
    """A dataset already exists where ``mode="create"`` asked for a new one."""


class VersionNotFoundError(DatasetError, LookupError):
    """The requested version does not exist or has been vacuumed."""


class VersionVacuumedError(VersionNotFoundError):
    """The version existed but vacuum has retired its log entry; open a newer version."""

    def __init__(self, message: str, *, version: int = -1, commit_id: str = "") -> None:
        super().__init__(message)
        self.version = version
        self.commit_id = commit_id


class CorruptMetadataError(DatasetError):
    """A metadata, log or checkpoint file cannot be parsed; the message names the file."""


class SchemaError(DatasetError, ValueError):
    """Data does not match the dataset schema; the message names the columns and types."""


class PredicateError(DatasetError, ValueError):
    """A predicate is malformed or names a column the dataset does not have."""


class CommitError(DatasetError):
    """A commit did not complete."""


class ConflictError(CommitError):
    """A concurrent commit changed what this one depends on. Nothing landed; safe to retry."""


class CommitOutcomeUnknownError(CommitError):
    """The commit may or may not have landed (for example the connection dropped mid-write).

    Never delete the files of such a commit: they may be referenced.
    """


class LimitError(HafenError, ValueError):
    """A cluster-wide limit is unknown, or its settings are invalid."""


class LeaseTimeoutError(HafenError, TimeoutError):
    """A lease on a cluster-wide limit was not granted within its timeout; nothing is held."""


class ReplicationError(HafenError):
    """Replication or a drain could not be carried out."""


class TransportError(HafenError, ConnectionError):
    """The ``hafen://`` transport gave up a connection: no link for its grace period, its buffer
    full while the peer was unreachable, or a resume the peer refused. The session's classes
    are also Dask's ``CommClosedError``, so Dask handles them as a broken connection."""


class SQLError(HafenError):
    """The relational database refused or failed; the message names the URL (without secrets)."""


class HafenWarning(UserWarning):
    """Something went wrong that did not stop the operation (e.g. the plateau view)."""
