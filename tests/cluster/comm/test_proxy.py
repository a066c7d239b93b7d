"""The chaos proxy on plain sockets: forwarding, sever (reset, refuse, heal), blackhole (hold,
then deliver), and loopback only."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from hafen.cluster.comm import Proxy
from hafen.errors import ConfigError
from hafen.testing import poll_for


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP echo server on loopback; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy resets it when severed
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def _roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_the_proxy_forwards_both_ways(echo):
    with (
        Proxy(f"127.0.0.1:{echo}") as proxy,
        socket.create_connection(("127.0.0.1", proxy.port)) as s,
    ):
        assert _roundtrip(s, b"x" * 300_000) == b"x" * 300_000
        assert proxy.url("tcp") == f"tcp://127.0.0.1:{proxy.port}"
        assert proxy.stats["accepted"] == 1 and proxy.stats["bytes"] == 600_000


def test_sever_resets_connections_refuses_new_ones_then_heals(echo):
    with Proxy(f"127.0.0.1:{echo}") as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port))
        assert _roundtrip(s, b"hello") == b"hello"
        proxy.sever(30)
        with pytest.raises(ConnectionResetError):
            _roundtrip(s, b"again")
        s.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        proxy.heal()
        with socket.create_connection(("127.0.0.1", proxy.port)) as s2:
            assert _roundtrip(s2, b"back") == b"back"
        assert proxy.stats["severs"] == 1 and proxy.stats["reset"] == 1


def test_a_sever_heals_by_itself(echo):
    with Proxy(f"127.0.0.1:{echo}") as proxy:
        proxy.sever(0.2)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
            except ConnectionRefusedError:
                return False
            return True

        poll_for(listening, 10, what="the proxy listens again")


def test_blackhole_holds_traffic_and_delivers_it_when_it_ends(echo):
    with (
        Proxy(f"127.0.0.1:{echo}") as proxy,
        socket.create_connection(("127.0.0.1", proxy.port)) as s,
    ):
        assert _roundtrip(s, b"before") == b"before"
        proxy.blackhole(30)
        s.sendall(b"held")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(10)  # nothing comes back, the connection stays open
        late = socket.create_connection(("127.0.0.1", proxy.port))  # accepted, not forwarded
        late.sendall(b"late")
        proxy.heal()
        s.settimeout(10)
        assert s.recv(10) == b"held"
        late.settimeout(10)
        assert late.recv(10) == b"late"
        late.close()


def test_a_blackhole_can_start_after_so_many_bytes(echo):
    with (
        Proxy(f"127.0.0.1:{echo}") as proxy,
        socket.create_connection(("127.0.0.1", proxy.port)) as s,
    ):
        proxy.blackhole(30, after_bytes=1000)
        assert _roundtrip(s, b"a" * 100) == b"a" * 100
        assert proxy.stats["blackholes"] == 0
        s.sendall(b"b" * 2000)
        poll_for(lambda: proxy.blackholed, 10, what="the blackhole started")
        proxy.heal()
        got = b""
        while len(got) < 2000:
            got += s.recv(65536)
        assert got == b"b" * 2000


@pytest.mark.parametrize(
    "target", ["10.1.2.3:80", "example.com:80", "127.0.0.1:0", "hafen://8.8.8.8:1"]
)
def test_the_proxy_forwards_only_to_loopback(target):
    with pytest.raises(ConfigError, match="loopback"):
        Proxy(target)


def test_fault_lengths_must_be_sane(echo):
    with Proxy(f"127.0.0.1:{echo}") as proxy:
        for bad in (-1, float("nan")):
            with pytest.raises(ConfigError):
                proxy.sever(bad)
