"""What ``hafen limits`` prints: the limits of a running scheduler as a rich table."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from hafen.errors import ConfigError

__all__ = ["limits_table", "render_limits"]

#: Seconds to wait for the scheduler before giving up.
CONNECT_TIMEOUT = 10


def render_limits(info: dict[str, dict[str, Any]], *, address: str = "") -> Table:
    """Return the table of ``hafen.limits()``-shaped ``info``."""
    table = Table(title=f"Limits on {address}" if address else "Limits")
    for column in ("limit", "concurrency", "rate", "in use", "waiting", "granted", "longest wait"):
        table.add_column(column, justify="left" if column in ("limit", "rate") else "right")
    for name, row in sorted(info.items()):
        conc = row["concurrency"]
        rate = row["rate"]
        if rate is not None and row.get("burst", 1) != 1:
            rate = f"{rate} (burst {row['burst']})"
        table.add_row(
            name,
            "-" if conc is None else str(conc),
            "-" if rate is None else str(rate),
            str(row["in_use"]),
            str(row["waiting"]),
            str(row["granted"]),
            f"{row['longest_wait']:.1f}s",
        )
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
