"""The automatic back-pressure guard: hold data producers while results fill the cluster.

Production pipelines use more memory than their work needs because the tasks that produce data
run long before the tasks that consume it. Dask's root-task queuing helps only for tasks it calls
root-ish, counts tasks rather than bytes, and never applies to tasks with restrictions or
resources -- which hafen's limited tasks are while they are held. The guard closes that gap with
the limits extension's machinery (hold in ``no-worker``, grant in priority order):

- it follows the bytes of results in memory on the cluster (``TaskState.nbytes`` of every result
  as it lands and leaves, one copy each) against the workers' total memory limit;
- at the ``high`` watermark it *engages*: producers are held -- tasks under a hafen limit that
  are producers wait for their grant, new producers are held as they become ready, and the
  producers waiting in Dask's own queue are taken out of it and held -- while every other task
  (the consumers of results) runs as before;
- below ``low`` it lets them go, in Dask's priority order and while fewer than ``window`` tasks
  per worker thread are processing (counting all of them, as Dask's queue does), so a backlog of
  producers is not dropped on the cluster all at once;
- it queues, engaged or not, the *loaders* Dask does not queue (:meth:`Guard.is_loader`): a task
  without restrictions that becomes ready with few, small inputs (a file handle) and whose kind
  makes much larger results, but which Dask does not call root-ish -- its group depends on many
  tasks (one open per file), or is small (one group per ``from_delayed`` chunk);
- it never deadlocks, and never idles the cluster for nothing: when no task that consumes
  results is running while producers are held (only producers could make progress), it lets as
  many go as there are idle threads, counting overrides, and stands aside until the results in
  memory fall below ``low`` (what is in memory then is what the graph needs: holding more
  producers back would only idle threads, engagement after engagement).

A *producer* is a task Dask would call root-ish if it had no restrictions: a task marked as a data
producer, or one of a task group much larger than the cluster with few, small dependencies; or a
loader it holds. Its inputs are few and small; its output is data. A task whose inputs are many or
large (a consumer: a write, a reduction) is never one.

Tasks with restrictions that are not under a hafen limit go straight to their workers when Dask
sees them ready; the guard holds those that become ready while it is engaged, not those already
sent. Options are dask config keys ``hafen.backpressure.*``, read when the guard is built.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes

from hafen.cluster._config import UNSET, option
from hafen.cluster.limits._limit import Limit, Sizes
from hafen.cluster.limits._spec import LimitSpec
from hafen.errors import ConfigError

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed import Scheduler
    from distributed.scheduler import TaskState

__all__ = ["GUARD_NAME", "LOADER_INPUTS", "Guard", "GuardLimit"]

#: The guard's row in ``hafen.limits()`` (names starting ``hafen.`` are not users' to take).
GUARD_NAME = "hafen.backpressure"
#: A loader's inputs, at most: a file handle, a path, a chunk's coordinates -- not data.
LOADER_INPUTS = 64 * 1024
#: A loader's output, at least (as its prefix's finished tasks show), and at least this many
#: times its inputs.
LOADER_OUTPUT = 1024 * 1024
LOADER_GROWTH = 8


class Guard:
    """Watermarks on the results in memory, and which tasks are producers.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    enabled, high, low, window : optional
        Default dask config ``hafen.backpressure.*``; ``high``/``low`` are a share of the
        workers' total memory limit (at most 1) or a size.

    Raises
    ------
    hafen.errors.ConfigError
        If an option is invalid, or ``low`` is above ``high``.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        enabled: bool = UNSET,
        high: float | str = UNSET,
        low: float | str = UNSET,
        window: float = UNSET,
    ) -> None:
        key = "hafen.backpressure."
        self.enabled: bool = option(key + "enabled", enabled, argument="enabled")
        self.high: float | int = option(key + "high", high, argument="high")
        self.low: float | int = option(key + "low", low, argument="low")
        self.window: float = option(key + "window", window, argument="window")
        if (self.high <= 1) != (self.low <= 1):
            raise ConfigError(
                "hafen.backpressure.high and .low must both be shares or both be sizes, got "
                f"{self.high!r} and {self.low!r}"
            )
        if self.low > self.high:
            raise ConfigError(
                f"hafen.backpressure.low ({self.low!r}) must not be above high ({self.high!r})"
            )
        self.scheduler = scheduler
        self.engaged = False
        self.engagements = 0
        #: Holding was futile (only producers could run): let go until below ``low``.
        self.suspended = False
        self.suspensions = 0
        #: Bytes of results in memory on the cluster, one copy each.
        self.managed = 0
        self.most_managed = 0
        #: Task groups whose tasks it has held (for inspection).
        self.held_groups: set[str] = set()
        #: Loaders it has held (see :meth:`is_loader`), counted.
        self.loaders = 0
        self._nbytes: dict[Key, int] = {}
        #: Per task prefix: results landed and their bytes (a loader's expected output).
        self._outputs: dict[str, list[int]] = {}

    # --- watermarks ---------------------------------------------------------------------------

    def _bytes(self, value: float | int) -> int | None:
        if value > 1:
            return int(value)
        total = 0
        for ws in self.scheduler.workers.values():
            if not ws.memory_limit:
                return None  # a worker without a limit: shares mean nothing
            total += ws.memory_limit
        return int(value * total) if total else None

    def watermarks(self) -> tuple[int, int] | None:
        """``(high, low)`` in bytes now; None when they cannot be known (no memory limits)."""
        high, low = self._bytes(self.high), self._bytes(self.low)
        return None if high is None or low is None else (high, low)

    def observe(self, key: Key, start: str, finish: str, ts: TaskState | None) -> bool:
        """Follow a transition into or out of memory; return whether the guard flipped."""
        if finish == "memory" and start != "memory" and ts is not None:
            nbytes = max(ts.nbytes, 0)
            if start == "processing":
                seen = self._outputs.setdefault(ts.prefix.name, [0, 0])
                seen[0] += 1
                seen[1] += nbytes
            self.managed += nbytes - self._nbytes.get(key, 0)
            self._nbytes[key] = nbytes
            self.most_managed = max(self.most_managed, self.managed)
        elif start == "memory" and finish != "memory":
            self.managed -= self._nbytes.pop(key, 0)
        else:
            return False
        return self.check()

    def check(self) -> bool:
        """Engage above ``high``, let go below ``low``; return whether that flipped."""
        if not self.enabled:
            return False
        marks = self.watermarks()
        if marks is None:
            flip = self.engaged
            self.engaged = False
            return flip
        high, low = marks
        if self.suspended:
            if self.managed <= low:
                self.suspended = False
            return False
        if not self.engaged and self.managed >= high:
            self.engaged = True
            self.engagements += 1
            return True
        if self.engaged and self.managed <= low:
            self.engaged = False
            return True
        return False

    def suspend(self) -> None:
        """Holding left nothing but producers to run: let them all go until below ``low``.

        The results in memory then are what the graph needs (a climatology over all of its
        inputs, say): holding producers would only idle threads, engagement after engagement.
        """
        self.engaged = False
        self.suspended = True
        self.suspensions += 1

    # --- producers ----------------------------------------------------------------------------

    def is_producer(self, ts: TaskState) -> bool:
        """Whether Dask would call ``ts`` root-ish if it had no restrictions (see the module)."""
        if not self.enabled or ts.actor:
            return False
        run_spec = ts.run_spec
        if run_spec is not None and getattr(run_spec, "data_producer", False):
            return True
        scheduler = self.scheduler
        tg = ts.group
        return (
            len(tg) > scheduler.total_nthreads * 2
            and len(tg.dependencies) < scheduler.rootish_tg_threshold
            and sum(map(len, tg.dependencies)) < scheduler.rootish_tg_dependencies_threshold
        )

    def is_loader(self, ts: TaskState) -> bool:
        """Whether ``ts``, ready to run, loads data from a small input Dask does not queue.

        A task without restrictions whose few inputs (a file handle, a path) are small and
        whose prefix makes results much larger than that -- or has made none yet, and its
        inputs are shared with other tasks -- is a producer, but Dask queues it only if it is
        root-ish, which it is not when its group depends on many tasks (one open per file) or
        is small (one group per ``from_delayed`` chunk). The guard queues it instead: held, then
        let go while fewer than ``window`` tasks per thread are processing.
        """
        if not self.enabled or ts.actor or not ts.dependencies:
            return False
        if ts.resource_restrictions or ts.worker_restrictions or ts.host_restrictions:
            return False  # sent where it was asked to go, as Dask sends it
        scheduler = self.scheduler
        if len(ts.dependencies) >= scheduler.rootish_tg_threshold or scheduler.is_rootish(ts):
            return False
        inputs = 0
        for dts in ts.dependencies:
            if dts.state != "memory":
                return False
            inputs += max(dts.nbytes, 0)
        if inputs > LOADER_INPUTS:
            return False
        seen = self._outputs.get(ts.prefix.name)
        if not seen:
            # none finished yet: a loader if many of its kind come (a Dask root-ish group's size)
            # and its inputs are shared (handles to files each read in several chunks), not
            # results each made for it (a chain of small tasks)
            return len(ts.prefix) > scheduler.total_nthreads * 2 and all(
                len(dts.dependents) > 1 for dts in ts.dependencies
            )
        expected = seen[1] / seen[0]
        return expected >= LOADER_OUTPUT and expected >= LOADER_GROWTH * inputs

    def slots(self) -> int:
        """Held tasks that may be out (granted, not finished) at once while it lets them go."""
        return max(1, math.ceil(self.window * max(self.scheduler.total_nthreads, 1)))

    def info(self) -> dict[str, Any]:
        marks = self.watermarks() or (None, None)
        return {
            "engaged": self.engaged,
            "engagements": self.engagements,
            "suspended": self.suspended,
            "suspensions": self.suspensions,
            "loaders": self.loaders,
            "managed": self.managed,
            "high": marks[0],
            "low": marks[1],
            "high_text": None if marks[0] is None else format_bytes(marks[0]),
        }


