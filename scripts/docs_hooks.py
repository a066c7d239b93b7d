"""MkDocs hooks: reference pages generated from the code, so they cannot drift from it.

A page asks for a generated block with a marker on a line of its own:

- ``<!-- hafen:settings -->``: the fields of :class:`hafen.config.Settings`, their ``HAFEN_*``
  variables, defaults and the comments above them in ``config.py``;
- ``<!-- hafen:dask-config -->``: the ``hafen.*`` dask config keys, from ``cluster.yaml`` and the
  descriptions of ``cluster-schema.yaml``;
- ``<!-- hafen:openapi -->``: the HTTP API's endpoints from the OpenAPI document of
  :func:`hafen.serve.create_app` (built in memory, no server); the whole document is written to
  ``openapi.json`` in the site.

Nothing here reaches the network.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

_MARKER = re.compile(r"^<!-- hafen:([a-z-]+) -->$", re.MULTILINE)
_ROOT = Path(__file__).resolve().parent.parent


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def settings_table() -> str:
    """One row per field of Settings, with the comment written above it in config.py."""
    from hafen import config

    source = inspect.getsource(config.Settings).splitlines()
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in source:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        match = re.match(r"(\w+):", stripped)
        if match:
            comments[match.group(1)] = " ".join(pending)
        pending = []
    rows = ["| setting | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for field in dataclasses.fields(config.Settings):
        missing = field.default is dataclasses.MISSING
        default = "`{}`" if missing else f"`{field.default!r}`"
        env = (
            "only in `hafen.toml`"
            if field.name == "storage_options"
            else f"`HAFEN_{field.name.upper()}`"
        )
        rows.append(
            f"| `{field.name}` | {env} | {default} | {_cell(comments.get(field.name, ''))} |"
        )
    return "\n".join(rows)


def dask_config_table() -> str:
    """One row per ``hafen.*`` dask config key: default and the schema's description."""
    package = _ROOT / "src" / "hafen" / "cluster"
    defaults = yaml.safe_load((package / "cluster.yaml").read_text())["hafen"]
    schema = yaml.safe_load((package / "cluster-schema.yaml").read_text())
    sections = schema["properties"]["hafen"]["properties"]
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for section, values in defaults.items():
        props = sections[section]["properties"]
        for key, value in values.items():
            shown = "null" if value is None else value
            description = props.get(key, {}).get("description", "")
            rows.append(f"| `hafen.{section}.{key}` | `{shown}` | {_cell(description)} |")
    return "\n".join(rows)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of ``hafen serve``, from an app over an empty folder."""
    from hafen.serve import create_app

    with tempfile.TemporaryDirectory() as root:
        return create_app(root).openapi()


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"] if s.get("type") != "null")
    kind = schema.get("type", "object")
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def openapi_markdown(document: dict[str, Any]) -> str:
    """The endpoints, their parameters and answers, as Markdown."""
    out: list[str] = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            out.append(f"### `{method.upper()} {path}`\n")
            out.append(_cell(operation.get("description") or operation.get("summary", "")) + "\n")
            params = operation.get("parameters", [])
            if params:
                out.append("| parameter | in | type | required | meaning |")
                out.append("| --- | --- | --- | --- | --- |")
                for p in params:
                    required = "yes" if p.get("required") else "no"
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} | "
                        f"{required} | {_cell(p.get('description', ''))} |"
                    )
                out.append("")
            answers = ", ".join(
                f"{code} {_cell(a.get('description', ''))}"
                for code, a in operation.get("responses", {}).items()
            )
            out.append(f"Answers: {answers}.\n")
    return "\n".join(out)


_GENERATORS = {
    "settings": settings_table,
    "dask-config": dask_config_table,
    "openapi": lambda: openapi_markdown(openapi_document()),
}


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        return _GENERATORS[match.group(1)]()

    return _MARKER.sub(replace, markdown)


def on_files(files: Any, config: Any, **kwargs: Any) -> Any:
    from mkdocs.structure.files import File

    content = json.dumps(openapi_document(), indent=2) + "\n"
    files.append(File.generated(config, "openapi.json", content=content))
    return files
