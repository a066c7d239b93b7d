"""The shape of the package: no import circles anywhere in ``src/hafen``, layers that point one
way (DESIGN.md, "Layout"), and, for ``hafen.cluster`` and ``hafen.testing``, public names, cheap
imports and short modules.

The import graph is built from the source (``ast``): an import at the top of a module and one
inside a function are both edges; one under ``if TYPE_CHECKING:`` is not (it never runs).
"""

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

#: What each layer must not import (DESIGN.md: lower layers never import higher ones).
FORBIDDEN = {
    "hafen.datasets": (
        "hafen.dask",
        "hafen.cluster",
        "hafen.sql",
        "hafen.pipeline",
        "hafen.serve",
        "hafen.cli",
    ),
    "hafen.cluster": (
        "hafen.datasets",
        "hafen.dask",
        "hafen.sql",
        "hafen.pipeline",
        "hafen.serve",
        "hafen.cli",
        "hafen.testing",
    ),
    "hafen.dask": ("hafen.sql", "hafen.pipeline", "hafen.serve", "hafen.cli"),
    "hafen.sql": ("hafen.pipeline", "hafen.serve", "hafen.cli"),
}
#: The top of the stack: only the command line reaches the API; nothing reaches the command line.
TOP = {"hafen.cli": ("hafen.cli",), "hafen.serve": ("hafen.serve", "hafen.cli")}


def module_files() -> dict[str, Path]:
    """Every module under src/hafen, by dotted name (a package by its own name)."""
    modules = {}
    for path in (SRC / "hafen").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere but in the body of ``if TYPE_CHECKING:``."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """hafen modules that ``name`` imports: at the top and in functions, not for type checking.

    ``from X import Y`` imports X.Y when that is a module, else X. Parents of an imported module
    are not counted (as import-linter and grimp do): every package imports its children.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
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


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _edges(graph: dict[str, set[str]], sources: str, targets: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{a} -> {b}"
        for a, imports in graph.items()
        if in_package(a, sources)
        for b in imports
        if any(in_package(b, t) for t in targets)
    )


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_graph_counts_function_imports_but_not_type_checking_ones():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import hafen.a\n"
        "if TYPE_CHECKING:\n"
        "    import hafen.b\n"
        "else:\n"
        "    import hafen.c\n"
        "def f():\n"
        "    from hafen import d\n"
    )
    found = {
        n.names[0].name if isinstance(n, ast.Import) else f"{n.module}.{n.names[0].name}"
        for n in _imports(ast.parse(source))
    }
    assert found == {"typing.TYPE_CHECKING", "hafen.a", "hafen.c", "hafen.d"}


def test_no_import_circles_anywhere_in_the_package():
    graph = import_graph()
    assert "hafen.cluster.limits._plugin" in graph  # the graph covers what it should
    assert "hafen.cluster._config" in graph["hafen.cluster.limits._plugin"]
    assert "hafen.datasets._logstore" in graph["hafen.datasets._commit"]
    assert cycles(graph) == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(layer):
    assert _edges(import_graph(), layer, FORBIDDEN[layer]) == []


@pytest.mark.parametrize("top", sorted(TOP))
def test_nothing_imports_the_command_line_or_the_api_but_the_command_line(top):
    graph = import_graph()
    importers = sorted(
        a
        for a, imports in graph.items()
        if any(in_package(b, top) for b in imports)
        and not any(in_package(a, allowed) for allowed in TOP[top])
    )
    assert importers == []


def test_no_module_in_a_subpackage_imports_the_package_top():
    """``from hafen import X`` hides where X is defined, and makes a subpackage depend on all
    the others; modules import a name from the module that defines it."""
    graph = import_graph()
    assert sorted(a for a, imports in graph.items() if "." in a and "hafen" in imports) == []


def test_the_commit_model_is_pure_and_storage_knows_no_commits():
    graph = import_graph()
    model = graph["hafen.datasets._actions"]
    assert not [m for m in model if in_package(m, "hafen.datasets._storage")]
    assert not model & {"hafen.datasets._logstore", "hafen.datasets._commit"}
    assert _edges(graph, "hafen.datasets._storage", ("hafen.datasets._commit",)) == []
    assert _edges(graph, "hafen.datasets._logstore", ("hafen.datasets._plateau",)) == []


def test_the_cluster_layers_point_one_way():
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
    checked = ("hafen.cluster", "hafen.testing")
    exceptions = {"hafen.cluster.limits._plugin": 600}
    for name, path in module_files().items():
        if name.startswith(checked):
            lines = len(path.read_text().splitlines())
            assert lines <= exceptions.get(name, 500), (name, lines)


def test_importing_the_test_support_package_starts_no_service_client():
    """PostgreSQL, Azurite and S3 helpers import their client libraries only when used."""
    loaded = _modules_after("import hafen.testing")
    for heavy in ("psycopg", "boto3", "moto", "azure.storage.blob", "distributed"):
        assert heavy not in loaded, heavy
