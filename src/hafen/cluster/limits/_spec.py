"""Validation of limit names, settings and ``limits=`` annotations.

Everything a user passes about a limit is checked here, on the client before a request leaves it
and again on the scheduler when a request or an annotated task arrives, so a mistake fails with a
:class:`~hafen.errors.LimitError` that names the problem instead of a task that never runs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from dask.utils import format_bytes, parse_bytes

from hafen.cluster._config import UNSET, option
from hafen.errors import LimitError

__all__ = [
    "ANNOTATION",
    "RESERVED_PREFIX",
    "LimitSpec",
    "check_name",
    "make_spec",
    "parse_annotation",
    "parse_memory",
    "parse_rate",
]

#: The annotation that puts a task under limits: ``dask.annotate(limits=["postgres"])``.
ANNOTATION = "limits"

#: Names of hafen's own rows in ``hafen.limits()`` (the back-pressure guard) start with this.
RESERVED_PREFIX = "hafen."

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
_RATE = re.compile(
    r"^\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<per>\d+(?:\.\d+)?)?\s*"
    r"(?P<unit>ms|s|sec|second|m|min|minute|h|hr|hour|d|day)s?\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}


def check_name(name: Any) -> str:
    """Return ``name`` if it is a valid limit name, else raise :class:`LimitError`."""
    if not isinstance(name, str):
        raise LimitError(f"a limit name must be a string, got {type(name).__name__} {name!r}")
    if not _NAME.match(name):
        raise LimitError(
            f"invalid limit name {name!r}: use 1 to 128 letters, digits or '_.:/-', "
            "starting with a letter or digit"
        )
    if name.startswith(RESERVED_PREFIX):
        raise LimitError(
            f"invalid limit name {name!r}: names starting {RESERVED_PREFIX!r} are hafen's"
        )
    return name


def parse_rate(rate: Any) -> float:
    """Return a rate in grants per second from ``"20/s"``, ``"100/min"``, ``"5/h"`` or a number.

    A number is read as grants per second. Raises :class:`LimitError` for anything else, and
    for rates that are not positive.
    """
    if isinstance(rate, bool):
        raise LimitError(f"a rate must be like '20/s' or '100/min', got {rate!r}")
    if isinstance(rate, int | float):
        per_second = float(rate)
    elif isinstance(rate, str):
        match = _RATE.match(rate)
        if not match:
            raise LimitError(
                f"invalid rate {rate!r}: expected a count per unit like '20/s', '100/min', "
                "'5/h' or '1/30s'"
            )
        per = float(match.group("per") or 1.0)
        seconds = per * _UNIT_SECONDS[match.group("unit").lower()]
        if seconds <= 0:
            raise LimitError(f"invalid rate {rate!r}: the period must be positive")
        per_second = float(match.group("count")) / seconds
    else:
        raise LimitError(f"a rate must be like '20/s' or '100/min', got {rate!r}")
    if not per_second > 0 or per_second == float("inf"):
        raise LimitError(f"a rate must be positive and finite, got {rate!r}")
    return per_second


def parse_memory(memory: Any, *, what: str = "memory") -> int:
    """Return a size in bytes from ``"2GiB"``, ``"512MB"`` or a number of bytes (> 0)."""
    if isinstance(memory, bool) or not isinstance(memory, int | float | str):
        raise LimitError(f"{what} must be a size like '2GiB' or a number of bytes, got {memory!r}")
    try:
        nbytes = parse_bytes(memory) if isinstance(memory, str) else int(memory)
    except (ValueError, TypeError):
        raise LimitError(f"invalid size {memory!r} for {what}: expected e.g. '2GiB'") from None
    if nbytes <= 0:
        raise LimitError(f"{what} must be positive, got {memory!r}")
    return nbytes


def _check_size(value: Any, *, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise LimitError(f"{what} must be >= {minimum}, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class LimitSpec:
    """The settings of one limit, validated.

    ``concurrency`` ``None`` means no cap on slots (a pure rate limit); 0 pauses the limit.
    ``rate`` is in grants per second (``None``: no rate), ``rate_text`` as the user gave it.
    ``results`` caps the results of the limit's tasks alive in the cluster (granted and not yet
    released), ``memory`` their bytes (``None``: no cap).
    """

    name: str
    concurrency: int | None
    rate: float | None
    rate_text: str | None
    burst: int
    results: int | None = None
    memory: int | None = None

    @property
    def counts_results(self) -> bool:
        """Whether the limit follows its tasks' results (``results=`` or ``memory=``)."""
        return self.results is not None or self.memory is not None

    def to_dict(self) -> dict[str, Any]:
        """The concurrency and rate settings (what a limit had before results and memory)."""
        return {
            "concurrency": self.concurrency,
            "rate": self.rate_text,
            "rate_per_second": self.rate,
            "burst": self.burst,
        }

    def settings(self) -> dict[str, Any]:
        """Every setting: :meth:`to_dict` plus ``results``, ``memory`` and ``memory_text``."""
        return {
            **self.to_dict(),
            "results": self.results,
            "memory": self.memory,
            "memory_text": None if self.memory is None else format_bytes(self.memory),
        }


def make_spec(
    name: Any,
    concurrency: Any = None,
    rate: Any = None,
    burst: Any = None,
    *,
    results: Any = None,
    memory: Any = None,
    default_burst: Any = UNSET,
) -> LimitSpec:
    """Validate the settings of a limit and return them as a :class:`LimitSpec`.

    Without ``burst`` the limit banks ``default_burst`` tokens (by default dask config
    ``hafen.limits.burst``; the scheduler extension passes the value it was built with).
    """
    name = check_name(name)
    if concurrency is None and rate is None and results is None and memory is None:
        raise LimitError(
            f"limit {name!r}: give concurrency=, rate= or both (and/or results=, memory=)"
        )
    if concurrency is not None:
        concurrency = _check_size(concurrency, what=f"limit {name!r}: concurrency", minimum=0)
    if results is not None:
        results = _check_size(results, what=f"limit {name!r}: results", minimum=1)
    nbytes = None if memory is None else parse_memory(memory, what=f"limit {name!r}: memory")
    per_second = None if rate is None else parse_rate(rate)
    if burst is None:
        burst = option("hafen.limits.burst", default_burst, argument="default_burst")
    else:
        burst = _check_size(burst, what=f"limit {name!r}: burst", minimum=1)
        if rate is None:
            raise LimitError(f"limit {name!r}: burst= only applies together with rate=")
    rate_text = None if rate is None else (rate if isinstance(rate, str) else f"{rate:g}/s")
    return LimitSpec(name, concurrency, per_second, rate_text, burst, results, nbytes)


def parse_annotation(value: Any) -> tuple[str, ...]:
    """Return the limit names of a ``limits=`` annotation: a name or a list of names."""
    names: Iterable[Any]
    if isinstance(value, str):
        names = [value]
    elif isinstance(value, list | tuple | set | frozenset):
        names = sorted(value) if isinstance(value, set | frozenset) else value
    else:
        raise LimitError(
            f"the limits= annotation must be a limit name or a list of names, got {value!r}"
        )
    result: list[str] = []
    for name in names:
        check_name(name)
        if name not in result:
            result.append(name)
    if not result:
        raise LimitError("the limits= annotation names no limit")
    return tuple(result)
