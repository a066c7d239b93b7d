"""The ``hafen://`` comm on real sockets, through the chaos proxy: what Dask's comm API sees.

Each test runs one event loop (``asyncio.run``) with a listener and a dialer from
``distributed.comm`` (as Dask's servers use them) and a :class:`~hafen.cluster.comm.Proxy`
between them. Timeouts are short (``hafen.comm.*`` set per test); every wait polls with a
deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import dask
import numpy as np
import pytest
from distributed.comm import connect, listen
from distributed.comm.core import CommClosedError
from distributed.protocol import to_serialize

from hafen.cluster.comm import HafenComm, Proxy, SessionClosedError, SessionRefusedError
from hafen.cluster.comm._session import Refusal
from hafen.testing import async_poll_for

FAST = {"hafen.comm.heartbeat": "100ms", "hafen.comm.link-timeout": "1s", "hafen.comm.grace": "8s"}


class Echo:
    """A listener that records what it reads and answers each message with itself."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.comms: list[HafenComm] = []
        self.errors: list[BaseException] = []

    async def handle(self, comm: Any) -> None:
        self.comms.append(comm)
        try:
            while True:
                msg = await comm.read()
                self.got.append(msg)
                await comm.write(msg)
        except CommClosedError as exc:
            self.errors.append(exc)


def run(main: Callable[[], Awaitable[None]], **config: Any) -> None:
    with dask.config.set({**FAST, **config}):
        asyncio.run(main())


async def _open(echo: Echo) -> tuple[Any, Proxy, HafenComm]:
    listener = listen("hafen://127.0.0.1:0", echo.handle)
    await listener.start()
    proxy = Proxy(listener.contact_address)
    comm = await connect(proxy.url("hafen"), timeout=5)
    assert isinstance(comm, HafenComm)
    return listener, proxy, comm


async def _sever(proxy: Proxy, seconds: float) -> None:
    await asyncio.to_thread(proxy.sever, seconds)


def test_messages_cross_severed_links_exactly_once_and_in_order():
    async def main() -> None:
        echo = Echo()
        listener, proxy, comm = await _open(echo)
        try:
            answers = []
            for i in range(300):
                await comm.write({"i": i})
                if i in (50, 150, 250):
                    await async_poll_for(lambda: comm.session.up, 10)  # one outage per sever
                    await _sever(proxy, 0.3)  # mid-stream: both directions have frames in flight
                if i % 3 == 0:
                    answers.append(await comm.read())
            while len(answers) < 300:
                answers.append(await comm.read())
            assert [m["i"] for m in answers] == list(range(300))
            assert [m["i"] for m in echo.got] == list(range(300))
            assert comm.session.resumes >= 3
            assert echo.comms[0].session.resumes == comm.session.resumes
        finally:
            await comm.close()
            listener.stop()
            proxy.close()

    run(main)


def test_a_large_message_crosses_a_blackhole_intact():
    """The link is given up during the blackhole and the message resent whole on a new one."""
    data = np.random.default_rng(0).integers(0, 2**63, size=3_000_000, dtype=np.int64)  # 24 MB
    digest = hashlib.sha256(data.tobytes()).hexdigest()

    async def main() -> None:
        echo = Echo()
        listener, proxy, comm = await _open(echo)
        try:
            await comm.write({"warm": 1})
            await comm.read()
            await asyncio.to_thread(proxy.blackhole, 2.5)
            await comm.write({"data": to_serialize(data)})
            back = await comm.read()
            assert hashlib.sha256(back["data"].tobytes()).hexdigest() == digest
            assert len(echo.got) == 2 and comm.session.resumes >= 1
            assert comm.session.duplicates == 0 and echo.comms[0].session.duplicates == 0
        finally:
            await comm.close()
            listener.stop()
            proxy.close()

    run(main)


def test_a_session_the_listener_closed_meanwhile_is_refused_on_resume():
    """A worker removed by the scheduler during a blip cannot resume into it."""

    async def main() -> None:
        echo = Echo()
        listener, proxy, comm = await _open(echo)
        try:
            await comm.write("hello")
            await comm.read()
            await _sever(proxy, 1.0)
            await async_poll_for(lambda: not echo.comms[0].session.up, 10)
            await echo.comms[0].close()  # the scheduler removes the worker
            with pytest.raises(CommClosedError) as info:
                await comm.read()
            assert isinstance(info.value, SessionRefusedError)
            assert info.value.refusal is Refusal.CLOSED
            assert comm.closed()
        finally:
            comm.abort()
            listener.stop()
            proxy.close()

    run(main)


