"""What the commands share: the consoles, the error handling, and choosing a cluster.

Every command that runs on a Dask cluster takes :func:`scheduler_option` and gets its client from
:func:`cluster_client`, so ``--scheduler``, ``HAFEN_SCHEDULER`` (or ``scheduler`` in
``hafen.toml``) and a local cluster mean the same for all of them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from hafen.errors import ConfigError, HafenError

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "CONNECT_TIMEOUT",
    "HafenGroup",
    "cluster_client",
    "console",
    "err_console",
    "fmt_bytes",
    "resolve_scheduler",
    "scheduler_option",
]

# Lines of text are never broken by the console (the terminal wraps them): a path, a URL or a
# key printed on one line stays one piece to copy or grep. Tables still fit the width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

#: Seconds a command that only reads from a scheduler waits to reach it.
CONNECT_TIMEOUT = 10

SCHEDULER_HELP = (
    "Dask scheduler to use (default: the HAFEN_SCHEDULER setting, else a local cluster when the "
    "command needs one)."
)

F = TypeVar("F", bound=Callable[..., Any])


class HafenGroup(click.Group):
    """A click group that prints hafen errors as one readable line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except HafenError as exc:
            err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
            sys.exit(1)


def scheduler_option(fn: F) -> F:
    """The ``--scheduler ADDRESS`` option of every command that uses a cluster (parameter
    ``scheduler``); resolve it with :func:`cluster_client` or :func:`resolve_scheduler`."""
    return click.option(
        "--scheduler", "scheduler", default=None, metavar="ADDRESS", help=SCHEDULER_HELP
    )(fn)


def resolve_scheduler(scheduler: str | None) -> str | None:
    """The scheduler address a command uses: ``scheduler``, else the ``scheduler`` setting."""
    from hafen.config import get_settings

    return scheduler or get_settings().scheduler or None


@contextlib.contextmanager
def cluster_client(
    scheduler: str | None,
    *,
    local: Mapping[str, Any] | None = None,
    required: bool = False,
    install: bool = True,
) -> Iterator[Client | None]:
    """The client of the cluster a command runs on, closed (with a cluster it started) at the end.

    Parameters
    ----------
    scheduler
        The ``--scheduler`` option; without it, the ``scheduler`` setting (``HAFEN_SCHEDULER``).
    local
        Without an address: start a local cluster with these ``LocalCluster`` arguments. When
        None, yield None instead (the library call then picks its own cluster).
    required
        Without an address, raise :class:`~hafen.errors.ConfigError` instead.
    install
        Connect with :func:`hafen.connect` (installing hafen's scheduler extensions); False
        connects without changing the scheduler, for commands that only read from it.

    Raises
    ------
    hafen.errors.ConfigError
        If an address is required and missing, or the scheduler cannot be reached.
    """
    from hafen.cluster import connect

    address = resolve_scheduler(scheduler)
    if not address:
        if required:
            raise ConfigError("no scheduler: pass --scheduler ADDRESS or set HAFEN_SCHEDULER")
        if local is None:
            yield None
            return
        client = connect(None, **local)
    else:
        try:
            if install:
                client = connect(address)
            else:
                from distributed import Client

                client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except OSError as exc:
            raise ConfigError(f"cannot reach the scheduler at {address}: {exc}") from exc
    try:
        yield client
    finally:
        client.close()


def fmt_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
