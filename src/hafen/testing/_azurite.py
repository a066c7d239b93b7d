"""Azurite, Microsoft's Azure Storage emulator: installed from npm, started, stopped.

:meth:`Azurite.start` installs the pinned Azurite into ``.cache/azurite`` (see :func:`cache_dir`)
when it is missing, then starts its blob service on a free loopback port with its data in a
given folder. It never skips: if Azurite cannot be installed or started, it raises with the
reason. :meth:`Azurite.stop` and :meth:`Azurite.start` restart it on the same port and location,
for outage tests. ``python -m hafen.testing azurite`` runs one until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hafen.testing._net import cache_dir, free_port, wait_listening
from hafen.testing._poll import poll_for

__all__ = [
    "ACCOUNT_KEY",
    "ACCOUNT_NAME",
    "AZURITE_VERSION",
    "CONTAINER",
    "Azurite",
    "install_azurite",
    "running_azurite",
]

# 3.35.0 is the newest release whose declared engines include the Node.js 20 of this machine
# kind (3.36 asks for Node >= 21, 3.37 for >= 22); scripts/test-deps.sh pins the same version.
AZURITE_VERSION = "3.35.0"

# Azurite's well-known development account: public constants, documented by Microsoft.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
CONTAINER = "hafen-tests"
_CLOSED = "Azurite Blob service successfully closed"


def _prefix() -> Path:
    return cache_dir() / "azurite"


def _main_js() -> Path:
    return _prefix() / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"


def installed_version() -> str | None:
    """The version of Azurite in the cache, or None."""
    try:
        package = _prefix() / "node_modules" / "azurite" / "package.json"
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def install_azurite() -> Path:
    """Install the pinned Azurite unless it is there; return its blob service's entry point."""
    main = _main_js()
    if main.exists() and installed_version() == AZURITE_VERSION:
        return main
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed; Azurite (for the Azure tests) needs Node.js")
    prefix = _prefix()
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
         f"azurite@{AZURITE_VERSION}"],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    if done.returncode != 0 or installed_version() != AZURITE_VERSION:
        raise RuntimeError(f"npm install azurite@{AZURITE_VERSION} failed:\n{done.stderr[-2000:]}")
    return main


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
        """Start the blob service (installing Azurite first if needed); wait until it listens."""
        assert self.process is None, "Azurite is already running"
        main = install_azurite()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed; Azurite needs Node.js")
        data = self.location / "data"
        data.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                [node, str(main), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                 "--location", str(data), "--skipApiVersionCheck", "--loose", "--silent"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.process = process
        try:
            wait_listening(
                self.port,
                process,
                timeout=timeout,
                what="Azurite",
                details=lambda: self._log_text()[-2000:],
            )
        except RuntimeError:
            if process.poll() is None:
                self.stop()
            self.process = None
            raise

    def stop(self) -> None:
        """Stop the process gracefully (SIGINT: Azurite saves its metadata); its data stays.

        Azurite says "successfully closed" but its process may linger; it is killed then.
        """
        process, self.process = self.process, None
        if process is None:
            return
        closed = self._log_text().count(_CLOSED)
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(AssertionError):
            poll_for(
                lambda: process.poll() is not None or self._log_text().count(_CLOSED) > closed,
                20,
                period=0.05,
                what="Azurite closed",
            )
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


@contextlib.contextmanager
def running_azurite(location: Path | None = None) -> Iterator[Azurite]:
    """A running Azurite with the container ``hafen-tests``, its data in ``location`` (default:
    a temporary folder, removed afterwards); stopped at the end."""
    own = location is None
    where = Path(tempfile.mkdtemp(prefix="hafen-azurite-")) if location is None else location
    server = Azurite(where)
    try:
        server.start()
        server.create_container()
        yield server
    finally:
        server.stop()
        if own:
            shutil.rmtree(where, ignore_errors=True)
