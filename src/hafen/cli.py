"""The ``hafen`` command line.

Commands import what they need when they run, so ``hafen --help`` stays fast.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

from hafen import __version__
from hafen.errors import HafenError

console = Console()
err_console = Console(stderr=True)


class _Group(click.Group):
    """A click group that prints hafen errors as one readable line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except HafenError as exc:
            err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="hafen")
def main() -> None:
    """hafen: production-grade data pipelines on Dask."""


# --- datasets -------------------------------------------------------------------------------


@main.group(cls=_Group)
def dataset() -> None:
    """Inspect and maintain datasets."""


# --- limits ---------------------------------------------------------------------------------


@main.command("limits")
@click.option(
    "--scheduler",
    "address",
    default=None,
    metavar="ADDRESS",
    help="Scheduler address (default: the HAFEN_SCHEDULER setting).",
)
def limits_command(address: str | None) -> None:
    """Show the cluster-wide limits held on the scheduler."""
    from hafen.cluster._cli import limits_table

    console.print(limits_table(address))
