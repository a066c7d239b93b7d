"""Drain: retire workers without recomputation, most costly results first, with a timeout.

``hafen.drain(client, workers, timeout="5m")`` asks the scheduler (handler ``hafen_drain``,
installed by the resilience scheduler plugin) to

1. mark the workers ``closing_gracefully``, as ``Scheduler.retire_workers`` does: they take no new
   tasks and pause, while tasks already executing on them finish;
2. move every result that lives only on them to other running workers, through an Active Memory
   Manager policy (:class:`DrainWorkers`) that asks for the costliest results first (recompute
   cost: own compute time plus that of inputs no longer in memory) and in bounded batches, so the
   costly ones are on their way before the cheap ones;
3. stop at the timeout if it is not done, report what will be recomputed (results still only on
   the workers) and what will be restarted (tasks assigned to them that did not finish);
4. remove the workers from the scheduler and close them (and their nannies, so they are not
   restarted).

It returns a :class:`DrainReport`. The request carries an id made by the client, so a retried
call joins the drain in progress instead of starting a second one.

Why not ``Scheduler.retire_workers``? It moves results in no particular order and has no timeout;
a preemption notice gives a fixed time, and what matters then is moving the costliest first and
saying what will be lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from distributed.active_memory_manager import (
    ActiveMemoryManagerExtension,
    ActiveMemoryManagerPolicy,
    Suggestion,
    SuggestionGenerator,
)
from distributed.core import Status
from distributed.metrics import time

from hafen.cluster._dask_config import config_duration, config_get
from hafen.errors import ReplicationError

if TYPE_CHECKING:
    from distributed import Client
    from distributed.scheduler import Scheduler, TaskState, WorkerState

    from hafen.cluster._resilience import ResiliencePlugin

__all__ = ["DrainReport", "DrainWorkers", "drain"]

logger = logging.getLogger(__name__)

#: Bytes asked for per AMM pass and draining worker: costly results go first, within this.
BATCH_BYTES = 64 * 2**20
#: Results asked for per AMM pass and draining worker, at most.
BATCH_KEYS = 256
#: A request that has not landed after this long is made again (maybe to another worker).
RETRY_AFTER = 5.0
#: Seconds between checks while draining.
POLL_INTERVAL = 0.05


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


class DrainWorkers(ActiveMemoryManagerPolicy):
    """AMM policy: copy results that live only on draining workers elsewhere, costliest first.

    Per pass and worker it asks for at most ``batch_bytes`` / ``batch_keys`` of results not
    already on their way; a request that has not landed after ``retry_after`` seconds is made
    again. Removes itself when its workers are gone.
    """

    def __init__(
        self,
        addresses: Iterable[str],
        cost: Any,
        *,
        batch_bytes: int = BATCH_BYTES,
        batch_keys: int = BATCH_KEYS,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        self.addresses = frozenset(addresses)
        self.cost = cost
        self.batch_bytes = batch_bytes
        self.batch_keys = batch_keys
        self.retry_after = retry_after
        self.requested: dict[TaskState, float] = {}
        self.no_recipients = False

    def __repr__(self) -> str:
        return f"DrainWorkers({sorted(self.addresses)!r})"

    def unique(self, ws: WorkerState) -> list[TaskState]:
        """Results on ``ws`` with no copy on a worker that stays."""
        return [
            ts
            for ts in ws.has_what
            if not ts.actor
            and not any(
                other.address not in self.addresses and other.status != Status.closing_gracefully
                for other in ts.who_has or ()
            )
        ]

    def run(self) -> SuggestionGenerator:
        scheduler = self.manager.scheduler
        now = time()
        live = [scheduler.workers[a] for a in self.addresses if a in scheduler.workers]
        if not live:
            self.manager.policies.discard(self)
            return
        for ws in live:
            todo = [
                ts
                for ts in self.unique(ws)
                if now - self.requested.get(ts, -float("inf")) >= self.retry_after
            ]
            todo.sort(key=self.cost, reverse=True)
            spent = 0
            for i, ts in enumerate(todo):
                if i >= self.batch_keys or (i and spent + ts.nbytes > self.batch_bytes):
                    break
                choice = yield Suggestion("replicate", ts)
                if choice is None:
                    self.no_recipients = not scheduler.running
                    if self.no_recipients:
                        return
                    continue
                self.requested[ts] = now
                spent += max(ts.nbytes, 0)


class DrainCoordinator:
    """Scheduler extension behind the ``hafen_drain`` handler."""

    def __init__(self, scheduler: Scheduler, plugin: ResiliencePlugin) -> None:
        self.scheduler = scheduler
        self.plugin = plugin
        self._drains: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def cost(self, ts: TaskState) -> float:
        policy = self.plugin.policy
        if policy is None:
            return 0.0
        return policy.cost(ts)

    async def drain(
        self,
        workers: Sequence[str],
        timeout: float,
        drain_id: str,
        close_workers: bool = True,
    ) -> dict[str, Any]:
        """Handler ``hafen_drain``; a repeated ``drain_id`` joins the drain in progress.

        (``close`` is a reserved key of Dask's RPC messages, hence ``close_workers``.)
        """
        future = self._drains.get(drain_id)
        if future is None:
            future = asyncio.ensure_future(self._drain(list(workers), timeout, close_workers))
            self._drains[drain_id] = future
            future.add_done_callback(lambda _: self._forget_later(drain_id))
        return await asyncio.shield(future)

    def _forget_later(self, drain_id: str) -> None:
        asyncio.get_running_loop().call_later(300, self._drains.pop, drain_id, None)

    def _resolve(self, workers: Sequence[str]) -> list[WorkerState]:
        scheduler = self.scheduler
        by_name = {str(ws.name): ws for ws in scheduler.workers.values()}
        found = []
        for w in workers:
            ws = scheduler.workers.get(w) or by_name.get(str(w))
            if ws is not None:
                found.append(ws)
        return found

    async def _drain(self, workers: list[str], timeout: float, close: bool) -> dict[str, Any]:
        scheduler = self.scheduler
        started = time()
        deadline = started + timeout
        stimulus_id = f"hafen-drain-{started}"
        wss = self._resolve(workers)
        addresses = [ws.address for ws in wss]
        if not wss:
            return self._report(addresses, [], set(), set(), started, False, False, False)
        logger.info("hafen: draining %s (timeout %.0fs)", addresses, timeout)
        for ws in wss:
            # As Scheduler.retire_workers: no new tasks; the worker pauses.
            scheduler.handle_worker_status_change(Status.closing_gracefully, ws, stimulus_id)
            comm = scheduler.stream_comms.get(ws.address)
            if comm is not None:
                comm.send(
                    {
                        "op": "worker-status-change",
                        "status": ws.status.name,
                        "stimulus_id": stimulus_id,
                    }
                )
        amm: ActiveMemoryManagerExtension | None = scheduler.extensions.get("amm")
        if amm is None:
            amm = ActiveMemoryManagerExtension(
                scheduler, policies=set(), register=False, start=False
            )
        policy = DrainWorkers(addresses, self.cost)
        amm.add_policy(policy)
        ever_unique: set[TaskState] = set()
        moved_bytes: dict[TaskState, int] = {}
        timed_out = False
        try:
            while True:
                if not hasattr(amm, "pending"):
                    amm.run_once()
                live = [ws for ws in wss if ws.address in scheduler.workers]
                unique = {ts for ws in live for ts in policy.unique(ws)}
                ever_unique |= unique
                executing = any(ws.executing or _heartbeat_older(ws, started) for ws in live)
                if not unique and not executing:
                    break
                if policy.no_recipients:
                    break
                if time() >= deadline:
                    timed_out = True
                    break
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            amm.policies.discard(policy)
        live = [ws for ws in wss if ws.address in scheduler.workers]
        left = {ts for ws in live for ts in policy.unique(ws)}
        for ts in ever_unique - left:
            if ts.state == "memory":
                moved_bytes[ts] = max(ts.nbytes, 0)
        restarted = {ts for ws in live for ts in ws.processing}
        if close:
            for ws in live:
                await scheduler.remove_worker(
                    ws.address, expected=True, close=True, stimulus_id=stimulus_id
                )
        report = self._report(
            addresses,
            sorted(left, key=self.cost, reverse=True),
            moved_bytes,
            restarted,
            started,
            timed_out,
            policy.no_recipients,
            close,
        )
        logger.info(
            "hafen: drained %s: moved %d, recompute %d, restarted %d%s",
            addresses,
            report["moved"],
            len(report["recompute"]),
            len(report["restarted"]),
            " (timed out)" if timed_out else "",
        )
        return report

    def _report(
        self,
        addresses: list[str],
        left: list[TaskState],
        moved: Any,
        restarted: Any,
        started: float,
        timed_out: bool,
        no_recipients: bool,
        closed: bool,
    ) -> dict[str, Any]:
        moved = dict(moved) if isinstance(moved, dict) else {}
        return {
            "workers": addresses,
            "moved": len(moved),
            "moved_bytes": sum(moved.values()),
            "recompute": [ts.key for ts in left],
            "recompute_seconds": sum(self.cost(ts) for ts in left),
            "restarted": [ts.key for ts in restarted],
            "timed_out": timed_out,
            "no_recipients": no_recipients,
            "closed": closed,
            "duration": time() - started,
        }


async def ensure_installed(client: Client) -> None:
    """Register the resilience scheduler plugin unless it is there (idempotent, async)."""
    from distributed.protocol.pickle import dumps

    from hafen.cluster._resilience import PLUGIN_NAME, ResiliencePlugin

    await client.scheduler.register_scheduler_plugin(
        plugin=dumps(ResiliencePlugin()), name=PLUGIN_NAME, idempotent=True
    )


def _heartbeat_older(ws: WorkerState, since: float) -> bool:
    """True until the worker reported (heartbeat) after ``since``: ``executing`` is stale."""
    return ws.last_seen < since


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
    if timeout is None:
        timeout = config_get("hafen.drain.timeout")
    seconds = config_duration(timeout, name="timeout")
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
