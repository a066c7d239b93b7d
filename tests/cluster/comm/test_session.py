"""The session layer on a fake transport: exactly-once, in-order delivery across broken links.

No sockets and no clock: :class:`FakeLink` carries records between a dialer's
:class:`~hafen.cluster.comm._session.Session` and a listener's
:class:`~hafen.cluster.comm._session.SessionTable`, and loses whatever is in flight when it breaks;
tests move time by hand.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from distributed.comm.core import CommClosedError
from hypothesis import given, settings
from hypothesis import strategies as st

from hafen.cluster.comm._session import (
    Hello,
    Refusal,
    Session,
    SessionClosedError,
    SessionRefusedError,
    SessionTable,
    new_session_id,
)
from hafen.errors import HafenError, TransportError

GRACE = 10.0


class FakeLink:
    """A dialer session and a listener table joined by links that can break.

    Records are ``("msg", seq, ack, payload)`` or ``("ack", ack)``; each direction is a queue,
    emptied when the link breaks (what was in flight is lost, as on TCP).
    """

    def __init__(self, *, buffer: int = 1000, grace: float = GRACE) -> None:
        self.now = 0.0
        self.table = SessionTable(buffer=buffer, grace=grace)
        self.a = Session(new_session_id(), dialer=True, buffer=buffer, grace=grace, down_since=0)
        self.b: Session | None = None
        self.to_a: deque[tuple[Any, ...]] = deque()
        self.to_b: deque[tuple[Any, ...]] = deque()
        self.got_a: list[Any] = []
        self.got_b: list[Any] = []
        self.connect()

    # --- links ---

    def connect(self) -> None:
        """The dialer opens a link (resuming if it was accepted before)."""
        hello = self.a.hello(self.now)
        try:
            self.b, _, resend_b = self.table.accept(hello, self.now)
        except SessionRefusedError as exc:
            self.a.close(exc.reason)
            raise
        resend_a = self.a.on_accepted(hello.epoch, self.b.received)
        self.to_a.clear()
        self.to_b.clear()
        for m in resend_a:
            self.to_b.append(("msg", m.seq, self.a.take_ack(), m.payload))
        for m in resend_b:
            self.to_a.append(("msg", m.seq, self.b.take_ack(), m.payload))

    def cut(self) -> None:
        """The link breaks: both sides notice; in-flight records are lost."""
        self.to_a.clear()
        self.to_b.clear()
        self.a.link_down(self.now)
        assert self.b is not None
        self.b.link_down(self.now)

    # --- traffic ---

    def send_a(self, payload: Any) -> None:
        m = self.a.send(payload, len(payload))
        if m is not None:
            self.to_b.append(("msg", m.seq, self.a.take_ack(), m.payload))

    def send_b(self, payload: Any) -> None:
        assert self.b is not None
        m = self.b.send(payload, len(payload))
        if m is not None:
            self.to_a.append(("msg", m.seq, self.b.take_ack(), m.payload))

    def ack_a(self) -> None:
        self.to_b.append(("ack", self.a.take_ack()))

    def ack_b(self) -> None:
        assert self.b is not None
        self.to_a.append(("ack", self.b.take_ack()))

    @staticmethod
    def _apply(session: Session, record: tuple[Any, ...], got: list[Any]) -> None:
        if record[0] == "msg":
            _, seq, ack, payload = record
            if session.on_message(seq, ack):
                got.append(payload)
        else:
            session.on_ack(record[1])

    def deliver_b(self, n: int | None = None) -> None:
        assert self.b is not None
        for _ in range(len(self.to_b) if n is None else n):
            self._apply(self.b, self.to_b.popleft(), self.got_b)

    def deliver_a(self, n: int | None = None) -> None:
        for _ in range(len(self.to_a) if n is None else n):
            self._apply(self.a, self.to_a.popleft(), self.got_a)


def test_messages_arrive_in_order_and_acknowledged_ones_leave_the_buffer():
    link = FakeLink()
    for p in ("a", "bb", "ccc"):
        link.send_a(p)
    assert link.a.unacked_bytes == 6
    link.deliver_b()
    assert link.got_b == ["a", "bb", "ccc"]
    link.ack_b()
    link.deliver_a()
    assert link.a.acked == 3 and link.a.unacked_bytes == 0 and list(link.a.unacked()) == []


def test_a_broken_link_resumes_and_each_side_resends_what_the_other_lacks():
    link = FakeLink()
    for p in ("1", "2", "3"):
        link.send_a(p)
        link.send_b(p * 2)
    link.deliver_b(2)  # "3" is lost in flight, "11".."33" too
    link.cut()
    link.send_a("4")  # written while the link is down: kept
    link.send_b("44")
    link.now += 3
    link.connect()
    link.deliver_b()
    link.deliver_a()
    assert link.got_b == ["1", "2", "3", "4"]
    assert link.got_a == ["11", "22", "33", "44"]
    assert link.a.resumes == 1 and link.b is not None and link.b.resumes == 1
    assert link.a.resent == 2  # "3" and "4"; "1" and "2" were acknowledged by the resume


def test_a_message_delivered_twice_is_dropped():
    link = FakeLink()
    link.send_a("x")
    record = link.to_b[0]
    link.deliver_b()
    link.to_b.append(record)  # the same record again
    link.deliver_b()
    assert link.got_b == ["x"]
    assert link.b is not None and link.b.duplicates == 1


def test_a_message_that_arrived_but_whose_acknowledgement_was_lost_is_not_delivered_again():
    link = FakeLink()
    link.send_a("x")
    link.send_a("y")
    link.deliver_b()  # b has both; a never hears of it
    link.cut()
    link.connect()  # the hello carries b's count: a resends nothing b has
    assert link.to_b == deque()
    link.send_a("z")
    link.deliver_b()
    assert link.got_b == ["x", "y", "z"]


def test_a_resent_message_the_peer_already_has_is_dropped_on_arrival():
    """The listener resends from the dialer's count; a duplicate from an older link is dropped."""
    link = FakeLink()
    link.send_b("x")
    stale = link.to_a[0]
    link.cut()
    link.connect()  # a had not received "x": it is resent
    link.deliver_a()
    link.to_a.append(stale)  # the copy from the old link turns up late
    link.deliver_a()
    assert link.got_a == ["x"] and link.a.duplicates == 1


