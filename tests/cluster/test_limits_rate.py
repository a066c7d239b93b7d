"""Rates: the token bucket and the extension, driven by an injected clock instead of waiting."""

from __future__ import annotations

import asyncio

import pytest
from distributed.utils_test import gen_cluster

from hafen.cluster.limits import TokenBucket, install_limits
from hafen.testing import DEADLINE, async_poll_for


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_of_20_per_second_grants_200_in_10_seconds():
    """Always a waiter, woken when its token is due (as the extension's timer does)."""
    clock = Clock()
    bucket = TokenBucket(20.0, 1, clock=clock)
    grants = []
    while clock.now < 10.0:
        bucket.refill()
        if bucket.ready():
            bucket.take()
            grants.append(clock.now)
        else:
            clock.now += max(bucket.due_in(), 1e-6)  # a timer fires no sooner than 1 us later
    assert 180 <= len(grants) <= 220, len(grants)
    assert len(grants) == 200
    assert grants[:3] == pytest.approx([0.0, 0.05, 0.1])  # evenly spaced: burst 1


def test_burst_banks_tokens_while_idle_up_to_burst():
    clock = Clock()
    bucket = TokenBucket(2.0, 5, clock=clock)
    for _ in range(5):  # starts full
        assert bucket.ready()
        bucket.take()
    assert not bucket.ready() and bucket.due_in() == pytest.approx(0.5)
    clock.now = 100.0  # idle for long: still only 5 banked
    bucket.refill()
    assert bucket.tokens == 5.0


def test_reconfigure_keeps_tokens_earned_up_to_the_new_burst():
    clock = Clock()
    bucket = TokenBucket(1.0, 4, clock=clock)
    bucket.take()
    bucket.take()
    clock.now = 1.0
    bucket.reconfigure(10.0, 2)  # 3 tokens earned at the old rate, capped at the new burst
    assert bucket.tokens == 2.0 and bucket.rate == 10.0
    bucket.take()
    bucket.take()
    assert bucket.due_in() == pytest.approx(0.1)


@gen_cluster(client=True, nthreads=[])
async def test_the_extension_takes_its_time_from_its_clock(c, s):
    clock = Clock()
    ext = install_limits(s, clock=clock)
    ext.set_limit(name="rate20", rate="20/s")
    assert await ext.acquire(name="rate20", lease_id="L0", owner="test")  # the bucket starts full
    second = asyncio.ensure_future(ext.acquire(name="rate20", lease_id="L1", owner="test"))
    await async_poll_for(lambda: ext.info()["rate20"]["waiting"] == 1, what="L1 waits")
    clock.now = 0.02  # 0.4 of a token: no grant round can grant L1, however many run
    info = ext.info()["rate20"]
    assert info["longest_wait"] == pytest.approx(0.02)
    assert (info["waiting"], info["granted"]) == (1, 1) and not second.done()
    clock.now = 0.1  # the token is due: the next round (the extension's timer) grants it
    assert await asyncio.wait_for(second, DEADLINE)
    assert ext.info()["rate20"]["granted"] == 2
    assert ext.release(lease_id="L0") and ext.release(lease_id="L1")
