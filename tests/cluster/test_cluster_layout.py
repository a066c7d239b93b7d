"""The shape of ``hafen.cluster`` and ``hafen.testing``: public names, no import circles, cheap
imports, layers that point one way."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import hafen.cluster

SRC = Path(hafen.cluster.__file__).parents[2]
#: Packages that must have no import circles (the whole of src/hafen is in the graph).
CHECKED = ("hafen.cluster", "hafen.testing")


def module_files() -> dict[str, Path]:
    """Every module under src/hafen, by dotted name (a package by its own name)."""
    modules = {}
    for path in (SRC / "hafen").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """hafen modules that ``name`` imports anywhere: at the top, in functions, for type checking.

    ``from X import Y`` imports X, and X.Y too when that is a module. Parents of an imported
    module are not counted (as import-linter and grimp do): every package imports its children.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        yield from (t for t in targets if t in modules and t != name)


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: set(imported(name, path, modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_circles_in_the_cluster_and_testing_packages():
    graph = import_graph()
    assert "hafen.cluster.limits._plugin" in graph  # the graph covers what it should
    assert "hafen.cluster._config" in graph["hafen.cluster.limits._plugin"]
    ours = [c for c in cycles(graph) if any(m.startswith(CHECKED) for m in c)]
    assert ours == []


def test_layers_point_one_way():
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for name in graph:
        if name.startswith("hafen.cluster"):
            below = reaches(name)
            assert not [m for m in below if m.startswith(("hafen.datasets", "hafen.testing"))]
        if name.startswith("hafen.cluster.limits"):  # the two subpackages are independent
            assert not [m for m in graph[name] if m.startswith("hafen.cluster.resilience")]
        if name.startswith("hafen.cluster.resilience"):
            assert not [m for m in graph[name] if m.startswith("hafen.cluster.limits")]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_importing_the_cluster_package_stays_cheap():
    loaded = _modules_after("import hafen.cluster")
    for heavy in (
        "pytest",
        "rich",
        "prometheus_client",
        "pandas",
        "hafen.datasets",
        "hafen.dask",
        "hafen.testing",
        "hafen.cli",
    ):
        assert heavy not in loaded, heavy


def test_importing_the_test_support_package_does_not_import_pytest():
    loaded = _modules_after("import hafen.testing")
    assert "pytest" not in loaded and "_pytest" not in loaded


def test_the_public_names_of_hafen_cluster_are_unchanged():
    assert hafen.cluster.__all__ == [
        "SCHEDULER_EXTENSIONS",
        "DrainReport",
        "connect",
        "dask_setup",
        "drain",
        "install_scheduler_extensions",
        "lease",
        "limits",
        "remove_limit",
        "set_limit",
    ]
    importlib.import_module("hafen.cluster.limits._plugin")  # importing a submodule changes nothing
    assert callable(hafen.cluster.limits) and hafen.cluster.limits.__name__ == "limits"
    assert hafen.limits is hafen.cluster.limits
    from hafen.cluster import limits

    assert limits is hafen.cluster.limits


@pytest.mark.parametrize(
    "package",
    ["hafen.cluster", "hafen.cluster.limits", "hafen.cluster.resilience", "hafen.testing"],
)
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_no_module_is_long():
    """Modules under ~500 lines, unless one idea (the limits extension, with its docstring)."""
    exceptions = {"hafen.cluster.limits._plugin": 600}
    for name, path in module_files().items():
        if name.startswith(CHECKED):
            lines = len(path.read_text().splitlines())
            assert lines <= exceptions.get(name, 500), (name, lines)


def test_importing_the_test_support_package_starts_no_service_client():
    """PostgreSQL, Azurite and S3 helpers import their client libraries only when used."""
    loaded = _modules_after("import hafen.testing")
    for heavy in ("psycopg", "boto3", "moto", "azure.storage.blob", "distributed"):
        assert heavy not in loaded, heavy
