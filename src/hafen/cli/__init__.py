"""The ``hafen`` command line, one module per command family.

- :mod:`._common`: the consoles, one-line errors, and choosing a cluster (``--scheduler``);
- :mod:`._datasets`: ``hafen dataset ls|show|history|read|verify|vacuum``;
- :mod:`._cluster`: ``hafen limits`` and ``hafen chaos``;
- :mod:`._sql`: ``hafen extract`` and ``hafen load``;
- :mod:`._pipeline`: ``hafen demo``, ``run``, ``serve`` and ``reshuffle``.

Commands import what they need when they run, so ``hafen --help`` stays fast. Each is a thin
layer over the library.
"""

from __future__ import annotations

import click

from hafen._version import __version__
from hafen.cli._cluster import chaos, limits_command
from hafen.cli._common import HafenGroup
from hafen.cli._datasets import dataset
from hafen.cli._pipeline import demo_command, reshuffle_command, run_command, serve_command
from hafen.cli._sql import extract_command, load_command

__all__ = ["main"]


@click.group(cls=HafenGroup)
@click.version_option(__version__, prog_name="hafen")
def main() -> None:
    """hafen: production-grade data pipelines on Dask."""


for _command in (
    dataset,
    limits_command,
    chaos,
    extract_command,
    load_command,
    demo_command,
    run_command,
    serve_command,
    reshuffle_command,
):
    main.add_command(_command)
