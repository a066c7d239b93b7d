"""Point lookups against `hafen serve`, against a naive endpoint reading with pyarrow.dataset.

Builds a forecasts dataset shaped like the demo's (``--stores`` x ``--products`` x 28 days,
partitioned by store, indexed by product, one version), then starts two servers, each a separate
uvicorn process (one worker):

- ``hafen``: ``hafen serve ROOT`` (``GET /forecasts?store_id=&product_id=``);
- ``naive`` (anchor): the same route, answered by ``pyarrow.dataset.dataset(ROOT/forecasts,
  partitioning="hive")`` opened and filtered on every request.

This process is the load generator (asyncio, minimal HTTP/1.1 over keep-alive connections),
separate from both servers. For each server it measures:

1. throughput: ``--concurrency`` clients sending back to back for ``--seconds``: requests/s;
   The server's own CPU time over that window, per request, is also reported: on a machine
   shared with other work it says what a request costs when wall-clock figures also include
   waiting for a core.
2. latency at a fixed rate (open loop, ``--rate`` requests/s, default 200, or 80% of the server's
   throughput when that is lower): p50 and p99, measured from each request's scheduled time so
   that queueing counts (no coordinated omission).

Lookups pick store and product uniformly at random (same seed for both). Goals (issue 7): p99
under 20 ms at 200 requests/s on 2 cores, and at least 10x the naive endpoint's throughput.
Usage::

    .venv/bin/python benchmarks/serve.py
    .venv/bin/python benchmarks/serve.py --stores 100 --products 200 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
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


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for these GETs.

    httpx costs more CPU per request than the server being measured; on 2 shared cores the
    load generator must be as cheap as it can be, so it writes the request line and reads the
    status and Content-Length itself.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, store: int, product: int) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"GET /forecasts?store_id={store}&product_id={product} HTTP/1.1\r\n"
            f"Host: {self.host}\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def throughput(url: str, keys: list[tuple[int, int]], seconds: float, conc: int) -> float:
    host, port = _host_port(url)
    done = 0
    deadline = time.perf_counter() + seconds
    connections = [Connection(host, port) for _ in range(conc)]

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < deadline:
            status = await connections[k].get(*keys[i % len(keys)])
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
    url: str, keys: list[tuple[int, int]], rate: float, seconds: float, connections: int
) -> dict[str, float]:
    """Requests sent at ``rate`` per second over a pool of ``connections`` keep-alive ones;
    a request waiting for a free connection counts as waiting (latency from its schedule)."""
    host, port = _host_port(url)
    n = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(host, port))
    began = time.perf_counter()

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = began + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await pool.get()
        try:
            if await conn.get(*keys[i % len(keys)]) != 200:
                errors += 1
        finally:
            pool.put_nowait(conn)
        latencies.append(time.perf_counter() - scheduled)

    await asyncio.gather(*(one(i) for i in range(n)))
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


def measure(
    name: str, url: str, pid: int, keys: list[tuple[int, int]], args: argparse.Namespace
) -> dict[str, Any]:
    asyncio.run(throughput(url, keys[:50], 1.0, 4))  # warm up
    cpu = _cpu(pid)
    began = time.perf_counter()
    rps = asyncio.run(throughput(url, keys, args.seconds, args.concurrency))
    requests = rps * (time.perf_counter() - began)
    cpu_ms = (_cpu(pid) - cpu) * 1000 / max(requests, 1)
    rate = min(args.rate, 0.8 * rps)
    latency = asyncio.run(open_loop(url, keys, rate, args.seconds, 2 * args.concurrency))
    result = {
        "server": name,
        "throughput_rps": round(rps, 1),
        # CPU the server spent per request: what it would cost on a core of its own
        "server_cpu_ms_per_request": round(cpu_ms, 3),
        "requests_per_server_cpu_second": round(1000 / cpu_ms, 1) if cpu_ms else None,
        "latency": latency,
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=10)
    parser.add_argument("--products", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hafen-bench-serve-"))
    rng = random.Random(0)
    keys = [(rng.randint(1, args.stores), rng.randint(1, args.products)) for _ in range(100_000)]
    procs = []
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
        procs.append(start(hafen_cmd, hafen_port))
        url = f"http://127.0.0.1:{hafen_port}"
        results = [measure("hafen", url, procs[-1].pid, keys, args)]
        stop(procs.pop())
        naive_cmd = [sys.executable, "-c", NAIVE_APP, str(root), str(naive_port)]
        procs.append(start(naive_cmd, naive_port))
        url = f"http://127.0.0.1:{naive_port}"
        results.append(measure("naive", url, procs[-1].pid, keys, args))
        stop(procs.pop())
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)

    hafen_r, naive_r = results
    ratio = hafen_r["throughput_rps"] / naive_r["throughput_rps"]
    cpu_ratio = naive_r["server_cpu_ms_per_request"] / hafen_r["server_cpu_ms_per_request"]
    summary = {
        "size": {"stores": args.stores, "products": args.products},
        "load_average": round(os.getloadavg()[0], 1),
        "results": results,
        "throughput_ratio": round(ratio, 1),
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
