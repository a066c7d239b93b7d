"""Cluster-wide limits held on the Dask scheduler, and the automatic back-pressure guard.

A limit has a concurrency (slots), a rate (a token bucket), and a cap on the results of its tasks
still in memory (``results``) or their bytes (``memory``). Tasks annotated with
``dask.annotate(limits=[...])`` take one slot (and one token) of each named limit while they run
and one result from their grant until their result is released; :func:`hafen.lease` takes a slot
and a token from inside a task for part of it. The bookkeeping and the grant decisions are the
:class:`~hafen.cluster.limits._ledger.Ledger`'s; the back-pressure guard (``_guard.py``) holds
data producers with the same machinery while results fill the cluster.

Mechanism
---------
A held task waits on the scheduler, in its ordinary ``no-worker`` state, never on a worker thread:

1. When an annotated task enters ``waiting`` (first submission, a retry, a rerun after its worker
   died, a recomputation of lost data), the :class:`LimitsExtension` -- a ``SchedulerPlugin`` --
   sees the transition in its ``transition`` hook and adds a resource restriction on a resource no
   worker has (:data:`HOLD_RESOURCE`), with ``loose_restrictions`` off. The task's own
   restrictions are saved and restored later. A loader the guard queues (``_guard.py``) gets the
   same restriction when it becomes ready: in the hook of the transition that put its last input
   in memory, before Dask acts on its recommendation to place it.
2. When its dependencies are in memory the scheduler tries to place it; ``valid_workers`` finds no
   worker with the resource, so the scheduler parks it in ``no-worker`` (``Scheduler.unrunnable``).
   The hook sees ``-> no-worker`` and queues the task on each of its limits.
3. A grant round (scheduled with ``loop.add_callback`` whenever a slot frees, a limit changes or a
   token is due, never run inside a transition) pops waiters per limit in Dask's priority order
   (user priority, submission, graph order: siblings feeding one consumer go together), then
   oldest (first seen by the extension; a rerun keeps its seniority). A task that fits all its
   limits is granted: its restrictions are restored and it is sent
   ``no-worker -> released -> waiting`` (the path Dask itself takes for a no-worker task whose
   input was lost), then ``waiting -> processing``, where Dask places it exactly as it would have
   without the limit: a root-ish task is queued or co-assigned with its siblings, another goes
   where its inputs and restrictions say, an actor as actors go; work stealing sees it like any
   other. (``no-worker -> processing`` would place every task as a restricted, non-root one:
   all on the worker that holds a shared input, no queuing, and it fails Dask's validation for
   actors.) A waiter blocked by another of its limits is skipped, not waited for, so a limit
   never idles behind it; under steady contention a task needing several limits can be
   overtaken.
4. The slot is taken at the grant and freed by the hook when the task leaves ``processing`` (or
   ``queued``, where Dask may keep a granted root-ish task until a thread is free) for any other
   state: memory, erred, released -- which is how a retry and a dead worker's task go back to
   waiting --, forgotten. A ``results``/``memory`` limit counts the result from the grant until
   it leaves memory (or the task ends without one). When a limit's results block its next waiter
   and nothing that could free them can run (``_progress.py``), the waiter is granted over the
   limit and the override counted, so a consumer that needs more results than the limit allows
   still finishes.

Because held tasks sit in ``unrunnable``, ``adaptive_target`` counts them as demand and
``check_idle`` does not call the scheduler idle. ``no-workers-timeout`` would fail them as having
unsatisfiable restrictions, so while workers are running a periodic callback moves held tasks to
the end of ``unrunnable`` with a fresh timestamp (keeping the dict's insertion order monotonic,
which the check relies on). With no running worker at all they are left alone and time out like
any queued task.

Options (constructor arguments, by default dask config ``hafen.limits.*``) are validated when the
extension is built. Time comes from a ``clock`` callable (the scheduler's monotonic clock by
default), which tests replace to drive token buckets without waiting.

Scheduler internals relied on (``tests/cluster/test_limits_internals.py`` pins them):
``SchedulerPlugin.transition`` being called after each transition, before recommendations that
follow it are processed; ``TaskState.annotations/resource_restrictions/loose_restrictions/
priority/waiting_on/dependents/nbytes/prefix``; ``SchedulerState.valid_workers`` returning an empty
set for an unknown resource and ``is_rootish`` being false for restricted tasks; the
``no-worker -> released``, ``released -> waiting`` and ``no-worker -> erred`` transitions
(``Scheduler.transition`` taking an unlisted pair through ``released``); ``Scheduler.unrunnable``
as an insertion-ordered ``{TaskState: monotonic time}`` read by ``_check_unrunnable_task_timeouts``
and ``adaptive_target``; ``Scheduler.running`` and ``no_workers_timeout``.

A task naming an unknown limit, or with a malformed annotation, is held like the others and failed
with a :class:`~hafen.errors.LimitError` as soon as it is ready to run (at submission for a task
without dependencies), before it reaches a worker. Once admitted, a task keeps its limits for its
life: if one is removed meanwhile, its retries and recomputations simply no longer wait for it.

Every request that changes state is idempotent: leases carry an id the caller creates, setting a
limit to the same values twice is a no-op and removing a missing limit does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.metrics import monotonic, time
from distributed.protocol.pickle import dumps as pickle_dumps
from tornado.ioloop import PeriodicCallback

from hafen.cluster._config import UNSET, option
from hafen.cluster.limits._guard import GUARD_NAME, Guard, GuardLimit
from hafen.cluster.limits._ledger import Ledger
from hafen.cluster.limits._limit import Limit, Waiter
from hafen.cluster.limits._metrics import register_metrics
from hafen.cluster.limits._progress import consumers_running, could_free
from hafen.cluster.limits._spec import ANNOTATION, make_spec, parse_annotation
from hafen.errors import LimitError

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed import Scheduler
    from distributed.scheduler import Recs, TaskState

__all__ = [
    "EXTENSION_NAME",
    "HOLD_RESOURCE",
    "PLUGIN_NAME",
    "LimitsExtension",
    "install_limits",
]

logger = logging.getLogger(__name__)

#: Name of the extension in ``Scheduler.extensions`` and prefix of its handlers.
EXTENSION_NAME = "hafen_limits"
PLUGIN_NAME = "hafen-limits"
#: A resource no worker has: a task restricted to it cannot be placed, so it waits in no-worker.
HOLD_RESOURCE = "hafen-limits-hold"


class LimitsExtension(SchedulerPlugin):
    """Scheduler extension and plugin holding cluster-wide limits; see the module docstring.

    Installed by :func:`install_limits` (which ``hafen.connect`` and ``--preload hafen.cluster``
    call); handlers are registered as ``hafen_limits_*``.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    burst : int, optional
        Tokens a rated limit banks when ``set_limit`` is not given ``burst=``; default dask
        config ``hafen.limits.burst``.
    min_refresh_interval : str or float, optional
        Smallest interval of the callback that keeps held tasks clear of ``no-workers-timeout``;
        default dask config ``hafen.limits.min-refresh-interval``.
    backpressure : dict, optional
        Options of the back-pressure guard (``enabled``, ``high``, ``low``, ``window``); default
        dask config ``hafen.backpressure.*``.
    clock : callable, optional
        Monotonic time in seconds, for token buckets and waiting times.

    Raises
    ------
    hafen.errors.ConfigError
        If an option is invalid.
    """

    name = PLUGIN_NAME

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        burst: int = UNSET,
        min_refresh_interval: str | float = UNSET,
        backpressure: dict[str, Any] | None = None,
        clock: Callable[[], float] = monotonic,
    ):
        self.burst: int = option("hafen.limits.burst", burst, argument="burst")
        self.min_refresh_interval: float = option(
            "hafen.limits.min-refresh-interval",
            min_refresh_interval,
            argument="min_refresh_interval",
        )
        self.guard = Guard(scheduler, **(backpressure or {}))
        self.clock = clock
        self.scheduler = scheduler
        guard_limit = GuardLimit(self.guard) if self.guard.enabled else None
        self.ledger = Ledger(clock, self._request_grant, guard_limit)
        self._saved: dict[Key, tuple[dict[str, float] | None, bool]] = {}
        self._names: dict[Key, tuple[str, ...]] = {}
        self._rejected: dict[Key, str] = {}
        self._seniority: dict[Key, int] = {}
        self._to_reject: list[Key] = []
        #: Keys being sent on by a grant round: their no-worker -> released -> waiting is ours.
        self._granting: set[Key] = set()
        #: Tasks without a limit that the guard holds (or granted and are not done yet).
        self._guarded: set[Key] = set()
        self._grant_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._refresher: PeriodicCallback | None = None
        self.started = False

    # --- lifecycle ----------------------------------------------------------------------------

    def start_extension(self) -> None:
        """Register the plugin, the handlers and the periodic callback; calling twice is a no-op."""
        if self.started:
            return
        self.started = True
        self.scheduler.add_plugin(self, name=PLUGIN_NAME, idempotent=True)
        self.scheduler.handlers.update(
            {
                "hafen_limits_set": self.set_limit,
                "hafen_limits_remove": self.remove_limit,
                "hafen_limits_info": self.info,
                "hafen_limits_acquire": self.acquire,
                "hafen_limits_release": self.release,
            }
        )
        timeout = self.scheduler.no_workers_timeout
        if timeout:
            interval = max(self.min_refresh_interval, timeout / 4)
            self._refresher = PeriodicCallback(self._refresh_unrunnable, interval * 1000)
            self.scheduler.periodic_callbacks["hafen-limits-refresh"] = self._refresher
            self._refresher.start()

    # --- handlers (RPC) -----------------------------------------------------------------------

    def set_limit(
        self,
        name: str | None = None,
        concurrency: int | None = None,
        rate: str | float | None = None,
        burst: int | None = None,
        results: int | None = None,
        memory: str | int | None = None,
    ) -> dict[str, Any]:
        """Create or resize a limit (idempotent); takes effect for waiting tasks at once."""
        spec = make_spec(
            name,
            concurrency,
            rate,
            burst,
            results=results,
            memory=memory,
            default_burst=self.burst,
        )
        self.ledger.set_limit(spec)
        return spec.settings()

    def remove_limit(self, name: str | None = None) -> bool:
        """Remove a limit; its waiters stop waiting for it. Returns whether it existed."""
        return self.ledger.remove_limit(str(name))

    def info(self) -> dict[str, dict[str, Any]]:
        """Per limit: its settings, slots in use, results alive and their bytes, waiters,
        grants, overrides and the longest wait (and the guard's row once it acted)."""
        return self.ledger.info()

    async def acquire(
        self,
        name: str | list[str] | None = None,
        lease_id: str | None = None,
        owner: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
    ) -> bool:
        """Take a lease on one or more limits; idempotent per ``lease_id``. False on timeout."""
        names = parse_annotation(name)
        self._check_known(names, what="a lease")
        holder = ("lease", str(lease_id))
        ledger = self.ledger
        if holder in ledger.holds:
            return True
        waiter = ledger.waiters.get(holder)
        if waiter is None:
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            order = ((-int(priority),), next(ledger.counter))
            waiter = Waiter(holder, names, order, self.clock(), owner, future)
            ledger.enqueue(waiter)
        assert waiter.future is not None
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except TimeoutError:
            if ledger.waiters.get(holder) is waiter:
                ledger.drop(holder)
            return holder in ledger.holds

    def release(self, lease_id: str | None = None) -> bool:
        """Release a lease, or stop waiting for it; idempotent. Returns whether it was known."""
        return self.ledger.drop(("lease", str(lease_id)))

    # --- plugin hooks -------------------------------------------------------------------------

    def transition(self, key: Key, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        ledger = self.ledger
        if start == "processing" and (ledger.waits_on_memory() or ledger.guard_waits()):
            self._request_grant()  # something finished: a blocked limit may be stuck now
        ts = self.scheduler.tasks.get(key)
        if ts is None:
            return
        guard = self.guard
        flipped = guard.enabled and (finish == "memory" or start == "memory")
        if flipped and guard.observe(key, start, finish, ts):
            self._request_grant()
        if guard.enabled and finish == "memory" and start != "memory":
            # its dependents that are ready now go to Dask's placement next: hold the loaders
            for dts in ts.dependents:
                if dts.state == "waiting" and not dts.waiting_on:
                    self._hold_loader(dts)
        annotations = ts.annotations
        if start == finish:
            # waiting -> waiting: Dask decided where a ready task goes next (queued, no-worker)
            # and recommended it; the task was held (or not) when it entered waiting
            return
        if (not annotations or ANNOTATION not in annotations) and key not in self._guarded:
            if finish != "waiting" or key in self._granting:
                return
            if not guard.engaged or not guard.is_producer(ts):
                if not ts.waiting_on:
                    self._hold_loader(ts)  # ready at once (its inputs were in memory)
                return
            self._guarded.add(key)  # a producer while the guard is engaged: hold it
        if key in self._granting and finish in ("released", "waiting"):
            return  # a grant sending the task on: it keeps its slot
        if finish == "waiting":
            self._hold_task(ts)
        elif finish == "no-worker":
            if key in self._saved and ("task", key) not in ledger.waiters:
                self._enqueue_task(ts)
        elif finish in ("processing", "queued"):
            return
        else:
            ledger.drop(("task", key))
            if finish == "memory" and start == "processing":
                ledger.result_landed(key, ts.group.name, ts.nbytes)
            else:
                ledger.result_gone(key)
            if key not in self._saved:
                self._guarded.discard(key)
            if finish == "forgotten":
                self._saved.pop(key, None)
                self._names.pop(key, None)
                self._rejected.pop(key, None)
                self._seniority.pop(key, None)
                self._guarded.discard(key)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        if self.guard.check():
            self._request_grant()

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        self.ledger.drop_owner(worker)
        if self.guard.check():
            self._request_grant()

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        self.ledger.drop_owner(client)

    # --- holding ------------------------------------------------------------------------------

    def _check_known(self, names: tuple[str, ...], *, what: str) -> None:
        unknown = [n for n in names if n not in self.ledger.limits]
        if unknown:
            known = ", ".join(sorted(self.ledger.limits)) or "none"
            raise LimitError(
                f"{what} names unknown limit(s) {', '.join(map(repr, unknown))} "
                f"(known: {known}); create it with hafen.set_limit() first"
            )

    def _hold_task(self, ts: TaskState) -> None:
        key = ts.key
        self.ledger.drop(("task", key))
        self.ledger.result_gone(key)
        if key in self._names:
            pass  # admitted before (a retry, a rerun, a recomputation): removed limits are skipped
        elif key in self._guarded:
            self._names[key] = (GUARD_NAME,)
        else:
            try:
                names = parse_annotation((ts.annotations or {}).get(ANNOTATION))
                self._check_known(names, what=f"task {key!r}")
            except LimitError as exc:
                self._rejected[key] = str(exc)
            else:
                self._names[key] = names
                self._rejected.pop(key, None)
        self._seniority.setdefault(key, next(self.ledger.counter))
        if key not in self._saved:
            rr = ts.resource_restrictions
            self._saved[key] = (dict(rr) if rr else None, ts.loose_restrictions)
        restrictions = dict(ts.resource_restrictions or {})
        restrictions[HOLD_RESOURCE] = 1
        ts.resource_restrictions = restrictions
        ts.loose_restrictions = False

    def _hold_loader(self, ts: TaskState) -> None:
        """Hold ``ts`` if it is a loader Dask would not queue (``Guard.is_loader``)."""
        key = ts.key
        if key in self._saved or key in self._granting or key in self._guarded:
            return
        annotations = ts.annotations
        if (annotations and ANNOTATION in annotations) or not self.guard.is_loader(ts):
            return
        self.guard.loaders += 1
        self._guarded.add(key)
        self._hold_task(ts)

    def _release_task(self, ts: TaskState) -> None:
        saved = self._saved.pop(ts.key, None)
        if saved is not None:
            ts.resource_restrictions, ts.loose_restrictions = saved

    def _enqueue_task(self, ts: TaskState) -> None:
        key = ts.key
        if key in self._rejected:
            self._to_reject.append(key)
            self._request_grant()
            return
        ledger = self.ledger
        names = tuple(n for n in self._names.get(key, ()) if ledger.limit(n) is not None)
        # Tasks under limits that produce data are also held by the guard while it is engaged.
        producer = GUARD_NAME not in names and self.guard.is_producer(ts)
        if GUARD_NAME in names:
            self.guard.held_groups.add(ts.group.name)
        # Dask's priority (user priority, then submission, then graph order: siblings feeding
        # one consumer are next to each other), then seniority.
        order = (tuple(ts.priority or (0,)), self._seniority[key])
        waiter = Waiter(("task", key), names, order, self.clock(), group=ts.group.name)
        waiter.producer = producer
        ledger.enqueue(waiter)

    # --- granting -----------------------------------------------------------------------------

    def _request_grant(self) -> None:
        if not self._grant_pending:
            self._grant_pending = True
            self.scheduler.loop.add_callback(self._grant)

    def _grant(self) -> None:
        """One grant round; runs from the event loop, outside any transition.

        First what fits every limit of a waiter, then, on the state that left, an override for
        each limit that is stuck (see :class:`~hafen.cluster.limits._ledger.Ledger`).
        """
        self._grant_pending = False
        now = self.clock()
        stimulus_id = f"hafen-limits-grant-{time()}"
        if self._to_reject:
            self._reject_tasks(stimulus_id)
        if self.guard.engaged and self.scheduler.queued:
            self._take_from_dasks_queue(stimulus_id)
        ledger = self.ledger
        self._send_granted(ledger.select(now, self._still_waiting, self._wake_in), stimulus_id)
        if ledger.waits_on_memory():
            over = ledger.overrides(now, self._stuck, self._idle_threads, self._on_override)
            self._send_granted(over, f"{stimulus_id}-override")

    def _take_from_dasks_queue(self, stimulus_id: str) -> None:
        """The guard engaged: producers in Dask's queue go back to waiting, where it holds them."""
        keys = [ts.key for ts in self.scheduler.queued if self.guard.is_producer(ts)]
        if keys:
            self.scheduler.transitions(dict.fromkeys(keys, "released"), stimulus_id=stimulus_id)

    def _stuck(self, limit: Limit) -> bool:
        if isinstance(limit, GuardLimit):
            # only producers could run: let them fill the idle threads (work-conserving)
            scheduler = self.scheduler
            return self._idle_threads() > 0 and not consumers_running(scheduler, self._is_producer)
        return not could_free(limit, self.scheduler, self._waiting_for)

    def _is_producer(self, ts: TaskState) -> bool:
        return ts.key in self._guarded or self.guard.is_producer(ts)

    def _idle_threads(self) -> int:
        scheduler = self.scheduler
        busy = sum(len(ws.processing) for ws in scheduler.workers.values())
        return scheduler.total_nthreads - busy

    def _waiting_for(self, key: Key) -> tuple[str, ...] | None:
        waiter = self.ledger.waiters.get(("task", key))
        if waiter is not None:
            return waiter.names
        return () if key in self._saved else None

    def _on_override(self, limit: Limit, waiter: Waiter, first: bool) -> None:
        spec = limit.spec
        self.scheduler.log_event(
            "hafen-limits",
            {"action": "override", "limit": spec.name, "key": waiter.holder[1]},
        )
        if first:
            logger.warning(
                "limit %r (results=%s, memory=%s): nothing that would free its results can "
                "run, so %r was granted over the limit; such overrides are counted in "
                "hafen.limits() ('overrides'). A task that needs more of these results at once "
                "than the limit allows (a reduction over all of them) causes this.",
                spec.name,
                spec.results,
                spec.settings()["memory_text"],
                waiter.holder[1],
            )

    def _send_granted(self, granted: list[Waiter], stimulus_id: str) -> None:
        tasks: list[TaskState] = []
        for waiter in sorted(granted, key=lambda w: w.order):
            kind, ident = waiter.holder
            if kind == "lease":
                assert waiter.future is not None
                if not waiter.future.done():
                    waiter.future.set_result(True)
                continue
            ts = self.scheduler.tasks.get(ident)
            if ts is None or ts.state != "no-worker":
                self.ledger.drop(waiter.holder)
                self.ledger.result_gone(ident)
                continue
            self._release_task(ts)
            tasks.append(ts)
        if tasks:
            self._send_on(tasks, stimulus_id)

    def _send_on(self, tasks: list[TaskState], stimulus_id: str) -> None:
        """Let granted tasks go on as Dask would have sent them without the limit.

        Each goes ``no-worker -> released -> waiting``, the path Dask takes itself for a
        no-worker task whose input was lost; then ``waiting -> processing`` places it with Dask's
        own rules (root-ish queuing or co-assignment, dependencies, restrictions, actors). All of
        a round's tasks are ``waiting`` before the first is placed, as after ``update_graph``, so
        co-assignment sees its siblings; they are placed best first.
        """
        scheduler = self.scheduler
        keys = [ts.key for ts in tasks]
        self._granting.update(keys)
        try:
            recommendations: Recs = {}
            for key in keys:
                recommendations.update(scheduler.transition(key, "waiting", stimulus_id))
            # transitions() pops the last entry first: best (first granted) last in the dict
            ordered: Recs = {k: v for k, v in recommendations.items() if k not in keys}
            for key in reversed(keys):
                if key in recommendations:
                    ordered[key] = recommendations[key]
            scheduler.transitions(ordered, stimulus_id=stimulus_id)
        finally:
            self._granting.difference_update(keys)

    def _still_waiting(self, waiter: Waiter) -> bool:
        kind, ident = waiter.holder
        if kind == "lease":
            return waiter.future is not None and not waiter.future.done()
        ts = self.scheduler.tasks.get(ident)
        return ts is not None and ts.state == "no-worker" and ident in self._saved

    def _wake_in(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._request_grant()

    def _reject_tasks(self, stimulus_id: str) -> None:
        keys, self._to_reject = self._to_reject, []
        recommendations: Recs = {}
        for key in keys:
            ts = self.scheduler.tasks.get(key)
            reason = self._rejected.get(key)
            if ts is None or reason is None or ts.state != "no-worker":
                continue
            exc = LimitError(reason)
            self._release_task(ts)
            recommendations.update(
                self.scheduler.transition(
                    key,
                    "erred",
                    stimulus_id=stimulus_id,
                    exception=pickle_dumps(exc),
                    cause=key,
                    exception_text=f"LimitError: {reason}",
                    traceback_text="",
                )
            )
            logger.error("Task %r rejected: %s", key, reason)
        self.scheduler.transitions(recommendations, stimulus_id=stimulus_id)

    def _refresh_unrunnable(self) -> None:
        """Keep held tasks clear of ``no-workers-timeout`` while workers are running."""
        scheduler = self.scheduler
        if not scheduler.running or not self._saved:
            return
        held = [ts for ts in scheduler.unrunnable if ts.key in self._saved]
        now = monotonic()  # the scheduler's clock, which no-workers-timeout is measured on
        for ts in held:
            del scheduler.unrunnable[ts]
            scheduler.unrunnable[ts] = now


def install_limits(scheduler: Scheduler, **options: Any) -> LimitsExtension:
    """Install the limits extension on ``scheduler``; installing twice is harmless.

    ``options`` are passed to :class:`LimitsExtension` when it is created (not when it was
    installed already). Its state is served as Prometheus metrics on ``/metrics``.
    """
    ext = scheduler.extensions.get(EXTENSION_NAME)
    if not isinstance(ext, LimitsExtension):
        ext = LimitsExtension(scheduler, **options)
        scheduler.extensions[EXTENSION_NAME] = ext
    ext.start_extension()
    register_metrics(ext.info)
    return ext
