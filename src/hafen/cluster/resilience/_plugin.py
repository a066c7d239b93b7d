"""The scheduler side of hafen's resilience: one scheduler plugin that installs it all.

:class:`ResiliencePlugin` (name ``hafen-resilience``) is what ``hafen.connect()`` registers and
what ``dask scheduler --preload hafen.cluster`` adds. When it starts it

- installs the :class:`~hafen.cluster.resilience.Replication` AMM policy in place of
  ``ReduceReplicas`` (leaving Dask's AMM running or stopped, as configured);
- registers the scheduler handlers ``hafen_drain`` (see ``_drain.py``) and
  ``hafen_resilience_counts``;
- watches transitions to feed the policy (results that landed, their compute time) and to count,
  per key, how often a result was computed: a key computed a second time is a *recomputation*; a
  result that left memory while a dependent or a client still needed it (its worker died) is a
  *lost result*; a key sent to a worker a second time is a *restart* (also when it never
  finished the first time), a task that failed is *erred* (``KilledWorker``, in a graph whose
  tasks do not raise), and workers the scheduler removed are counted too. Tests, the chaos
  runner and the benchmarks read these counts.

Installation is idempotent: starting the plugin twice, or registering it from several clients,
installs one policy and one set of handlers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from distributed.active_memory_manager import ActiveMemoryManagerExtension
from distributed.diagnostics.plugin import SchedulerPlugin

from hafen.cluster._config import UNSET, option
from hafen.cluster.resilience._drain import DrainCoordinator
from hafen.cluster.resilience._replication import (
    CopyFresh,
    Replication,
    install_replication,
    prefix_duration,
)

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, TaskState

__all__ = ["PLUGIN_NAME", "ResiliencePlugin", "install_resilience"]

logger = logging.getLogger(__name__)

#: Name of the resilience plugin in ``Scheduler.plugins``.
PLUGIN_NAME = "hafen-resilience"
#: At most this many recomputed keys are remembered by name (counts are exact regardless).
MAX_KEYS_LISTED = 1000


class ResiliencePlugin(SchedulerPlugin):
    """Scheduler plugin: replication policy, drain handler, recomputation counts.

    Parameters
    ----------
    replication : dict, optional
        Keyword arguments for :class:`~hafen.cluster.resilience.Replication`; default from
        dask config ``hafen.replication.*``.
    delay : str or float, optional
        How soon after a protected result lands it is copied; default dask config
        ``hafen.replication.delay``. Read when the plugin is installed on the scheduler (from the
        scheduler's config) unless given here.

    Examples
    --------
    >>> client.register_plugin(ResiliencePlugin())  # doctest: +SKIP
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(
        self, replication: dict[str, Any] | None = None, *, delay: str | float = UNSET
    ) -> None:
        self.replication_options = dict(replication or {})
        self.delay_option = delay
        # Built on the scheduler (start), not pickled from the client.
        self.scheduler: Scheduler | None = None
        self.policy: Replication | None = None
        self._completions: dict[Any, int] = {}
        self._starts: dict[Any, int] = {}
        self._durations: dict[Any, float] = {}
        self._kick: asyncio.TimerHandle | None = None
        self._full_pass = False
        self._fresh: CopyFresh | None = None
        self._side_amm: ActiveMemoryManagerExtension | None = None
        self._delay = 0.01
        self.reset()

    def __getstate__(self) -> dict[str, Any]:
        return {"replication_options": self.replication_options, "delay": self.delay_option}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["replication_options"], delay=state["delay"])  # type: ignore[misc]

    # --- installation -------------------------------------------------------------------------

    async def start(self, scheduler: Scheduler) -> None:
        self.install(scheduler)

    def install(self, scheduler: Scheduler) -> None:
        """Install policy and handlers on ``scheduler`` (idempotent; synchronous).

        Options are read and validated here, on the scheduler: a bad one raises
        :class:`~hafen.errors.ConfigError` before anything is installed.
        """
        if self.scheduler is scheduler:
            return
        self._delay = option("hafen.replication.delay", self.delay_option, argument="delay")
        coordinator = DrainCoordinator(scheduler, self.cost)
        policy = Replication(**self.replication_options) if self.replication_options else None
        self.policy = install_replication(scheduler, policy)
        self.scheduler = scheduler
        self.policy.durations = self.duration
        self.policy.seed(scheduler.tasks.values())
        self._fresh = CopyFresh(self.policy)
        self._side_amm = ActiveMemoryManagerExtension(
            scheduler, policies={self._fresh}, register=False, start=False
        )
        scheduler.handlers["hafen_drain"] = coordinator.drain
        scheduler.handlers["hafen_resilience_counts"] = self.counts
        scheduler.extensions["hafen_drain"] = coordinator

    async def close(self) -> None:
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None

    # --- durations and counts -----------------------------------------------------------------

    def cost(self, ts: TaskState) -> float:
        """Seconds it would take to recompute ``ts`` (0 before the policy is installed)."""
        return self.policy.cost(ts) if self.policy is not None else 0.0

    def duration(self, ts: TaskState) -> float:
        """Own compute time of ``ts`` in seconds (measured, else the prefix average)."""
        measured = self._durations.get(ts.key)
        return measured if measured is not None else prefix_duration(ts)

    def reset(self) -> None:
        """Zero the counters (what was computed before stays known)."""
        self.computed = 0
        self.recomputed = 0
        self.recomputed_protected = 0
        self.lost = 0
        self.restarted = 0
        self.erred = 0
        self.workers_removed = 0
        self.recomputed_keys: list[Any] = []

    def counts(self, reset: bool = False) -> dict[str, Any]:
        """Handler ``hafen_resilience_counts``: counts since the last reset."""
        out = {
            "computed": self.computed,
            "recomputed": self.recomputed,
            "recomputed_protected": self.recomputed_protected,
            "lost": self.lost,
            "restarted": self.restarted,
            "erred": self.erred,
            "workers_removed": self.workers_removed,
            "recomputed_keys": list(self.recomputed_keys),
            "protected": len(self.policy.last_targets) if self.policy else 0,
        }
        if reset:
            self.reset()
        return out

    def transition(
        self, key: Any, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any
    ) -> None:
        scheduler = self.scheduler
        if scheduler is None:
            return
        if finish == "processing":
            starts = self._starts.get(key, 0) + 1
            self._starts[key] = starts
            if starts > 1:
                self.restarted += 1
        elif finish == "erred":
            self.erred += 1
        if start == "processing" and finish == "memory":
            self._on_computed(scheduler, key, kwargs.get("startstops") or ())
        elif start == "memory":
            ts = scheduler.tasks.get(key)
            if ts is not None and self.policy is not None:
                self.policy.forget(ts)
            if finish == "released" and ts is not None and (ts.who_wants or ts.waiters):
                self.lost += 1
        if finish == "forgotten":
            self._completions.pop(key, None)
            self._starts.pop(key, None)
            self._durations.pop(key, None)

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        """A worker left: protected results it held may be down to one copy; copy them now."""
        self.workers_removed += 1
        if self.policy is not None and self.policy.candidates:
            self._schedule_kick(full=True)

    def _on_computed(self, scheduler: Scheduler, key: Any, startstops: Any) -> None:
        self.computed += 1
        n = self._completions.get(key, 0) + 1
        self._completions[key] = n
        compute = sum(
            ss["stop"] - ss["start"] for ss in startstops if ss.get("action") == "compute"
        )
        if compute > 0:
            self._durations[key] = compute
        ts = scheduler.tasks.get(key)
        protected = False
        if ts is not None and self.policy is not None:
            protected = self.policy.observe(ts)
        if n > 1:
            self.recomputed += 1
            if protected:
                self.recomputed_protected += 1
            if len(self.recomputed_keys) < MAX_KEYS_LISTED:
                self.recomputed_keys.append(key)
        if protected and ts is not None and self._fresh is not None:
            self._fresh.fresh.add(ts)
            self._schedule_kick()

    def _schedule_kick(self, full: bool = False) -> None:
        """Copy fresh protected results soon (or run a full AMM pass, after a worker left)."""
        self._full_pass = self._full_pass or full
        if self._kick is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._kick = loop.call_later(self._delay, self._run_amm)

    def _run_amm(self) -> None:
        self._kick = None
        full, self._full_pass = self._full_pass, False
        scheduler = self.scheduler
        if scheduler is None or self.policy is None or self._fresh is None:
            return
        # With a memory budget only a full pass can decide; otherwise copy just the new ones.
        if self.policy.memory_budget is not None:
            full = True
        amm = scheduler.extensions.get("amm")
        manager: ActiveMemoryManagerExtension | None = self._side_amm
        if full and amm is not None and amm.running and self.policy in amm.policies:
            manager = amm  # Dask's AMM runs anyway: one of its passes, a little early
        elif full:
            # Dask's AMM is stopped (or the policy is not in it): copy, never drop, as Dask
            # would not drop anything either until someone starts its AMM.
            self._fresh.everything = True
        if manager is None or hasattr(manager, "pending"):
            return
        try:
            manager.run_once()
        except Exception:  # the next kick or periodic run will try again
            logger.exception("hafen: Active Memory Manager pass failed")


def install_resilience(scheduler: Scheduler, **replication: Any) -> ResiliencePlugin:
    """Add :class:`ResiliencePlugin` to ``scheduler`` and install it now (idempotent).

    For preload scripts and the ``hafen.connect()`` registry: synchronous, on the scheduler.

    Returns
    -------
    ResiliencePlugin
        The installed plugin (an existing one if it was installed already).
    """
    existing = scheduler.plugins.get(PLUGIN_NAME)
    if isinstance(existing, ResiliencePlugin):
        existing.install(scheduler)
        return existing
    plugin = ResiliencePlugin(replication or None)
    scheduler.add_plugin(plugin, name=PLUGIN_NAME, idempotent=True)
    plugin.install(scheduler)
    return plugin
