"""The token bucket behind a limit's ``rate``.

A bucket fills at ``rate`` tokens per second up to ``burst`` tokens and starts full; a grant takes
one token. With ``burst=1`` grants are spaced evenly, ``1 / rate`` apart. Time comes from a
``clock`` callable (seconds, monotonic), so tests can drive a bucket without waiting.
"""

from __future__ import annotations

from collections.abc import Callable

from distributed.metrics import monotonic

__all__ = ["TokenBucket"]


class TokenBucket:
    """Tokens at ``rate`` per second, at most ``burst`` banked; starts full.

    Parameters
    ----------
    rate : float
        Tokens per second, > 0.
    burst : int
        Tokens banked at most, >= 1.
    clock : callable, optional
        Returns the time in seconds; default ``distributed.metrics.monotonic``.

    Examples
    --------
    >>> now = 0.0
    >>> bucket = TokenBucket(20.0, 1, clock=lambda: now)
    >>> bucket.ready(), bucket.take(), bucket.ready(), bucket.due_in()
    (True, None, False, 0.05)
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.refilled = clock()

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, burst={self.burst}, tokens={self.tokens:.3f})"

    def refill(self) -> None:
        """Add the tokens earned since the last refill, up to ``burst``."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now

    def ready(self) -> bool:
        """Whether a token is there (as of the last refill)."""
        return self.tokens >= 1.0

    def take(self) -> None:
        """Take one token (the caller checked :meth:`ready`)."""
        self.tokens -= 1.0

    def due_in(self) -> float:
        """Seconds until the next token (0 if one is there), as of the last refill."""
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def reconfigure(self, rate: float, burst: int) -> None:
        """Change rate and burst, keeping the tokens earned so far (at most the new burst)."""
        self.refill()
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, float(burst))
