"""A userspace TCP proxy on loopback that breaks connections on demand: network faults for chaos.

A :class:`Proxy` listens on ``127.0.0.1`` and forwards every connection to one loopback target
(a scheduler, or a worker whose ``--contact-address`` names the proxy). Two faults:

- :meth:`Proxy.sever` resets every connection (both ends get a TCP reset) and refuses new ones
  (the port stops listening) for ``seconds``;
- :meth:`Proxy.blackhole` stops forwarding for ``seconds`` and keeps the sockets open: bytes
  wait in the kernel's buffers, new connections are accepted but not forwarded, as on a path
  that drops every packet while TCP keeps retrying.

Both heal by themselves. Traffic only ever goes to loopback: a target elsewhere is refused. The
proxy listens on a port below the kernel's ephemeral range, so that no outgoing connection takes
it while it is severed and it can listen on it again. Proxies run on one event loop in a
background thread, so tests and ``hafen chaos`` use them from synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import random
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from distributed.comm.addressing import parse_address, parse_host_port

from hafen.errors import ConfigError

__all__ = ["Proxy", "ProxyStats"]

T = TypeVar("T")

#: Ports the proxy listens on: below the usual ephemeral range (32768-60999 on Linux).
PORT_RANGE = (20000, 32767)
HOST = "127.0.0.1"


class _LoopThread:
    """One event loop in a daemon thread, shared by every proxy of the process."""

    _lock = threading.Lock()
    _instance: _LoopThread | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="hafen-proxy", daemon=True
        )
        self.thread.start()

    @classmethod
    def get(cls) -> _LoopThread:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a coroutine function or a plain one) on the loop and wait for it."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("call proxy methods from another thread than the proxy loop")
        done: Future[Any] = Future()

        def call() -> None:
            try:
                result = fn()
            except BaseException as exc:
                done.set_exception(exc)
                return
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(lambda t: _settle(done, t))
            else:
                done.set_result(result)

        self.loop.call_soon_threadsafe(call)
        return done.result()


def _settle(done: Future[Any], task: asyncio.Future[Any]) -> None:
    error = task.exception()
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(task.result())


class ProxyStats(dict[str, int]):
    """Counters of a proxy: connections accepted and reset, severs, blackholes, bytes."""


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; forwards what it reads to the other side."""

    def __init__(self, pair: _Pair) -> None:
        self.pair = pair
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.early: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.pair.closed:  # closed while the connection was being set up
            transport.close()
            return
        if self.pair.proxy.blackholed:
            transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.pair.proxy._forwarded(len(data))
        other = self.other
        if other is None or other.transport is None:
            self.early.append(data)
        else:
            other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is not None and other.eof:  # both ways are done
            self.pair.close()
            return False
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()
            return True
        self.pair.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pair.close()

    def pause_writing(self) -> None:  # our peer writes faster than this socket drains
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not self.pair.proxy.blackholed:
            other.transport.resume_reading()


