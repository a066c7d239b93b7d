"""Azure Blob Storage (adlfs): credentials from options or ``AZURE_STORAGE_*``, and the
exclusive create as a conditional upload tagged with a token, retried without committing twice."""

from __future__ import annotations

import os
import uuid
from typing import Any

from hafen.datasets._retry import RetryPolicy
from hafen.datasets._storage._base import Storage
from hafen.errors import StorageError

__all__ = ["AZURE_RETRY", "AzureStorage"]

#: The exclusive create retries throttling (429, 503) and transient failures 5 times after the
#: first attempt, sleeping a random time up to 0.25 s * 2**retry (at most 8 s, or the service's
#: Retry-After) before each; then it gives up with an unknown outcome.
AZURE_RETRY = RetryPolicy(retries=5, backoff=0.25, max_backoff=8.0)
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
        policy = AZURE_RETRY
        for attempt in range(policy.attempts):
            if attempt:
                policy.sleep(attempt, at_least=_retry_after(last))
            try:
                return sync(self.fs.loop, self._azure_create, container, blob, data, token)
            except Exception as exc:
                if not _azure_transient(exc):
                    raise
                last = exc
        raise StorageError(
            f"{full}: Azure did not confirm the exclusive create after {policy.attempts} "
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
