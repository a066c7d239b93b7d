"""Chaos: run a graph while workers are killed, terminated, drained, paused or cut off, and report.

:func:`run_chaos` runs a graph once without faults (the reference) and once while a schedule of
:class:`Fault` s fires, then reports for each run the wall time, the recomputed tasks and lost
results (counted on the scheduler by the resilience plugin), and whether the output of the
faulty run equals the reference. ``hafen chaos`` on the command line runs it on a built-in graph
(:func:`costly_graph`) and prints the report as a table.

Faults are real signals, sent by the worker process to itself (so it works on remote clusters
too): ``kill`` is SIGKILL (the nanny starts a new worker), ``terminate`` is SIGTERM (a preemption
notice: with :class:`~hafen.cluster.resilience.DrainOnSigterm` the worker drains itself, and
is not replaced), ``pause`` is SIGSTOP then SIGCONT after ``duration`` seconds (a hung machine),
``drain`` is :func:`hafen.drain` (a downscale). Network faults need the worker's proxies
(``network=``, e.g. a :class:`~hafen.cluster.comm.ProxiedCluster`): ``sever`` resets its
connections and refuses new ones for ``duration`` seconds, ``blackhole`` stops forwarding its
traffic for as long. A fault fires at ``at`` seconds after the start of the run, or once
``at_progress`` of the graph's tasks are done, and repeats every ``every`` seconds if given; its
worker is ``worker`` or one picked at random (seeded). No fault hits the last running worker (a
killed worker's nanny may take seconds to start a new one).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from distributed.metrics import time

from hafen.cluster.resilience._client import drain, ensure_installed, resilience_counts
from hafen.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client
    from rich.table import Table

__all__ = [
    "ChaosReport",
    "Fault",
    "FaultEvent",
    "RunResult",
    "costly_graph",
    "run_chaos",
    "same_output",
]

Action = Literal["kill", "terminate", "drain", "pause", "sever", "blackhole"]
ACTIONS: tuple[str, ...] = ("kill", "terminate", "drain", "pause", "sever", "blackhole")
#: Faults that act on a worker's proxies.
NETWORK_ACTIONS = ("sever", "blackhole")
#: A worker's proxies, by its address (``ProxiedCluster.proxies``).
Network = Callable[[str], Sequence[Any]]
#: Seconds between checks of the schedule and the run.
POLL_INTERVAL = 0.05
#: Default length of a ``pause`` fault.
DEFAULT_PAUSE = 2.0


@dataclasses.dataclass(frozen=True)
class Fault:
    """One scheduled fault (see the module docstring).

    Parameters
    ----------
    action : {"kill", "terminate", "drain", "pause", "sever", "blackhole"}
    at : float, optional
        Seconds after the start of the run.
    at_progress : float, optional
        Fraction (0..1) of the graph's tasks computed.
    every : float, optional
        Repeat every this many seconds after the first firing, until the run ends.
    worker : str, optional
        Worker address; by default one at random.
    duration : float
        Length of a ``pause``, ``sever`` or ``blackhole`` (seconds); timeout of a ``drain``.
    """

    action: Action
    at: float | None = None
    at_progress: float | None = None
    every: float | None = None
    worker: str | None = None
    duration: float = DEFAULT_PAUSE

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"unknown fault {self.action!r}; expected one of {ACTIONS}")
        if (self.at is None) == (self.at_progress is None):
            raise ConfigError("a fault needs exactly one of at= (seconds) or at_progress=")
        if self.at is not None and self.at < 0:
            raise ConfigError(f"at must be >= 0, got {self.at}")
        if self.at_progress is not None and not 0 <= self.at_progress <= 1:
            raise ConfigError(f"at_progress must be within 0..1, got {self.at_progress}")
        if self.every is not None and self.every <= 0:
            raise ConfigError(f"every must be > 0, got {self.every}")
        if self.duration < 0:
            raise ConfigError(f"duration must be >= 0, got {self.duration}")

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse ``ACTION[:SECONDS]@WHEN[/EVERY]``: ``kill@70%``, ``pause:3@2s``, ``sever:5s@30%``,
        ``kill@2s/3s``; SECONDS is the ``duration``."""
        try:
            action, _, when = text.partition("@")
            action, _, length = action.partition(":")
            when, _, every = when.partition("/")
            kwargs: dict[str, Any] = {}
            if length:
                kwargs["duration"] = float(length.strip().removesuffix("s"))
            if when.endswith("%"):
                kwargs["at_progress"] = float(when[:-1]) / 100
            else:
                kwargs["at"] = float(when.removesuffix("s"))
            if every:
                kwargs["every"] = float(every.removesuffix("s"))
        except ValueError:
            raise ConfigError(
                f"not a fault: {text!r} (expected e.g. 'kill@70%', 'sever:5@3s', 'kill@2s/3s')"
            ) from None
        return cls(action.strip(), **kwargs)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class FaultEvent:
    """A fault that fired: when (seconds into the run), what, on which worker (and its pid)."""

    time: float
    action: str
    worker: str
    detail: str = ""
    pid: int | None = None
    #: Wall-clock time (``time.time()``) the fault was sent.
    wall: float = dataclasses.field(default_factory=lambda: float(time()), compare=False)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run of the graph."""

    name: str
    wall_time: float
    computed: int
    recomputed: int
    recomputed_protected: int
    lost: int
    output: Any = dataclasses.field(repr=False, compare=False)
    faults: tuple[FaultEvent, ...] = ()
    #: Tasks sent to a worker more than once (counted once per extra time).
    restarted: int = 0
    #: Workers the scheduler removed during the run.
    workers_lost: int = 0
    #: Tasks that failed (``KilledWorker`` in a graph whose tasks do not raise).
    erred: int = 0


@dataclasses.dataclass(frozen=True)
class ChaosReport:
    """Reference and faulty runs, and whether their outputs match."""

    reference: RunResult | None
    faulty: RunResult
    matched: bool | None

    def table(self) -> Table:
        """The report as a rich table (with restarts and workers lost after network faults, or
        when there were any)."""
        from rich.table import Table

        runs = [run for run in (self.reference, self.faulty) if run is not None]
        more = any(run.restarted or run.workers_lost for run in runs) or any(
            e.action in NETWORK_ACTIONS for e in self.faulty.faults
        )
        table = Table(title="hafen chaos")
        columns = ["run", "wall time", "computed", "recomputed", "lost results", "output"]
        if more:
            columns[4:4] = ["restarted"]
            columns[-1:-1] = ["workers lost"]
        for column in columns:
            table.add_column(column, justify="left" if column == "run" else "right")
        for run in runs:
            if run is self.reference:
                output = "reference"
            elif self.matched is None:
                output = "not compared"
            else:
                output = "[green]matched[/]" if self.matched else "[bold red]DIFFERS[/]"
            name = f"{run.name} ({len(run.faults)} faults)" if run.faults else run.name
            row = [name, f"{run.wall_time:.1f}s", str(run.computed), str(run.recomputed)]
            row += [str(run.restarted), str(run.lost)] if more else [str(run.lost)]
            row += [str(run.workers_lost), output] if more else [output]
            table.add_row(*row)
        return table


def same_output(a: Any, b: Any) -> bool:
    """Deep equality that also works for numpy arrays and pandas objects."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_output(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_output(a[k], b[k]) for k in a)
    equals = getattr(a, "equals", None)  # pandas
    if callable(equals):
        return bool(equals(b))
    try:
        import numpy as np

        if isinstance(a, np.ndarray):
            return bool(np.array_equal(a, b))
    except ImportError:  # pragma: no cover
        pass
    return bool(a == b)


