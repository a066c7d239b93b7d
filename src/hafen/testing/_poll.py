"""Waiting for a condition with a deadline, instead of sleeping and hoping.

The same shape as distributed's ``distributed.utils_test.poll_for`` / ``async_poll_for``, which
cannot be imported without pytest: poll ``predicate`` every ``period`` seconds until it is true,
and fail with an :class:`AssertionError` naming what was awaited after ``timeout`` seconds. The
timeout is a deadline for a condition that must come true, never a measurement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DEADLINE", "async_poll_for", "poll_for"]

#: Default deadline: generous, since the machines that run the tests are often loaded.
DEADLINE = 30.0
#: Default seconds between two looks at the condition.
PERIOD = 0.02


def _fail(predicate: Callable[[], Any], timeout: float, what: str, fail_func: Any) -> None:
    if fail_func is not None:
        fail_func()
    raise AssertionError(f"not true within {timeout}s: {what or predicate}")


def poll_for(
    predicate: Callable[[], Any],
    timeout: float = DEADLINE,
    fail_func: Callable[[], None] | None = None,
    period: float = PERIOD,
    *,
    what: str = "",
) -> None:
    """Wait until ``predicate()`` is true; raise :class:`AssertionError` after ``timeout``.

    Parameters
    ----------
    predicate
        Called until it returns something true.
    timeout
        Seconds until giving up.
    fail_func
        Called before raising, e.g. to log state for the failure.
    period
        Seconds between calls.
    what
        Names the condition in the error message.

    Examples
    --------
    >>> poll_for(lambda: True, what="nothing")
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            _fail(predicate, timeout, what, fail_func)
        time.sleep(period)


async def async_poll_for(
    predicate: Callable[[], Any],
    timeout: float = DEADLINE,
    fail_func: Callable[[], None] | None = None,
    period: float = PERIOD,
    *,
    what: str = "",
) -> None:
    """:func:`poll_for` for coroutines: yields to the event loop between calls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            _fail(predicate, timeout, what, fail_func)
        await asyncio.sleep(period)
