"""The top-level API is exactly DESIGN.md's, each subpackage's is pinned, every name resolves."""

import importlib

import pytest

import hafen

EXPECTED = {
    "__version__",
    "Dataset",
    "open_dataset",
    "write_dataset",
    "read_ddf",
    "write_ddf",
    "reshuffle",
    "connect",
    "set_limit",
    "remove_limit",
    "lease",
    "limits",
    "drain",
    "extract",
    "load",
}


def test_all_is_the_design_api():
    assert set(hafen.__all__) == EXPECTED


def test_every_name_resolves():
    for name in hafen.__all__:
        assert getattr(hafen, name) is not None, name


# Each subpackage's public names, pinned like the top level's: a change here is an API change.
# (hafen.cluster and its two packages are pinned in tests/cluster/test_cluster_layout.py.)
SUBPACKAGES = {
    "hafen.datasets": {
        "DataFile",
        "Dataset",
        "FileCheck",
        "VacuumReport",
        "VerifyReport",
        "open_dataset",
        "write_dataset",
    },
    "hafen.dask": {"read_ddf", "reshuffle", "write_ddf"},
    "hafen.sql": {"extract", "load"},
    "hafen.pipeline": {
        "DB_LIMIT",
        "ModelParams",
        "PipelineConfig",
        "PipelineResult",
        "StageReport",
        "SynthParams",
        "demo",
        "demo_config",
        "load_config",
        "print_summary",
        "run_pipeline",
        "summary_dict",
    },
    "hafen.serve": {"DEFAULT_REFRESH", "Registry", "create_app", "serve"},
}


@pytest.mark.parametrize("package", sorted(SUBPACKAGES))
def test_each_subpackage_exports_its_api(package):
    module = importlib.import_module(package)
    assert set(module.__all__) == SUBPACKAGES[package]
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_the_top_level_names_are_the_subpackages_own():
    for name in sorted(set(hafen.__all__) - {"__version__"}):
        package = hafen._EXPORTS[name]
        assert getattr(hafen, name) is getattr(importlib.import_module(package), name), name