def test_a_message_that_skips_a_number_closes_the_session():
    link = FakeLink()
    link.send_a("1")
    link.send_a("2")
    link.to_b.popleft()  # a link that loses a record without breaking is broken
    with pytest.raises(SessionClosedError, match="protocol violation"):
        link.deliver_b()
    assert link.b is not None and link.b.closed


def test_an_acknowledgement_of_a_message_never_sent_closes_the_session():
    link = FakeLink()
    with pytest.raises(SessionClosedError, match=r"not sent"):
        link.a.on_ack(5)


def test_a_stale_resume_attempt_is_refused_and_leaves_the_live_session_alone():
    link = FakeLink()
    link.cut()
    old = link.a.hello(link.now)  # attempt 2: delayed somewhere
    new = link.a.hello(link.now)  # attempt 3 overtakes it
    session, _, _ = link.table.accept(new, link.now)
    link.a.on_accepted(new.epoch, session.received)
    with pytest.raises(SessionRefusedError) as info:
        link.table.accept(old, link.now)
    assert info.value.refusal is Refusal.STALE
    link.send_a("still fine")
    link.deliver_b()
    assert link.got_b == ["still fine"] and not session.closed


def test_the_same_attempt_twice_is_refused_as_stale():
    link = FakeLink()
    link.cut()
    hello = link.a.hello(link.now)
    link.table.accept(hello, link.now)
    with pytest.raises(SessionRefusedError) as info:
        link.table.accept(hello, link.now)
    assert info.value.refusal is Refusal.STALE


