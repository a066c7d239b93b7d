"""What the API answers when a lookup fails: a status and a JSON reason, never a bare 500.

=====================================================  ======  ==========================
failure                                                status  ``error``
=====================================================  ======  ==========================
no such dataset (also: deleted meanwhile)              404     ``dataset_not_found``
no rows for the store (and product) asked for          404     ``no_rows``
the version asked for does not exist or was vacuumed   404     ``version_not_found``
storage failing (:class:`~hafen.errors.StorageError`,  503     ``storage_unavailable``,
an ``OSError`` from the backend)                               with ``Retry-After``
a damaged metadata, index or data file (unreadable,    500     ``dataset_damaged``
a checksum mismatch, a referenced file missing)
the dataset's schema cannot answer the request         500     ``dataset_unusable``
anything else                                          500     ``internal_error``
=====================================================  ======  ==========================

The body is ``{"detail": ..., "error": ..., "dataset": ...}``, also for FastAPI's own 4xx
answers (an unknown path, ``bad_request``) but not for its 422 validation errors. It names the
dataset, never a storage URL, a local path or a credential: the detail is written here, from the
kind of failure, not copied from the exception (whose message names the backend path). The
exception itself goes to the server's log, secrets masked.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from hafen._secrets import get_logger, redact
from hafen.errors import (
    CorruptMetadataError,
    DatasetNotFoundError,
    PredicateError,
    SchemaError,
    StorageError,
    VersionNotFoundError,
)

__all__ = ["RETRY_AFTER", "ApiError", "ErrorBody", "api_error", "install_handlers"]

_log = get_logger(__name__)

#: Seconds a client is asked to wait (``Retry-After``) when storage is failing.
RETRY_AFTER = 5
_DAMAGE_WORDS = ("corrupt", "damage", "checksum", "integrity")  # in an error's class name
# in its message: what Arrow and Parquet say of a damaged file (an OSError without an errno)
_DAMAGE_TEXT = (
    "corrupt",
    "thrift",
    "magic bytes",
    "deserializ",
    "snappy",
    "malformed",
    "truncated",
    "smaller than the minimum",
    "unexpected end",
)
# which file, from hafen's layout
_LAYOUT = (
    ("/_hafen/indices/", "an index file"),
    ("/_hafen/checkpoints/", "a checkpoint"),
    ("/_hafen/log/", "its commit log"),
    ("/table/", "a data file"),
)
_HTTP_ERRORS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
_PATHS = re.compile(r"\S*[/\\]\S*")


class ErrorBody(BaseModel):
    detail: str
    error: str
    dataset: str | None = None


class ApiError(Exception):
    """An answer to a failed request: status, machine-readable ``error``, readable detail."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        dataset: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.dataset, self.headers = dataset, headers or {}

    def response(self) -> JSONResponse:
        body = {"detail": self.detail, "error": self.error, "dataset": self.dataset}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _damage(exc: BaseException) -> str | None:
    """What is damaged, when ``exc`` says the dataset is (rather than storage failing)."""
    chain = _chain(exc)
    raw = " ".join(str(e) for e in chain)
    words = _PATHS.sub(" ", raw).lower()  # no keyword taken from a path (a dataset's name)
    names = " ".join(c.__name__ for e in chain for c in type(e).__mro__).lower()
    metadata = isinstance(exc, CorruptMetadataError)
    what = next((label for part, label in _LAYOUT if part in raw), None)
    if what is None:
        what = "an index file" if "index" in words else "its metadata" if metadata else None
    what = what or "a data file"
    if "checksum" in words:
        return f"{what} does not match its checksum"
    if (
        metadata
        or any(w in names for w in _DAMAGE_WORDS)
        or any(w in words for w in _DAMAGE_TEXT)
        or any(isinstance(e, pa.ArrowException) and not isinstance(e, OSError) for e in chain)
    ):
        return f"{what} cannot be read"
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return f"{what} it refers to is missing"
    return None


def api_error(exc: BaseException, name: str | None) -> ApiError:
    """The answer to ``exc``, raised while serving dataset ``name`` (None: the list)."""
    if isinstance(exc, ApiError):
        return exc
    what = "the datasets" if name is None else f"dataset {name!r}"
    if isinstance(exc, DatasetNotFoundError):
        return ApiError(404, "dataset_not_found", f"no dataset named {name!r}", dataset=name)
    if isinstance(exc, VersionNotFoundError):
        return ApiError(
            404,
            "version_not_found",
            f"{what}: the version asked for does not exist or was vacuumed",
            dataset=name,
        )
    damage = _damage(exc)
    failing = damage is None and isinstance(exc, StorageError | OSError)
    # the server's log has the exception (secrets masked); a storage outage in one line
    _log.warning("serving %s failed: %s: %s", what, type(exc).__name__, exc,
                 exc_info=None if failing else exc)  # fmt: skip
    if damage is not None:
        return ApiError(
            500,
            "dataset_damaged",
            f"{what} is damaged: {damage} (`hafen dataset verify` checks a version)",
            dataset=name,
        )
    if failing:
        return ApiError(
            503,
            "storage_unavailable",
            f"the storage of {what} is failing; try again in a few seconds",
            dataset=name,
            headers={"Retry-After": str(RETRY_AFTER)},
        )
    if isinstance(exc, SchemaError | PredicateError):  # messages name columns, not places
        return ApiError(
            500, "dataset_unusable", f"{what} cannot answer this: {redact(str(exc))}", dataset=name
        )
    return ApiError(
        500,
        "internal_error",
        f"serving {what} failed ({type(exc).__name__}); the server's log has the details",
        dataset=name,
    )


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route may answer."""
    described = {
        404: "No such dataset (or no rows for the request)",
        500: "The dataset is damaged or cannot answer the request",
        503: "Storage is failing; retry after the Retry-After header's seconds",
    }
    return {s: {"model": ErrorBody, "description": described[s]} for s in statuses}


def install_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError` as JSON, and anything unexpected as a JSON 500."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own (an unknown path, a 400 of a route): the same body as the others
        assert isinstance(exc, StarletteHTTPException)
        error = _HTTP_ERRORS.get(exc.status_code, f"http_{exc.status_code}")
        body = {"detail": exc.detail, "error": error, "dataset": None}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        return api_error(exc, None).response()

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
