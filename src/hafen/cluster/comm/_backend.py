"""The ``hafen://`` Dask comm backend: :class:`HafenBackend`, its connector, listener and comm.

Registered under the scheme ``hafen`` (the ``distributed.comm.backends`` entry point, and
:mod:`hafen.cluster.comm` on import), it is used wherever Dask takes an address:
``dask scheduler --protocol hafen``, ``LocalCluster(protocol="hafen")``,
``Client("hafen://host:port")``, ``dask worker hafen://host:port``. Addresses are host and port,
as for ``tcp://``; the links are plain TCP.

Each :class:`HafenComm` is one session (see ``_session.py``) driven by a
:class:`~hafen.cluster.comm._channel.Channel`. Messages are serialized exactly as distributed's
TCP comm does (``to_frames``/``from_frames``, the same frame split size, context and offloading).

A new connection to an address that does not answer fails as on TCP (Dask retries it until
``distributed.comm.timeouts.connect``), unless this process reached that address within the
grace period: then it is a blip, and the connection is returned at once and keeps dialing in the
background, as a resumed one does, until the grace period runs out.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import weakref
from typing import Any, ClassVar

import dask
from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.core import BaseListener, Comm, CommClosedError, Connector
from distributed.comm.registry import Backend
from distributed.comm.utils import (
    ensure_concrete_host,
    from_frames,
    get_tcp_server_address,
    to_frames,
)
from distributed.system import MEMORY_LIMIT
from distributed.utils import ensure_ip, get_ip
from tornado import netutil
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpserver import TCPServer

from hafen.cluster.comm._channel import Channel, CommOptions, monotonic
from hafen.cluster.comm._session import (
    Hello,
    Refusal,
    Session,
    SessionRefusedError,
    SessionTable,
    new_session_id,
)
from hafen.cluster.comm._wire import (
    HELLO,
    REPLY,
    NotHafenError,
    encode,
    pack_hello,
    pack_reply,
    unpack_hello,
    unpack_reply,
)

__all__ = ["PREFIX", "SCHEME", "HafenBackend", "HafenComm", "HafenConnector", "HafenListener"]

logger = logging.getLogger("hafen.cluster.comm")

SCHEME = "hafen"
PREFIX = "hafen://"
#: As distributed's TCP comm: tornado may buffer at most this much of a read.
MAX_BUFFER_SIZE = int(MEMORY_LIMIT / 2)

#: address -> when this process last had a live link to it (event loop time).
_reachable: dict[str, float] = {}


def _require_no_encryption(address: str, connection_args: dict[str, Any]) -> None:
    if connection_args.get("require_encryption"):
        raise RuntimeError(
            "encryption required by Dask configuration, refusing communication from/to "
            f"{PREFIX + address!r} (hafen:// is not encrypted)"
        )


def _stream_address(stream: IOStream) -> str:
    if stream.closed():
        raise CommClosedError("hafen:// link closed")
    return unparse_host_port(*stream.socket.getsockname()[:2])


async def _open_link(host: str, port: int, hello: Hello) -> tuple[IOStream, int]:
    """Open a TCP link to ``host:port`` and say ``hello``; the listener's received count."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        )
    except socket.gaierror:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, sockaddr = infos[0]
    stream = IOStream(socket.socket(family, socket.SOCK_STREAM), max_buffer_size=MAX_BUFFER_SIZE)
    try:
        await stream.connect(sockaddr)
        stream.set_nodelay(True)
        stream.write(pack_hello(hello))
        received = unpack_reply(await stream.read_bytes(REPLY.size))
    except StreamClosedError as exc:
        stream.close()
        raise CommClosedError(f"hafen:// link to {host}:{port}: {exc.real_error or exc}") from exc
    except BaseException:
        stream.close()
        raise
    return stream, received