def test_an_answer_to_an_older_attempt_is_not_taken():
    link = FakeLink()
    link.cut()
    first = link.a.hello(link.now)
    link.a.hello(link.now)
    with pytest.raises(SessionRefusedError):
        link.a.on_accepted(first.epoch, 0)


def test_a_peer_that_lost_its_state_is_refused_and_the_session_closed():
    """A resume claiming fewer messages than the peer acknowledged: not the same peer."""
    link = FakeLink()
    link.send_b("x")
    link.deliver_a()
    link.ack_a()
    link.deliver_b()
    assert link.b is not None and link.b.acked == 1
    link.cut()
    impostor = Hello(link.a.sid, epoch=link.a.epoch + 5, received=0, fresh=False)
    with pytest.raises(SessionRefusedError) as info:
        link.table.accept(impostor, link.now)
    assert info.value.refusal is Refusal.DIVERGED
    assert link.b.closed and link.a.sid not in link.table.sessions


def test_a_removed_peer_cannot_resume_into_a_listener_that_closed_its_session():
    """The scheduler removed the worker (closed its comm) while the link was down."""
    link = FakeLink()
    link.cut()
    assert link.b is not None
    link.b.close("closed by this side")
    link.table.forget(link.b, link.now)
    with pytest.raises(SessionRefusedError) as info:
        link.connect()
    assert info.value.refusal is Refusal.CLOSED
    assert link.a.closed
    with pytest.raises(CommClosedError):  # what Dask sees on the worker's side
        link.a.send("x", 1)


def test_a_forgotten_session_stays_refused_after_its_tombstone_is_gone():
    link = FakeLink()
    link.cut()
    assert link.b is not None
    link.b.close("closed")
    link.table.forget(link.b, link.now)
    link.now += 3 * GRACE
    link.table.sweep(link.now)
    assert link.table.tombstones == {}
    hello = Hello(link.a.sid, epoch=9, received=0, fresh=False)
    with pytest.raises(SessionRefusedError) as info:
        link.table.accept(hello, link.now)
    assert info.value.refusal is Refusal.UNKNOWN


def test_a_fresh_hello_for_a_session_the_listener_opened_resumes_it():
    """The dialer's first attempt was accepted but the answer lost: the retry takes it over."""
    link = FakeLink()
    table = SessionTable(buffer=1000, grace=GRACE)
    dialer = Session(new_session_id(), dialer=True, buffer=1000, grace=GRACE, down_since=0)
    first = dialer.hello(0)
    session, opened, _ = table.accept(first, 0)
    assert opened and first.fresh
    session.link_down(1)
    second = dialer.hello(1)
    assert second.fresh and second.epoch == 2
    again, opened, _ = table.accept(second, 1)
    assert again is session and not opened
    dialer.on_accepted(second.epoch, again.received)
    assert not dialer.hello(2).fresh
    del link


def test_the_listener_opens_only_fresh_sessions():
    table = SessionTable(buffer=1000, grace=GRACE)
    with pytest.raises(SessionRefusedError) as info:
        table.accept(Hello(new_session_id(), 2, 0, fresh=False), 0)
    assert info.value.refusal is Refusal.UNKNOWN
    with pytest.raises(SessionRefusedError) as info:
        table.accept(Hello(new_session_id(), 1, 3, fresh=True), 0)
    assert info.value.refusal is Refusal.MALFORMED


def test_past_the_grace_period_the_session_closes_on_both_sides():
    link = FakeLink(grace=5)
    link.send_a("x")
    link.cut()
    link.now += 4.9
    assert not link.a.expire(link.now)
    link.now += 0.2
    late = Hello(link.a.sid, link.a.epoch + 1, link.a.received, fresh=False)
    with pytest.raises(SessionRefusedError) as info:
        link.table.accept(late, link.now)  # the listener has given up
    assert info.value.refusal is Refusal.CLOSED
    with pytest.raises(SessionClosedError, match="grace period"):
        link.a.hello(link.now)  # and the dialer gives up by itself too
    assert link.b is not None and link.b.closed
    assert link.table.sessions == {}


