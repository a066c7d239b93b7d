"""Running one Dask task per chunk under a cluster-wide limit, and collecting the results.

Each chunk is a ``client.submit`` inside ``dask.annotate(limits=[name])``: a task waiting for a
slot waits on the scheduler (``hafen.cluster``), not on a worker thread. ``limit`` is the name of
a limit set with :func:`hafen.set_limit`, or an integer: a limit of that many slots made for this
call and removed after it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import dask

from hafen.errors import ConfigError, HafenError, LimitError, SQLError

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["Outcome", "run_chunks", "task_client"]

#: Threads of the in-process cluster started when no client is given and none is running.
DEFAULT_LOCAL_THREADS = 4


@contextlib.contextmanager
def task_client(client: Client | None) -> Iterator[Client]:
    """The given client, the default one, or an in-process cluster for the duration of a call."""
    if client is not None:
        yield client
        return
    from distributed import default_client

    try:
        yield default_client()
        return
    except ValueError:
        pass
    from hafen.cluster import connect

    local = connect(
        processes=False,
        n_workers=1,
        threads_per_worker=DEFAULT_LOCAL_THREADS,
        dashboard_address=":0",
    )
    try:
        yield local
    finally:
        local.close()


@contextlib.contextmanager
def limit_name(client: Client, limit: str | int | None) -> Iterator[str | None]:
    """The name of the limit the tasks take a slot of (a temporary one for an integer)."""
    from hafen.cluster import limits, remove_limit, set_limit

    if limit is None:
        yield None
        return
    if isinstance(limit, bool) or not isinstance(limit, str | int):
        raise ConfigError(f"limit must be a limit name or a number of slots, got {limit!r}")
    if isinstance(limit, int):
        if limit < 1:
            raise ConfigError(f"limit must be at least 1 slot, got {limit}")
        name = f"hafen-sql-{uuid.uuid4().hex[:12]}"
        _install(client)
        set_limit(name, concurrency=limit, client=client)
        try:
            yield name
        finally:
            with contextlib.suppress(Exception):
                remove_limit(name, client=client)
        return
    known = limits(client=client)
    if limit not in known:
        raise LimitError(
            f"unknown limit {limit!r} (known: {', '.join(sorted(known)) or 'none'}); "
            "create it with hafen.set_limit() first"
        )
    yield limit


def _install(client: Client) -> None:
    from hafen.cluster import install_scheduler_extensions

    def install(dask_scheduler: Any) -> list[str]:
        return install_scheduler_extensions(dask_scheduler)

    client.run_on_scheduler(install)


class Outcome:
    """What the chunks returned: results of those that succeeded, and the first error."""

    def __init__(self, results: list[Any], errors: list[BaseException]) -> None:
        self.results = results
        self.errors = errors


def run_chunks(
    client: Client,
    fn: Callable[..., Any],
    chunks: Sequence[tuple[Any, ...]],
    *,
    limit: str | None,
    retries: int,
    name: str,
) -> Outcome:
    """Run ``fn(*args)`` for each chunk; wait for all of them, failed or not."""
    from distributed import wait

    token = uuid.uuid4().hex[:12]
    annotations = {"limits": [limit]} if limit else {}
    with dask.annotate(**annotations):
        futures: list[Future] = [
            client.submit(fn, *args, key=f"{name}-{token}-{i}", retries=retries, pure=False)
            for i, args in enumerate(chunks)
        ]
    try:
        wait(futures)
        results, errors = [], []
        for future in futures:
            if future.status == "finished":
                results.append(future.result())
            elif future.status == "error":
                errors.append(future.exception())
            else:
                errors.append(SQLError(f"task {future.key} ended as {future.status}"))
        return Outcome(results, errors)
    finally:
        for future in futures:
            future.release()


def first_error(errors: Sequence[BaseException]) -> BaseException:
    """The most telling error: a hafen error if any, else the first."""
    for exc in errors:
        if isinstance(exc, HafenError):
            return exc
    return errors[0]
