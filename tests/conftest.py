"""Fixtures shared by the whole suite. Service fixtures live beside the tests that need them."""

from __future__ import annotations

import os

# Tests must not pick up a developer's hafen.toml or HAFEN_* settings.
for _key in [k for k in os.environ if k.startswith("HAFEN_")]:
    del os.environ[_key]
os.environ["HAFEN_CONFIG"] = os.devnull
