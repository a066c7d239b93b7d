"""Replication: an Active Memory Manager policy that keeps extra copies of costly results.

A result is *protected* when its task is annotated ``replicate=N`` (or ``replicate=True`` for the
default number of copies), or, when thresholds are set, when it took at least ``min_duration`` to
compute (including what it would take to recompute inputs that are no longer in memory) and is
at most ``max_nbytes`` big. A protected result is kept in ``replicas`` copies on distinct workers
for as long as something still needs it: a dependent that has not run yet, or a client holding its
future. When nothing needs it any more Dask releases it and all its copies go. Within a
``memory_budget`` (total bytes of extra copies) the costliest results are protected first; the
others are let go down to one copy.

Why this replaces ``ReduceReplicas`` instead of running next to it
-------------------------------------------------------------------
The Active Memory Manager merges the suggestions of all its policies in one pass and enacts any
drop that leaves at least one copy: it has no notion of a veto. Dask's own ``ReduceReplicas``
(installed by default) suggests dropping every copy beyond one (or beyond the number of pending
dependents); run side by side, it would undo our copies every other cycle and the two policies
would ping-pong. The principled fix, without patching Dask, is to own that decision:
:class:`Replication` subclasses ``ReduceReplicas`` and is installed *in its place*. It does both
jobs: for protected results it asks for copies up to the target, and for every replicated result it
drops copies beyond ``max(target, what ReduceReplicas would keep)``, with ``ReduceReplicas``'s own
rule for pending dependents. Results that are not protected are treated exactly as
``ReduceReplicas`` treats them, so the AMM drops exactly what Dask's would (copies made with
``client.replicate`` included, as Dask does while its AMM runs). :func:`install_replication` swaps
the policy into a running scheduler's AMM; a scheduler configured from dask config can list
``hafen.cluster.resilience.Replication`` instead of ``ReduceReplicas`` under
``distributed.scheduler.active-memory-manager.policies``. Another third-party policy that drops
copies could still remove ours; hafen installs none.

Installing the policy leaves the rest of Dask's AMM settings alone: it never starts an AMM that
``distributed.scheduler.active-memory-manager.start`` left stopped, and where the configured
policies have no ``ReduceReplicas`` it adds nothing to Dask's AMM (the policy then lives in a
manager of its own that only makes copies). While Dask's AMM is not running, hafen's own passes
(below) only ever copy protected results; they never drop a copy.

Copies on a worker that is being retired or drained (status ``closing_gracefully``) do not count
towards the target, so protected results are re-protected while a worker leaves.

The AMM runs every 2 s by default; a result that lands just before a worker dies would be lost in
that window. The resilience scheduler plugin (``_plugin.py``) therefore copies a protected result
``delay`` (default 10 ms) after it lands, through :class:`CopyFresh` in a side manager that looks
only at new results (a full pass per result would cost O(results) each time). A result is still
unprotected from the moment it lands until its copy has arrived. The same side manager makes the
copies of a full pass (after a worker left) when Dask's AMM is not running.

This module reads scheduler internals that Dask does not promise to keep stable: ``TaskState``
(``annotations``, ``nbytes``, ``who_has``, ``waiters``, ``who_wants``, ``dependencies``,
``state``, ``prefix.duration_average``), ``Scheduler.replicated_tasks``, ``Scheduler.running``
and ``ReduceReplicas.run``. ``tests/cluster/test_replication.py`` pins them so an upgrade that
changes them fails loudly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from distributed.active_memory_manager import (
    ActiveMemoryManagerExtension,
    ActiveMemoryManagerPolicy,
    ReduceReplicas,
    Suggestion,
    SuggestionGenerator,
)
from distributed.core import Status

from hafen.cluster._config import UNSET, option
from hafen.errors import ConfigError

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, TaskState

__all__ = [
    "ANNOTATION",
    "CopyFresh",
    "Replication",
    "find_replication",
    "install_replication",
    "live_copies",
    "prefix_duration",
    "recompute_cost",
    "wanted_replicas",
]

logger = logging.getLogger(__name__)

#: The task annotation that asks for copies: ``dask.annotate(replicate=2)``.
ANNOTATION = "replicate"


def recompute_cost(
    ts: TaskState, durations: Callable[[TaskState], float], *, max_depth: int
) -> float:
    """Return the seconds of compute it would take to recompute ``ts`` if it were lost.

    That is its own compute time plus, recursively, that of inputs no longer in memory (they
    would have to be recomputed first), followed ``max_depth`` levels deep. ``durations`` gives
    one task's own compute time.
    """
    cost = durations(ts)
    if max_depth <= 0:
        return cost
    for dts in ts.dependencies:
        if dts.state != "memory":
            cost += recompute_cost(dts, durations, max_depth=max_depth - 1)
    return cost


def prefix_duration(ts: TaskState) -> float:
    """The scheduler's estimate of one task's compute time (average of its prefix), or 0."""
    average = ts.prefix.duration_average
    return average if average >= 0 else 0.0


def wanted_replicas(ts: TaskState, default: int) -> int | None:
    """Copies asked for by the task's ``replicate`` annotation, or None if it has none.

    ``replicate=True`` means ``default``; ``replicate=False`` (or 0, 1) opts a task out even when
    thresholds would protect it. Malformed values are ignored with a warning.
    """
    annotations = ts.annotations
    if not annotations or ANNOTATION not in annotations:
        return None
    value = annotations[ANNOTATION]
    if value is True:
        return default
    if value is False:
        return 1
    if isinstance(value, int) and value >= 0:
        return max(value, 1)
    logger.warning("ignoring annotation replicate=%r on %s: expected an int or bool", value, ts)
    return None


class Replication(ReduceReplicas):
    """AMM policy: keep ``replicas`` copies of costly results; drop copies nobody needs.

    Installed in place of Dask's ``ReduceReplicas`` (see the module docstring for why).

    Parameters
    ----------
    replicas : int, optional
        Copies of a protected result (default ``hafen.replication.replicas``, 2).
    min_duration : str or float, optional
        Protect results whose recompute cost is at least this (seconds or ``"10s"``);
        default ``hafen.replication.min-duration`` (None: only annotated tasks).
    max_nbytes : str or int, optional
        With ``min_duration``: only results at most this big (default
        ``hafen.replication.max-nbytes``; None: any size).
    memory_budget : str or int, optional
        Total bytes of extra copies; the costliest results are protected first (default
        ``hafen.replication.memory-budget``; None: unbounded).
    max_cost_depth : int, optional
        Levels of inputs no longer in memory that the recompute cost includes (default
        ``hafen.replication.max-cost-depth``, 32).
    reduce_replicas : bool
        Also drop superfluous copies, as ``ReduceReplicas`` does (default True). Set False
        only when no ``ReduceReplicas`` was installed.

    Raises
    ------
    ConfigError
        If an option is invalid.

    Examples
    --------
    >>> import dask
    >>> with dask.annotate(replicate=2):  # doctest: +SKIP
    ...     parts = [dask.delayed(train)(i) for i in range(10)]
    """

    def __init__(
        self,
        *,
        replicas: int = UNSET,
        min_duration: str | float | None = UNSET,
        max_nbytes: str | int | None = UNSET,
        memory_budget: str | int | None = UNSET,
        max_cost_depth: int = UNSET,
        reduce_replicas: bool = True,
    ) -> None:
        key = "hafen.replication."
        self.replicas: int = option(key + "replicas", replicas, argument="replicas")
        self.min_duration: float | None = option(
            key + "min-duration", min_duration, argument="min_duration"
        )
        self.max_nbytes: int | None = option(key + "max-nbytes", max_nbytes, argument="max_nbytes")
        self.memory_budget: int | None = option(
            key + "memory-budget", memory_budget, argument="memory_budget"
        )
        self.max_cost_depth: int = option(
            key + "max-cost-depth", max_cost_depth, argument="max_cost_depth"
        )
        if self.max_nbytes is not None and self.min_duration is None:
            raise ConfigError("max_nbytes only applies together with min_duration")
        self.reduce_replicas = bool(reduce_replicas)
        #: In-memory results that may need protecting; kept by the resilience scheduler plugin.
        self.candidates: set[TaskState] = set()
        #: Own compute time of a task (seconds); set by the resilience scheduler plugin.
        self.durations: Callable[[TaskState], float] = prefix_duration
        #: Targets of the latest run, for inspection: key -> copies.
        self.last_targets: dict[Any, int] = {}

    def __repr__(self) -> str:
        return (
            f"Replication(replicas={self.replicas}, min_duration={self.min_duration}, "
            f"max_nbytes={self.max_nbytes}, memory_budget={self.memory_budget})"
        )

    # --- what to protect ----------------------------------------------------------------------

    def cost(self, ts: TaskState) -> float:
        """Seconds it would take to recompute ``ts`` (see :func:`recompute_cost`)."""
        return recompute_cost(ts, self.durations, max_depth=self.max_cost_depth)

    def eligible(self, ts: TaskState) -> bool:
        """Whether ``ts`` (just computed) may need protecting; cheap, called per result."""
        wanted = wanted_replicas(ts, self.replicas)
        if wanted is not None:
            return wanted > 1
        if self.min_duration is None:
            return False
        if self.max_nbytes is not None and ts.nbytes > self.max_nbytes:
            return False
        return self.cost(ts) >= self.min_duration

    def observe(self, ts: TaskState) -> bool:
        """Record a result that just landed in memory; return whether it is a candidate."""
        if self.eligible(ts):
            self.candidates.add(ts)
            return True
        return False

    def forget(self, ts: TaskState) -> None:
        """A result left memory."""
        self.candidates.discard(ts)

    def seed(self, tasks: Iterable[TaskState]) -> None:
        """Consider results already in memory (for a policy installed mid-run)."""
        for ts in tasks:
            if ts.state == "memory":
                self.observe(ts)

    def target(self, ts: TaskState, nworkers: int) -> int:
        """Copies wanted of candidate ``ts``, before the memory budget (1: none extra)."""
        if ts.state != "memory" or not (ts.waiters or ts.who_wants):
            return 1
        n = wanted_replicas(ts, self.replicas)
        if n is None:
            n = self.replicas
        return max(min(n, nworkers), 1)

    def targets(self) -> dict[TaskState, int]:
        """Copies wanted for each protected result still needed, within the memory budget."""
        scheduler = self.manager.scheduler
        nworkers = max(len(scheduler.running), 1)
        wanted: list[tuple[float, TaskState, int]] = []
        for ts in list(self.candidates):
            if ts.state != "memory":
                self.candidates.discard(ts)
                continue
            n = self.target(ts, nworkers)
            if n > 1:
                wanted.append((self.cost(ts) if self.memory_budget is not None else 0.0, ts, n))
        if self.memory_budget is None:
            return {ts: n for _, ts, n in wanted}
        targets: dict[TaskState, int] = {}
        spent = 0
        wanted.sort(key=lambda item: item[0], reverse=True)
        for _, ts, n in wanted:
            extra = (n - 1) * max(ts.nbytes, 0)
            if spent + extra <= self.memory_budget:
                spent += extra
                targets[ts] = n
        return targets

    # --- the AMM policy -----------------------------------------------------------------------

    def run(self) -> SuggestionGenerator:
        """Yield copies for protected results below target, then drop superfluous copies."""
        targets = self.targets()
        self.last_targets = {ts.key: n for ts, n in targets.items()}
        pending = self.manager.pending
        nrepl = 0
        for ts, target in targets.items():
            for _ in range(target - live_copies(ts, pending)):
                choice = yield Suggestion("replicate", ts)
                if choice is None:
                    break  # no eligible recipient: all running workers have a copy
                nrepl += 1
        if nrepl:
            logger.debug("Replication: %d new copies of %d results", nrepl, len(targets))
        if self.reduce_replicas:
            yield from self._reduce(targets)

    def _reduce(self, targets: dict[TaskState, int]) -> SuggestionGenerator:
        """``ReduceReplicas.run`` with the desired copies of protected results raised."""
        pending = self.manager.pending
        for ts in list(self.manager.scheduler.replicated_tasks):
            if not ts.who_has:
                continue
            desired = targets.get(ts, 1)
            nwaiters = len(ts.waiters or ())
            if desired < nwaiters < 20:
                # As ReduceReplicas: keep a copy per worker a pending dependent is assigned to.
                nwaiters = len({waiter.processing_on or waiter for waiter in ts.waiters or ()})
            ndrop = len(ts.who_has) - max(desired, nwaiters)
            if ts in pending:
                pending_repl, pending_drop = pending[ts]
                ndrop += len(pending_repl) - len(pending_drop)
            for _ in range(ndrop):
                yield Suggestion("drop", ts)


def live_copies(ts: TaskState, pending: dict[TaskState, Any]) -> int:
    """Copies of ``ts`` that will stay: not on a retiring worker, with pending AMM actions."""
    live = sum(1 for ws in ts.who_has or () if ws.status != Status.closing_gracefully)
    if ts in pending:
        pending_repl, pending_drop = pending[ts]
        live += len(pending_repl) - len(pending_drop)
    return live


class CopyFresh(ActiveMemoryManagerPolicy):
    """AMM policy for a side manager: copy results that just landed, between full passes.

    The full :class:`Replication` pass looks at every protected result and every replicated
    one; running it after each result would cost O(results) per result. This policy only looks
    at the results added to :attr:`fresh` since its last run (no budget, no drops: those are the
    periodic pass's job), so prompt protection costs O(1) per result. With :attr:`everything`
    set, its next run copies every protected result below target instead (within the budget),
    still without dropping anything: the full pass of a scheduler whose AMM is not running.
    """

    def __init__(self, replication: Replication) -> None:
        self.replication = replication
        self.fresh: set[TaskState] = set()
        self.everything = False

    def run(self) -> SuggestionGenerator:
        fresh, self.fresh = self.fresh, set()
        nworkers = max(len(self.manager.scheduler.running), 1)
        pending = self.manager.pending
        if self.everything:
            self.everything = False
            targets = self.replication.targets()
            self.replication.last_targets = {ts.key: n for ts, n in targets.items()}
        else:
            targets = {ts: self.replication.target(ts, nworkers) for ts in fresh}
        for ts, target in targets.items():
            for _ in range(target - live_copies(ts, pending)):
                choice = yield Suggestion("replicate", ts)
                if choice is None:
                    break


def find_replication(amm: ActiveMemoryManagerExtension) -> Replication | None:
    """The :class:`Replication` policy installed in ``amm``, if any."""
    for policy in amm.policies:
        if isinstance(policy, Replication):
            return policy
    return None


def install_replication(scheduler: Scheduler, policy: Replication | None = None) -> Replication:
    """Install :class:`Replication` in the scheduler's AMM, in place of ``ReduceReplicas``.

    Idempotent: if a :class:`Replication` policy is installed already it is returned (or
    replaced by ``policy`` when one is given). Dask's AMM is left as configured: it is not
    started if it is not running, and where it has no ``ReduceReplicas`` to replace the policy
    is not added to it but kept in a manager of its own (``policy.manager``), which only the
    resilience plugin's passes run.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    policy : Replication, optional
        The policy to install; by default one built from dask config.

    Returns
    -------
    Replication
        The installed policy.
    """
    amm: ActiveMemoryManagerExtension | None = scheduler.extensions.get("amm")
    if amm is None:
        amm = ActiveMemoryManagerExtension(scheduler, policies=set(), start=False)
        scheduler.extensions["amm"] = amm
    existing = find_replication(amm)
    if existing is not None:
        if policy is None or policy is existing:
            return existing
        amm.policies.discard(existing)
        policy.candidates |= existing.candidates
        policy.durations = existing.durations
    replaced = {p for p in amm.policies if type(p) is ReduceReplicas}
    if policy is None:
        policy = Replication(reduce_replicas=bool(replaced) or existing is not None)
    if replaced or existing is not None:
        amm.policies -= replaced
        amm.add_policy(policy)
        where = "in place of ReduceReplicas in the Active Memory Manager"
    else:
        # Nothing of Dask's to replace: Dask's AMM keeps exactly the policies it was given.
        policy.reduce_replicas = False
        ActiveMemoryManagerExtension(
            scheduler,
            policies={policy},
            measure=amm.measure,
            register=False,
            start=False,
            interval=amm.interval,
        )
        where = "beside the Active Memory Manager (no ReduceReplicas configured)"
    logger.info("hafen: %r installed %s", policy, where)
    return policy