def test_the_listener_sweeps_sessions_past_their_grace_period():
    link = FakeLink(grace=5)
    link.cut()
    assert link.table.sweep(link.now + 1) == []
    assert link.table.sweep(link.now + 6) == [link.b]
    assert link.table.sessions == {} and link.a.sid in link.table.tombstones


def test_a_link_that_comes_back_within_the_grace_period_clears_the_deadline():
    link = FakeLink(grace=5)
    link.cut()
    link.now += 4
    link.connect()
    link.now += 4
    assert link.a.deadline is None and not link.a.expire(link.now)
    link.cut()
    assert link.a.deadline == link.now + 5


def test_while_the_link_is_up_the_bound_is_a_send_window():
    link = FakeLink(buffer=10)
    link.send_a("x" * 8)
    assert link.a.has_room(2) and not link.a.has_room(3)
    link.send_a("y" * 5)  # the driver would have waited; the session itself does not refuse
    link.deliver_b()
    link.ack_b()
    link.deliver_a()
    assert link.a.has_room(10)


def test_one_message_larger_than_the_bound_goes_into_an_empty_buffer():
    link = FakeLink(buffer=10)
    link.cut()
    link.send_a("x" * 50)
    assert link.a.unacked_bytes == 50 and not link.a.closed


def test_going_over_the_bound_while_the_link_is_down_closes_the_session():
    link = FakeLink(buffer=10)
    link.send_a("x" * 6)
    link.cut()
    link.send_a("y" * 4)  # exactly at the bound: kept
    with pytest.raises(SessionClosedError, match="unacknowledged") as info:
        link.send_a("z")
    assert isinstance(info.value, TransportError | HafenError | CommClosedError)
    assert link.a.closed and link.a.unacked_bytes == 0


def test_only_the_dialer_says_hello_and_only_the_listener_accepts():
    link = FakeLink()
    assert link.b is not None
    with pytest.raises(TypeError):
        link.b.hello(0)
    with pytest.raises(TypeError):
        link.a.on_resume(Hello(link.a.sid, 9, 0, False), 0)


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[str, int]]:
    steps = st.sampled_from(["send_a", "send_b", "deliver_a", "deliver_b", "ack_a", "ack_b",
                             "dup_a", "dup_b", "cut", "connect"])  # fmt: skip
    return draw(st.lists(st.tuples(steps, st.integers(1, 3)), max_size=60))


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_any_schedule_of_breaks_and_duplicates_delivers_everything_once_in_order(schedule):
    link = FakeLink(buffer=10**9)
    sent_a: list[str] = []
    sent_b: list[str] = []
    linked = True
    for step, n in schedule:
        if step in ("send_a", "send_b"):
            for _ in range(n):
                payload = f"{step[-1]}{len(sent_a) + len(sent_b)}"
                (sent_a if step == "send_a" else sent_b).append(payload)
                getattr(link, step)(payload)
        elif step.startswith("deliver") and linked:
            queue = link.to_b if step == "deliver_b" else link.to_a
            getattr(link, step)(min(n, len(queue)))
        elif step.startswith("ack") and linked:
            getattr(link, step)()
        elif step.startswith("dup") and linked:
            queue = link.to_b if step == "dup_b" else link.to_a
            if queue:
                queue.append(queue[0])  # a record turns up twice
        elif step == "cut" and linked:
            link.cut()
            linked = False
        elif step == "connect":
            if linked:
                link.cut()
            link.connect()
            linked = True
    if not linked:
        link.connect()
    link.deliver_b()
    link.deliver_a()
    assert link.got_b == sent_a
    assert link.got_a == sent_b
    assert not link.a.closed and link.b is not None and not link.b.closed
