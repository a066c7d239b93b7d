"""A throwaway PostgreSQL server for tests and benchmarks.

:class:`PostgresServer` starts a real server from the system's binaries
(``/usr/lib/postgresql/*/bin``, installed by ``scripts/test-deps.sh``) in a temporary directory,
on a free loopback port, as an unprivileged user (``hafen-pg``, created when missing and the
caller runs as root), with password authentication over TCP. It never skips: if the server cannot
start, :meth:`PostgresServer.start` raises with the server's log.

    with running_postgres() as server:
        url = server.url(server.create_database())
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from hafen.testing._net import free_port
from hafen.testing._poll import poll_for

__all__ = ["PG_PASSWORD", "PG_SUPERUSER", "PG_USER", "PostgresServer", "running_postgres"]

PG_USER = "hafen-pg"
PG_SUPERUSER = "postgres"
PG_PASSWORD = "s3cret-Pw-hafen"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for candidate in reversed(found):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    raise RuntimeError(
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; "
        "install them with `apt-get install postgresql` (scripts/test-deps.sh does)"
    )


class PostgresServer:
    """A PostgreSQL server in a temporary directory; ``start()``, ``url(db)``, ``stop()``."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="hafen-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "server.log"
        self.password = PG_PASSWORD
        self._as_user: list[str] = []
        self.started = False

    # -- running commands as the unprivileged user -------------------------------------------

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return  # already unprivileged: run as ourselves
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            made = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 PG_USER],
                capture_output=True, text=True,
            )  # fmt: skip
            if made.returncode not in (0, 9):  # 9: created meanwhile by another session
                raise RuntimeError(f"cannot create the user {PG_USER}: {made.stderr}") from None
        entry = pwd.getpwnam(PG_USER)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._as_user = ["runuser", "-u", PG_USER, "--"]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._as_user, *args], cwd=self.root, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                f"\n{self._log_text()}"
            )
        return result

    def _log_text(self) -> str:
        with contextlib.suppress(OSError):
            return "server log:\n" + self.log.read_text()[-4000:]
        return ""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        self.root.chmod(0o700)
        self._prepare_user()
        pwfile = self.root / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self._as_user:
            entry = pwd.getpwnam(PG_USER)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_SUPERUSER,
            "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        for attempt in range(3):  # the free port may be taken before the server binds it
            try:
                self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                    "-o", self._options(), "-w", "-t", "60", "start",
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2 or "already in use" not in self._log_text():
                    raise
                self.port = free_port()
        self.started = True
        self._wait_ready()
        return self

    def _options(self) -> str:
        return (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=60 -c shared_buffers=64MB "
            "-c log_min_messages=warning"
        )

    def _wait_ready(self, timeout: float = 60) -> None:
        import psycopg

        errors: list[Exception] = []

        def accepts() -> bool:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=5):
                    return True
            except psycopg.OperationalError as exc:
                errors[:] = [exc]
                return False

        try:
            poll_for(accepts, timeout, period=0.2, what="PostgreSQL accepts connections")
        except AssertionError:
            raise RuntimeError(f"PostgreSQL did not accept connections: {errors[-1]}") from None

    def stop(self) -> None:
        if self.started or (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop")  # fmt: skip
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------------

    def url(self, database: str = "postgres", *, password: str = PG_PASSWORD) -> str:
        return f"postgresql://{PG_SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str | None = None) -> str:
        name = name or f"db_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, stopped and removed at the end."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
