"""The concurrency checker's harness: run the workload with faults, snapshot, check, report.

:func:`run_checker` creates a dataset, starts ``hafen serve`` on it, a vacuum loop (which also
archives the log), reader processes and writer processes, SIGKILLs and restarts writers at random
for ``seconds``, stops everything, snapshots the dataset, then deletes and recreates it to see the
readers and the server follow, and finally checks the journal (:func:`_checker_model.check`).

``make soak`` runs it from the command line::

    python tests/datasets/_checker_run.py --seconds 600 --backend local   # or azure, or both
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _checker_workload
import pyarrow.parquet as pq
from _checker_journal import PARTITIONS, JournalWriter, identify_entry, load_journal
from _checker_model import check
from _checker_report import Report, Snapshot
from _checker_workload import ENV_PREFIXES, LOG_DIR, table_of

import hafen
from hafen.datasets._dataset import storage_for
from hafen.datasets._storage import Storage
from hafen.testing import Azurite, free_port, poll_for

DEFAULT_SECONDS = 25.0
# How hard the workload pushes: Azurite is one Node process, on a machine whose 2 cores are
# shared, where a commit takes seconds, not milliseconds. The grace period must outlast most
# commits, or vacuum removes the files of commits in flight (reported as a note: DESIGN.md
# promises safety only within the grace period). The server re-opens a remote dataset with
# several round trips to Azurite, so it is given a wider margin to show each new version there
# (the check that it reaches the newest one at all is the same).
PACE: dict[str, dict[str, Any]] = {
    "local": {
        "grace": "1.5s",
        "kill_every": (1.0, 3.0),
        "archive_every": 0.02,
        "reader_pause": 0.15,
        "poll_every": 0.1,
        "server_margin": 1.0,
    },
    "remote": {
        "grace": "4s",
        "kill_every": (3.0, 6.0),
        "archive_every": 0.1,
        "reader_pause": 0.6,
        "poll_every": 0.25,
        "server_margin": 3.0,
    },
}
# imported once by the fork server, so that a restarted writer is at work in milliseconds
# (modules that are not installed are skipped)
PRELOAD = ["_checker_workload", "adlfs", "azure.storage.blob"]
SERVE = "import sys; from hafen.cli import main; sys.argv[0] = 'hafen'; main()"


def checker_seconds() -> float:
    return float(os.environ.get("HAFEN_CHECKER_SECONDS", DEFAULT_SECONDS))


def poll_until(condition: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Wait for ``condition`` with a deadline; return whether it came true."""
    try:
        poll_for(condition, timeout, period=every)
    except AssertionError:
        return False
    return True


class _Child:
    """One workload process, forked from the fork server (a fresh interpreter, preloaded)."""

    def __init__(self, ctx: Any, name: str, role: str, args: dict[str, Any]) -> None:
        self.name = name
        self.process = ctx.Process(
            target=_checker_workload.main, args=(role, {**args, "name": name}), name=name
        )
        self.process.start()

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join(30)


