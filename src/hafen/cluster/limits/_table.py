"""What ``hafen limits`` prints: the limits of a running scheduler as a rich table."""

from __future__ import annotations

from typing import Any

from dask.utils import format_bytes
from rich.table import Table

from hafen.errors import ConfigError

__all__ = ["limits_table", "render_limits"]

#: Seconds to wait for the scheduler before giving up.
CONNECT_TIMEOUT = 10


def render_limits(info: dict[str, dict[str, Any]], *, address: str = "") -> Table:
    """Return the table of ``hafen.limits()``-shaped ``info``.

    When a limit has ``results=`` or ``memory=``, the table also shows them as "alive / limit"
    (results counted, or their bytes) and the overrides: grants made over them because nothing
    could free them.
    """
    table = Table(title=f"Limits on {address}" if address else "Limits")
    choke = any(
        row.get("results") is not None or row.get("memory") is not None for row in info.values()
    )
    columns = ["limit", "concurrency", "rate"]
    if choke:
        columns += ["results", "memory"]
    columns += ["in use", "waiting", "granted"]
    if choke:
        columns.append("overrides")
    columns.append("longest wait")
    for column in columns:
        table.add_column(column, justify="left" if column in ("limit", "rate") else "right")
    for name, row in sorted(info.items()):
        conc = row["concurrency"]
        rate = row["rate"]
        if rate is not None and row.get("burst", 1) != 1:
            rate = f"{rate} (burst {row['burst']})"
        cells = [name, "-" if conc is None else str(conc), "-" if rate is None else str(rate)]
        if choke:
            results, memory = row.get("results"), row.get("memory")
            alive_bytes = format_bytes(row.get("alive_bytes", 0))
            cells.append("-" if results is None else f"{row.get('alive', 0)}/{results}")
            cells.append("-" if memory is None else f"{alive_bytes}/{format_bytes(memory)}")
        cells += [str(row["in_use"]), str(row["waiting"]), str(row["granted"])]
        if choke:
            cells.append(str(row.get("overrides", 0)))
        cells.append(f"{row['longest_wait']:.1f}s")
        table.add_row(*cells)
    if not info:
        table.caption = "no limits set (hafen.set_limit creates one)"
    return table


def limits_table(address: str | None) -> Table:
    """Connect to ``address`` (or the ``scheduler`` setting) and return its limits as a table."""
    from distributed import Client

    from hafen.cluster.limits._client import limits
    from hafen.config import get_settings

    address = address or get_settings().scheduler
    if not address:
        raise ConfigError("no scheduler: pass --scheduler ADDRESS or set HAFEN_SCHEDULER")
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except OSError as exc:
        raise ConfigError(f"cannot reach the scheduler at {address}: {exc}") from exc
    try:
        return render_limits(limits(client=client), address=address)
    finally:
        client.close()