class HafenComm(Comm):
    """A Dask comm over one session (see the module docstring)."""

    max_shard_size: ClassVar[int] = dask.utils.parse_bytes(
        dask.config.get("distributed.comm.shard")
    )

    def __init__(
        self, channel: Channel, local_addr: str, peer_addr: str, deserialize: bool = True
    ) -> None:
        self._channel = channel
        super().__init__(deserialize=deserialize)
        self._local_addr = local_addr
        self._peer_addr = peer_addr
        # A comm dropped without close() (as Dask may, e.g. when a connect is cancelled) must not
        # leave its session dialing or holding memory.
        self._finalizer = weakref.finalize(self, channel.abandon)
        self._finalizer.atexit = False

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    @property
    def session(self) -> Session:
        """The session under this comm (its counters say what it went through)."""
        return self._channel.session

    async def read(self, deserializers: Any = None) -> Any:
        frames = await self._channel.receive()
        try:
            return await from_frames(
                frames,
                deserialize=self.deserialize,
                deserializers=deserializers,
                allow_offload=self.allow_offload,
            )
        except EOFError:
            self.abort()
            raise CommClosedError("aborted stream on truncated data") from None

    async def write(
        self, msg: Any, serializers: Any = None, on_error: str | None = "message"
    ) -> int:
        self._channel.check_writable()
        frames = await to_frames(
            msg,
            allow_offload=self.allow_offload,
            serializers=serializers,
            on_error=on_error,
            context={
                "sender": self.local_info,
                "recipient": self.remote_info,
                **self.handshake_options,
            },
            frame_split_size=self.max_shard_size,
        )
        payload = encode(frames)
        await self._channel.send(payload)
        return payload.nbytes

    async def close(self) -> None:
        self._finalizer.detach()
        await self._channel.close()

    def abort(self) -> None:
        self._finalizer.detach()
        self._channel.abort()

    def closed(self) -> bool:
        return self._channel.closed

    @property
    def extra_info(self) -> dict[str, Any]:
        session = self._channel.session
        return {"session": session.sid.hex(), "resumes": session.resumes, "up": session.up}


class HafenConnector(Connector):
    """Opens sessions (see the module docstring for connections during a blip)."""

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Comm:
        _require_no_encryption(address, connection_args)
        options = CommOptions.from_config()
        host, port = parse_host_port(address)
        now = monotonic()
        session = Session(
            new_session_id(),
            dialer=True,
            buffer=options.buffer,
            grace=options.grace,
            down_since=now,
        )
        hello = session.hello(now)

        async def dial(hello: Hello) -> tuple[IOStream, int]:
            return await _open_link(host, port, hello)

        def alive() -> None:
            _reachable[address] = monotonic()

        try:
            stream, received = await asyncio.wait_for(dial(hello), options.link_timeout)
        except SessionRefusedError:
            raise
        except (TimeoutError, OSError) as exc:
            last = _reachable.get(address)
            if last is None or now - last > options.grace:
                raise CommClosedError(f"in {PREFIX}{address}: {exc!r}") from exc
            # A peer reached within the grace period: a blip. Keep dialing in the background.
            logger.info("hafen:// %s unreachable (%r); retrying in the background", address, exc)
            session.down_since = last
            channel = Channel(session, options, dial=dial, on_alive=alive)
            channel.start_redial()
            local = PREFIX + unparse_host_port(get_ip(ensure_ip(host)), 0)
            return HafenComm(channel, local, PREFIX + address, deserialize)
        resend = session.on_accepted(hello.epoch, received)
        channel = Channel(session, options, dial=dial, on_alive=alive)
        local = PREFIX + _stream_address(stream)
        channel.attach(stream, resend)
        return HafenComm(channel, local, PREFIX + address, deserialize)


