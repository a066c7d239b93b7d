"""The session layer of the ``hafen://`` transport: numbering, acknowledgement, resume. No I/O.

A *session* is one logical connection (one Dask ``Comm``) that outlives the TCP connections
(*links*) that carry it. Each side numbers the messages it sends (1, 2, 3, ...) and keeps every
message its peer has not acknowledged; acknowledgements are cumulative (the highest number
received in order), carried by every record either side sends. When a link breaks, the side that
dialed opens a new one and says which session it resumes (its id, chosen by the dialer), with a
new *epoch* (one per attempt) and the number of the last message it received; the listening side
answers with its own number, and each resends what the other has not received. A message that
arrives twice (numbered at or below what was received) is dropped.

The rules, each enforced here:

- A resume with an epoch not above the last one accepted is *stale* (an older attempt that
  arrived late) and is refused; the live link is not disturbed.
- A peer that claims to have received fewer messages than it already acknowledged has lost its
  state (it is not the peer this session talked to): refused, and the session is closed.
- A session that has had no link for ``grace`` seconds is closed; a closed session is forgotten
  (kept only as a tombstone, so that a late resume is refused with the reason): a worker the
  scheduler removed cannot resume into a scheduler that forgot it.
- While the link is down, messages are kept up to ``buffer`` bytes; a message that would go over
  closes the session (as a broken TCP connection would). While it is up, the bound is a send
  window: the sender waits for acknowledgements (:meth:`Session.has_room`). One message larger
  than the bound is always accepted into an empty buffer.

This module holds the rules and nothing else: no sockets, no clock (callers pass ``now``), no
event loop. ``_channel.py`` drives a session over real links; the unit tests drive it over a fake
one.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections import deque
from collections.abc import Iterator
from typing import Any

from distributed.comm.core import CommClosedError

from hafen.errors import TransportError

__all__ = [
    "Hello",
    "Message",
    "Refusal",
    "Session",
    "SessionClosedError",
    "SessionRefusedError",
    "SessionTable",
    "new_session_id",
]

#: Bytes of a session id.
SESSION_ID_BYTES = 16
#: Seconds between two sweeps of a listener's table (on accepting a link).
SWEEP_INTERVAL = 1.0


def new_session_id() -> bytes:
    """A random session id, chosen by the dialer."""
    return secrets.token_bytes(SESSION_ID_BYTES)


class SessionClosedError(TransportError, CommClosedError):
    """The session is closed; ``reason`` says why. A ``CommClosedError`` to Dask."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Refusal(enum.IntEnum):
    """Why a listener refused a link (the code travels on the wire)."""

    UNKNOWN = 1  #: no such session: never opened here, or forgotten long ago
    CLOSED = 2  #: the session was closed (by either side, or after its grace period)
    STALE = 3  #: an attempt older than the last one accepted
    DIVERGED = 4  #: the peer claims fewer messages than it acknowledged: it lost its state
    MALFORMED = 5  #: not a valid hello


