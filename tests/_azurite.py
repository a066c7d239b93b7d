"""Azurite, Microsoft's Azure Storage emulator, for tests: installed from npm, started, stopped.

The session fixture :func:`azurite` (registered in ``tests/conftest.py``) installs
Azurite into ``.cache/azurite`` when it is missing, starts its blob service on a free loopback
port with its data in a temporary folder, creates a container and stops the process at the end
of the session. It never skips: if Azurite cannot be installed or started, the tests that need
it fail with the reason. :meth:`Azurite.stop` and :meth:`Azurite.start` restart it on the same
port and location, for outage tests.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# 3.35.0 is the newest release whose declared engines include the Node.js 20 of this machine
# kind (3.36 asks for Node >= 21, 3.37 for >= 22); scripts/test-deps.sh pins the same version.
AZURITE_VERSION = "3.35.0"
REPO = Path(__file__).resolve().parents[1]
PREFIX = REPO / ".cache" / "azurite"
MAIN = PREFIX / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"

# Azurite's well-known development account: public constants, documented by Microsoft.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
CONTAINER = "hafen-tests"
_CLOSED = "Azurite Blob service successfully closed"


def install() -> Path:
    """Install the pinned Azurite into ``.cache/azurite`` unless it is there; return its entry."""
    if MAIN.exists() and installed_version() == AZURITE_VERSION:
        return MAIN
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed; Azurite (for the Azure tests) needs Node.js")
    PREFIX.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(PREFIX),
         f"azurite@{AZURITE_VERSION}"],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    if done.returncode != 0 or installed_version() != AZURITE_VERSION:
        raise RuntimeError(f"npm install azurite@{AZURITE_VERSION} failed:\n{done.stderr[-2000:]}")
    return MAIN


def installed_version() -> str | None:
    try:
        return json.loads((PREFIX / "node_modules" / "azurite" / "package.json").read_text())[
            "version"
        ]
    except (OSError, ValueError, KeyError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Azurite:
    """One Azurite blob service: a port, a data folder and (while running) a process."""

    def __init__(self, location: Path, port: int | None = None) -> None:
        self.location = location
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = location / "azurite.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};"
            f"AccountKey={ACCOUNT_KEY};BlobEndpoint={self.endpoint};"
        )

    @property
    def storage_options(self) -> dict[str, str]:
        return {"connection_string": self.connection_string}

    def url(self, path: str, container: str = CONTAINER) -> str:
        return f"az://{container}/{path}"

    def start(self, timeout: float = 60) -> None:
        assert self.process is None, "Azurite is already running"
        main = install()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed; Azurite needs Node.js")
        data = self.location / "data"
        data.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [node, str(main), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                 "--location", str(data), "--skipApiVersionCheck", "--loose", "--silent"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(
                    f"Azurite exited with code {code} on port {self.port}: "
                    f"{self.log.read_text(errors='replace')[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Azurite did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the process gracefully (SIGINT: Azurite saves its metadata); its data stays.

        Azurite says "successfully closed" but its process may linger; it is killed then.
        """
        process, self.process = self.process, None
        if process is None:
            return
        closed = self._log_text().count(_CLOSED)
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            if self._log_text().count(_CLOSED) > closed:
                break
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        process.wait(10)

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crash or a network cut would."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(10)

    def create_container(self, name: str = CONTAINER) -> None:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient.from_connection_string(self.connection_string)
        with client, contextlib.suppress(ResourceExistsError):
            client.create_container(name)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A running Azurite blob service with the container ``hafen-tests``; fails if it cannot."""
    location = Path(tempfile.mkdtemp(prefix="hafen-azurite-"))
    server = Azurite(location)
    try:
        server.start()
        server.create_container()
        yield server
    finally:
        server.stop()
        shutil.rmtree(location, ignore_errors=True)


__all__ = ["ACCOUNT_KEY", "ACCOUNT_NAME", "CONTAINER", "Azurite", "azurite", "install"]

if __name__ == "__main__":  # python tests/_azurite.py: one Azurite until Ctrl-C
    server = Azurite(Path(tempfile.mkdtemp(prefix="hafen-azurite-")))
    server.start()
    server.create_container()
    print(f"export AZURE_STORAGE_CONNECTION_STRING='{server.connection_string}'", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        shutil.rmtree(server.location, ignore_errors=True)
