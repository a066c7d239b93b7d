"""Datasets on Dask (DESIGN.md section 2): :func:`read_ddf`, :func:`write_ddf`, :func:`reshuffle`.

Builds on :mod:`hafen.datasets`: reads are planned on the client and run by the workers; writes
are staged by the workers and committed once by the client, so each call is one atomic version.
"""

from __future__ import annotations

from hafen.dask._read import read_ddf
from hafen.dask._reshuffle import reshuffle
from hafen.dask._write import write_ddf

__all__ = ["read_ddf", "reshuffle", "write_ddf"]
