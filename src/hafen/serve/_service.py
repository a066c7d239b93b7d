"""The multi-tenant service: API keys in front of each tenant's ingest and forecasts.

:func:`create_service` returns an ASGI application. ``GET /healthz`` answers without a key (and
names nothing). Every other request needs ``Authorization: Bearer KEY``; a missing, wrong or
revoked key is answered 401. The key's tenant is then served by its own application: ``/v1/...``
by the ingest API (:mod:`hafen.serve._ingest`) over the tenant's database, the rest by the
forecasts API (:func:`hafen.serve.create_app`) over the tenant's dataset root. A key therefore
never reaches another tenant's data: another tenant's dataset, store or product is simply not
there (404). Each key may make ``rate`` requests per second on average, ``burst`` at once; past
that it is answered 429 with ``Retry-After``.

``GET /`` (the page) answers without a key too, by design: it is a constant shell (the same bytes
for every caller, naming no tenant, holding no data, no path), and a browser cannot send an
``Authorization`` header when it navigates to a page, so demanding the key there would push the
key into a URL (logged, kept in history, sent as a referrer) or a cookie (sent with every
request, open to cross-site request forgery). The page asks for the key and sends it as
``Authorization: Bearer`` on each request it makes, every one of which needs it. It keeps the key
in the tab's ``sessionStorage`` (gone with the tab), and is served with a Content-Security-Policy
that lets it load and contact nothing but this origin, so no other script can read the key.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from hafen._version import __version__
from hafen.serve._app import create_app
from hafen.serve._ingest import (
    DEFAULT_MAX_BODY,
    TABLES,
    BatchError,
    insert_batch,
    read_batch,
    read_body,
)
from hafen.serve._page import PAGE
from hafen.serve._tenants import Tenant, Tenants, hash_key

__all__ = ["DEFAULT_BURST", "DEFAULT_RATE", "RateLimiter", "create_service"]

#: Requests per second a key may make on average, and at once.
DEFAULT_RATE = 200.0
DEFAULT_BURST = 400
_TENANT = "hafen.tenant"
#: Ingest batches read and checked at once (the others wait their turn, holding no thread).
_READING = 2
_PAGE = PAGE.encode()
_PAGE_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-length", str(len(_PAGE)).encode()),
    # its inline script and style, and requests to this origin only: nothing else can run on
    # the page and read the key it holds
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]


class RateLimiter:
    """A token bucket per key: ``rate`` tokens a second, ``burst`` at most."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if a request may go now, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


def _ingest_app(max_body: int) -> FastAPI:
    app = FastAPI(title="hafen ingest", version=__version__)
    names = sorted(TABLES)
    # batches read and checked at once: the work is Python's (one core at a time), and more
    # at once only slowed the batch holding a SQLite database's write lock (benchmarks/README.md)
    reading = asyncio.Semaphore(_READING)
    # loaded now rather than by the first batch
    import numpy  # noqa: F401
    import pyarrow.compute
    import pyarrow.json  # noqa: F401

    @app.post(
        "/v1/{table}",
        responses={
            200: {"description": "Inserted (or, for a retried Idempotency-Key, inserted before)"},
            413: {"description": "The body is over the size limit"},
            415: {"description": "Not JSON, CSV or Parquet"},
            422: {"description": "Invalid rows, named; nothing was inserted"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                    "text/csv": {"schema": {"type": "string"}},
                    "application/vnd.apache.parquet": {
                        "schema": {"type": "string", "format": "binary"}
                    },
                },
            }
        },
    )
    async def post_batch(
        request: Request,
        table: str = PathParam(pattern="^(" + "|".join(names) + ")$", description="The table."),
        idempotency_key: str | None = Header(default=None, max_length=200),
    ) -> Any:
        """Insert one batch of rows into one of the tenant's tables, all or nothing."""
        tenant: Tenant = request.scope[_TENANT]
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body:
            return JSONResponse(
                {"error": "too_large", "detail": f"the body is over {max_body} bytes"}, 413
            )
        try:
            body, digest = await read_body(request.stream(), max_body)
            try:
                async with reading:
                    batch = await run_in_threadpool(
                        read_batch, table, body, request.headers.get("content-type", "")
                    )
            finally:
                body.close()
            answer = await run_in_threadpool(
                insert_batch, tenant, batch, key=idempotency_key, digest=digest
            )
        except BatchError as exc:
            return JSONResponse(exc.body, exc.status)
        except ClientDisconnect:  # cut off: nothing was inserted
            return JSONResponse({"error": "incomplete_body", "detail": "the body was cut off"}, 400)
        if answer.pop("replayed", False):
            return JSONResponse(answer, headers={"idempotent-replayed": "true"})
        return answer

    return app