# --- faults ------------------------------------------------------------------------------------


async def _signal_self(signum: int, delay: float = 0.05) -> int:
    """Run on a worker: send ``signum`` to this process just after replying."""
    import asyncio

    asyncio.get_running_loop().call_later(delay, os.kill, os.getpid(), signum)
    return os.getpid()


def _pause_self(duration: float) -> int:
    """Run on a worker: have a helper process SIGSTOP this process, then SIGCONT it."""
    import subprocess

    pid = os.getpid()
    subprocess.Popen(
        ["/bin/sh", "-c", f"sleep 0.05; kill -STOP {pid}; sleep {duration}; kill -CONT {pid}"],
        start_new_session=True,
    )
    return pid


class _Schedule:
    """Fires faults on time or progress, from the client process."""

    def __init__(
        self, client: Client, faults: Sequence[Fault], seed: int, network: Network | None = None
    ) -> None:
        self.client = client
        self.network = network
        self.rng = random.Random(seed)
        self.pending = list(faults)
        self.next_time: dict[int, float] = {}
        self.events: list[FaultEvent] = []
        self.threads: list[threading.Thread] = []
        self.retired: set[str] = set()

    def due(self, elapsed: float, progress: float) -> list[Fault]:
        due = []
        for i, fault in enumerate(self.pending):
            if i in self.next_time:
                if elapsed >= self.next_time[i]:
                    due.append(fault)
                    assert fault.every is not None
                    self.next_time[i] = elapsed + fault.every
                continue
            if (fault.at is not None and elapsed >= fault.at) or (
                fault.at_progress is not None and progress >= fault.at_progress
            ):
                due.append(fault)
                self.next_time[i] = elapsed + fault.every if fault.every else float("inf")
        return due

    def fire(self, fault: Fault, elapsed: float) -> None:
        workers = sorted(
            addr
            for addr, info in self.client.scheduler_info(n_workers=-1)["workers"].items()
            if addr not in self.retired and info.get("status", "running") == "running"
        )
        if fault.worker is not None:
            candidates = [fault.worker] if fault.worker in workers else []
        else:
            candidates = workers
        if len(workers) <= 1:
            candidates = []  # never hit the last running worker: the run could not progress
        if not candidates:
            self.events.append(FaultEvent(elapsed, fault.action, "-", "no eligible worker"))
            return
        worker = self.rng.choice(candidates)
        try:
            self._act(fault, worker, elapsed)
        except Exception as exc:  # the worker went away meanwhile
            self.events.append(FaultEvent(elapsed, fault.action, worker, f"failed: {exc!r}"))

    def _act(self, fault: Fault, worker: str, elapsed: float) -> None:
        if fault.action == "kill":
            pid = self.client.run(_signal_self, int(signal.SIGKILL), workers=[worker])[worker]
            self.events.append(FaultEvent(elapsed, "kill", worker, "SIGKILL", pid))
        elif fault.action == "terminate":
            self.retired.add(worker)
            pid = self.client.run(_signal_self, int(signal.SIGTERM), workers=[worker])[worker]
            self.events.append(FaultEvent(elapsed, "terminate", worker, "SIGTERM", pid))
        elif fault.action in NETWORK_ACTIONS:
            proxies = list(self.network(worker)) if self.network is not None else []
            if not proxies:
                self.events.append(FaultEvent(elapsed, fault.action, worker, "no proxy"))
                return
            for proxy in proxies:
                getattr(proxy, fault.action)(fault.duration)
            detail = f"{fault.duration:g}s, {len(proxies)} proxies"
            self.events.append(FaultEvent(elapsed, fault.action, worker, detail))
        elif fault.action == "pause":
            pid = self.client.run(_pause_self, fault.duration, workers=[worker])[worker]
            self.events.append(
                FaultEvent(elapsed, "pause", worker, f"SIGSTOP for {fault.duration:g}s", pid)
            )
        else:
            self.retired.add(worker)
            thread = threading.Thread(
                target=drain,
                args=(self.client, [worker]),
                kwargs={"timeout": max(fault.duration, 1.0)},
                daemon=True,
            )
            thread.start()
            self.threads.append(thread)
            self.events.append(FaultEvent(elapsed, "drain", worker, "hafen.drain"))

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)


