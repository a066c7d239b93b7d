"""What ``hafen extract`` and ``hafen load`` run: the API, on a cluster chosen by options."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hafen.sql._extract import extract
from hafen.sql._load import load

if TYPE_CHECKING:
    from distributed import Client

    from hafen.datasets import Dataset

__all__ = ["run_extract", "run_load"]


def _limit(value: str | None) -> str | int | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


@contextlib.contextmanager
def _client(scheduler: str | None) -> Iterator[Client | None]:
    """A client for ``scheduler`` (or ``HAFEN_SCHEDULER``), else None: extract starts its own."""
    from hafen.config import get_settings

    address = scheduler or get_settings().scheduler
    if not address:
        yield None
        return
    from hafen.cluster import connect

    client = connect(address)
    try:
        yield client
    finally:
        client.close()


def run_extract(
    db_url: str, query_or_table: str, dataset_url: str, *, scheduler: str | None, **kwargs: Any
) -> Dataset:
    kwargs["limit"] = _limit(kwargs.get("limit"))
    with _client(scheduler) as client:
        return extract(db_url, query_or_table, dataset_url, client=client, **kwargs)


def run_load(dataset_url: str, db_url: str, *, scheduler: str | None, **kwargs: Any) -> int:
    kwargs["limit"] = _limit(kwargs.get("limit"))
    with _client(scheduler) as client:
        return load(dataset_url, db_url, client=client, **kwargs)
