"""Partitioned Parquet datasets with a versioned commit log (DESIGN.md section 1).

Public: :func:`write_dataset`, :func:`open_dataset`, :class:`Dataset`, and what its methods
return: :class:`DataFile` (:meth:`Dataset.files`), :class:`VacuumReport`, :class:`VerifyReport`
and :class:`FileCheck`. Everything else is private to hafen; its other packages
(:mod:`hafen.dask`, :mod:`hafen.sql`) import what they need from the private modules, above all
the write transaction (:mod:`hafen.datasets._transaction`) every writer uses.
"""

from __future__ import annotations

from hafen.datasets._actions import DataFile
from hafen.datasets._dataset import Dataset, open_dataset
from hafen.datasets._vacuum import VacuumReport
from hafen.datasets._verify import FileCheck, VerifyReport
from hafen.datasets._write_dataset import write_dataset

__all__ = [
    "DataFile",
    "Dataset",
    "FileCheck",
    "VacuumReport",
    "VerifyReport",
    "open_dataset",
    "write_dataset",
]