class _Pair:
    """A proxied connection: the client's socket and the target's."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.client = _Side(self)
        self.server: _Side | None = None
        self.closed = False
        self.task: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await self.proxy._healed.wait()  # a blackhole holds new connections here
        if self.closed:
            return
        try:
            _, server = await loop.create_connection(
                lambda: _Side(self), self.proxy.target_host, self.proxy.target_port
            )
        except OSError:
            self.reset()
            return
        self.server = server
        if self.closed:
            self.reset()
            return
        server.other, self.client.other = self.client, server
        for side in (self.client, server):
            other = side.other
            if side.early and other is not None and other.transport is not None:
                other.transport.write(b"".join(side.early))
            side.early.clear()

    def sides(self) -> list[_Side]:
        return [s for s in (self.client, self.server) if s is not None]

    def pause(self) -> None:
        for side in self.sides():
            if side.transport is not None:
                side.transport.pause_reading()

    def resume(self) -> None:
        for side in self.sides():
            if side.transport is not None:
                side.transport.resume_reading()

    def reset(self) -> None:
        """Close both sockets with a TCP reset."""
        for side in self.sides():
            transport = side.transport
            if transport is None:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # linger 0: close with a reset
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy._pairs.discard(self)
        for side in self.sides():
            if side.transport is not None:
                side.transport.close()


class Proxy:
    """A TCP proxy from ``127.0.0.1:port`` to a loopback ``target`` (see the module docstring).

    Parameters
    ----------
    target
        ``host:port`` or an address such as ``hafen://127.0.0.1:8786``; the host must be a
        loopback address.
    port
        Port to listen on; by default a free one below the ephemeral range.

    Examples
    --------
    >>> with Proxy("tcp://127.0.0.1:8786") as proxy:  # doctest: +SKIP
    ...     client = Client(proxy.url("tcp"))
    ...     proxy.sever(5)
    """

    def __init__(self, target: str, *, port: int | None = None) -> None:
        if "://" in target:
            target = parse_address(target)[1]
        host, target_port = parse_host_port(target)
        if host == "localhost":
            host = HOST
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback or not target_port:
            raise ConfigError(f"a proxy only forwards to a loopback host:port, got {target!r}")
        self.target_host = host
        self.target_port = int(target_port)
        self.blackholed = False
        self.severed = False
        self.stats = ProxyStats(accepted=0, reset=0, severs=0, blackholes=0, bytes=0)
        self._armed: tuple[int, float] | None = None
        self._closed = False
        self._pairs: set[_Pair] = set()
        self._listener: socket.socket | None = None
        self._accepting: set[asyncio.Future[Any]] = set()
        self._heal_handle: asyncio.TimerHandle | None = None
        self._healing: asyncio.Future[None] | None = None
        self._runner = _LoopThread.get()
        self._healed: asyncio.Event = self._runner.run(_set_event)
        self.port = self._runner.run(lambda: self._listen(port))

    def __repr__(self) -> str:
        state = "severed" if self.severed else "blackholed" if self.blackholed else "forwarding"
        return f"<Proxy {self.address} -> {self.target_host}:{self.target_port} {state}>"

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, where the proxy listens."""
        return f"{HOST}:{self.port}"

    def url(self, scheme: str = "hafen") -> str:
        """The proxy's address with a scheme, e.g. ``hafen://127.0.0.1:PORT``."""
        return f"{scheme}://{self.address}"

    # --- faults ---------------------------------------------------------------------------------

    def sever(self, seconds: float) -> None:
        """Reset every connection and refuse new ones for ``seconds`` (returns at once)."""
        _check_seconds(seconds)
        self._runner.run(lambda: self._sever(seconds))

    def blackhole(self, seconds: float, *, after_bytes: int = 0) -> None:
        """Stop forwarding for ``seconds``, keeping the sockets open (returns at once).

        With ``after_bytes``, the blackhole starts once that many more bytes went through the
        proxy (either way): in the middle of a transfer, say.
        """
        _check_seconds(seconds)
        if after_bytes > 0:
            self._runner.run(lambda: self._arm(after_bytes, seconds))
        else:
            self._runner.run(lambda: self._blackhole(seconds))

    def heal(self) -> None:
        """End a sever or a blackhole now."""
        self._runner.run(self._heal)

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._runner.run(self._close)

    # --- on the loop ----------------------------------------------------------------------------

    async def _listen(self, port: int | None) -> int:
        # A listening socket of our own rather than an asyncio Server: closing a Server while a
        # connection is being accepted leaks that connection's socket.
        loop = asyncio.get_running_loop()
        candidates = [port] if port else random.sample(range(*PORT_RANGE), 50)
        error: OSError | None = None
        for candidate in candidates:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((HOST, candidate))
                sock.listen(128)
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                error = exc
                continue
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._on_listen_readable)
            self._listener = sock
            return int(candidate)
        raise error or OSError(errno.EADDRINUSE, "no free port for the proxy")

    def _stop_listening(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()  # connections waiting in the backlog are reset

    def _on_listen_readable(self) -> None:
        if self._listener is None:
            return
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        conn.setblocking(False)
        side = self._accept()
        task = asyncio.ensure_future(
            asyncio.get_running_loop().connect_accepted_socket(lambda: side, conn)
        )
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    def _accept(self) -> _Side:
        pair = _Pair(self)
        if self._closed or self.severed:  # closed as it connects (connection_made)
            pair.closed = True
            return pair.client
        self._pairs.add(pair)
        self.stats["accepted"] += 1
        pair.task = asyncio.ensure_future(pair.connect())
        return pair.client

    def _schedule_heal(self, seconds: float) -> None:
        if self._heal_handle is not None:
            self._heal_handle.cancel()
        self._heal_handle = asyncio.get_running_loop().call_later(seconds, self._start_heal)

    def _start_heal(self) -> None:
        self._healing = asyncio.ensure_future(self._heal())

    async def _sever(self, seconds: float) -> None:
        self.severed = True
        self.stats["severs"] += 1
        self._stop_listening()
        for pair in list(self._pairs):
            self.stats["reset"] += 1
            pair.reset()
        self._schedule_heal(seconds)

    def _arm(self, nbytes: int, seconds: float) -> None:
        self._armed = (self.stats["bytes"] + nbytes, seconds)

    def _forwarded(self, nbytes: int) -> None:
        self.stats["bytes"] += nbytes
        if self._armed is not None and self.stats["bytes"] >= self._armed[0]:
            seconds = self._armed[1]
            self._armed = None
            self._blackhole(seconds)

    def _blackhole(self, seconds: float) -> None:
        self.blackholed = True
        self.stats["blackholes"] += 1
        self._healed.clear()
        for pair in list(self._pairs):
            pair.pause()
        self._schedule_heal(seconds)

    async def _heal(self) -> None:
        if self._heal_handle is not None:
            self._heal_handle.cancel()
            self._heal_handle = None
        if self.blackholed:
            self.blackholed = False
            self._healed.set()
            for pair in list(self._pairs):
                pair.resume()
        if self.severed and self._listener is None:
            self.severed = False
            for _ in range(100):  # the port is ours; a moment may pass before it is free again
                try:
                    await self._listen(self.port)
                    break
                except OSError:
                    await asyncio.sleep(0.05)

    async def _close(self) -> None:
        self._closed = True
        if self._heal_handle is not None:
            self._heal_handle.cancel()
        self._stop_listening()
        self._healed.set()
        for pair in list(self._pairs):
            pair.close()


async def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def _check_seconds(seconds: float) -> None:
    if not seconds >= 0:
        raise ConfigError(f"a fault lasts >= 0 seconds, got {seconds!r}")
