"""Every code example in docs/ runs: a page's ```python blocks in order, its ```console lines.

Each page runs in a fresh temporary working directory, its Python blocks in one namespace (as a
reader would type them into one session). In a ```console block, every ``$ hafen ...`` line runs
through click's CliRunner and must exit 0 (a line ending in ``\\`` continues on the next, as in
a shell); other lines (output, other programs) are not run.

Every line of every code block, of any language, fits the page's column (80 characters): a
wider one is cut off on the page, where a reader cannot see what it says.

Markers, HTML comments a reader does not see:

- ``<!-- test: cluster -->`` anywhere on a page: the page gets an in-process Dask cluster with
  hafen's extensions (:func:`hafen.testing.thread_cluster`), and ``HAFEN_SCHEDULER`` points at it,
  so ``hafen.connect()`` and the commands' ``--scheduler`` default reach it;
- ``<!-- test: skip -->`` on the line before a block: the block is not run (it needs what the
  suite does not have: a Kubernetes cluster, a cloud account, a server running for ever). Such
  blocks are rare and each says so in the text.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

DOCS = Path(__file__).resolve().parent.parent / "docs"

_BLOCK = re.compile(
    r"(?P<marker><!-- test: skip -->\s*\n)?^```(?P<lang>python|console)[^\n]*\n(?P<body>.*?)^```",
    re.MULTILINE | re.DOTALL,
)


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if _BLOCK.search(p.read_text()))


def _blocks(page: Path) -> list[tuple[str, str]]:
    return [(m["lang"], m["body"]) for m in _BLOCK.finditer(page.read_text()) if not m["marker"]]


def _run_console(body: str, page: Path) -> None:
    from hafen.cli import main

    for line in re.sub(r"\\\n\s*", " ", body).splitlines():
        if not line.startswith("$ hafen "):
            continue
        args = shlex.split(line[len("$ hafen ") :], comments=True)
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, f"{page.name}: {line}\n{result.output}"


_FENCE = re.compile(r"^\s*```")

#: The widest code line the site shows without a cut at the narrowest layout with both sidebars.
COLUMN = 80


def test_code_lines_fit_the_column() -> None:
    wide = []
    for page in sorted(DOCS.rglob("*.md")):
        inside = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if _FENCE.match(line):
                inside = not inside
            elif inside and len(line) > COLUMN:
                wide.append(f"{page.relative_to(DOCS)}:{number} ({len(line)} characters)")
    assert not wide, "code lines wider than the column:\n" + "\n".join(wide)


def _close_clients(namespace: dict[str, object]) -> None:
    """Close the clients a page made (``client = hafen.connect()``) before its cluster stops."""
    from distributed import Client

    for value in namespace.values():
        if isinstance(value, Client):
            value.close()


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with contextlib.ExitStack() as stack:
        if "<!-- test: cluster -->" in page.read_text():
            from hafen.testing import thread_cluster

            client = stack.enter_context(thread_cluster(n_workers=2, threads_per_worker=2))
            monkeypatch.setenv("HAFEN_SCHEDULER", client.scheduler.address)
        namespace: dict[str, object] = {"__name__": "__docs__"}
        stack.callback(_close_clients, namespace)
        for number, (lang, body) in enumerate(_blocks(page), 1):
            if lang == "console":
                _run_console(body, page)
            else:
                code = compile(body, f"{page.relative_to(DOCS)} (block {number})", "exec")
                exec(code, namespace)