class _Server:
    """``hafen serve`` in its own interpreter, its output in a log file."""

    def __init__(self, url: str, port: int, refresh: float, env: dict[str, str], log: Path):
        self.log = log
        argv = [sys.executable, "-c", SERVE, "serve", url, "--port", str(port)]
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [*argv, "--refresh", str(refresh)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        if not poll_until(lambda: self.process.poll() is not None, 15, 0.1):
            self.process.kill()
            self.process.wait(10)


class _Poller(threading.Thread):
    """Asks the server for the dataset's version, again and again, journaling each answer."""

    def __init__(self, port: int, name: str, journal: JournalWriter, every: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/datasets/{name}?history=1&partitions=0"
        self.journal = journal
        self.every = every
        self.stop = threading.Event()
        self.last: dict[str, Any] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            record: dict[str, Any] = {"status": None}
            try:
                with urllib.request.urlopen(self.url, timeout=10) as answer:
                    body = json.loads(answer.read())
                record.update(
                    status=answer.status,
                    version=body["version"],
                    timestamp=body["timestamp"],
                    num_rows=body["num_rows"],
                )
            except urllib.error.HTTPError as exc:
                record.update(status=exc.code, body=exc.read().decode(errors="replace")[:300])
            except (OSError, ValueError) as exc:
                record.update(error=f"{type(exc).__name__}: {exc}"[:300])
            self.journal.write("poll", t=t, t_end=time.time(), **record)
            self.last = record
            self.stop.wait(self.every)


def take_snapshot(url: str) -> Snapshot:
    """The latest version, and every log entry present with its version's rows (or the error)."""
    storage = storage_for(url)
    t = time.time()
    latest = hafen.open_dataset(url)
    versions: dict[int, dict[str, Any]] = {}
    for info in storage.list(LOG_DIR):
        stem = info.path.rsplit("/", 1)[-1][: -len(".json")]
        if not stem.isdigit():
            continue
        v = int(stem)
        data = json.loads(storage.read_bytes(f"{LOG_DIR}/{v:020d}.json"))
        record: dict[str, Any] = {"entry": identify_entry(data, lambda p: _ops_in(storage, p))}
        if record["entry"]["stub"]:
            versions[v] = record  # retired by vacuum: nothing to read
            continue
        try:
            ds = hafen.open_dataset(url, version=v)
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
            versions[v] = record
            continue
        try:
            table = ds.read_arrow(columns=["op", "seq", "part", "value", "writer"])
            record["rows"] = [list(r.values()) for r in table.to_pylist()]
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
            record["missing"] = [f.path for f in ds.files() if not storage.exists(f.path)]
        versions[v] = record
    return Snapshot(latest.version, latest.state.dataset_id, t, versions)


def _ops_in(storage: Storage, path: str) -> set[str] | None:
    try:
        with storage.arrow_filesystem.open_input_file(storage.full(path)) as fh:
            return set(pq.read_table(fh, columns=["op"]).column("op").to_pylist())
    except Exception:
        return None


def remove_dataset(url: str) -> None:
    """Delete the dataset's folder and plateau's metadata file beside it."""
    storage = storage_for(url)
    if storage.protocol == "file":
        shutil.rmtree(storage.full(""), ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            storage.fs.rm(storage.full(""), recursive=True)
    for sibling in storage.fs.glob(storage.root + ".*"):
        storage.fs.rm(sibling)


def run_checker(
    url: str,
    workdir: str | Path,
    *,
    seconds: float,
    writers: int = 4,
    readers: int = 2,
    refresh: float = 0.5,
    margin: float | None = None,
    seed: int | None = None,
    kill_every: tuple[float, float] | None = None,
    retain: tuple[int, ...] = (2, 3),
    grace: str | None = None,
    row_deletes: bool = True,
    say: Callable[[str], None] = print,
) -> Report:
    """Run the workload against the dataset at ``url`` (which must not exist) and check it.

    ``retain`` (the vacuum's ``retain_versions``, one drawn each time), ``grace`` and
    ``row_deletes`` (False: deletes of whole partitions only) shape the workload; the defaults
    are the adversarial ones, and the pace (and ``grace``, ``kill_every``) comes from the
    backend's :data:`PACE`. The report is also written to ``workdir/report.txt``.
    """
    pace = PACE["local" if storage_for(url).protocol in ("file", "memory") else "remote"]
    grace = pace["grace"] if grace is None else grace
    kill_every = pace["kill_every"] if kill_every is None else kill_every
    if margin is None:
        margin = float(os.environ.get("HAFEN_CHECKER_SERVER_MARGIN", pace["server_margin"]))
    seed = random.randrange(2**31) if seed is None else seed
    rng = random.Random(seed)
    work = Path(workdir)
    journal_dir, logs = work / "journal", work / "logs"
    journal_dir.mkdir(parents=True)
    logs.mkdir()
    stops = {k: work / f"stop-{k}" for k in ("writers", "vacuum", "readers")}
    settings = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    settings.setdefault("HAFEN_CHECKPOINT_INTERVAL", "10")  # checkpoints race vacuum too
    env = {**os.environ, **settings, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    harness = JournalWriter(journal_dir, "harness", time.time)
    harness.write(
        "config",
        url=url,
        seconds=seconds,
        refresh=refresh,
        margin=margin,
        seed=seed,
        retain=list(retain),
        grace=grace,
        row_deletes=row_deletes,
    )
    say(f"checker: {url}, {seconds:.0f}s, seed {seed}, journal {journal_dir}")

    init = [(p, i, 50 + i) for p in range(PARTITIONS) for i in range(3)]
    rows = [(p, n, v) for n, (p, _, v) in enumerate(init)]
    harness.write("invoke", op="init", kind="create", rows=[list(r) for r in rows])
    ds = hafen.write_dataset(table_of("init", rows), url, partition_on=["part"], mode="create")
    harness.write("ok", op="init", version=ds.version, commit_id=ds.state.commit_id)

    def spawn(name: str, role: str, **args: Any) -> _Child:
        harness.write("start", name=name)
        common = {"url": url, "journal": str(journal_dir), "env": settings}
        return _Child(ctx, name, role, {**common, **args})

    port = free_port()
    name = url.rstrip("/").rsplit("/", 1)[-1]
    server = _Server(url, port, refresh, env, logs / "server.log")
    children: dict[str, _Child] = {}
    poll_journal = JournalWriter(journal_dir, "poller", time.time)
    poller = _Poller(port, name, poll_journal, every=pace["poll_every"])
    try:
        if not poll_until(lambda: _healthy(port) or server.process.poll() is not None, 120):
            raise RuntimeError(f"hafen serve did not answer within 120s:\n{server.tail()}")
        if server.process.poll() is not None:
            raise RuntimeError(f"hafen serve exited:\n{server.tail()}")
        poller.start()
        children["vacuum"] = spawn(
            "vacuum",
            "vacuum",
            stop=str(stops["vacuum"]),
            seed=rng.randrange(2**31),
            retain=list(retain),
            grace=grace,
            archive_every=pace["archive_every"],
        )
        for r in range(readers):
            children[f"r{r}"] = spawn(
                f"r{r}",
                "reader",
                reader=r,
                stop=str(stops["readers"]),
                seed=rng.randrange(2**31),
                pause=pace["reader_pause"],
            )
        incarnation = dict.fromkeys(range(writers), 0)

        def start_writer(w: int) -> None:
            children[f"w{w}"] = spawn(
                f"w{w}.{incarnation[w]}",
                "writer",
                writer=w,
                incarnation=incarnation[w],
                stop=str(stops["writers"]),
                seed=rng.randrange(2**31),
                row_deletes=row_deletes,
            )

        for w in range(writers):
            start_writer(w)
        # the fork server imports hafen first (seconds on a busy machine): the clock starts
        # once every process has journaled its first event
        names = ["vacuum", *(f"r{r}" for r in range(readers)), *(f"w{w}.0" for w in range(writers))]
        if not poll_until(lambda: all(_started(journal_dir, n) for n in names), 180, 0.1):
            raise RuntimeError("the workload processes did not start within 180s")
        deadline = time.monotonic() + seconds
        next_kill = time.monotonic() + rng.uniform(*kill_every)
        next_news = time.monotonic() + 60
        kills = 0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if time.monotonic() > next_news:  # a soak says it is alive once a minute
                next_news += 60
                left = deadline - time.monotonic()
                if left > 5:
                    say(f"checker: {kills} writers killed so far, {left:.0f}s to go")
            for key, child in list(children.items()):
                code = child.exitcode
                if code is not None:  # nothing exits by itself before its stop file
                    harness.write("crash", name=child.name, code=code)
                    if key.startswith("w"):
                        w = int(key[1:])
                        incarnation[w] += 1
                        start_writer(w)
                    else:
                        del children[key]
            if time.monotonic() >= next_kill:
                w = rng.randrange(writers)
                victim = children[f"w{w}"]
                victim.kill()
                kills += 1
                harness.write("kill", name=victim.name, pid=victim.process.pid)
                incarnation[w] += 1
                start_writer(w)
                next_kill = time.monotonic() + rng.uniform(*kill_every)

        harness.write("phase", name="stop")
        stops["writers"].touch()
        stops["vacuum"].touch()
        stopping = [c for k, c in children.items() if k.startswith("w") or k == "vacuum"]
        poll_until(lambda: all(c.exitcode is not None for c in stopping), 120, 0.1)
        for c in stopping:
            if c.exitcode is None:
                c.kill()
                harness.write("kill", name=c.name, pid=c.process.pid)
            elif c.exitcode != 0:
                harness.write("crash", name=c.name, code=c.exitcode)
        say("checker: writers stopped; reading every retained version")
        snapshot = take_snapshot(url)
        (work / "snapshot.json").write_text(json.dumps(asdict(snapshot), default=str))
        bound = refresh + margin
        # the server and the readers get their bound to catch up with the last version
        poll_until(lambda: poller.last.get("version") == snapshot.latest, bound + 2)
        _wait_for_reads(journal_dir, readers, after=time.time(), count=3, timeout=30)

        harness.write("phase", name="recreate")
        remove_dataset(url)
        again = [(p, i, 7) for p in range(PARTITIONS) for i in range(2)]
        hafen.write_dataset(table_of("re.0", again), url, partition_on=["part"], mode="create")
        ds = hafen.write_dataset(table_of("re.1", again[:3]), url, mode="append")
        harness.write(
            "phase",
            name="recreated",
            version=ds.version,
            timestamp=ds.timestamp,
            dataset_id=ds.state.dataset_id,
        )
        done = time.time()
        poll_until(
            lambda: poller.last.get("timestamp") == ds.timestamp and time.time() > done + bound,
            bound + 3,
        )
        _wait_for_reads(journal_dir, readers, after=done, count=3, timeout=30)
    finally:
        for key in ("readers", "vacuum", "writers"):
            stops[key].touch()
        poller.stop.set()
        poll_until(lambda: all(c.exitcode is not None for c in children.values()), 60, 0.1)
        for c in children.values():
            c.kill()
        server.stop()
        poller.join(15)
        poll_journal.close()
        harness.close()
    report = check(load_journal(journal_dir), snapshot)
    (work / "report.txt").write_text(report.summary() + "\n")
    return report


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status == 200
    except (OSError, ValueError):
        return False


def _started(journal: Path, name: str) -> bool:
    try:
        return (journal / f"{name}.jsonl").stat().st_size > 0
    except OSError:
        return False


def _wait_for_reads(
    journal: Path, readers: int, *, after: float, count: int, timeout: float
) -> bool:
    """Poll the readers' journals until each has started ``count`` reads since ``after``."""

    def enough() -> bool:
        for r in range(readers):
            try:
                lines = (journal / f"r{r}.jsonl").read_text().splitlines()
            except OSError:
                return False
            started = 0
            for line in lines[-50:]:
                with contextlib.suppress(ValueError):
                    started += json.loads(line)["t"] > after
            if started < count:
                return False
        return True

    return poll_until(enough, timeout, 0.1)


# -- command line (make soak) ---------------------------------------------------------------------


def _azurite_url(stack: contextlib.ExitStack) -> str:
    location = Path(tempfile.mkdtemp(prefix="hafen-azurite-"))
    stack.callback(shutil.rmtree, location, ignore_errors=True)
    server = Azurite(location)
    server.start()
    stack.callback(server.stop)
    server.create_container()
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = server.connection_string
    return server.url(f"soak-{os.getpid()}/checked")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=checker_seconds())
    parser.add_argument("--backend", choices=["local", "azure", "both"], default="local")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--retain", default="2,3", help="Vacuum's retain_versions, drawn from this list."
    )
    parser.add_argument("--grace", default=None, help="Vacuum's grace period (1.5s, 4s on Azure).")
    parser.add_argument(
        "--partition-deletes-only",
        action="store_true",
        help="Delete whole partitions only (a control run: no row-level delete races).",
    )
    parser.add_argument("--workdir", default=None, help="Keep journals here (default: a temp dir).")
    args = parser.parse_args(argv)
    for key in [k for k in os.environ if k.startswith(("HAFEN_", "AZURE_STORAGE_"))]:
        if key not in ("HAFEN_CHECKER_SECONDS", "HAFEN_CHECKER_SERVER_MARGIN"):
            del os.environ[key]
    os.environ["HAFEN_CONFIG"] = os.devnull
    root = Path(args.workdir or tempfile.mkdtemp(prefix="hafen-soak-"))
    failed = False
    backends = ["local", "azure"] if args.backend == "both" else [args.backend]
    for backend in backends:
        with contextlib.ExitStack() as stack:
            work = root / backend
            work.mkdir(parents=True, exist_ok=True)
            url = str(work / "data" / "checked") if backend == "local" else _azurite_url(stack)
            report = run_checker(
                url,
                work / "run",
                seconds=args.seconds,
                writers=args.writers,
                readers=args.readers,
                seed=args.seed,
                retain=tuple(int(x) for x in args.retain.split(",")),
                grace=args.grace,
                row_deletes=not args.partition_deletes_only,
            )
        print(f"\n== {backend} ==\n{report.summary()}\n(journal and report in {work / 'run'})")
        failed |= not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