def test_past_the_grace_period_both_sides_see_a_closed_comm():
    async def main() -> None:
        echo = Echo()
        listener, proxy, comm = await _open(echo)
        try:
            await comm.write("hello")
            await comm.read()
            await _sever(proxy, 30)
            with pytest.raises(CommClosedError, match="grace period"):
                await comm.read()
            await async_poll_for(lambda: echo.errors, 10)
            assert isinstance(echo.errors[0], SessionClosedError)
            assert "grace period" in str(echo.errors[0])
        finally:
            comm.abort()
            listener.stop()
            proxy.close()

    run(main, **{"hafen.comm.grace": "1s"})


def test_a_closed_comm_closes_its_peer_at_once():
    async def main() -> None:
        echo = Echo()
        listener, proxy, comm = await _open(echo)
        try:
            await comm.write("hello")
            await comm.read()
            await comm.close()
            await async_poll_for(lambda: echo.errors, 5)
            assert "closed by the peer" in str(echo.errors[0])
            with pytest.raises(CommClosedError):
                await comm.write("after")
        finally:
            listener.stop()
            proxy.close()

    run(main)


def test_a_new_connection_during_a_blip_to_a_known_peer_waits_for_it():
    async def main() -> None:
        echo = Echo()
        listener, proxy, comm = await _open(echo)
        try:
            await comm.write("first")
            await comm.read()
            await _sever(proxy, 1.5)
            # Dask's own retries would give up after this timeout; the peer was reached before,
            # so the comm is returned at once and connects in the background.
            second = await connect(proxy.url("hafen"), timeout=0.5)
            await second.write("second")
            assert await second.read() == "second"
            await second.close()
        finally:
            await comm.close()
            listener.stop()
            proxy.close()

    run(main)


def test_a_connection_to_an_address_never_reached_fails_as_on_tcp():
    async def main() -> None:
        echo = Echo()
        listener = listen("hafen://127.0.0.1:0", echo.handle)
        await listener.start()
        address = listener.contact_address
        listener.stop()
        with pytest.raises(OSError, match="Timed out trying to connect"):
            await connect(address.replace(address.rsplit(":", 1)[1], "1"), timeout=0.5)

    run(main)


def test_writing_past_the_buffer_while_the_peer_is_unreachable_closes_the_comm():
    async def main() -> None:
        echo = Echo()
        listener, proxy, comm = await _open(echo)
        try:
            await comm.write("hello")
            await comm.read()
            await _sever(proxy, 5)
            await async_poll_for(lambda: not comm.session.up, 10)
            chunk = np.ones(2**17, dtype=np.uint8)  # 128 KiB
            await comm.write(to_serialize(chunk))  # kept for the resume
            with pytest.raises(CommClosedError, match="unacknowledged"):
                for _ in range(20):
                    await comm.write(to_serialize(chunk))
            assert comm.closed()
        finally:
            comm.abort()
            listener.stop()
            proxy.close()

    run(main, **{"hafen.comm.buffer": "1MiB"})


def test_the_send_window_holds_a_writer_until_the_peer_acknowledges():
    async def main() -> None:
        echo = Echo()
        listener, proxy, comm = await _open(echo)
        try:
            chunk = np.arange(2**18, dtype=np.uint8)  # 256 KiB, four times the window
            for _ in range(40):
                await comm.write(to_serialize(chunk))
                assert comm.session.unacked_bytes <= 2**16 + 2**18 + 2**10
            for _ in range(40):
                assert np.array_equal(await comm.read(), chunk)
        finally:
            await comm.close()
            listener.stop()
            proxy.close()

    run(main, **{"hafen.comm.buffer": "64KiB"})


def test_tcp_and_hafen_do_not_talk_to_each_other():
    async def main() -> None:
        echo = Echo()
        listener = listen("hafen://127.0.0.1:0", echo.handle)
        await listener.start()
        tcp = listen("tcp://127.0.0.1:0", echo.handle)
        await tcp.start()
        try:
            port = listener.contact_address.rsplit(":", 1)[1]
            with pytest.raises(OSError):
                await connect(f"tcp://127.0.0.1:{port}", timeout=0.5)
            port = tcp.contact_address.rsplit(":", 1)[1]
            with pytest.raises(OSError):
                await connect(f"hafen://127.0.0.1:{port}", timeout=0.5)
            assert echo.got == []
        finally:
            listener.stop()
            tcp.stop()

    run(main)