class SessionRefusedError(SessionClosedError):
    """The listener refused to resume the session (``refusal`` says why)."""

    def __init__(self, refusal: Refusal, reason: str = "") -> None:
        super().__init__(reason or f"resume refused: {refusal.name.lower()}")
        self.refusal = refusal


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One numbered message; ``payload`` is opaque here (the frames of a Dask message)."""

    seq: int
    payload: Any
    nbytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    """What a dialer says first on every link: which session, which attempt, what it has.

    ``fresh`` is true until the dialer has been accepted once: only a fresh hello may open a
    session the listener does not know.
    """

    sid: bytes
    epoch: int
    received: int
    fresh: bool


class Session:
    """The state of one session on one side (see the module docstring).

    Parameters
    ----------
    sid
        The session id.
    dialer
        Whether this side dialed (and so is the one that reconnects).
    buffer
        Bytes of unacknowledged messages kept (see the module docstring).
    grace
        Seconds a session may be without a link before it is closed.
    down_since
        When the session became linkless: a new session starts without a link, and is closed
        if none is accepted within ``grace`` of this time.
    """

    def __init__(
        self, sid: bytes, *, dialer: bool, buffer: int, grace: float, down_since: float
    ) -> None:
        self.sid = sid
        self.dialer = dialer
        self.buffer = buffer
        self.grace = grace
        self.epoch = 0
        #: Number of the last message sent (given a number).
        self.sent = 0
        #: The peer has every message up to this number.
        self.acked = 0
        #: This side has every message up to this number.
        self.received = 0
        #: The last acknowledgement sent to the peer.
        self.ack_sent = 0
        self.unacked_bytes = 0
        self._unacked: deque[Message] = deque()
        self.up = False
        self.down_since: float | None = down_since
        #: Whether a link was ever accepted.
        self.established = False
        self.closed_reason: str | None = None
        #: Links accepted after the first one.
        self.resumes = 0
        #: Messages sent again after a resume.
        self.resent = 0
        #: Messages received twice and dropped.
        self.duplicates = 0
        #: Anything the driver wants to keep with the session (its channel).
        self.owner: Any = None

    def __repr__(self) -> str:
        state = "up" if self.up else f"closed: {self.closed_reason}" if self.closed else "down"
        return (
            f"<Session {self.sid.hex()[:8]} {'dialer' if self.dialer else 'listener'} {state} "
            f"epoch={self.epoch} sent={self.sent} acked={self.acked} received={self.received}>"
        )

    # --- state ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    @property
    def deadline(self) -> float | None:
        """When the session closes if no link is accepted before (None while a link is up)."""
        return None if self.down_since is None else self.down_since + self.grace

    def unacked(self) -> Iterator[Message]:
        """The messages the peer has not acknowledged, in order."""
        return iter(self._unacked)

    def close(self, reason: str) -> None:
        """Close the session (idempotent: the first reason stays)."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self.up = False
        self._unacked.clear()
        self.unacked_bytes = 0

    def check_open(self) -> None:
        """Raise :class:`SessionClosedError` if the session is closed."""
        if self.closed_reason is not None:
            raise SessionClosedError(self.closed_reason)

    def expire(self, now: float) -> bool:
        """Close the session if it has been linkless for the grace period; return whether closed."""
        deadline = self.deadline
        if not self.closed and deadline is not None and now >= deadline:
            self.close(f"no link for the grace period ({self.grace:g}s)")
        return self.closed

    def _violation(self, what: str) -> SessionClosedError:
        self.close(f"protocol violation: {what}")
        return SessionClosedError(self.closed_reason or what)

    # --- sending --------------------------------------------------------------------------------

    def has_room(self, nbytes: int) -> bool:
        """Whether a message of ``nbytes`` fits the buffer now (an empty buffer takes any)."""
        return not self._unacked or self.unacked_bytes + nbytes <= self.buffer

    def send(self, payload: Any, nbytes: int) -> Message | None:
        """Number a message and keep it until acknowledged.

        Returns the message to put on the link now, or None when there is no link (it goes out
        on the next one). Raises :class:`SessionClosedError` if the session is closed, or closes
        it if the link is down and the message would take the buffer over its bound.
        """
        self.check_open()
        if not self.up and not self.has_room(nbytes):
            self.close(
                f"more than {self.buffer} bytes unacknowledged while the peer was unreachable"
            )
            self.check_open()
        self.sent += 1
        message = Message(self.sent, payload, nbytes)
        self._unacked.append(message)
        self.unacked_bytes += nbytes
        return message if self.up else None

    def take_ack(self) -> int:
        """The acknowledgement to put on an outgoing record (the number received in order)."""
        self.ack_sent = self.received
        return self.received

    @property
    def ack_pending(self) -> bool:
        """Whether messages were received since the last acknowledgement sent."""
        return self.received > self.ack_sent

    # --- receiving ------------------------------------------------------------------------------

    def on_ack(self, ack: int) -> None:
        """The peer has every message up to ``ack``: drop them from the buffer."""
        self.check_open()
        if ack > self.sent:
            raise self._violation(f"acknowledgement {ack} of a message not sent ({self.sent})")
        if ack <= self.acked:
            return
        while self._unacked and self._unacked[0].seq <= ack:
            self.unacked_bytes -= self._unacked.popleft().nbytes
        self.acked = ack

    def on_message(self, seq: int, ack: int) -> bool:
        """A message numbered ``seq`` arrived (with the peer's ``ack``); return whether to deliver.

        A message already received is dropped (False); one that skips a number is a protocol
        violation (links deliver in order), which closes the session.
        """
        self.on_ack(ack)
        if seq <= self.received:
            self.duplicates += 1
            return False
        if seq != self.received + 1:
            raise self._violation(f"message {seq} after {self.received}")
        self.received = seq
        return True

    # --- links ----------------------------------------------------------------------------------

    def link_down(self, now: float) -> None:
        """The link broke: keep messages and wait (at most ``grace``) for another."""
        if self.up:
            self.up = False
            self.down_since = now

    def hello(self, now: float) -> Hello:
        """Dialer: what to say on a new link (a new epoch per attempt)."""
        if not self.dialer:
            raise TypeError("only the dialer says hello")
        self.check_open()
        if self.expire(now):
            self.check_open()
        self.epoch += 1
        return Hello(self.sid, self.epoch, self.received, fresh=not self.established)

    def on_accepted(self, epoch: int, peer_received: int) -> list[Message]:
        """Dialer: the listener accepted attempt ``epoch``; return the messages to resend."""
        self.check_open()
        if epoch != self.epoch:
            raise SessionRefusedError(Refusal.STALE, f"answer to attempt {epoch}, not {self.epoch}")
        return self._resume(peer_received)

    def on_resume(self, hello: Hello, now: float) -> list[Message]:
        """Listener: a dialer resumes on a new link; return the messages to resend.

        Raises :class:`SessionRefusedError` for a closed or expired session, a stale attempt
        (which leaves the session as it was) or a peer that lost its state (which closes it).
        """
        if self.dialer:
            raise TypeError("only the listener accepts a resume")
        if self.expire(now):
            raise SessionRefusedError(Refusal.CLOSED, f"session closed: {self.closed_reason}")
        if hello.epoch <= self.epoch:
            raise SessionRefusedError(
                Refusal.STALE, f"attempt {hello.epoch} after attempt {self.epoch} was accepted"
            )
        self.epoch = hello.epoch
        return self._resume(hello.received)

    def _resume(self, peer_received: int) -> list[Message]:
        if peer_received < self.acked:
            self.close(
                f"the peer claims {peer_received} messages after acknowledging {self.acked}: "
                "it lost its state"
            )
            raise SessionRefusedError(Refusal.DIVERGED, self.closed_reason or "")
        self.on_ack(peer_received)
        self.up = True
        self.down_since = None
        if self.established:
            self.resumes += 1
        self.established = True
        self.ack_sent = self.received  # the hello or the answer carried it
        resend = list(self._unacked)
        self.resent += len(resend)
        return resend