def _ntasks(collection: Any) -> int:
    try:
        return max(len(collection.__dask_graph__()), 1)
    except Exception:  # not a dask collection: progress faults fire at the start
        return 1


def _run_once(
    client: Client,
    build: Callable[[], Any],
    name: str,
    faults: Sequence[Fault],
    seed: int,
    timeout: float | None,
    network: Network | None = None,
) -> RunResult:
    _wait_forgotten(client, build)  # a previous run of the same graph must be gone
    collection = build()
    total = _ntasks(collection)
    resilience_counts(client, reset=True)
    schedule = _Schedule(client, faults, seed, network)
    started = time()
    future = client.compute(collection)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    counts: dict[str, Any] = {"computed": 0}
    while not done.is_set():
        elapsed = time() - started
        if timeout is not None and elapsed > timeout:
            raise TimeoutError(f"chaos run {name!r} did not finish within {timeout}s")
        if schedule.pending:
            progress = 0.0
            if any(f.at_progress is not None for f in schedule.pending):
                counts = resilience_counts(client)
                progress = counts["computed"] / total
            for fault in schedule.due(elapsed, progress):
                schedule.fire(fault, elapsed)
        done.wait(POLL_INTERVAL)
    output = future.result()
    wall = time() - started
    schedule.join(timeout=30)
    counts = resilience_counts(client, reset=True)
    future.release()
    return RunResult(
        name=name,
        wall_time=wall,
        computed=counts["computed"],
        recomputed=counts["recomputed"],
        recomputed_protected=counts["recomputed_protected"],
        lost=counts["lost"],
        output=output,
        faults=tuple(schedule.events),
        restarted=counts.get("restarted", 0),
        workers_lost=counts.get("workers_removed", 0),
        erred=counts.get("erred", 0),
    )


