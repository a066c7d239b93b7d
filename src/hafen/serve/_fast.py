"""A fast path for the hot lookup, ``GET /forecasts?store_id=S&product_id=P[&from=D][&to=D]``.

FastAPI's request handling (dependency solving, validation, response classes, middleware) costs
several times the lookup itself, which is a fraction of a millisecond once the store's file is
cached. This ASGI wrapper answers the plain, well-formed form of the point lookup directly and
hands everything else -- other routes, CSV, missing or malformed parameters, errors -- to the
FastAPI application unchanged, so validation messages, 4xx answers and the OpenAPI description
stay FastAPI's. The body comes from :class:`~hafen.serve._answers.ForecastBodies` (prepared
files, a cache of bodies by query string); it is byte-for-byte the one the FastAPI route writes
(tests compare them).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["FastLookups", "parse_lookup"]

_ALLOWED = {"store_id", "product_id", "from", "to"}
_MAX_ID = 2**62
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def _date(text: str | None) -> dt.date | None:
    """``YYYY-MM-DD`` only: other forms Python accepts (``20250701``, week dates) are left to
    the route, whose validation may read them otherwise."""
    if text is None:
        return None
    if not _DATE.fullmatch(text):
        raise ValueError(text)
    return dt.date.fromisoformat(text)


def parse_lookup(query: bytes) -> tuple[int, int, dt.date | None, dt.date | None] | None:
    """The lookup's parameters, or None when the query is not the plain well-formed form."""
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    params = dict(pairs)
    if len(params) != len(pairs) or not params.keys() <= _ALLOWED:
        return None
    try:
        store, product = params["store_id"], params["product_id"]
        if not (store.isascii() and store.isdigit() and product.isascii() and product.isdigit()):
            return None  # ASCII digits only: int() also reads other scripts' digits
        store_id, product_id = int(store), int(product)
        start, end = _date(params.get("from")), _date(params.get("to"))
    except (KeyError, ValueError):
        return None
    if store_id > _MAX_ID or product_id > _MAX_ID:
        return None
    if start is not None and end is not None and start > end:
        return None  # the FastAPI route answers it with a 400
    return store_id, product_id, start, end


class FastLookups:
    """ASGI wrapper: the plain point lookup here, everything else to ``app``."""

    def __init__(self, app: Any, answer: Callable[[bytes], bytes | None]) -> None:
        self.app = app
        self.answer = answer  # query string -> JSON body, or None to delegate

    def __getattr__(self, name: str) -> Any:  # app.state, app.openapi(), ... for callers
        return getattr(self.app, name)

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/forecasts":
            accept = b""
            for key, value in scope["headers"]:
                if key == b"accept":
                    accept = value
            if b"csv" not in accept:
                body = self.answer(scope["query_string"])
                if body is not None:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)
