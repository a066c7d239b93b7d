"""One retry policy: how many retries follow a first attempt, and the backoff between them.

Shared by the optimistic commit loop, the delete that plans again after a conflict, and the
exclusive creates of the cloud stores, so that "retries" means the same everywhere: the
attempts after the first one (``retries=0``: one attempt, no retry).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after a first attempt, with exponential backoff and full jitter.

    The pause before retry ``n`` (1 = the first retry) is a random time up to
    ``backoff * 2**n``, at most ``max_backoff``.

    >>> policy = RetryPolicy(retries=2, backoff=0.1, max_backoff=1.0)
    >>> policy.attempts
    3
    """

    retries: int
    backoff: float
    max_backoff: float

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    @property
    def attempts(self) -> int:
        """How many attempts in all: the first one and its retries."""
        return self.retries + 1

    def pause(self, retry: int, *, at_least: float = 0.0) -> float:
        """Seconds to wait before retry number ``retry``; ``at_least`` (a server's Retry-After)
        raises it, up to ``max_backoff``."""
        jittered = random.uniform(0, min(self.max_backoff, self.backoff * 2**retry))
        return max(jittered, min(at_least, self.max_backoff))

    def sleep(self, retry: int, *, at_least: float = 0.0) -> None:
        """Wait before retry number ``retry`` (see :meth:`pause`)."""
        time.sleep(self.pause(retry, at_least=at_least))
