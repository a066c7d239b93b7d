"""Who holds and who waits: the bookkeeping of the limits extension, and its grant decisions.

The :class:`Ledger` knows the limits, the waiters (tasks and leases) queued on each, the running
holders and the results each limit counts. It decides who is granted in a round; the scheduler
extension (``_plugin.py``) enacts the decisions on the scheduler. Nothing here touches scheduler
state, except through the callables the extension passes in.

A round has two passes. :meth:`Ledger.select` grants, limit by limit, the best waiters that fit
all their limits (slots, tokens, results, memory, and the back-pressure guard for producers);
a limit whose best waiter does not fit its ``results``/``memory`` is *blocked*. Then, once the
grants were sent on, :meth:`Ledger.overrides` grants over a blocked limit if nothing could free
its results, and over the guard if the cluster is idle (see ``_progress.py``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hafen.cluster.limits._guard import GUARD_NAME, GuardLimit
from hafen.cluster.limits._limit import Hold, Holder, Limit, Sizes, Waiter
from hafen.cluster.limits._spec import LimitSpec

if TYPE_CHECKING:
    from dask.typing import Key

__all__ = ["Ledger"]

logger = logging.getLogger("hafen.cluster.limits._plugin")

Entry = tuple[tuple[Any, ...], int, Waiter]


class Ledger:
    """Limits, waiters, holders and results (see the module docstring).

    Parameters
    ----------
    clock : callable
        Monotonic seconds, for token buckets and waiting times.
    on_change : callable
        Called when something was freed or changed that may let a waiter go (the extension
        schedules a grant round).
    guard : GuardLimit, optional
        The back-pressure guard as a limit.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        on_change: Callable[[], None],
        guard: GuardLimit | None = None,
    ) -> None:
        self.clock = clock
        self.on_change = on_change
        self.guard = guard
        self.limits: dict[str, Limit] = {}
        self.waiters: dict[Holder, Waiter] = {}
        self.holds: dict[Holder, Hold] = {}
        #: The limits counting each granted task's result, until it is released.
        self.results: dict[Key, tuple[str, ...]] = {}
        self.sizes = Sizes()
        self.unconstrained: list[Waiter] = []
        #: Limits whose best waiter did not fit their results/memory in the last round.
        self.blocked: dict[str, Entry] = {}
        #: Producers under limits that only the engaged guard kept waiting in the last round.
        self.guard_blocked: dict[Holder, Waiter] = {}
        self.still_waiting: Callable[[Waiter], bool] = lambda waiter: True
        self.counter = itertools.count()

    def waits_on_memory(self) -> bool:
        """Whether a waiter waits for results to go (a blocked limit, or the engaged guard)."""
        guard = self.guard
        held = guard is not None and guard.guard.engaged and bool(guard.heap or self.guard_blocked)
        return bool(self.blocked) or held

    def guard_waits(self) -> bool:
        """Whether the guard holds tasks (a thread that frees may let one go)."""
        return self.guard is not None and bool(self.guard.heap)

    def limit(self, name: str) -> Limit | None:
        if self.guard is not None and name == GUARD_NAME:
            return self.guard
        return self.limits.get(name)

    # --- settings -----------------------------------------------------------------------------

    def set_limit(self, spec: LimitSpec) -> None:
        limit = self.limits.get(spec.name)
        if limit is None:
            limit = Limit(spec)
            self.limits[spec.name] = limit
        limit.configure(spec, self.clock)
        self.on_change()

    def remove_limit(self, name: str) -> bool:
        limit = self.limits.pop(name, None)
        if limit is None:
            return False
        self.blocked.pop(name, None)
        for waiter in self.waiters.values():
            if name in waiter.names:
                waiter.names = tuple(n for n in waiter.names if n != name)
                if not waiter.names:
                    self.unconstrained.append(waiter)
        self.on_change()
        return True

    def info(self) -> dict[str, dict[str, Any]]:
        """Per limit: settings, slots in use, results alive and their bytes, waiters, grants,
        overrides and the longest wait; and the guard's row once it has done anything."""
        rows: dict[str, Limit] = dict(self.limits)
        guard = self.guard
        if guard is not None and (
            guard.guard.engagements or guard.granted or guard.heap or guard.overrides
        ):
            rows[GUARD_NAME] = guard
        now = self.clock()
        waiting = dict.fromkeys(rows, 0)
        longest = dict.fromkeys(rows, 0.0)
        for waiter in self.waiters.values():
            blocked = self.guard_blocked.get(waiter.holder) is waiter
            names = waiter.names + ((GUARD_NAME,) if blocked else ())
            for name in names:
                if name in waiting:
                    waiting[name] += 1
                    longest[name] = max(longest[name], now - waiter.since)
        out = {}
        for name, limit in sorted(rows.items()):
            counts = limit.spec.counts_results
            row = limit.row() if isinstance(limit, GuardLimit) else limit.spec.settings()
            out[name] = {
                "in_use": len(limit.holders),
                "alive": limit.alive if counts else 0,
                "alive_bytes": limit.alive_bytes(self.sizes) if counts else 0,
                **row,
                "waiting": waiting[name],
                "granted": limit.granted,
                "overrides": limit.overrides,
                "longest_wait": longest[name],
            }
        return out

    # --- waiting and holding ------------------------------------------------------------------

    def enqueue(self, waiter: Waiter) -> None:
        self.waiters[waiter.holder] = waiter
        if not waiter.names:
            self.unconstrained.append(waiter)
        for name in waiter.names:
            limit = self.limit(name)
            assert limit is not None
            heapq.heappush(limit.heap, (waiter.order, next(self.counter), waiter))
        self.on_change()

    def drop(self, holder: Holder) -> bool:
        """Forget a waiter or free a holder's slots. Returns whether either existed."""
        waiter = self.waiters.pop(holder, None)
        if waiter is not None and waiter.future is not None and not waiter.future.done():
            waiter.future.set_result(False)
        hold = self.holds.pop(holder, None)
        if hold is not None:
            for name in hold.names:
                limit = self.limit(name)
                if limit is not None:
                    limit.holders.discard(holder)
            self.on_change()
        return waiter is not None or hold is not None

    def drop_owner(self, owner: str) -> None:
        holders = [h for h, hold in self.holds.items() if hold.owner == owner]
        holders += [h for h, w in self.waiters.items() if w.owner == owner]
        for holder in holders:
            self.drop(holder)

    def take(self, waiter: Waiter, now: float) -> None:
        del self.waiters[waiter.holder]
        kind, ident = waiter.holder
        counting: list[str] = []
        for name in waiter.names:
            limit = self.limit(name)
            assert limit is not None
            limit.holders.add(waiter.holder)
            limit.granted += 1
            if limit.bucket is not None:
                limit.bucket.take()
            if kind == "task" and limit.spec.counts_results:
                limit.take_result(ident, waiter.group)
                counting.append(name)
        if counting:
            self.results[ident] = tuple(counting)
        self.holds[waiter.holder] = Hold(waiter.names, waiter.owner, now)

    def result_landed(self, key: Key, group: str, nbytes: int) -> None:
        names = self.results.get(key)
        if not names:
            return
        self.sizes.add(group, nbytes)
        for name in names:
            limit = self.limits.get(name)
            if limit is not None:
                limit.result_landed(key, nbytes)
        self.on_change()  # a first size known may let a memory limit grant

    def result_gone(self, key: Key) -> None:
        """The task's result was released, or the task ended (or restarts) without one."""
        names = self.results.pop(key, None)
        if not names:
            return
        for name in names:
            limit = self.limits.get(name)
            if limit is not None:
                limit.forget_result(key)
        self.on_change()

    # --- a grant round ------------------------------------------------------------------------

    def select(
        self,
        now: float,
        still_waiting: Callable[[Waiter], bool],
        wake_in: Callable[[float], None],
    ) -> list[Waiter]:
        """First pass of a round: every waiter that fits all its limits, best first per limit."""
        granted: list[Waiter] = []
        self.still_waiting = still_waiting
        while self.unconstrained:
            waiter = self.unconstrained.pop()
            if self.waiters.get(waiter.holder) is waiter and not waiter.names:
                self.take(waiter, now)
                granted.append(waiter)
        self.blocked = {}
        self.guard_blocked = {}
        limits: Iterable[Limit] = list(self.limits.values())
        if self.guard is not None:
            limits = [*limits, self.guard]
        for limit in limits:
            if limit.heap:
                self._select_limit(limit, now, granted, wake_in)
        return granted

    def _select_limit(
        self, limit: Limit, now: float, granted: list[Waiter], wake_in: Callable[[float], None]
    ) -> None:
        limit.refill()
        skipped = []
        blocked = None
        while limit.heap and limit.has_slot():
            entry = heapq.heappop(limit.heap)
            waiter = entry[2]
            if not self._current(limit, waiter):
                continue
            if not limit.has_result_room(self._group(waiter), self.sizes):
                blocked = entry  # its results first have to go (or nothing can free them)
                break
            if waiter.producer and self.guard is not None and self.guard.guard.engaged:
                skipped.append(entry)  # a producer: the engaged guard holds it
                self.guard_blocked[waiter.holder] = waiter
                if waiter.group is not None:
                    self.guard.guard.held_groups.add(waiter.group)
                continue
            others = [self.limit(n) for n in waiter.names if n != limit.spec.name]
            if all(other is not None and self._fits(other, waiter) for other in others):
                self.take(waiter, now)
                granted.append(waiter)
            else:
                skipped.append(entry)
        for entry in skipped:
            heapq.heappush(limit.heap, entry)
        if blocked is not None:
            heapq.heappush(limit.heap, blocked)
            self.blocked[limit.spec.name] = blocked
        if limit.heap:
            due = limit.token_due_in()
            if due is not None:
                wake_in(due)

    def _current(self, limit: Limit, waiter: Waiter) -> bool:
        """Whether a heap entry is still a waiter of ``limit`` (dropping a stale task)."""
        if self.waiters.get(waiter.holder) is not waiter or limit.spec.name not in waiter.names:
            return False  # stale entry: granted, dropped or limit removed meanwhile
        if not self.still_waiting(waiter):
            self.drop(waiter.holder)
            return False
        return True

    def _fits(self, limit: Limit, waiter: Waiter) -> bool:
        limit.refill()
        return limit.has_slot() and limit.has_result_room(self._group(waiter), self.sizes)

    @staticmethod
    def _group(waiter: Waiter) -> str | None:
        return waiter.group if waiter.holder[0] == "task" else None

    def overrides(
        self,
        now: float,
        stuck: Callable[[Limit], bool],
        idle_threads: Callable[[], int],
        on_override: Callable[[Limit, Waiter, bool], None],
    ) -> list[Waiter]:
        """Second pass: grant over blocked limits that are stuck, and over an idle guard.

        Concurrency and rates still hold (they free themselves). Each grant over a limit's
        ``results``/``memory`` (or the guard) counts as an override on that limit and is
        reported to ``on_override(limit, waiter, first)`` (``first``: the limit's first).
        """
        granted: list[Waiter] = []
        for name, entry in list(self.blocked.items()):
            limit = self.limits.get(name)
            waiter = entry[2]
            if limit is None or not limit.heap or limit.heap[0][2] is not waiter:
                continue
            if not self._current(limit, waiter) or not stuck(limit):
                continue
            mine = [self.limit(n) for n in waiter.names]
            if not all(other is not None and other.has_slot() for other in mine):
                continue
            heapq.heappop(limit.heap)
            group = self._group(waiter)
            for other in mine:
                assert other is not None
                if not other.has_result_room(group, self.sizes):
                    self._count(other, waiter, on_override)
            self.take(waiter, now)
            granted.append(waiter)
            del self.blocked[name]
        guard = self.guard
        if guard is not None and guard.guard.engaged and stuck(guard):
            granted += self._guard_overrides(guard, now, idle_threads(), on_override)
        return granted

    def _guard_overrides(
        self,
        guard: GuardLimit,
        now: float,
        room: int,
        on_override: Callable[[Limit, Waiter, bool], None],
    ) -> list[Waiter]:
        """The cluster is idle while the guard holds producers: let up to ``room`` go."""
        candidates = [entry[2] for entry in guard.heap] + list(self.guard_blocked.values())
        candidates.sort(key=lambda w: w.order)
        granted: list[Waiter] = []
        for waiter in candidates:
            if len(granted) >= max(room, 1):
                break
            if self.waiters.get(waiter.holder) is not waiter or not self.still_waiting(waiter):
                continue
            mine = [self.limit(n) for n in waiter.names if n != GUARD_NAME]
            if not all(other is not None and self._fits(other, waiter) for other in mine):
                continue
            self._count(guard, waiter, on_override)
            self.take(waiter, now)
            granted.append(waiter)
        if granted:
            guard.heap = [e for e in guard.heap if self.waiters.get(e[2].holder) is e[2]]
            heapq.heapify(guard.heap)
            guard.guard.suspend()  # the rest go through its window from the next round
            self.on_change()
        return granted

    @staticmethod
    def _count(
        limit: Limit, waiter: Waiter, on_override: Callable[[Limit, Waiter, bool], None]
    ) -> None:
        limit.overrides += 1
        first, limit.warned = not limit.warned, True
        on_override(limit, waiter, first)