class HafenListener(BaseListener):
    """Accepts links: new sessions become comms for Dask, resumed ones rejoin their channel."""

    prefix = PREFIX

    def __init__(
        self,
        address: str,
        comm_handler: Any,
        deserialize: bool = True,
        allow_offload: bool = True,
        default_host: str | None = None,
        default_port: int = 0,
        **connection_args: Any,
    ) -> None:
        super().__init__()
        _require_no_encryption(address, connection_args)
        self.ip, self.port = parse_host_port(address, default_port)
        self.default_host = default_host
        self.comm_handler = comm_handler
        self.deserialize = deserialize
        self.allow_offload = allow_offload
        self.options = CommOptions.from_config()
        self.sessions = SessionTable(buffer=self.options.buffer, grace=self.options.grace)
        self.tcp_server: TCPServer | None = None
        self.bound_address: Any = None

    async def start(self) -> None:
        self.tcp_server = TCPServer(max_buffer_size=MAX_BUFFER_SIZE)
        self.tcp_server.handle_stream = self._handle_stream  # type: ignore[method-assign]
        backlog = int(dask.config.get("distributed.comm.socket-backlog"))
        for _ in range(5):
            try:
                sockets = netutil.bind_sockets(self.port, address=self.ip, backlog=backlog)
            except OSError as exc:
                if self.port != 0 or exc.errno != errno.EADDRINUSE:
                    raise
                error = exc
            else:
                self.tcp_server.add_sockets(sockets)
                break
        else:
            raise error
        self.get_host_port()

    def stop(self) -> None:
        tcp_server, self.tcp_server = self.tcp_server, None
        if tcp_server is not None:
            tcp_server.stop()

    def _forget(self, channel: Channel) -> None:
        self.sessions.forget(channel.session, monotonic())

    async def _handle_stream(self, stream: IOStream, address: Any) -> None:
        peer = PREFIX + unparse_host_port(*address[:2])
        try:
            stream.set_nodelay(True)
            hello = unpack_hello(
                await asyncio.wait_for(stream.read_bytes(HELLO.size), self.options.link_timeout)
            )
        except (TimeoutError, StreamClosedError, OSError, NotHafenError) as exc:
            logger.info(
                "hafen:// listener %s: no hello from %s (%r)", self.contact_address, peer, exc
            )
            stream.close()
            return
        if self.tcp_server is None:
            stream.close()
            return
        try:
            session, opened, resend = self.sessions.accept(hello, monotonic())
        except SessionRefusedError as exc:
            logger.info("hafen:// listener: refused session %s from %s: %s",
                        hello.sid.hex()[:8], peer, exc.reason)  # fmt: skip
            self._refuse(stream, exc.refusal)
            return
        try:
            stream.write(pack_reply(session.received))
        except StreamClosedError:
            session.link_down(monotonic())
            if opened:
                session.close("link lost before the session started")
                self.sessions.forget(session, monotonic())
            return
        if not opened:
            channel: Channel = session.owner
            channel.attach(stream, resend)
            return
        channel = Channel(session, self.options, on_closed=self._forget)
        local = PREFIX + _stream_address(stream)
        channel.attach(stream, [])
        comm = HafenComm(channel, local, peer, self.deserialize)
        comm.allow_offload = self.allow_offload
        try:
            await self.on_connection(comm)
        except CommClosedError:
            logger.info("Connection from %s closed before handshake completed", peer)
            return
        await self.comm_handler(comm)

    @staticmethod
    def _refuse(stream: IOStream, refusal: Refusal) -> None:
        try:
            done = stream.write(pack_reply(0, refusal))
            done.add_done_callback(lambda _: stream.close())
        except StreamClosedError:
            stream.close()

    def get_host_port(self) -> tuple[str, int]:
        """The listening address as (host, port)."""
        if self.tcp_server is None:
            raise ValueError("invalid operation on non-started HafenListener")
        if self.bound_address is None:
            self.bound_address = get_tcp_server_address(self.tcp_server)
        host, port = self.bound_address[:2]
        return host, port

    @property
    def listen_address(self) -> str:
        return self.prefix + unparse_host_port(*self.get_host_port())

    @property
    def contact_address(self) -> str:
        host, port = self.get_host_port()
        host = ensure_concrete_host(host, default_host=self.default_host)
        return self.prefix + unparse_host_port(host, port)


class HafenBackend(Backend):
    """The ``hafen`` scheme: host:port addresses, resumable sessions over TCP."""

    def get_connector(self) -> Connector:
        return HafenConnector()

    def get_listener(
        self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any
    ) -> HafenListener:
        return HafenListener(loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc: str) -> str:
        return parse_host_port(loc)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        return parse_host_port(loc)

    def resolve_address(self, loc: str) -> str:
        host, port = parse_host_port(loc)
        return unparse_host_port(ensure_ip(host), port)

    def get_local_address_for(self, loc: str) -> str:
        host, _ = parse_host_port(loc)
        return unparse_host_port(get_ip(ensure_ip(host)), None)
