"""The main entry points' docstrings: numpydoc sections, and an example each that compiles.

Docstrings are parsed as the reference parses them (griffe, numpy style). The repository does not
run doctests (pytest has no ``--doctest-modules``): the examples name the user's paths and
clusters, so each is marked ``# doctest: +SKIP``; the runnable versions are on the docs pages,
which ``test_docs_examples.py`` runs.
"""

from __future__ import annotations

import doctest
from pathlib import Path

import griffe
import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

ENTRY_POINTS = [
    "hafen.datasets.write_dataset",
    "hafen.datasets.open_dataset",
    "hafen.datasets.Dataset.read",
    "hafen.datasets.Dataset.read_arrow",
    "hafen.datasets.Dataset.delete",
    "hafen.datasets.Dataset.vacuum",
    "hafen.datasets.Dataset.history",
    "hafen.datasets.Dataset.verify",
    "hafen.dask.read_ddf",
    "hafen.dask.write_ddf",
    "hafen.dask.reshuffle",
    "hafen.cluster.connect",
    "hafen.cluster.set_limit",
    "hafen.cluster.lease",
    "hafen.cluster.limits.limits",
    "hafen.cluster.drain",
    "hafen.sql.extract",
    "hafen.sql.load",
]

# Entry points that return nothing (or a context manager's nothing): no Returns section.
NO_RETURNS = {"hafen.cluster.set_limit", "hafen.cluster.lease"}


@pytest.fixture(scope="module")
def hafen_package() -> griffe.Module:
    loader = griffe.GriffeLoader(search_paths=[str(SRC)])
    package = loader.load("hafen")
    loader.resolve_aliases(external=False)
    return package  # type: ignore[return-value]


def _sections(obj: griffe.Object | griffe.Alias) -> dict[str, list[griffe.DocstringSection]]:
    assert obj.docstring is not None, f"{obj.path}: no docstring"
    found: dict[str, list[griffe.DocstringSection]] = {}
    for section in obj.docstring.parse("numpy"):
        found.setdefault(section.kind.value, []).append(section)
    return found


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_entry_point_docstring(path: str, hafen_package: griffe.Module) -> None:
    obj = hafen_package.modules_collection[path]
    sections = _sections(obj)
    params = [p.name for p in obj.parameters if p.name not in ("self", "cls")]  # type: ignore[union-attr]
    if params:
        assert "parameters" in sections, f"{path}: no Parameters section"
        documented = {
            name.strip().lstrip("*")
            for section in sections["parameters"]
            for p in section.value
            for name in p.name.split(",")
        }
        missing = [p for p in params if p.lstrip("*") not in documented]
        assert not missing, f"{path}: parameters not documented: {missing}"
    if path not in NO_RETURNS:
        assert "returns" in sections, f"{path}: no Returns section"
    assert "examples" in sections, f"{path}: no Examples section"
    examples = doctest.DocTestParser().get_examples(obj.docstring.value)  # type: ignore[union-attr]
    assert examples, f"{path}: no >>> example"
    for example in examples:
        compile(example.source, f"{path} example", "exec")
        assert example.options.get(doctest.SKIP), f"{path}: example not marked +SKIP"
