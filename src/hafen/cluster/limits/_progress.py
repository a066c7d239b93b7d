"""Whether a limit that holds results could still see one freed without granting over it.

A limit with ``results=`` or ``memory=`` is *blocked* when its next waiter does not fit. Its
results are freed when their dependents have run (and no client holds them). It is *stuck* --
and the extension grants over the limit, counting an override -- when nothing that could free
one of them can run:

- none of its own tasks is still running (a running one lands, and may let a dependent run);
- no dependent of its results that still waits for them is running or queued, or could start
  without this limit: following each dependent's missing inputs (``TaskState.waiting_on``), none
  is running or queued, or held only by other limits (which grant in their own turn);
- or, whatever the above says, the cluster is idle: no task processing or queued anywhere. This
  is the backstop that makes the override sure to come -- two limits each waiting for the other
  are both stuck once nothing runs.

The search is bounded (:data:`SEARCH_BUDGET` tasks); past the budget it assumes progress, and the
idle backstop still applies.

The back-pressure guard is stuck, more simply, when no task that consumes results is processing
(:func:`consumers_running`): then only producers can make progress, and it lets as many go as
there are idle threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hafen.cluster.limits._limit import Limit

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed import Scheduler
    from distributed.scheduler import TaskState

__all__ = ["SEARCH_BUDGET", "cluster_idle", "consumers_running", "could_free"]

#: Tasks looked at, at most, per check.
SEARCH_BUDGET = 2000

#: The limits a task held by hafen waits for (None: not held by hafen).
WaitingFor = Callable[["Key"], "tuple[str, ...] | None"]


def cluster_idle(scheduler: Scheduler) -> bool:
    """No task processing or queued on the whole cluster."""
    if scheduler.queued:
        return False
    return not any(ws.processing for ws in scheduler.workers.values())


def consumers_running(scheduler: Scheduler, is_producer: Callable[[TaskState], bool]) -> bool:
    """Whether a task that is not a producer is processing: it will free memory when it ends."""
    return any(not is_producer(ts) for ws in scheduler.workers.values() for ts in ws.processing)


def could_free(limit: Limit, scheduler: Scheduler, waiting_for: WaitingFor) -> bool:
    """Whether something that may free one of ``limit``'s results can run without an override."""
    if limit.running:
        return True
    if cluster_idle(scheduler):
        return False
    name = limit.spec.name
    seen: set[TaskState] = set()
    stack: list[TaskState] = []
    for key in limit.landed:
        ts = scheduler.tasks.get(key)
        if ts is not None:
            stack.extend(ts.waiters or ())
    while stack:
        ts = stack.pop()
        if ts in seen:
            continue
        seen.add(ts)
        if len(seen) > SEARCH_BUDGET:
            return True
        state = ts.state
        if state in ("processing", "queued"):
            return True
        if state == "no-worker":
            names = waiting_for(ts.key)
            if names is not None and name not in names:
                return True  # held by other limits only: they grant in their own turn
        elif state == "waiting":
            stack.extend(ts.waiting_on or ())
    return False
