"""What the API may show of a dataset: its name and metadata, never where things are stored.

Anyone who reaches the port can read ``GET /datasets``, so its answers carry no storage URL,
local path or credential. Commit parameters are metadata, but some writers record locations in
them (``reshuffle`` its source dataset's URL, ``extract`` its database URL): :func:`public_value`
shows a dataset under the served root by its name, a database URL by its dialect, host and
database only (a SQLite file by its file name), any other location by its last part, and
masks anything shaped like a secret or recorded under a secret's name (``account_key``...).
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

from hafen._secrets import MASK, is_secret_key, redact

__all__ = ["Locations", "public_value"]

_DATABASE_SCHEMES = {"sqlite", "postgresql", "postgres"}
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


class Locations:
    """The served root in the spellings a recorded location may use, to name datasets by."""

    def __init__(self, roots: Iterable[str]) -> None:
        spelled = set()
        for root in roots:
            root = root.rstrip("/")
            if not root:
                continue
            spelled.add(root)
            if "://" in root:
                spelled.add(root.split("://", 1)[1])  # the backend path of an fsspec URL
            else:
                spelled.add("file://" + root)
        # longest first, so that the most specific spelling names the dataset
        self.roots = sorted(spelled, key=len, reverse=True)

    def name(self, location: str) -> str:
        """A dataset under the root by its name there, anything else by its last part."""
        location = location.rstrip("/")
        for root in self.roots:
            if location.startswith(root + "/"):
                return location[len(root) + 1 :]
        return re.split(r"[\\/]", location.split("?", 1)[0])[-1]

    def scrub(self, text: str) -> str:
        """``text`` without the root's spellings (a dataset's path becomes its name)."""
        for root in self.roots:
            text = text.replace(root + "/", "").replace(root, ".")
        return text


def _is_location(text: str) -> bool:
    """A URL or a path: ``scheme://x``, ``/x``, ``~/x``, ``C:\\x``, or ``a/b`` without spaces."""
    return (
        "://" in text
        or text.startswith(("/", "~", "\\\\"))
        or bool(_WINDOWS_PATH.match(text))
        or (("/" in text or "\\" in text) and not any(c.isspace() for c in text))
    )


def _database(text: str) -> str | None:
    """A database URL without user, password, query or (SQLite) folders; None if not one."""
    scheme = text.split("://", 1)[0].lower().split("+", 1)[0]
    if scheme not in _DATABASE_SCHEMES:
        return None
    if scheme == "sqlite":
        path = text.split("://", 1)[1].split("?", 1)[0]
        return "sqlite:///" + path.rstrip("/").rsplit("/", 1)[-1]
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://"
    return f"postgresql://{host}{port}{parts.path}"


def public_value(value: Any, locations: Locations) -> Any:
    """``value`` (a commit parameter, maybe nested) as the API may show it."""
    if isinstance(value, dict):
        return {
            str(k): MASK if is_secret_key(str(k)) else public_value(v, locations)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [public_value(v, locations) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = redact(str(value))
    if _is_location(text.strip()):
        text = text.strip()
        return _database(text) or locations.name(text)
    return locations.scrub(text)
