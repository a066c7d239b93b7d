"""Point lookups against `hafen serve`, against a naive endpoint reading with pyarrow.dataset.

Builds a forecasts dataset shaped like the demo's (``--stores`` x ``--products`` x 28 days,
partitioned by store, indexed by product, one version), then starts two servers, each a separate
uvicorn process (one worker), run the same way (``uvicorn.run(app, host, port,
log_level="warning")``, so uvloop and httptools, which ``uvicorn[standard]`` installs; the
benchmark reports which of them each server process has loaded):

- ``hafen``: ``hafen serve ROOT`` (``GET /forecasts?store_id=&product_id=``);
- ``naive`` (anchor): the same route in a FastAPI app, answered by
  ``pyarrow.dataset.dataset(ROOT/forecasts, partitioning="hive")`` opened and filtered on every
  request.

This process is the load generator, separate from both servers: an asyncio client on uvloop
(``--client-loop``) speaking minimal HTTP/1.1 over keep-alive connections, one request in flight
per connection (no pipelining), with pre-encoded requests. Each server is first warmed up by one
request per store (which reads each store's file into hafen's cache, and into the page cache for
both) and checked to answer a lookup with its 28 days, then measured; each window goes on in the
same sequence of keys where the server's previous one stopped:

1. throughput: ``--concurrency`` connections sending back to back for ``--seconds``, in
   ``--rounds`` windows that alternate between the two servers (both stay up; the idle one
   costs nothing), so that a change in the load of the shared machine weighs on both: the
   median requests/s, and the ratio of each round. The server's own CPU time per request over
   its windows is also reported (and the load generator's): on a machine shared with other
   work it says what a request costs when wall-clock figures also include waiting for a core.
2. latency at a fixed rate (open loop, ``--rate`` requests/s, default 200, or 80% of the server's
   throughput when that is lower): p50 and p99, measured from each request's scheduled time so
   that queueing counts (no coordinated omission).

Lookups pick store and product uniformly at random (same seed, same sequence for both servers);
``distinct_keys`` says how many of the throughput windows' requests were a first lookup of
their key for hafen (whose answers are then cached: ``fast_path_in_process`` gives the cost of a
first and of a repeated lookup without HTTP). Goals (issue 7): p99 under 20 ms at 200
requests/s on 2 cores, and at least 10x the naive endpoint's throughput. Usage::

    .venv/bin/python benchmarks/serve.py --seconds 8
    .venv/bin/python benchmarks/serve.py --stores 100 --products 200 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

NAIVE_APP = """
import json, sys
import pyarrow.compute as pc
import pyarrow.dataset as pds
from fastapi import FastAPI, Response
root = sys.argv[1]
app = FastAPI()

@app.get("/forecasts")
def forecasts(store_id: int, product_id: int):
    ds = pds.dataset(root + "/forecasts", format="parquet", partitioning="hive",
                     exclude_invalid_files=True, ignore_prefixes=["_", "."])
    table = ds.to_table(
        columns=["product_id", "date", "forecast", "baseline"],
        filter=(pc.field("store_id") == store_id) & (pc.field("product_id") == product_id))
    rows = table.sort_by("date").to_pylist()
    for r in rows:
        r["date"] = r["date"].isoformat()
    return Response(json.dumps({"store_id": store_id, "rows": rows}),
                    media_type="application/json")

import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def build(root: Path, stores: int, products: int) -> None:
    import hafen

    start = dt.date(2026, 1, 1)
    store = np.repeat(np.arange(1, stores + 1), products * 28)
    product = np.tile(np.repeat(np.arange(1, products + 1), 28), stores)
    day = np.tile(np.arange(28), stores * products)
    frame = pd.DataFrame(
        {
            "store_id": store,
            "product_id": product,
            "date": [start + dt.timedelta(days=int(d)) for d in day],
            "forecast": np.round(np.random.default_rng(0).gamma(2, 3, len(day)), 4),
            "baseline": np.round(np.random.default_rng(1).gamma(2, 3, len(day)), 4),
        }
    )
    hafen.write_dataset(
        frame, str(root / "forecasts"), partition_on=["store_id"], indices=["product_id"]
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                error = proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                raise SystemExit(f"server failed: {error}") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server on port {port} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request in flight at a time.

    httpx, and even asyncio's streams, cost more CPU per request than the server being
    measured; on 2 shared cores the load generator must be as cheap as it can be. So requests
    are pre-encoded bytes, and a response is complete when its head and ``Content-Length``
    bytes of body have arrived (both servers send a length). No pipelining: the next request
    on a connection is written only after the previous response has been read whole.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.expected = -1  # bytes of the whole response, once its head is in
        self.status = 0
        self.waiter: asyncio.Future[int] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.expected < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError("a response without Content-Length")
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            self.expected = end + 4 + length
        if len(buffer) >= self.expected:
            if len(buffer) > self.expected:
                raise RuntimeError("bytes after the response: the server answered twice?")
            buffer.clear()
            self.expected = -1
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("connection closed"))

    async def get(self, request: bytes) -> int:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def requests_for(host: str, keys: list[tuple[int, int]]) -> list[bytes]:
    return [
        f"GET /forecasts?store_id={s}&product_id={p} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        for s, p in keys
    ]


