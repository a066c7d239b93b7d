"""The optimistic commit loop, and the retry policy of commits.

A commit is the exclusive creation of the next log entry (:meth:`Storage.put_if_absent`). A
writer that loses the race reads what landed, asks :func:`~hafen.datasets._actions.conflicts`
whether it touched what this commit read, and either plans again on top of it or raises
:class:`ConflictError`. How often it tries again is :func:`retry_policy`: the
``commit_retries`` setting (``HAFEN_COMMIT_RETRIES``), the retries after the first attempt.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable

from hafen.config import DEFAULT_COMMIT_RETRIES, Settings, get_settings
from hafen.datasets import _logstore
from hafen.datasets._actions import Commit, DatasetState, conflicts, log_path, now, replay
from hafen.datasets._plateau import adopt_plateau, open_state
from hafen.datasets._retry import RetryPolicy
from hafen.datasets._storage import Storage
from hafen.errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    DatasetExistsError,
    HafenWarning,
    StorageError,
)

__all__ = ["COMMIT_RETRY", "commit", "retry_policy"]

#: Commits back off a random time up to 5 ms after the first lost race, doubling to 0.5 s.
COMMIT_RETRY = RetryPolicy(retries=DEFAULT_COMMIT_RETRIES, backoff=0.0025, max_backoff=0.5)


def retry_policy(settings: Settings | None = None) -> RetryPolicy:
    """The commit retry policy with the retries of the ``commit_retries`` setting."""
    retries = (get_settings() if settings is None else settings).commit_retries
    return dataclasses.replace(COMMIT_RETRY, retries=retries)


def commit(
    storage: Storage,
    base: DatasetState | None,
    plan: Callable[[DatasetState | None], Commit],
    *,
    retry_conflicts: bool = False,
    retry: RetryPolicy | None = None,
    checkpoint_interval: int = 50,
    exclusive_create: bool = True,
    before_attempt: Callable[[], None] | None = None,
) -> DatasetState:
    """Land the commit ``plan(state)`` as the next version; return the new state.

    ``plan`` builds the commit from the state it applies to; it is called again with fresh
    state after a conflict when ``retry_conflicts`` is set. ``retry`` (:func:`retry_policy`
    when None) says how many times a lost race is tried again, and how long to back off.
    Raises :class:`ConflictError` (nothing landed) or :class:`DatasetExistsError` when a create
    loses to another and ``exclusive_create`` is set; without it, the losing create is
    re-planned on top.
    ``before_attempt`` runs before every attempt and may raise to give up (nothing landed).
    Once the entry is created, nothing raises: a checkpoint that cannot be written is a
    :class:`HafenWarning`.
    """
    policy = retry_policy() if retry is None else retry
    state = base
    if state is not None and state.origin == "plateau":
        state = adopt_plateau(storage, state)

    def planned(on: DatasetState | None) -> Commit:
        # the version it was planned on: landing on top of commits it does not conflict with
        # does not make it have read them
        return dataclasses.replace(plan(on), read_version=-1 if on is None else on.version)

    entry = planned(state)
    for attempt in range(policy.attempts):
        if before_attempt is not None:
            before_attempt()
        if state is not None and time.time() - state.observed > _logstore.MIN_LOG_RETENTION / 2:
            state, entry = _catch_up(storage, state, entry, planned, retry_conflicts)
        entry = dataclasses.replace(
            entry, version=0 if state is None else state.version + 1, timestamp=now()
        )
        payload = json.dumps(entry.to_json(), separators=(",", ":")).encode()
        attempted = time.time()
        try:
            created = storage.put_if_absent(log_path(entry.version), payload)
        except StorageError as exc:
            raise CommitOutcomeUnknownError(
                f"{storage.full(log_path(entry.version))}: the commit may or may not have "
                f"landed: {exc}"
            ) from exc
        if created:
            return _landed(storage, state, entry, attempted, checkpoint_interval)
        if state is None:
            if exclusive_create:
                raise DatasetExistsError(f"a dataset was created at {storage.url} concurrently")
            # another writer created it first: become an ordinary commit on top of theirs
            state = open_state(storage)
            entry = planned(state)
            continue
        # back off before reading what landed, so the next create follows the read at once
        policy.sleep(attempt + 1)
        state, entry = _catch_up(storage, state, entry, planned, retry_conflicts)
    raise ConflictError(
        f"{storage.url}: gave up after {policy.attempts} attempt(s) to commit under contention "
        "(HAFEN_COMMIT_RETRIES sets how many retries follow the first)"
    )


def _catch_up(
    storage: Storage,
    state: DatasetState,
    entry: Commit,
    plan: Callable[[DatasetState | None], Commit],
    retry_conflicts: bool,
) -> tuple[DatasetState, Commit]:
    """The latest state after ``state`` and the commit to land on it (re-planned if needed).

    Raises :class:`ConflictError` when what landed meanwhile conflicts with ``entry`` and
    ``retry_conflicts`` is not set.
    """
    started = time.time()
    # the base's own entry is read again: only while it is still there can the absence of the
    # next one mean that it was never created (rather than created, retired and deleted)
    landed = _logstore.entries_from_if_current(storage, state)
    if landed is None:
        # the base is older than every retained version: what landed since cannot be checked
        fresh = open_state(storage)
        reasons = (
            []
            if entry.partitions_read is None and entry.may_match is None
            else [f"the commits after version {state.version} were vacuumed before this one"]
        )
    else:
        fresh = replay(state, landed) if landed else state
        reasons = conflicts(entry, landed)
    fresh = dataclasses.replace(fresh, observed=started)
    if reasons:
        if not retry_conflicts:
            raise ConflictError(
                f"{storage.url}: {entry.operation} based on version {state.version} "
                f"conflicts with concurrent commits: {'; '.join(reasons)}"
            )
        entry = plan(fresh)
    elif entry.schema is not None and fresh.schema != state.schema:
        entry = plan(fresh)
    return fresh, entry


def _landed(
    storage: Storage,
    state: DatasetState | None,
    entry: Commit,
    attempted: float,
    checkpoint_interval: int,
) -> DatasetState:
    """The state after ``entry``, which has just landed; never raises for what follows."""
    new_state = replay(state, [entry])
    if entry.version > 0 and entry.version % checkpoint_interval == 0:
        try:
            _logstore.write_checkpoint(storage, new_state)
        except Exception as exc:  # the version stands; opening reads a few more entries
            warnings.warn(
                f"{storage.url}: version {entry.version} landed, but its checkpoint "
                f"could not be written: {exc}",
                HafenWarning,
                stacklevel=4,
            )
    # no entry after ours could exist before ours did
    return _logstore.remember(storage, new_state, attempted)
