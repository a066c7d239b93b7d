"""Partitioned Parquet datasets with a versioned commit log (DESIGN.md section 1).

Public: :func:`write_dataset`, :func:`open_dataset`, :class:`Dataset` (and what its methods
return: :class:`VacuumReport`, :class:`VerifyReport`). For writers that stage
files in parallel and commit once (``hafen.dask``, ``hafen.sql``): :func:`stage_table`,
:class:`StagingWriter`, :class:`StagedWrite`, :func:`commit_staged`, :func:`storage_for`.
"""

from __future__ import annotations

from hafen.datasets._actions import DataFile
from hafen.datasets._dataset import (
    Dataset,
    VacuumReport,
    commit_staged,
    open_dataset,
    prepare_table,
    storage_for,
    write_dataset,
)
from hafen.datasets._logstore import latest_version
from hafen.datasets._predicates import normalize_predicates, parse_predicates, to_expression
from hafen.datasets._schema import conform, normalize_schema, partition_label, to_arrow
from hafen.datasets._storage import Storage, map_storage_errors
from hafen.datasets._verify import FileCheck, VerifyReport
from hafen.datasets._write import StagedWrite, StagingWriter, split_by_partition, stage_table
from hafen.errors import HafenWarning

__all__ = [
    "DataFile",
    "Dataset",
    "FileCheck",
    "HafenWarning",
    "StagedWrite",
    "StagingWriter",
    "Storage",
    "VacuumReport",
    "VerifyReport",
    "commit_staged",
    "conform",
    "latest_version",
    "map_storage_errors",
    "normalize_predicates",
    "normalize_schema",
    "open_dataset",
    "parse_predicates",
    "partition_label",
    "prepare_table",
    "split_by_partition",
    "stage_table",
    "storage_for",
    "to_arrow",
    "to_expression",
    "write_dataset",
]