def check(url: str, store: int, product: int) -> None:
    """Both servers answer a lookup with its 28 days (the load generator reads only status and
    length)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/forecasts?store_id={store}&product_id={product}") as r:
        rows = json.load(r)["rows"]
    days = sorted(row["date"] for row in rows)
    if len(rows) != 28 or days[0] != "2026-01-01" or days[-1] != "2026-01-28":
        raise SystemExit(f"{url} answered {len(rows)} rows for ({store}, {product})")


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def throughput(
    url: str, requests: list[bytes], seconds: float, conc: int, offset: int = 0
) -> float:
    """Requests/s of ``conc`` connections sending ``requests`` (from ``offset`` on) back to
    back for ``seconds``."""
    host, port = _host_port(url)
    done = 0
    connections = [await Connection.open(host, port) for _ in range(conc)]
    deadline = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = offset + k
        conn = connections[k]
        while time.perf_counter() < deadline:
            status = await conn.get(requests[i % len(requests)])
            assert status == 200, status
            done += 1
            i += conc

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(conc)))
    elapsed = time.perf_counter() - began
    for c in connections:
        c.close()
    return done / elapsed


async def open_loop(
    url: str,
    requests: list[bytes],
    rate: float,
    seconds: float,
    connections: int,
    offset: int = 0,
) -> dict[str, float]:
    """Requests sent at ``rate`` per second over a pool of ``connections`` keep-alive ones;
    a request waiting for a free connection counts as waiting (latency from its schedule)."""
    host, port = _host_port(url)
    n = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(host, port))
    began = time.perf_counter()

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            if await conn.get(requests[(offset + i) % len(requests)]) != 200:
                errors += 1
        finally:
            pool.put_nowait(conn)
        latencies.append(time.perf_counter() - scheduled)

    # each request is started at its scheduled time (or at once when running late), and its
    # latency counts from that time, so a slow server cannot slow the schedule down
    tasks = []
    for i in range(n):
        scheduled = began + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    while not pool.empty():
        pool.get_nowait().close()
    ms = np.array(latencies) * 1000
    return {
        "rate": rate,
        "sent": n,
        "achieved_rps": round(n / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "errors": errors,
    }


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def stack(pid: int) -> dict[str, bool]:
    """Which event loop and HTTP parser the server process has loaded."""
    paths = [m.path for m in psutil.Process(pid).memory_maps()]
    return {
        "uvloop": any("/uvloop/" in p for p in paths),
        "httptools": any("/httptools/" in p for p in paths),
    }


def run(coro: Any, loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


@dataclasses.dataclass
class Server:
    name: str
    url: str
    pid: int
    requests: list[bytes]
    sent: int = 0  # requests sent so far: the next window goes on from there in the sequence
    windows: list[dict[str, float]] = dataclasses.field(default_factory=list)


def window(server: Server, args: argparse.Namespace) -> None:
    """One throughput window: requests/s, and server and load generator CPU per request."""
    cpu, client_cpu = _cpu(server.pid), time.process_time()
    began = time.perf_counter()
    coro = throughput(server.url, server.requests, args.seconds, args.concurrency, server.sent)
    rps = run(coro, args.client_loop)
    sent = round(rps * (time.perf_counter() - began))
    server.sent += sent
    server.windows.append(
        {
            "rps": round(rps, 1),
            "requests": sent,
            "server_cpu_ms": round((_cpu(server.pid) - cpu) * 1000, 1),
            "client_cpu_ms": round((time.process_time() - client_cpu) * 1000, 1),
        }
    )
    print(json.dumps({"server": server.name, **server.windows[-1]}), flush=True)


def summarize(
    server: Server, keys: list[tuple[int, int]], args: argparse.Namespace
) -> dict[str, Any]:
    """Median throughput over the windows, CPU per request over all of them, then latency."""
    total = sum(w["requests"] for w in server.windows)
    cpu_ms = sum(w["server_cpu_ms"] for w in server.windows) / max(total, 1)
    client_ms = sum(w["client_cpu_ms"] for w in server.windows) / max(total, 1)
    rps = float(np.median([w["rps"] for w in server.windows]))
    rate = min(args.rate, 0.8 * rps)
    latency = run(
        open_loop(
            server.url, server.requests, rate, args.seconds, 2 * args.concurrency, server.sent
        ),
        args.client_loop,
    )
    return {
        "server": server.name,
        "stack": stack(server.pid),
        "throughput_rps": round(rps, 1),
        "throughput_rps_per_window": [w["rps"] for w in server.windows],
        "requests": total,
        # distinct (store, product) among them: how many were a first lookup of their key
        "distinct_keys": len(set(keys[: min(total, len(keys))])),
        # CPU the server spent per request: what it would cost on a core of its own
        "server_cpu_ms_per_request": round(cpu_ms, 3),
        "requests_per_server_cpu_second": round(1000 / cpu_ms, 1) if cpu_ms else None,
        "client_cpu_ms_per_request": round(client_ms, 3),
        "latency": latency,
    }


def in_process(root: Path, keys: list[tuple[int, int]]) -> dict[str, float]:
    """The fast path's own cost, without HTTP, in microseconds of CPU: the first lookup of a
    store (its file read from storage and prepared: uncached), a first lookup of a key (its
    file already prepared) and a repeated one (the cached body)."""
    from hafen.serve import create_app
    from hafen.serve._fast import parse_lookup

    app = create_app(str(root))
    sample = keys[:2000]
    queries = [f"store_id={s}&product_id={p}".encode() for s, p in sample]
    stores = sorted({s for s, _ in sample})
    app.answer(f"store_id={stores[0]}&product_id=1".encode())  # the dataset opened
    # the first lookup of each other store: its file read from storage and prepared
    began = time.process_time()
    for s in stores[1:]:
        app.answer(f"store_id={s}&product_id=1".encode())
    uncached_us = (time.process_time() - began) / max(1, len(stores) - 1) * 1e6
    ds = app.state.registry.get("forecasts")
    parsed = [parse_lookup(q) for q in queries]
    began = time.process_time()
    for p in parsed:
        app.state.bodies.render(ds, *p)
    render_us = (time.process_time() - began) / len(parsed) * 1e6
    for q in queries:
        app.answer(q)
    began = time.process_time()
    for q in queries:
        app.answer(q)
    cached_us = (time.process_time() - began) / len(queries) * 1e6
    return {
        "uncached_lookup_us": round(uncached_us, 1),
        "first_lookup_us": round(render_us, 1),
        "cached_lookup_us": round(cached_us, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=10)
    parser.add_argument("--products", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=3, help="throughput windows per server, alternating"
    )
    parser.add_argument(
        "--client-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="the load generator's event loop",
    )
    parser.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hafen-bench-serve-"))
    rng = random.Random(0)
    keys = [(rng.randint(1, args.stores), rng.randint(1, args.products)) for _ in range(200_000)]
    procs: list[subprocess.Popen[bytes]] = []
    load_before = os.getloadavg()[0]
    try:
        build(root, args.stores, args.products)
        hafen_port, naive_port = free_port(), free_port()
        hafen_cmd = [
            str(Path(sys.executable).with_name("hafen")),
            "serve",
            str(root),
            "--port",
            str(hafen_port),
        ]
        naive_cmd = [sys.executable, "-c", NAIVE_APP, str(root), str(naive_port)]
        servers = []
        for name, cmd, port in [("hafen", hafen_cmd, hafen_port), ("naive", naive_cmd, naive_port)]:
            procs.append(start(cmd, port))
            url = f"http://127.0.0.1:{port}"
            server = Server(name, url, procs[-1].pid, requests_for("127.0.0.1", keys))
            # warm up: every store once (its file for hafen, the page cache for both)
            warm = requests_for("127.0.0.1", [(s, 1) for s in range(1, args.stores + 1)])
            run(throughput(url, warm, 0.5, 1), args.client_loop)
            check(url, *keys[0])
            servers.append(server)
        # windows alternate between the servers, so that a change in the machine's load
        # (it is shared) weighs on both
        for _ in range(args.rounds):
            for server in servers:
                window(server, args)
        results = [summarize(server, keys, args) for server in servers]
        for result in results:
            print(json.dumps(result), flush=True)
        while procs:
            stop(procs.pop())
        fast_path = in_process(root, keys)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)

    hafen_r, naive_r = results
    ratio = hafen_r["throughput_rps"] / naive_r["throughput_rps"]
    cpu_ratio = naive_r["server_cpu_ms_per_request"] / hafen_r["server_cpu_ms_per_request"]
    per_window = [
        round(h / n, 1)
        for h, n in zip(
            hafen_r["throughput_rps_per_window"], naive_r["throughput_rps_per_window"], strict=True
        )
    ]
    summary = {
        "size": {"stores": args.stores, "products": args.products},
        # 1-minute load average before and after: the machine is shared
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "results": results,
        "fast_path_in_process": fast_path,
        "throughput_ratio": round(ratio, 1),  # of the medians
        "throughput_ratio_per_round": per_window,
        "cpu_per_request_ratio": round(cpu_ratio, 1),
        "goal_p99_under_20ms_at_200rps": hafen_r["latency"]["rate"] >= 200
        and hafen_r["latency"]["p99_ms"] < 20,
        "goal_10x_naive": ratio >= 10,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
