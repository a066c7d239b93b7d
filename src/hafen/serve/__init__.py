"""The HTTP API over datasets (DESIGN.md section 5): forecasts, dataset metadata, a chart page.

``hafen serve URL`` runs :func:`serve`; :func:`create_app` returns the FastAPI application for
tests or another ASGI server. ``hafen serve HOME --tenants`` serves :func:`create_service`: many
customers (:class:`Tenants`), each with its API keys, ingest API and forecasts.
"""

from __future__ import annotations

from typing import Any

from hafen.serve._app import create_app
from hafen.serve._registry import DEFAULT_REFRESH, Registry
from hafen.serve._service import create_service
from hafen.serve._tenants import Tenant, Tenants

__all__ = [
    "DEFAULT_REFRESH",
    "Registry",
    "Tenant",
    "Tenants",
    "create_app",
    "create_service",
    "serve",
]


def serve(
    root: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    refresh: float = DEFAULT_REFRESH,
    **uvicorn_options: Any,
) -> None:
    """Serve the datasets under ``root`` with uvicorn until interrupted.

    Examples
    --------
    >>> serve("hafen-demo/datasets", port=8000)  # doctest: +SKIP
    """
    import uvicorn

    app = create_app(root, refresh=refresh)
    uvicorn.run(app, host=host, port=port, log_level="warning", **uvicorn_options)
