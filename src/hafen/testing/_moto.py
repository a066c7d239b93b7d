"""moto's S3 server: started in its own process on a free loopback port, stopped.

:meth:`MotoS3.start` starts the server (``python -m hafen.testing moto PORT``) and
:meth:`MotoS3.bucket` creates a fresh bucket. Clients find it as production clients find S3:
through the AWS SDK's own variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``), see :attr:`MotoS3.environment`.

moto checks ``If-None-Match: *`` and then stores the object in two steps, and its server is
threaded: two racing conditional PUTs could both succeed, which S3 never allows. This server
therefore handles one request at a time (a lock around moto's WSGI application), so the tests
exercise S3's semantics, not a race inside the emulator.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from hafen.testing._net import free_port, wait_listening

__all__ = ["ACCESS_KEY", "REGION", "SECRET_KEY", "MotoS3", "running_moto_s3", "serve"]

# moto accepts any credentials; these are placeholders, not secrets
ACCESS_KEY = "hafen-tests"
SECRET_KEY = "hafen-tests-secret"
REGION = "us-east-1"


class MotoS3:
    """One moto S3 server process: a port and (while running) a process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def environment(self) -> dict[str, str]:
        """The AWS SDK's variables that point a client (and its child processes) here."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
        }

    @property
    def storage_options(self) -> dict[str, Any]:
        """The same, as s3fs arguments (``storage_options``) instead of the environment."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION},
        }

    def start(self, timeout: float = 60) -> None:
        """Start the server process; wait until it listens."""
        assert self.process is None, "moto is already running"
        process = subprocess.Popen(
            [sys.executable, "-m", "hafen.testing", "moto", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.process = process
        try:
            wait_listening(self.port, process, timeout=timeout, what="moto's S3 server")
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def bucket(self) -> str:
        """Create a fresh bucket and return its name."""
        import boto3

        name = f"hafen-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        client.create_bucket(Bucket=name)
        client.close()
        return name


@contextlib.contextmanager
def running_moto_s3() -> Iterator[MotoS3]:
    """A running moto S3 server, stopped at the end."""
    server = MotoS3()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def serve(port: int) -> None:
    """Run moto's S3 server on ``port``, one request at a time."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    os.environ.setdefault("MOTO_PORT", str(port))
    run_simple("127.0.0.1", port, serialised, threaded=True, request_handler=MotoRequestHandler)
