"""The preload took: every scheduler of these tests runs hafen's extensions (unless baseline)."""

from __future__ import annotations

from distributed.utils_test import gen_cluster

from conftest import PRELOAD


@gen_cluster(client=True)
async def test_hafen_is_installed_on_the_test_scheduler(c, s, a, b):
    installed = {"hafen_limits", "hafen_drain"} <= set(s.extensions)
    assert installed is PRELOAD
    assert ("hafen-resilience" in s.plugins) is PRELOAD
