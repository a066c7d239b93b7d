"""Relational databases in and out of datasets (DESIGN.md section 4).

:func:`extract` splits a query into ranges of a column, runs each as a Dask task under a
cluster-wide limit, streams rows as Arrow batches into staged Parquet files and commits once.
:func:`load` writes a dataset into a table, in parallel chunks, each in its own transaction,
under the same kind of limit; modes ``append``, ``replace`` and ``upsert``.

SQLite (``sqlite:///file.db``) is the embedded default; PostgreSQL (``postgresql://...``) needs
``pip install 'hafen[postgres]'``. Types map both ways as :mod:`hafen.sql._types` documents.
"""

from __future__ import annotations

from hafen.sql._extract import extract
from hafen.sql._load import load

__all__ = ["extract", "load"]
