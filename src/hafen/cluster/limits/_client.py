"""The client side of the limits: set, remove and inspect limits, and take leases.

Each call is one request to the ``hafen_limits_*`` handlers of the scheduler extension
(:mod:`hafen.cluster.limits._plugin`). Arguments are validated here first so mistakes fail before
anything is sent.
"""

from __future__ import annotations

import contextlib
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from hafen.cluster.limits._spec import check_name, make_spec, parse_annotation
from hafen.errors import LeaseTimeoutError, LimitError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["lease", "limits", "remove_limit", "set_limit"]


def _client(client: Client | None) -> Client:
    if client is not None:
        return client
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        raise LimitError("no Dask client: call hafen.connect() first, or pass client=") from None


_checked: weakref.WeakSet[Client] = weakref.WeakSet()


def _has_limits(dask_scheduler: Any) -> bool:
    return "hafen_limits" in dask_scheduler.extensions


def _missing_extension(client: Client) -> LimitError:
    return LimitError(
        f"the scheduler at {client.scheduler.address} has no hafen limits extension: "
        "connect with hafen.connect() or start it with "
        "`dask scheduler --preload hafen.cluster`"
    )


def _call(client: Client, op: str, then: Callable[[Any], Any] = lambda r: r, **kwargs: Any) -> Any:
    """Send one request; an asynchronous client gets an awaitable of the same answer."""
    if client.asynchronous:
        return _call_async(client, op, then, **kwargs)
    # A scheduler without the handler drops the request without a reply, so look first.
    if client not in _checked:
        if not client.run_on_scheduler(_has_limits):
            raise _missing_extension(client)
        _checked.add(client)

    async def request() -> Any:
        return await getattr(client.scheduler, op)(**kwargs)

    return then(client.sync(request))


async def _call_async(client: Client, op: str, then: Callable[[Any], Any], **kwargs: Any) -> Any:
    if client not in _checked:
        if not await client.run_on_scheduler(_has_limits):
            raise _missing_extension(client)
        _checked.add(client)
    return then(await getattr(client.scheduler, op)(**kwargs))


def set_limit(
    name: str,
    *,
    concurrency: int | None = None,
    rate: str | float | None = None,
    burst: int | None = None,
    results: int | None = None,
    memory: str | int | None = None,
    client: Client | None = None,
) -> None:
    """Create a cluster-wide limit, or change one while tasks run.

    A limit caps what its tasks (``dask.annotate(limits=[name])``) and leases hold: running
    slots (``concurrency``), grants per unit of time (``rate``), and -- for tasks -- results
    still in memory (``results``, a "choke-hold": producers never run far ahead of their
    consumers) or their bytes (``memory``). Any combination applies together; setting a limit
    again replaces all of its settings.

    Parameters
    ----------
    name
        Letters, digits and ``_.:/-``, up to 128 characters.
    concurrency
        Slots: how many tasks and leases may hold the limit at once (0 pauses it).
    rate
        A token bucket: ``"20/s"``, ``"100/min"``, ``"5/h"``, ``"1/30s"`` or grants per second.
    burst
        Tokens a rated limit banks while idle (default 1: evenly spaced grants).
    results
        Results of the limit's tasks alive in the cluster at most: a task takes one at its
        grant and gives it back when its result is released (its dependents are done and no
        client holds it). A task that needs more of them at once than this (a sum over all of
        them) still finishes: when nothing that frees one can run, the next is granted over
        the limit, and counted as an override (``hafen.limits()``, metrics, a warning).
    memory
        The same for bytes (``"2GiB"`` or a number): the results' ``nbytes`` plus, for running
        tasks, the mean size of their group's results so far (one of unknown size at a time).
    client
        Defaults to the default client (``hafen.connect()`` sets it). With an asynchronous
        client, the call returns an awaitable: ``await hafen.set_limit(..., client=c)``.

    Raises
    ------
    hafen.errors.LimitError
        If the name or a setting is invalid, or no setting is given.

    Examples
    --------
    >>> hafen.set_limit("postgres", concurrency=4, rate="20/s")  # doctest: +SKIP
    >>> hafen.set_limit("loads", concurrency=2, results=8)  # doctest: +SKIP
    """
    spec = make_spec(name, concurrency, rate, burst, results=results, memory=memory)
    return _call(  # None, or an awaitable of None
        _client(client),
        "hafen_limits_set",
        name=spec.name,
        concurrency=spec.concurrency,
        rate=rate,
        burst=burst,
        results=spec.results,
        memory=spec.memory,
        then=lambda _: None,
    )


