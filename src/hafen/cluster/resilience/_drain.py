"""Drain, the scheduler side: retire workers without recomputation, costliest first, in time.

``hafen.drain(client, workers, timeout="5m")`` (see ``_client.py``) asks the scheduler (handler
``hafen_drain`` of :class:`DrainCoordinator`, installed by the resilience scheduler plugin) to

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

It answers with a report (a dict; the client makes a ``DrainReport`` of it). The request carries
an id made by the client, so a retried call joins the drain in progress instead of starting a
second one.

Options are dask config keys ``hafen.drain.*``, read and validated when the coordinator is built.
The coordinator knows the recompute cost of a result only through the ``cost`` callable it is
given, so it does not depend on the plugin that builds it.

Why not ``Scheduler.retire_workers``? It moves results in no particular order and has no timeout;
a preemption notice gives a fixed time, and what matters then is moving the costliest first and
saying what will be lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from distributed.active_memory_manager import (
    ActiveMemoryManagerExtension,
    ActiveMemoryManagerPolicy,
    Suggestion,
    SuggestionGenerator,
)
from distributed.core import Status
from distributed.metrics import time

from hafen.cluster._config import UNSET, option

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, TaskState, WorkerState

__all__ = ["DrainCoordinator", "DrainWorkers"]

logger = logging.getLogger(__name__)

#: Recompute cost of a result, in seconds.
Cost = Callable[["TaskState"], float]


class DrainWorkers(ActiveMemoryManagerPolicy):
    """AMM policy: copy results that live only on draining workers elsewhere, costliest first.

    Per pass and worker it asks for at most ``batch_bytes`` / ``batch_keys`` of results not
    already on their way; a request that has not landed after ``retry_after`` seconds is made
    again. Removes itself when its workers are gone. The options default to dask config
    ``hafen.drain.batch-bytes``, ``batch-keys`` and ``retry-after``.
    """

    def __init__(
        self,
        addresses: Iterable[str],
        cost: Cost,
        *,
        batch_bytes: int | str = UNSET,
        batch_keys: int = UNSET,
        retry_after: float | str = UNSET,
    ) -> None:
        self.addresses = frozenset(addresses)
        self.cost = cost
        key = "hafen.drain."
        self.batch_bytes: int = option(key + "batch-bytes", batch_bytes, argument="batch_bytes")
        self.batch_keys: int = option(key + "batch-keys", batch_keys, argument="batch_keys")
        self.retry_after: float = option(key + "retry-after", retry_after, argument="retry_after")
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
    """Scheduler extension behind the ``hafen_drain`` handler.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    cost : callable
        Recompute cost of a result in seconds: the costliest move first.
    batch_bytes, batch_keys, retry_after
        For the :class:`DrainWorkers` policy of each drain; default dask config ``hafen.drain.*``.
    poll_interval : str or float, optional
        How often a drain checks whether it is done (``hafen.drain.poll-interval``).
    remember : str or float, optional
        How long a finished drain's report is kept for a retried request
        (``hafen.drain.remember``).

    Raises
    ------
    hafen.errors.ConfigError
        If an option is invalid.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        cost: Cost,
        *,
        batch_bytes: int | str = UNSET,
        batch_keys: int = UNSET,
        retry_after: float | str = UNSET,
        poll_interval: float | str = UNSET,
        remember: float | str = UNSET,
    ) -> None:
        self.scheduler = scheduler
        self.cost = cost
        key = "hafen.drain."
        self.batch_bytes: int = option(key + "batch-bytes", batch_bytes, argument="batch_bytes")
        self.batch_keys: int = option(key + "batch-keys", batch_keys, argument="batch_keys")
        self.retry_after: float = option(key + "retry-after", retry_after, argument="retry_after")
        self.poll_interval: float = option(
            key + "poll-interval", poll_interval, argument="poll_interval"
        )
        self.remember: float = option(key + "remember", remember, argument="remember")
        self._drains: dict[str, asyncio.Future[dict[str, Any]]] = {}

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
        asyncio.get_running_loop().call_later(self.remember, self._drains.pop, drain_id, None)

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
        if amm is None or not amm.running:
            # As Scheduler.retire_workers: with Dask's AMM stopped, an ad-hoc one that runs
            # only this policy (not Dask's other policies, which were meant to stay idle).
            amm = ActiveMemoryManagerExtension(
                scheduler, policies=set(), register=False, start=False
            )
        policy = DrainWorkers(
            addresses,
            self.cost,
            batch_bytes=self.batch_bytes,
            batch_keys=self.batch_keys,
            retry_after=self.retry_after,
        )
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
                await asyncio.sleep(self.poll_interval)
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


def _heartbeat_older(ws: WorkerState, since: float) -> bool:
    """True until the worker reported (heartbeat) after ``since``: ``executing`` is stale."""
    return ws.last_seen < since