def _wait_forgotten(client: Client, build: Callable[[], Any], timeout: float = 30) -> None:
    """Wait until the scheduler has forgotten the graph's output keys of a previous run."""
    from dask.core import flatten

    try:
        keys = list(flatten(build().__dask_keys__()))
    except AttributeError:  # not a dask collection
        return

    def present(dask_scheduler: Any, keys: list[Any]) -> int:
        return sum(1 for k in keys if k in dask_scheduler.tasks)

    deadline = time() + timeout
    while client.run_on_scheduler(present, keys=keys) and time() < deadline:
        client.sync(_sleep, POLL_INTERVAL)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def run_chaos(
    client: Client,
    build: Callable[[], Any],
    faults: Sequence[Fault],
    *,
    seed: int = 0,
    reference: bool = True,
    timeout: float | None = None,
    network: Network | None = None,
) -> ChaosReport:
    """Run a graph with and without faults; report recomputations, lost results, output.

    Parameters
    ----------
    client : distributed.Client
        A synchronous client; the resilience plugin is registered if missing.
    build : callable
        Returns the dask collection to compute; called once per run.
    faults : sequence of Fault
        The schedule of the faulty run.
    seed : int
        Seed of the random choice of workers.
    reference : bool
        Also run without faults first and compare outputs (default).
    timeout : float, optional
        Fail a run that takes longer (seconds).
    network : callable, optional
        A worker's proxies by its address, for ``sever`` and ``blackhole`` faults (e.g.
        ``ProxiedCluster.proxies``).

    Returns
    -------
    ChaosReport

    Examples
    --------
    >>> report = run_chaos(client, lambda: costly_graph(100, 0.1),  # doctest: +SKIP
    ...                    [Fault("kill", at_progress=0.7)])
    >>> report.matched, report.faulty.recomputed  # doctest: +SKIP
    (True, 0)
    """
    client.sync(ensure_installed, client)
    ref = None
    if reference:
        ref = _run_once(client, build, "fault-free", (), seed, timeout)
    faulty = _run_once(client, build, "with faults", faults, seed, timeout, network)
    matched = same_output(ref.output, faulty.output) if ref is not None else None
    return ChaosReport(reference=ref, faulty=faulty, matched=matched)


# --- a built-in graph --------------------------------------------------------------------------


def _costly(i: int, duration: float) -> int:
    import time as _time

    _time.sleep(duration)
    return (i * 2654435761) % 2**32


def _combine(parts: list[int]) -> int:
    return sum(parts) % 2**61


def costly_graph(tasks: int = 200, duration: float = 0.5, *, replicate: int | None = 2) -> Any:
    """``tasks`` tasks sleeping ``duration`` seconds each, feeding one reduction.

    With ``replicate`` the costly tasks are annotated ``replicate=N``.
    """
    import dask

    annotations = {"replicate": replicate} if replicate else {}
    with dask.annotate(**annotations):
        parts = [
            dask.delayed(_costly)(i, duration, dask_key_name=f"costly-{i}") for i in range(tasks)
        ]
    return dask.delayed(_combine)(parts, dask_key_name="combine")
