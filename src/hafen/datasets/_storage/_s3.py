"""S3 (s3fs): credentials from options or the AWS SDK's chain, and the exclusive create as a
conditional PUT (``If-None-Match: *``) tagged with a token, retried without committing twice."""

from __future__ import annotations

import os
import uuid
from typing import Any

from hafen.datasets._retry import RetryPolicy
from hafen.datasets._storage._base import Storage
from hafen.errors import StorageError

__all__ = ["S3_RETRY", "S3Storage"]

#: The exclusive create retries as Azure's does (S3 answers 409 ConditionalRequestConflict to a
#: conditional PUT racing another one on the same key, and asks to retry): 5 times after the
#: first attempt, sleeping a random time up to 0.25 s * 2**retry (at most 8 s) before each.
S3_RETRY = RetryPolicy(retries=5, backoff=0.25, max_backoff=8.0)
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
        policy = S3_RETRY
        for attempt in range(policy.attempts):
            if attempt:
                policy.sleep(attempt)
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
            f"{full}: S3 did not confirm the exclusive create after {policy.attempts} "
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