def _bearer(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


async def _send_json(
    send: Any, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _openapi(template: Any, ingest: FastAPI) -> dict[str, Any]:
    """One description of what a tenant's key reaches, with the bearer scheme on every path."""
    spec = template.openapi()
    spec["paths"] = {**spec["paths"], **ingest.openapi()["paths"]}
    spec.setdefault("components", {}).setdefault("schemas", {}).update(
        ingest.openapi().get("components", {}).get("schemas", {})
    )
    spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    spec["security"] = [{"bearer": []}]
    for path, item in spec["paths"].items():
        for operation in item.values():
            if path == "/healthz":
                operation["security"] = []
            else:
                operation.setdefault("responses", {})["401"] = {"description": "No valid key"}
                operation["responses"]["429"] = {"description": "Too many requests"}
    return spec


def create_service(
    home: str | os.PathLike[str],
    *,
    database: str | None = None,
    rate: float = DEFAULT_RATE,
    burst: int = DEFAULT_BURST,
    max_body: int = DEFAULT_MAX_BODY,
    refresh: float = 1.0,
) -> Any:
    """The multi-tenant API over the service ``home`` (see :class:`~hafen.serve.Tenants`).

    Parameters
    ----------
    home
        The service's folder: its tenants, their databases and dataset roots.
    database
        The PostgreSQL URL the tenants' schemas are in; SQLite files when None.
    rate, burst
        Requests per second per key on average, and at once, before 429.
    max_body
        Largest ingest body in bytes, before 413.
    refresh
        Seconds between checks for a new version of a tenant's dataset.

    Examples
    --------
    >>> app = create_service("hafen-service")  # doctest: +SKIP
    """
    tenants = Tenants(home, database=database)
    limiter = RateLimiter(rate, burst)
    ingest = _ingest_app(max_body)
    apps: dict[str, Any] = {}
    lock = threading.Lock()
    spec: dict[str, Any] = {}

    def forecasts_app(tenant: Tenant) -> Any:
        with lock:
            if tenant.name not in apps:
                apps[tenant.name] = create_app(tenant.datasets, refresh=refresh)
            return apps[tenant.name]

    def openapi() -> dict[str, Any]:
        if not spec:
            template = create_app(os.fspath(tenants.home / "no-such-tenant"), fast_path=False)
            spec.update(_openapi(template, ingest))
        return spec

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            return await _send_json(
                send, 200, {"status": "ok", "version": __version__, "datasets": {}}
            )
        if path == "/" and scope["method"] == "GET":  # the page: a shell, see the docstring
            await send({"type": "http.response.start", "status": 200, "headers": _PAGE_HEADERS})
            return await send({"type": "http.response.body", "body": _PAGE})
        key = _bearer(scope)
        tenant = None if key is None else await run_in_threadpool(tenants.authenticate, key)
        if tenant is None or key is None:
            return await _send_json(
                send,
                401,
                {
                    "error": "unauthorized",
                    "detail": "a valid API key is needed (Authorization: Bearer KEY)",
                },
                {"www-authenticate": "Bearer"},
            )
        wait = limiter.take(hash_key(key))
        if wait:
            return await _send_json(
                send,
                429,
                {"error": "rate_limited", "detail": "too many requests for this key"},
                {"retry-after": str(max(1, math.ceil(wait)))},
            )
        if path == "/openapi.json":
            return await _send_json(send, 200, openapi())
        scope = dict(scope)
        scope[_TENANT] = tenant
        if path.startswith("/v1/"):
            return await ingest(scope, receive, send)
        return await forecasts_app(tenant)(scope, receive, send)

    app.tenants = tenants  # type: ignore[attr-defined]
    return app