class SessionTable:
    """The listener's sessions by id, and tombstones of the closed ones.

    A tombstone keeps a closed session's reason for ``2 * grace`` (longer than a dialer keeps
    trying), so that a late resume is refused as closed rather than as unknown.
    """

    def __init__(self, *, buffer: int, grace: float) -> None:
        self.buffer = buffer
        self.grace = grace
        self.sessions: dict[bytes, Session] = {}
        self.tombstones: dict[bytes, tuple[str, float]] = {}
        self._swept = float("-inf")

    def __len__(self) -> int:
        return len(self.sessions)

    def accept(self, hello: Hello, now: float) -> tuple[Session, bool, list[Message]]:
        """Accept a link for ``hello``: ``(session, opened, messages to resend)``.

        ``opened`` is true for a session new to this table. Raises :class:`SessionRefusedError`.
        """
        if now - self._swept >= SWEEP_INTERVAL:
            self.sweep(now)
        session = self.sessions.get(hello.sid)
        if session is None:
            tomb = self.tombstones.get(hello.sid)
            if tomb is not None:
                raise SessionRefusedError(Refusal.CLOSED, f"session closed: {tomb[0]}")
            if not hello.fresh:
                raise SessionRefusedError(Refusal.UNKNOWN, "no such session (forgotten?)")
            if hello.received != 0 or hello.epoch < 1:
                raise SessionRefusedError(Refusal.MALFORMED, "a fresh hello that received")
            session = Session(
                hello.sid, dialer=False, buffer=self.buffer, grace=self.grace, down_since=now
            )
            session.epoch = hello.epoch
            session._resume(0)
            self.sessions[hello.sid] = session
            return session, True, []
        try:
            return session, False, session.on_resume(hello, now)
        finally:
            if session.closed:
                self.forget(session, now)

    def forget(self, session: Session, now: float) -> None:
        """Drop a closed session, keeping its tombstone."""
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
            self.tombstones[session.sid] = (session.closed_reason or "closed", now)

    def sweep(self, now: float) -> list[Session]:
        """Close sessions linkless for their grace period, drop old tombstones; return the
        sessions closed."""
        self._swept = now
        expired = [s for s in self.sessions.values() if s.closed or s.expire(now)]
        for session in expired:
            self.forget(session, now)
        horizon = now - 2 * self.grace
        for sid in [sid for sid, (_, at) in self.tombstones.items() if at < horizon]:
            del self.tombstones[sid]
        return expired
