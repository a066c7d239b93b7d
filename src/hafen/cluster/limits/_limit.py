"""One limit's state on the scheduler: slots, tokens, results alive and their bytes.

A limit counts, for each of its settings:

- ``concurrency``: holders that run -- a task from its grant until it leaves ``processing`` (or
  ``queued``), a lease while it is held;
- ``rate``: tokens, one per grant;
- ``results``: tasks granted whose result may still be in the cluster -- from the grant until
  the result is released (its dependents are done and no client holds it), or until the task
  fails or is released without one;
- ``memory``: the bytes of those results: ``TaskState.nbytes`` of the ones that landed, plus, for
  the ones still running, the mean size of their task group's results so far.

Leases count towards ``concurrency`` and ``rate`` only: they have no result. The state here is
pure bookkeeping; the scheduler extension (``_plugin.py``) decides when to call it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hafen.cluster.limits._bucket import TokenBucket
from hafen.cluster.limits._spec import LimitSpec

if TYPE_CHECKING:
    from dask.typing import Key

__all__ = ["Hold", "Holder", "Limit", "Sizes", "Waiter"]

Holder = tuple[str, "Key"]  # ("task", key) or ("lease", lease_id)


@dataclasses.dataclass(eq=False)
class Waiter:
    """A task or lease waiting for a grant."""

    holder: Holder
    names: tuple[str, ...]
    order: tuple[Any, ...]
    since: float
    owner: str | None = None
    future: asyncio.Future[bool] | None = None
    #: The task's group (for the size of its result), None for a lease.
    group: str | None = None
    #: A data producer: the back-pressure guard holds it while engaged.
    producer: bool = False


@dataclasses.dataclass(eq=False)
class Hold:
    """A running holder's slots."""

    names: tuple[str, ...]
    owner: str | None
    since: float


class Sizes:
    """Mean size of the results of each task group so far, for the ``memory`` estimate."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}

    def add(self, group: str, nbytes: int) -> None:
        count, total = self._seen.get(group, (0, 0))
        self._seen[group] = (count + 1, total + max(nbytes, 0))

    def estimate(self, group: str | None) -> int | None:
        """Expected bytes of one result of ``group``; None before its first result."""
        seen = self._seen.get(group) if group is not None else None
        return None if seen is None else seen[1] // seen[0]

    def forget(self, group: str) -> None:
        self._seen.pop(group, None)


@dataclasses.dataclass(eq=False)
class Limit:
    """The state of one limit (see the module docstring)."""

    spec: LimitSpec
    bucket: TokenBucket | None = None
    granted: int = 0
    #: Grants made over ``results``/``memory`` because nothing that frees them could run.
    overrides: int = 0
    warned: bool = False
    holders: set[Holder] = dataclasses.field(default_factory=set)
    heap: list[tuple[tuple[Any, ...], int, Waiter]] = dataclasses.field(default_factory=list)
    #: Granted tasks without a result yet: key -> task group.
    running: dict[Key, str | None] = dataclasses.field(default_factory=dict)
    #: Results alive: key -> bytes when it landed.
    landed: dict[Key, int] = dataclasses.field(default_factory=dict)
    landed_bytes: int = 0

    def configure(self, spec: LimitSpec, clock: Callable[[], float]) -> None:
        """Take new settings; a rate keeps the tokens earned so far (a new rate starts full)."""
        if spec.rate is None:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = TokenBucket(spec.rate, spec.burst, clock=clock)
        else:
            self.bucket.reconfigure(spec.rate, spec.burst)
        self.spec = spec

    def refill(self) -> None:
        if self.bucket is not None:
            self.bucket.refill()

    # --- slots and tokens ---------------------------------------------------------------------

    def has_slot(self) -> bool:
        """A free slot and a token (what ``concurrency`` and ``rate`` allow)."""
        conc = self.spec.concurrency
        if conc is not None and len(self.holders) >= conc:
            return False
        return self.bucket is None or self.bucket.ready()

    def token_due_in(self) -> float | None:
        """Seconds until the next token, if a token (not a slot) is what is missing."""
        conc = self.spec.concurrency
        if self.bucket is None or (conc is not None and len(self.holders) >= conc):
            return None
        return self.bucket.due_in()

    # --- results and memory -------------------------------------------------------------------

    @property
    def alive(self) -> int:
        """Results counted: granted and not released (running or landed)."""
        return len(self.running) + len(self.landed)

    def alive_bytes(self, sizes: Sizes) -> int:
        """Bytes of the landed results plus the expected bytes of the running ones."""
        return self.landed_bytes + sum(sizes.estimate(g) or 0 for g in self.running.values())

    def has_result_room(self, group: str | None, sizes: Sizes) -> bool:
        """Whether one more result of ``group`` fits ``results`` and ``memory``.

        Under ``memory``, a result of unknown size (its group has none yet) is granted only
        while no other result of unknown size is running, so the budget is exceeded by at most
        one result; a limit holding nothing always has room for one.
        """
        spec = self.spec
        if not spec.counts_results or group is None:
            return True
        if spec.results is not None and self.alive >= spec.results:
            return False
        if spec.memory is None or not self.alive:
            return True
        used = self.landed_bytes
        unknown_running = False
        for running_group in self.running.values():
            estimate = sizes.estimate(running_group)
            if estimate is None:
                unknown_running = True
            else:
                used += estimate
        expected = sizes.estimate(group)
        if expected is None:
            return not unknown_running and used < spec.memory
        return used + expected <= spec.memory

    def take_result(self, key: Key, group: str | None) -> None:
        """A task was granted: its result counts from now on."""
        self.forget_result(key)
        self.running[key] = group

    def result_landed(self, key: Key, nbytes: int) -> None:
        if self.running.pop(key, _MISSING) is _MISSING:
            return
        self.landed[key] = max(nbytes, 0)
        self.landed_bytes += self.landed[key]

    def forget_result(self, key: Key) -> bool:
        """The result was released (or the task ended without one). Returns whether counted."""
        if self.running.pop(key, _MISSING) is not _MISSING:
            return True
        nbytes = self.landed.pop(key, None)
        if nbytes is None:
            return False
        self.landed_bytes -= nbytes
        return True


_MISSING: Any = object()
