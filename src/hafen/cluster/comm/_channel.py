"""A session driven over real links: the I/O half of the ``hafen://`` transport.

A :class:`Channel` runs one :class:`~hafen.cluster.comm._session.Session` on the event loop over
a succession of links (tornado ``IOStream`` s, as distributed's TCP comm uses): it reads records
into an inbox (acknowledging them as soon as they are read), writes numbered messages, sends a
heartbeat acknowledgement every ``heartbeat`` seconds, and gives a link up when nothing came in
for ``link-timeout`` seconds or when it breaks. Then the dialing side redials with backoff until
the grace period runs out; the listening side waits for the dialer. Readers and writers of the
Dask ``Comm`` see none of this; they see the session close (a ``CommClosedError``) only when it
cannot go on: the grace period ran out, the buffer filled while the peer was unreachable, the
peer refused to resume, or either side closed it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from distributed.comm.core import CommClosedError
from distributed.protocol.utils import host_array, unpack_frames
from tornado.iostream import IOStream, StreamClosedError

from hafen.cluster._config import option
from hafen.cluster.comm._session import Hello, Message, Session, SessionClosedError
from hafen.cluster.comm._wire import ACK, CLOSE, DATA, RECORD, Encoded, pack_record

__all__ = ["Channel", "CommOptions", "Dial", "monotonic"]

logger = logging.getLogger("hafen.cluster.comm")

#: First and largest pause between two attempts to redial (seconds; jittered).
BACKOFF_MIN = 0.05
BACKOFF_MAX = 0.5
#: Large frames are read in pieces of this size, so a slow transfer still counts as traffic.
READ_PIECE = 2**24

#: Opens a link for a hello: ``(stream, the listener's count of received messages)``.
Dial = Callable[[Hello], Awaitable[tuple[IOStream, int]]]


def monotonic() -> float:
    return asyncio.get_running_loop().time()


@dataclasses.dataclass(frozen=True)
class CommOptions:
    """The ``hafen.comm.*`` dask config keys, read and checked once per connection."""

    grace: float
    buffer: int
    heartbeat: float
    link_timeout: float

    @classmethod
    def from_config(cls) -> CommOptions:
        return cls(
            grace=option("hafen.comm.grace"),
            buffer=option("hafen.comm.buffer"),
            heartbeat=option("hafen.comm.heartbeat"),
            link_timeout=option("hafen.comm.link-timeout"),
        )


class Channel:
    """One session over successive links (see the module docstring).

    Parameters
    ----------
    session
        The session (its ``owner`` is set to this channel).
    options
        Timeouts and bounds.
    dial
        How the dialing side opens a new link; None on the listening side.
    on_alive
        Called while a link is up (at each heartbeat) and when it breaks: the dialer's record
        of reachable peers.
    on_closed
        Called once the session is closed (the listener forgets it).
    """

    def __init__(
        self,
        session: Session,
        options: CommOptions,
        *,
        dial: Dial | None = None,
        on_alive: Callable[[], None] | None = None,
        on_closed: Callable[[Channel], None] | None = None,
    ) -> None:
        self.session = session
        session.owner = self
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.stream: IOStream | None = None
        self._dial = dial
        self._on_alive = on_alive
        self._on_closed = on_closed
        self._inbox: deque[list[Any]] = deque()
        self._reader: asyncio.Future[None] | None = None
        self._writers: deque[asyncio.Future[None]] = deque()
        self._error: SessionClosedError | None = None
        self._local_closed = False
        self._ack_scheduled = False
        self._last_rx = self._last_tick = self.loop.time()
        self._tick_handle: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._redial_task: asyncio.Task[None] | None = None
        self._read_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Channel {self.session!r}>"

    @property
    def closed(self) -> bool:
        return self._local_closed or self.session.closed

    # --- links ----------------------------------------------------------------------------------

    def attach(self, stream: IOStream, resend: list[Message]) -> None:
        """Carry the session on ``stream`` from now on, resending what the peer lacks."""
        if self.closed:
            stream.close()
            return
        old, self.stream = self.stream, stream
        if old is not None:
            old.close()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._last_rx = self._last_tick = self.loop.time()
        self._read_task = asyncio.ensure_future(self._read_loop(stream))
        for message in resend:
            self._transmit(message)
        self._wake_writers()
        if self._tick_handle is None:
            self._tick_handle = self.loop.call_later(self.options.heartbeat, self._tick)
        if self._on_alive is not None:
            self._on_alive()
        if self.session.resumes:
            logger.info("hafen:// session %s resumed (%d resent)", self._name, len(resend))

    @property
    def _name(self) -> str:
        return self.session.sid.hex()[:8]

    def start_redial(self) -> None:
        """Dialer without a link: keep dialing until accepted or past the grace period."""
        if self._dial is None or self.closed:
            return
        if self._redial_task is None or self._redial_task.done():
            self._redial_task = asyncio.ensure_future(self._redial())
        self._schedule_expiry()

    def _link_lost(self, stream: IOStream, why: str) -> None:
        stream.close()
        if stream is not self.stream:
            return  # an old link, already replaced
        self.stream = None
        if self.closed:
            return
        self.session.link_down(self.loop.time())
        logger.info("hafen:// session %s lost its link (%s); waiting to resume", self._name, why)
        if self._on_alive is not None:
            self._on_alive()
        self._wake_writers()
        if self._dial is not None:
            self.start_redial()
        else:
            self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        deadline = self.session.deadline
        if deadline is None:
            return
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = self.loop.call_at(deadline, self._check_expiry)

    def _check_expiry(self) -> None:
        self._expiry = None
        if self.session.expire(self.loop.time()):
            self._fail(SessionClosedError(self.session.closed_reason or "expired"))
        else:
            self._schedule_expiry()

    async def _redial(self) -> None:
        assert self._dial is not None
        backoff = BACKOFF_MIN
        while not self.closed:
            now = self.loop.time()
            try:
                hello = self.session.hello(now)
            except SessionClosedError as exc:
                self._fail(exc)
                return
            deadline = self.session.deadline or now
            try:
                stream, received = await asyncio.wait_for(
                    self._dial(hello), max(min(self.options.link_timeout, deadline - now), 0.001)
                )
            except SessionClosedError as exc:  # refused: the listener forgot the session
                self.session.close(exc.reason)
                self._fail(exc)
                return
            except (TimeoutError, OSError, StreamClosedError) as exc:
                logger.debug("hafen:// session %s: redial failed: %r", self._name, exc)
                pause = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, BACKOFF_MAX)
                await asyncio.sleep(max(min(pause, deadline - self.loop.time()), 0))
                continue
            if self.closed:
                stream.close()
                return
            try:
                resend = self.session.on_accepted(hello.epoch, received)
            except SessionClosedError as exc:
                stream.close()
                self._fail(exc)
                return
            self._redial_task = None
            self.attach(stream, resend)
            return

    # --- reading --------------------------------------------------------------------------------

    async def _read_exactly(self, stream: IOStream, n: int) -> memoryview:
        buf = host_array(n)
        for i in range(0, n, READ_PIECE):
            await stream.read_into(buf[i : i + READ_PIECE])  # type: ignore[arg-type]
            self._last_rx = self.loop.time()
        return buf

    async def _read_loop(self, stream: IOStream) -> None:
        session = self.session
        try:
            while True:
                kind, seq, ack, size = RECORD.unpack(await stream.read_bytes(RECORD.size))
                self._last_rx = self.loop.time()
                if stream is not self.stream:
                    return
                if kind == DATA:
                    frames, missing = unpack_frames(
                        await self._read_exactly(stream, size), partial=True
                    )
                    for n in missing:
                        frames.append(await self._read_exactly(stream, n))
                    if stream is not self.stream or self.closed:
                        return
                    if session.on_message(seq, ack):
                        self._inbox.append(frames)
                        self._wake_reader()
                    if not self._ack_scheduled:
                        self._ack_scheduled = True
                        self.loop.call_soon(self._flush_ack)
                elif kind == ACK:
                    session.on_ack(ack)
                elif kind == CLOSE:
                    session.on_ack(ack)
                    session.close("closed by the peer")
                    self._fail(SessionClosedError("closed by the peer"))
                    return
                else:
                    session.close(f"protocol violation: record kind {kind}")
                    self._fail(SessionClosedError(session.closed_reason or "bad record"))
                    return
                self._wake_writers()
        except SessionClosedError as exc:  # a protocol violation closed the session
            self._fail(exc)
        except (StreamClosedError, OSError, struct.error) as exc:
            self._link_lost(stream, repr(getattr(exc, "real_error", None) or exc))
        except Exception as exc:  # garbled framing: this link is unusable, the session is not
            logger.exception("hafen:// session %s: bad data on its link", self._name)
            self._link_lost(stream, repr(exc))

    def _wake_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.set_result(None)

    async def receive(self) -> list[Any]:
        """The frames of the next message; raises ``CommClosedError`` once closed."""
        while True:
            if self._local_closed:
                raise CommClosedError("hafen:// comm closed")
            if self._inbox:
                return self._inbox.popleft()
            if self._error is not None:
                raise self._error
            self._reader = self.loop.create_future()
            await self._reader

    # --- writing --------------------------------------------------------------------------------

    def check_writable(self) -> None:
        if self._local_closed:
            raise CommClosedError("hafen:// comm closed")
        if self._error is not None:
            raise self._error

    async def send(self, payload: Encoded) -> None:
        """Number and send a message; waits while the send window is full."""
        session = self.session
        while True:
            self.check_writable()
            if session.up and not session.has_room(payload.nbytes):
                waiter = self.loop.create_future()
                self._writers.append(waiter)
                await waiter
                continue
            try:
                message = session.send(payload, payload.nbytes)
            except SessionClosedError as exc:
                self._fail(exc)
                raise
            if message is not None:
                self._transmit(message)
            return

    def _wake_writers(self) -> None:
        while self._writers:
            waiter = self._writers.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _transmit(self, message: Message) -> None:
        stream = self.stream
        if stream is None:
            return
        payload: Encoded = message.payload
        header = pack_record(DATA, message.seq, self.session.take_ack(), payload.nosplit)
        try:
            stream.write(header + payload.pieces[0])
            for piece in payload.pieces[1:]:
                stream.write(piece)
        except StreamClosedError as exc:
            self._link_lost(stream, repr(exc))

    def _write_record(self, kind: int) -> None:
        stream = self.stream
        if stream is None or not self.session.up:
            return
        try:
            stream.write(pack_record(kind, 0, self.session.take_ack()))
        except StreamClosedError as exc:
            self._link_lost(stream, repr(exc))

    def _flush_ack(self) -> None:
        self._ack_scheduled = False
        if self.session.ack_pending and not self.closed:
            self._write_record(ACK)

    def _tick(self) -> None:
        """Heartbeat: acknowledge, and give up a link that stayed silent too long."""
        self._tick_handle = None
        if self.closed:
            return
        now = self.loop.time()
        late = now - self._last_tick > 2 * self.options.heartbeat
        self._last_tick = now
        stream = self.stream
        if stream is not None:
            if late:  # the event loop was blocked: what arrived meanwhile is still unread
                self._last_rx = max(self._last_rx, now - self.options.heartbeat)
            silent = now - self._last_rx
            if silent > self.options.link_timeout:
                self._link_lost(stream, f"nothing received for {silent:.1f}s")
            else:
                self._write_record(ACK)
                if self._on_alive is not None:
                    self._on_alive()
        self._tick_handle = self.loop.call_later(self.options.heartbeat, self._tick)

    # --- closing --------------------------------------------------------------------------------

    def _fail(self, exc: SessionClosedError) -> None:
        """The session is over: wake everyone, stop timers, drop the link."""
        if self._error is None:
            self._error = exc
            logger.info("hafen:// session %s closed: %s", self._name, exc.reason)
        self.session.close(exc.reason)
        self._teardown()

    def _teardown(self) -> None:
        for handle in (self._tick_handle, self._expiry):
            if handle is not None:
                handle.cancel()
        self._tick_handle = self._expiry = None
        task = self._redial_task
        if task is not None and not task.done() and task is not _current_task():
            task.cancel()
        self._wake_reader()
        self._wake_writers()
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()
        on_closed, self._on_closed = self._on_closed, None
        if on_closed is not None:
            on_closed(self)

    async def close(self) -> None:
        """Close gracefully: what was written goes out, then the peer is told."""
        if self._local_closed:
            return
        self._local_closed = True
        stream = self.stream
        if stream is not None and self.session.up and not self.session.closed:
            try:
                stream.write(pack_record(CLOSE, 0, self.session.take_ack()))
                await asyncio.wait_for(stream.write(b""), self.options.link_timeout)
            except (TimeoutError, StreamClosedError, OSError):
                pass
        self._fail(SessionClosedError("closed by this side"))

    def abandon(self) -> None:
        """:meth:`abort` from any thread (a comm garbage-collected without being closed)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.abort()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.abort)

    def abort(self) -> None:
        """Close at once; the peer is told if the link can take it without waiting."""
        if self._local_closed:
            return
        self._local_closed = True
        stream, self.stream = self.stream, None
        if stream is not None and self.session.up and not self.session.closed:
            try:
                done = stream.write(pack_record(CLOSE, 0, self.session.take_ack()))
                close = stream.close
                done.add_done_callback(lambda _: close())
                self.loop.call_later(self.options.heartbeat, close)
                stream = None
            except (StreamClosedError, OSError, RuntimeError):
                pass
        if stream is not None:
            stream.close()
        self._fail(SessionClosedError("aborted by this side"))


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