def remove_limit(name: str, *, client: Client | None = None) -> bool:
    """Remove a limit; tasks waiting only for it start.

    Removing a limit that does not exist does nothing, so a retried call is harmless. Tasks
    already admitted stop waiting for it (also on retries); tasks submitted later that name it
    are rejected with :class:`~hafen.errors.LimitError`.

    Parameters
    ----------
    name
        The limit.
    client
        Defaults to the default client; with an asynchronous one, returns an awaitable.

    Returns
    -------
    bool
        Whether the limit existed.

    Examples
    --------
    >>> hafen.remove_limit("postgres")  # doctest: +SKIP
    True
    """
    check_name(name)
    return _call(_client(client), "hafen_limits_remove", then=bool, name=name)


def limits(*, client: Client | None = None) -> dict[str, dict[str, Any]]:
    """Return the state of every limit, by name.

    Parameters
    ----------
    client
        Defaults to the default client (``hafen.connect()`` sets it). With an asynchronous
        client, returns an awaitable of the same.

    Returns
    -------
    dict of str to dict
        Each value has the settings ``concurrency``, ``rate`` (as given), ``rate_per_second``,
        ``burst``, ``results``, ``memory`` (bytes) and ``memory_text``; and the state:
        ``in_use`` (slots held), ``alive`` and ``alive_bytes`` (results counted by
        ``results``/``memory`` and their bytes), ``waiting`` (tasks and leases waiting),
        ``granted`` and ``overrides`` (so far: grants over ``results``/``memory`` made because
        nothing could free them) and ``longest_wait`` (seconds, of the longest current wait).

    Examples
    --------
    >>> hafen.limits()["postgres"]["in_use"]  # doctest: +SKIP
    4
    """
    return _call(_client(client), "hafen_limits_info", then=dict)


@contextlib.contextmanager
def lease(
    name: str | list[str],
    *,
    timeout: float | None = None,
    priority: int = 0,
    client: Client | None = None,
) -> Iterator[str]:
    """Hold one slot (and token) of a limit for the duration of a ``with`` block.

    Inside a task it blocks that task's thread until the scheduler grants the lease -- use the
    ``limits=`` annotation instead to wait without a thread. The lease is freed on leaving the
    block, or when the scheduler removes the worker (or client) that holds it. Do not take a lease
    on a limit the task is already annotated with: with one slot, it would wait for itself. The
    scheduler must have the extension (``hafen.connect`` or ``--preload hafen.cluster``); from a
    client this is checked, from inside a task it is assumed.

    Parameters
    ----------
    name
        A limit name, or a list of names taken together.
    timeout
        Seconds to wait at most; ``None`` waits as long as it takes.
    priority
        Higher is granted first among waiters; equal priorities go oldest first.
    client
        Inside a task, the worker's connection to the scheduler by default; elsewhere, the
        default client (``hafen.connect()`` sets it).

    Raises
    ------
    hafen.errors.LimitError
        If a limit is unknown, or ``client`` is asynchronous (a lease blocks a thread; from a
        coroutine, annotate the tasks with ``limits=`` instead).
    hafen.errors.LeaseTimeoutError
        If the lease was not granted within ``timeout``.

    Examples
    --------
    >>> with hafen.lease("postgres"):  # doctest: +SKIP
    ...     rows = fetch(chunk)
    """
    names = list(parse_annotation(name))
    lease_id = uuid.uuid4().hex
    call, owner = _lease_channel(client)
    granted = call(
        "hafen_limits_acquire",
        name=names,
        lease_id=lease_id,
        owner=owner,
        priority=priority,
        timeout=timeout,
    )
    if not granted:
        call("hafen_limits_release", lease_id=lease_id)
        raise LeaseTimeoutError(f"lease on {', '.join(names)} not granted within {timeout}s")
    try:
        yield lease_id
    finally:
        call("hafen_limits_release", lease_id=lease_id)


def _lease_channel(client: Client | None) -> tuple[Any, str]:
    """How to reach the scheduler: the worker's own connection inside a task, else a client."""
    if client is None:
        from distributed import get_worker

        try:
            worker = get_worker()
        except ValueError:
            worker = None
        if worker is not None:
            from distributed.utils import sync

            def call_worker(op: str, **kwargs: Any) -> Any:
                return sync(worker.loop, getattr(worker.scheduler, op), **kwargs)

            return call_worker, worker.address
    resolved = _client(client)
    if resolved.asynchronous:
        raise LimitError(
            "hafen.lease() blocks its thread and needs a synchronous client; from a coroutine, "
            "annotate the tasks with limits= instead"
        )

    def call_client(op: str, **kwargs: Any) -> Any:
        return _call(resolved, op, **kwargs)

    return call_client, resolved.id
