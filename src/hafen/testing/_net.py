"""Loopback ports for the services tests start, and waiting for one to listen."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from hafen.testing._poll import poll_for

__all__ = ["cache_dir", "free_port", "wait_listening"]

#: The checkout hafen runs from, when it runs from one (``src/hafen/testing`` -> the root).
_CHECKOUT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cache_dir() -> Path:
    """Where tools the tests install go: ``.cache`` in the checkout (as ``scripts/test-deps.sh``
    installs them), else ``~/.cache/hafen`` for an installed hafen."""
    if (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT / ".cache"
    return Path.home() / ".cache" / "hafen"


def wait_listening(
    port: int,
    process: subprocess.Popen[bytes],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``.

    Raises
    ------
    RuntimeError
        If ``process`` exits first, or nothing listens within ``timeout`` seconds; the message
        names ``what`` and ends with ``details()`` (a log's tail, say).
    """

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with code {process.returncode} on port {port}: {details()}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        return False

    try:
        poll_for(listening, timeout, period=0.05, what=f"{what} listens on port {port}")
    except AssertionError:
        raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s") from None
