"""Every name in a public ``__all__`` is on a reference page, as a ``::: name`` directive.

A name counts as documented when its own path has a directive, when a directive documents the
same function, class or module under another path (``hafen.Dataset`` is
``hafen.datasets.Dataset``), or when a directive documents its whole module (``::: hafen.errors``).
``mkdocs build --strict`` then checks that every directive resolves and renders.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

PUBLIC_MODULES = [
    "hafen",
    "hafen.datasets",
    "hafen.dask",
    "hafen.sql",
    "hafen.cluster",
    "hafen.cluster.limits",
    "hafen.cluster.resilience",
    "hafen.pipeline",
    "hafen.serve",
    "hafen.testing",
    "hafen.config",
    "hafen.errors",
]

_DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)


def _directives() -> set[str]:
    return {m[1] for page in DOCS.rglob("*.md") for m in _DIRECTIVE.finditer(page.read_text())}


def _resolve(path: str) -> object:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def _by_identity(obj: object) -> bool:
    """Whether a re-export is the same object (functions, classes, modules; not constants)."""
    return inspect.isroutine(obj) or inspect.isclass(obj) or isinstance(obj, ModuleType)


def _undocumented(module_name: str, directives: set[str]) -> list[str]:
    module = importlib.import_module(module_name)
    documented_ids = set()
    whole_modules = set()
    for path in directives:
        obj = _resolve(path)
        if isinstance(obj, ModuleType):
            whole_modules.add(obj.__name__)
        if _by_identity(obj):
            documented_ids.add(id(obj))
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if f"{module_name}.{name}" in directives or module_name in whole_modules:
            continue
        if _by_identity(obj) and id(obj) in documented_ids:
            continue
        missing.append(name)
    return missing


def test_directives_resolve() -> None:
    for path in sorted(_directives()):
        _resolve(path)  # raises for a name that no longer exists


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_names_on_reference_pages(module_name: str) -> None:
    missing = _undocumented(module_name, _directives())
    assert not missing, f"{module_name}: not on any reference page (add `::: ...`): {missing}"


def test_check_fails_for_a_missing_name() -> None:
    directives = _directives() - {"hafen.pipeline.DB_LIMIT", "hafen.datasets.open_dataset"}
    assert _undocumented("hafen.pipeline", directives) == ["DB_LIMIT"]
    assert _undocumented("hafen.datasets", directives) == ["open_dataset"]
    assert "open_dataset" in _undocumented("hafen", directives)
