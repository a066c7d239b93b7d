"""``hafen demo --tenants``: the customer's loop, end to end, over HTTP.

A synthetic retailer's data is made in a scratch database; a tenant is created in ``DIR/service``
and the service is started on a free local port; every table is posted to ``/v1/...`` in batches
(with ``Idempotency-Key``), all sales but the last week; the pipeline runs on the tenant's
database and dataset root; the last week is posted and the pipeline runs again, incrementally
(it extracts only that week, appends it, and forecasts again the stores it changed); every
store's forecasts are read back through ``/forecasts`` before and after, from the running service
(which follows the new version without a restart), and their change is printed as a table.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["customer_loop"]

BATCH_ROWS = 20_000
TABLE_ORDER = ("stores", "products", "holidays", "promotions")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """The service in a thread of this process, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _call(port: int, key: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def _rows(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def _post(port: int, key: str, table: str, rows: list[dict[str, Any]], tag: str) -> int:
    inserted = 0
    for start in range(0, len(rows), BATCH_ROWS):
        batch = rows[start : start + BATCH_ROWS]
        answer = _call(
            port, key, "POST", f"/v1/{table}", batch, **{"Idempotency-Key": f"{tag}-{start}"}
        )
        inserted += answer["inserted"]
    return inserted


def _forecasts(port: int, key: str, store: int) -> Any:
    return _call(port, key, "GET", f"/forecasts?store_id={store}")


def _print_change(
    console: Any, before: dict[int, Any], after: dict[int, Any], first: Any, second: Any
) -> float:
    """A table of every store's forecasts before and after, on the days both cover; returns
    the mean absolute change per product and day."""
    import pandas as pd
    from rich.table import Table

    table = Table(title="forecasts through the API: before -> after one more week")
    for name in ("store", "version", "days", "mean forecast", "P10-P90 width", "mean |change|"):
        table.add_column(name, justify="right")
    changes = []
    for store in sorted(before):
        old = pd.DataFrame(before[store]["rows"])
        new = pd.DataFrame(after[store]["rows"])
        both = old.merge(new, on=["product_id", "date"], suffixes=("_b", "_a"))
        diff = (both["forecast_a"] - both["forecast_b"]).abs()
        changes.append(diff)
        table.add_row(
            str(store),
            f"{before[store]['version']} -> {after[store]['version']}",
            f"{old['date'].min()}..{old['date'].max()} -> {new['date'].min()}..{new['date'].max()}",
            f"{old['forecast'].mean():.2f} -> {new['forecast'].mean():.2f}",
            f"{(old['p90'] - old['p10']).mean():.2f} -> {(new['p90'] - new['p10']).mean():.2f}",
            f"{diff.mean():.2f}" if len(diff) else "-",
        )
    console.print(table)
    joined = pd.concat(changes) if changes else pd.Series(dtype=float)
    change = float(joined.mean()) if len(joined) else 0.0
    console.print(
        f"on the days both forecast, the mean absolute change is {change:.2f} units; "
        f"P10-P90 coverage of the held-out days: {first.ranges.get('coverage_model', 0):.0%} "
        f"then {second.ranges.get('coverage_model', 0):.0%}",
        highlight=False,
    )
    return change


def customer_loop(
    workdir: str | Path,
    *,
    synth: Any,
    console: Any,
    last_days: int = 7,
    client: Any = None,
) -> dict[str, Any]:
    """Run the loop in ``workdir`` (see the module docstring); returns what it measured."""
    from hafen.pipeline import PipelineConfig, run_pipeline
    from hafen.pipeline.synth import generate
    from hafen.serve import Tenants, create_service

    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    source = root / "customer.sqlite"
    info = generate(
        source, stores=synth.stores, products=synth.products, days=synth.days, seed=synth.seed
    )
    cut = (info.end - dt.timedelta(days=last_days)).isoformat()
    home = root / "service"
    tenants = Tenants(home)
    name = f"shop_{int(time.time())}"
    key = tenants.add(name)
    tenant = tenants.get(name)
    console.print(f"tenant {name} created in {home}; its key was shown once", highlight=False)
    conn = sqlite3.connect(source)
    out: dict[str, Any] = {"tenant": name}
    try:
        with _Server(create_service(home, refresh=0.2)) as server:
            for table in TABLE_ORDER:
                n = _post(server.port, key, table, _rows(conn, f"SELECT * FROM {table}"), table)
                console.print(f"posted {table}: {n:,} rows", highlight=False)
            began = time.perf_counter()
            old = _rows(conn, "SELECT * FROM sales WHERE date <= ? ORDER BY sale_id", (cut,))
            n = _post(server.port, key, "sales", old, "sales-1")
            seconds = time.perf_counter() - began
            console.print(
                f"posted sales up to {cut}: {n:,} rows in {seconds:.1f} s "
                f"({n / max(seconds, 1e-9):,.0f} rows/s)",
                highlight=False,
            )
            cfg = PipelineConfig(source_url=tenant.source_url, datasets_root=tenant.datasets)
            first = run_pipeline(cfg, client=client, console=console)
            stores = [r["store_id"] for r in _rows(conn, "SELECT store_id FROM stores")]
            before = {s: _forecasts(server.port, key, s) for s in stores}
            new = _rows(conn, "SELECT * FROM sales WHERE date > ? ORDER BY sale_id", (cut,))
            n = _post(server.port, key, "sales", new, "sales-2")
            console.print(f"posted one more week: {n:,} rows after {cut}", highlight=False)
            second = run_pipeline(cfg, client=client, console=console)
            # the service follows the new version without a restart
            deadline = time.monotonic() + 30
            after = {stores[0]: _forecasts(server.port, key, stores[0])}
            while after[stores[0]]["version"] == before[stores[0]]["version"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not pick up the new version")
                time.sleep(0.2)
                after[stores[0]] = _forecasts(server.port, key, stores[0])
            after.update({s: _forecasts(server.port, key, s) for s in stores[1:]})
    finally:
        conn.close()
    how = "incremental" if second.steps.get("raw/sales") == "append" else "full"
    console.print(
        f"second run: {how}, +{second.stages[0].rows:,} sales rows extracted, "
        f"{second.seconds:.1f} s against {first.seconds:.1f} s for the first; "
        f"stores forecast again: {len(second.forecast_stores)} of {len(stores)}",
        highlight=False,
    )
    change = _print_change(console, before, after, first, second)
    out.update(
        before=before[stores[0]],
        after=after[stores[0]],
        first_seconds=first.seconds,
        second_seconds=second.seconds,
        second_steps=second.steps,
        mean_change=change,
    )
    return out
