"""``hafen tenants add|ls|revoke``: the customers of a service home and their API keys."""

from __future__ import annotations

import click

from hafen.cli._common import console

__all__ = ["tenants"]

_home = click.option(
    "--home",
    default="hafen-service",
    show_default=True,
    metavar="DIR",
    help="The service's folder: tenants, their databases and datasets.",
)
_database = click.option(
    "--database",
    default=None,
    metavar="URL",
    help="PostgreSQL URL to keep tenants' tables in (a schema each); SQLite files by default.",
)


@click.group("tenants")
def tenants() -> None:
    """Add, list and revoke tenants (customers) and their API keys."""


@tenants.command("add")
@click.argument("name")
@_home
@_database
def add_command(name: str, home: str, database: str | None) -> None:
    """Create tenant NAME and print its API key (shown this once, stored only as a hash)."""
    from hafen.serve import Tenants

    key = Tenants(home, database=database).add(name)
    console.print(f"tenant {name} created; its API key (shown once):", highlight=False)
    click.echo(key)


@tenants.command("ls")
@_home
def ls_command(home: str) -> None:
    """List the tenants."""
    from hafen.serve import Tenants

    for tenant in Tenants(home).list():
        state = f"revoked {tenant.revoked}" if tenant.revoked else "active"
        click.echo(f"{tenant.name}\tcreated {tenant.created}\t{state}")


@tenants.command("revoke")
@click.argument("name")
@_home
def revoke_command(name: str, home: str) -> None:
    """Revoke tenant NAME and all its keys (its data stays)."""
    from hafen.serve import Tenants

    Tenants(home).revoke(name)
    console.print(f"tenant {name} revoked", highlight=False)