class GuardLimit(Limit):
    """The guard as a limit: what it holds waits here; room while it is not engaged."""

    def __init__(self, guard: Guard) -> None:
        super().__init__(LimitSpec(GUARD_NAME, None, None, None, 1))
        self.guard = guard
        #: Tasks processing on the workers that it did not let go (taken at each round's start).
        self.others = 0

    def refill(self) -> None:
        """At a round's start: count the other tasks the workers are processing."""
        scheduler = self.guard.scheduler
        tasks = scheduler.tasks
        processing = sum(len(ws.processing) for ws in scheduler.workers.values())
        mine = 0
        for kind, key in self.holders:
            ts = tasks.get(key) if kind == "task" else None
            mine += ts is not None and ts.state == "processing"
        self.others = processing - mine

    def has_slot(self) -> bool:
        """Not engaged, and fewer than ``window`` tasks per thread processing, counting all of
        them (as Dask's queue counts a worker's tasks): consumers first."""
        if self.guard.engaged:
            return False
        return len(self.holders) + self.others < self.guard.slots()

    def has_result_room(self, group: str | None, sizes: Sizes) -> bool:
        return True

    def row(self) -> dict[str, Any]:
        """The guard's settings and state, for its row in ``hafen.limits()``."""
        info = self.guard.info()
        return {
            "concurrency": None,
            "rate": None,
            "rate_per_second": None,
            "burst": 1,
            "results": None,
            "memory": info["high"],
            "memory_text": info["high_text"],
            "in_use": len(self.holders),
            "alive": 0,
            "alive_bytes": info["managed"],
            **info,
        }
