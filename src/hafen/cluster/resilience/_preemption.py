"""Worker side of draining: SIGTERM (a preemption notice) makes a worker drain itself.

Cloud providers and Kubernetes announce that a machine is going away by sending SIGTERM and
waiting a grace period (30 s on Kubernetes and GCE spot, 2 min on AWS spot) before SIGKILL. By
default a Dask worker process dies on SIGTERM and every result it held is recomputed.
:class:`DrainOnSigterm` is a ``WorkerPlugin`` that installs a SIGTERM handler in the worker
process: on the signal the worker asks the scheduler to drain it (``hafen_drain``, see
``_drain.py``) within ``timeout``; the scheduler moves its unique results, costliest first, then
closes it, and the nanny does not restart it. A second SIGTERM while draining falls through to the
previous handler (normally: die at once).

With a nanny (``dask worker`` by default), the orchestrator's SIGTERM reaches the *nanny*
process, whose default is to kill its worker at once. :class:`ForwardSigterm`, a ``NannyPlugin``
installed only in a ``dask worker`` process, forwards the first SIGTERM to the worker process;
the worker drains and closes, and its nanny, told to close gracefully, exits after it (and so
does ``dask worker``). A second SIGTERM goes to the nanny's previous handler.

Signal handlers can only be installed in a process's main thread. A worker started by a nanny
or by ``dask worker --no-nanny`` runs its event loop there; a worker running in a thread
(``LocalCluster(processes=False)``) is left alone with a log line.

``hafen.connect()`` registers both plugins on every worker and nanny (also those that join
later); ``dask worker --preload hafen.cluster --preload-nanny hafen.cluster`` installs them at
start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import uuid
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin

from hafen.cluster._config import UNSET, option

if TYPE_CHECKING:
    from distributed import Nanny, Worker

__all__ = ["NANNY_PLUGIN_NAME", "PLUGIN_NAME", "DrainOnSigterm", "ForwardSigterm"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "hafen-drain-on-sigterm"
NANNY_PLUGIN_NAME = "hafen-forward-sigterm"


class DrainOnSigterm(WorkerPlugin):
    """WorkerPlugin: on SIGTERM, drain this worker (move its results away), then exit.

    Parameters
    ----------
    timeout : str or float, optional
        How long the drain may take; default dask config ``hafen.drain.sigterm-timeout`` (25 s),
        below Kubernetes' default grace period of 30 s.

    Raises
    ------
    hafen.errors.ConfigError
        If ``timeout`` is invalid.

    Examples
    --------
    >>> client.register_plugin(DrainOnSigterm(timeout="20s"))  # doctest: +SKIP
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, timeout: str | float | None = None) -> None:
        self.timeout: float = option(
            "hafen.drain.sigterm-timeout",
            UNSET if timeout is None else timeout,
            argument="timeout",
        )
        self._previous: Any = None
        self._installed = False
        self._draining = False

    def __getstate__(self) -> dict[str, Any]:
        return {"timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["timeout"])  # type: ignore[misc]

    def setup(self, worker: Worker) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.info(
                "hafen: worker %s runs in a thread; SIGTERM will not drain it", worker.address
            )
            return
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: Any) -> None:
            # Nothing but scheduling here: a signal handler must not log or block.
            if self._draining:
                self._restore()
                signal.raise_signal(signum)
                return
            self._draining = True
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain(worker)))

        self._previous = signal.signal(signal.SIGTERM, on_sigterm)
        self._installed = True

    def teardown(self, worker: Worker) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
            self._installed = False

    async def _drain(self, worker: Worker) -> None:
        if not _connected(worker):  # e.g. a stray process reaped after its scheduler went away
            await worker.close(nanny=True, reason="hafen-sigterm")
            return
        logger.warning(
            "hafen: SIGTERM received; draining worker %s (timeout %.0fs)",
            worker.address,
            self.timeout,
        )
        try:
            report = await asyncio.wait_for(
                worker.scheduler.hafen_drain(
                    workers=[worker.address],
                    timeout=self.timeout,
                    drain_id=f"sigterm-{uuid.uuid4().hex}",
                    close_workers=True,
                ),
                timeout=self.timeout + 10,
            )
        except Exception:
            logger.exception("hafen: drain on SIGTERM failed; closing worker %s", worker.address)
            report = None
        if not isinstance(report, dict):
            # No hafen extension on the scheduler: fall back to Dask's own retirement.
            try:
                await asyncio.wait_for(
                    worker.close_gracefully(restart=False, reason="hafen-sigterm"),
                    timeout=self.timeout,
                )
            except Exception:
                logger.exception("hafen: graceful close of %s failed", worker.address)
        else:
            logger.warning(
                "hafen: worker %s drained: moved %s results, %s left to recompute",
                worker.address,
                report.get("moved"),
                len(report.get("recompute") or ()),
            )
        # The scheduler closes a drained worker; make sure this process ends either way, and
        # that the nanny does not start a new one on a machine that is going away.
        await worker.close(nanny=True, reason="hafen-sigterm")


def _connected(worker: Worker) -> bool:
    """Whether the worker's stream to the scheduler is open."""
    stream = getattr(worker, "batched_stream", None)
    comm = getattr(stream, "comm", None)
    return comm is not None and not comm.closed()


class ForwardSigterm(NannyPlugin):
    """NannyPlugin: forward the first SIGTERM to the worker process, which drains itself.

    Examples
    --------
    >>> client.register_plugin(ForwardSigterm())  # doctest: +SKIP
    """

    name = NANNY_PLUGIN_NAME
    idempotent = True
    restart = False

    def __init__(self) -> None:
        self._previous: Any = None
        self._installed = False

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def setup(self, nanny: Nanny) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # a nanny of a LocalCluster runs in a thread of the client process
        if "distributed.cli.dask_worker" not in sys.modules:
            return  # not a `dask worker` process: SIGTERM is its owner's business

        def on_sigterm(signum: int, frame: Any) -> None:
            self._restore()  # a second SIGTERM takes the previous way
            process = nanny.process
            pid = process.pid if process is not None else None
            if pid:
                os.kill(pid, signal.SIGTERM)
            else:
                signal.raise_signal(signum)

        self._previous = signal.signal(signal.SIGTERM, on_sigterm)
        self._installed = True

    def teardown(self, nanny: Nanny) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
            self._installed = False
