"""A cluster whose workers sit behind chaos proxies: network faults on real processes.

:class:`ProxiedCluster` starts ``dask scheduler`` and one ``dask worker`` (with its nanny) per
worker, each a process of its own, as in production (``--preload hafen.cluster``). Worker ``i``
listens on a port of its own behind an *inbound* proxy, which is its ``--contact-address``, so
the scheduler, other workers and clients reach it through the proxy; and it reaches the
scheduler through an *outbound* proxy. :meth:`ProxiedCluster.sever` and
:meth:`ProxiedCluster.blackhole` cut both for a while: the worker loses every connection. Clients
in this process talk to the scheduler directly.

``hafen chaos`` runs its network faults on one; the tests and ``benchmarks/network.py`` too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hafen.cluster.comm._proxy import PORT_RANGE, Proxy
from hafen.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["ProxiedCluster", "ProxiedWorker", "dask_env"]

#: The ``dask`` command line of this environment.
DASK = str(Path(sys.executable).with_name("dask"))
#: Seconds the processes get to start.
START_TIMEOUT = 60.0


def dask_env(config: Mapping[str, Any] | None) -> dict[str, str]:
    """This process's environment plus ``config`` (dask keys) as ``DASK_*`` variables."""
    env = dict(os.environ)
    for key, value in (config or {}).items():
        name = "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))
        env[name] = value if isinstance(value, str) else json.dumps(value)
    return env


def _free_port() -> int:
    """A port free now, below the ephemeral range (so no outgoing connection takes it)."""
    for port in random.sample(range(*PORT_RANGE), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port below the ephemeral range")


@dataclasses.dataclass
class ProxiedWorker:
    """One worker: its contact address (the inbound proxy's), its proxies and its process."""

    name: str
    address: str
    listen_port: int
    inbound: Proxy
    outbound: Proxy
    process: subprocess.Popen[bytes]

    @property
    def proxies(self) -> tuple[Proxy, Proxy]:
        return (self.inbound, self.outbound)


class ProxiedCluster:
    """A scheduler and workers in processes of their own, each worker behind two proxies.

    Parameters
    ----------
    n_workers
        Workers to start.
    protocol
        ``"hafen"`` or ``"tcp"`` (the control).
    nthreads, memory_limit
        Per worker.
    nanny
        Start each worker under a nanny, as ``dask worker`` does by default; without one a
        cluster starts in half the processes.
    config
        Dask config for every process (``{"hafen.comm.grace": "6s"}``), passed as ``DASK_*``
        environment variables; set the same in this process for its clients.
    directory
        Where the processes' logs go (a temporary directory by default).

    Examples
    --------
    >>> with ProxiedCluster(3) as cluster, cluster.client() as client:  # doctest: +SKIP
    ...     cluster.sever(cluster.workers[0].address, 5)
    """

    def __init__(
        self,
        n_workers: int = 3,
        *,
        protocol: str = "hafen",
        nthreads: int = 1,
        memory_limit: str = "1GiB",
        nanny: bool = True,
        config: Mapping[str, Any] | None = None,
        directory: Path | None = None,
    ) -> None:
        if protocol not in ("hafen", "tcp"):
            raise ConfigError(f"protocol must be 'hafen' or 'tcp', got {protocol!r}")
        self.n_workers = n_workers
        self.protocol = protocol
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.nanny = nanny
        self.env = dask_env(config)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hafen-proxied-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.scheduler_address = ""
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[ProxiedWorker] = []

    def __enter__(self) -> ProxiedCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, log: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.directory / log).open("wb") as stderr:
            return subprocess.Popen(
                [DASK, *args], stdout=subprocess.DEVNULL, stderr=stderr, env=self.env
            )

    def _wait(self, what: str, ready: Any, process: subprocess.Popen[bytes], log: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (self.directory / log).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{what} did not start:\n{tail}")
            time.sleep(0.05)

    def start(self) -> None:
        """Start the scheduler, then the proxies and workers (returns once they registered)."""
        proto = self.protocol
        scheduler_file = self.directory / "scheduler.json"
        self.scheduler = self._spawn(
            "scheduler.log", "scheduler", "--protocol", proto, "--host", "127.0.0.1",
            "--port", "0", "--scheduler-file", str(scheduler_file), "--dashboard-address", ":0",
            "--no-show", "--preload", "hafen.cluster",
        )  # fmt: skip
        self._wait("the scheduler", scheduler_file.exists, self.scheduler, "scheduler.log")
        self.scheduler_address = str(json.loads(scheduler_file.read_text())["address"])
        for i in range(self.n_workers):
            port = _free_port()
            inbound = Proxy(f"127.0.0.1:{port}")
            outbound = Proxy(self.scheduler_address)
            name = f"w{i}"
            process = self._spawn(
                f"{name}.log", "worker", outbound.url(proto),
                "--listen-address", f"{proto}://127.0.0.1:{port}",
                "--contact-address", inbound.url(proto),
                "--nthreads", str(self.nthreads), "--nworkers", "1", "--name", name,
                "--memory-limit", self.memory_limit, "--no-dashboard",
                "--preload", "hafen.cluster",
                *(("--preload-nanny", "hafen.cluster") if self.nanny else ("--no-nanny",)),
            )  # fmt: skip
            self.workers.append(
                ProxiedWorker(name, inbound.url(proto), port, inbound, outbound, process)
            )
        with self.client(install=False) as client:
            client.wait_for_workers(self.n_workers, timeout=START_TIMEOUT)

    @contextlib.contextmanager
    def client(self, *, install: bool = True) -> Iterator[Client]:
        """A client of the scheduler (with hafen's extensions installed, by default)."""
        from distributed import Client

        from hafen.cluster._connect import connect

        client = connect(self.scheduler_address) if install else Client(self.scheduler_address)
        try:
            yield client
        finally:
            client.close()

    def worker(self, address: str) -> ProxiedWorker:
        """The worker whose contact address is ``address``."""
        for worker in self.workers:
            if worker.address == address:
                return worker
        raise KeyError(address)

    def proxies(self, address: str) -> tuple[Proxy, ...]:
        """The proxies of the worker at ``address`` (none for an unknown address)."""
        try:
            return self.worker(address).proxies
        except KeyError:
            return ()

    def sever(self, address: str, seconds: float) -> None:
        """Reset every connection of a worker and refuse new ones for ``seconds``."""
        for proxy in self.proxies(address):
            proxy.sever(seconds)

    def blackhole(self, address: str, seconds: float) -> None:
        """Stop forwarding a worker's traffic for ``seconds``."""
        for proxy in self.proxies(address):
            proxy.blackhole(seconds)

    def close(self) -> None:
        """Shut the cluster down (through the scheduler), then stop what is left and the proxies."""
        if self.scheduler is not None and self.scheduler.poll() is None and self.scheduler_address:
            with contextlib.suppress(Exception):
                from distributed import Client

                with Client(self.scheduler_address, timeout=10) as client:
                    client.shutdown()
        deadline = time.monotonic() + 15
        for process in [w.process for w in self.workers] + [self.scheduler]:
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(deadline - time.monotonic(), 0.1))
        for worker in self.workers:
            _stop(worker.process)
        if self.scheduler is not None:
            _stop(self.scheduler)
        for worker in self.workers:
            for proxy in worker.proxies:
                proxy.close()
        self.workers = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
