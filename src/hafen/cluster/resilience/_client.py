"""The client side of resilience: drain workers, make sure the plugin is there, read counts.

:func:`drain` sends one request to the ``hafen_drain`` handler (``_drain.py``) and returns a
:class:`DrainReport`; :func:`resilience_counts` reads the recomputation counts of the scheduler
plugin (``_plugin.py``), which :func:`ensure_installed` registers when it is missing.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hafen.cluster._config import UNSET, option
from hafen.cluster.resilience._plugin import PLUGIN_NAME, ResiliencePlugin
from hafen.errors import ReplicationError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["DrainReport", "drain", "ensure_installed", "resilience_counts"]


@dataclasses.dataclass(frozen=True)
class DrainReport:
    """What a drain did.

    Attributes
    ----------
    workers : tuple of str
        Addresses drained.
    moved : int
        Results that lived only on these workers and were copied elsewhere.
    moved_bytes : int
        Their size.
    recompute : tuple
        Keys whose only copies were on these workers when the drain stopped: Dask will
        recompute them (costliest first).
    recompute_seconds : float
        Estimated compute time to recompute them.
    restarted : tuple
        Keys assigned to these workers that had not finished; they will run elsewhere.
    timed_out : bool
        The drain stopped at its timeout.
    no_recipients : bool
        No other running worker could take the results.
    closed : bool
        The workers were closed.
    duration : float
        Seconds the drain took.
    """

    workers: tuple[str, ...]
    moved: int
    moved_bytes: int
    recompute: tuple[Any, ...]
    recompute_seconds: float
    restarted: tuple[Any, ...]
    timed_out: bool
    no_recipients: bool
    closed: bool
    duration: float

    @property
    def complete(self) -> bool:
        """True if nothing will be recomputed."""
        return not self.recompute

    def __str__(self) -> str:
        state = "complete" if self.complete else f"{len(self.recompute)} results will be recomputed"
        why = " (timed out)" if self.timed_out else " (no recipients)" if self.no_recipients else ""
        return (
            f"drained {len(self.workers)} worker(s) in {self.duration:.1f}s: moved {self.moved} "
            f"results ({self.moved_bytes} bytes), {state}{why}, "
            f"{len(self.restarted)} unfinished tasks restarted elsewhere"
        )


async def ensure_installed(client: Client) -> None:
    """Register the resilience scheduler plugin unless it is there (idempotent, async)."""
    from distributed.protocol.pickle import dumps

    await client.scheduler.register_scheduler_plugin(
        plugin=dumps(ResiliencePlugin()), name=PLUGIN_NAME, idempotent=True
    )


def _as_list(workers: str | Iterable[str]) -> list[str]:
    if isinstance(workers, str):
        return [workers]
    return [str(w) for w in workers]


def drain(
    client: Client,
    workers: str | Iterable[str],
    timeout: str | float | None = None,
    *,
    close: bool = True,
) -> DrainReport:
    """Retire workers without recomputation: move their unique results, then close them.

    Results that live only on the given workers are copied to other running workers, the
    costliest to recompute first. At ``timeout`` the drain gives up cleanly: the report says
    which results will be recomputed. Then the workers are removed and closed (their nannies
    too, so they are not restarted). Tasks executing on them finish first, within the timeout.

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster (synchronous or asynchronous; with an asynchronous client,
        await the result).
    workers : str or iterable of str
        Worker addresses or names.
    timeout : str or float, optional
        How long to try (``"5m"``, ``30``); default dask config ``hafen.drain.timeout``.
    close : bool
        Close the workers afterwards (default). With False they stay paused and hold no unique
        results, for an outside orchestrator to stop.

    Returns
    -------
    DrainReport

    Raises
    ------
    ReplicationError
        If the scheduler cannot carry out a drain.
    ConfigError
        If ``timeout`` is invalid.

    Examples
    --------
    >>> report = hafen.drain(client, ["tcp://10.0.0.7:40123"], timeout="2m")  # doctest: +SKIP
    >>> report.complete  # doctest: +SKIP
    True
    """
    seconds = option(
        "hafen.drain.timeout", UNSET if timeout is None else timeout, argument="timeout"
    )
    addresses = _as_list(workers)
    drain_id = uuid.uuid4().hex
    return client.sync(_drain_async, client, addresses, seconds, drain_id, close)


async def _drain_async(
    client: Client, workers: list[str], timeout: float, drain_id: str, close: bool
) -> DrainReport:
    await ensure_installed(client)
    result = await client.scheduler.hafen_drain(
        workers=workers, timeout=timeout, drain_id=drain_id, close_workers=close
    )
    if not isinstance(result, dict):
        raise ReplicationError(f"drain of {workers} failed: the scheduler answered {result!r}")
    return DrainReport(
        workers=tuple(result["workers"]),
        moved=int(result["moved"]),
        moved_bytes=int(result["moved_bytes"]),
        recompute=tuple(result["recompute"]),
        recompute_seconds=float(result["recompute_seconds"]),
        restarted=tuple(result["restarted"]),
        timed_out=bool(result["timed_out"]),
        no_recipients=bool(result["no_recipients"]),
        closed=bool(result["closed"]),
        duration=float(result["duration"]),
    )


def resilience_counts(client: Client, *, reset: bool = False) -> dict[str, Any]:
    """Counts of the resilience scheduler plugin (computed, recomputed, lost, ...).

    See :meth:`ResiliencePlugin.counts`; ``reset=True`` zeroes them after reading. Needs a
    synchronous client.

    Raises
    ------
    hafen.errors.ReplicationError
        If the plugin is not installed on the scheduler.
    """
    result = client.sync(client.scheduler.hafen_resilience_counts, reset=reset)
    if not isinstance(result, dict):
        raise ReplicationError("the hafen resilience plugin is not installed on the scheduler")
    return result
