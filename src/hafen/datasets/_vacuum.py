"""Vacuum: removing the files no retained version references, and retiring old log entries."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from hafen.config import get_settings, parse_duration
from hafen.datasets import _logstore
from hafen.datasets._actions import LOG_DIR, Commit, DatasetState, checkpoint_path
from hafen.datasets._indices import INDEX_DIR
from hafen.datasets._plateau import open_state, view_references
from hafen.datasets._storage import FileInfo, Storage
from hafen.errors import ConfigError, ConflictError, DatasetNotFoundError, VersionVacuumedError

__all__ = ["SCRATCH_DIR", "VacuumReport", "vacuum"]

#: Intermediate files of multi-phase writers (reshuffle); vacuum sweeps what a dead one left.
SCRATCH_DIR = "_hafen/scratch"


@dataclass
class VacuumReport:
    """What a vacuum removed (or, with ``dry_run``, would remove)."""

    removed_files: list[str] = field(default_factory=list)
    removed_versions: list[int] = field(default_factory=list)
    bytes_freed: int = 0
    kept_young: int = 0  # unreferenced files kept because they are inside the grace period


def vacuum(
    storage: Storage,
    *,
    retain_versions: int | None = None,
    grace_period: str | float | None = None,
    dry_run: bool = False,
) -> VacuumReport:
    """Remove the files of the dataset at ``storage`` that no retained version references and
    older than ``grace_period``; retire the log entries of the versions not retained.

    See :meth:`hafen.datasets.Dataset.vacuum`.
    """
    settings = get_settings()
    retain = settings.retain_versions if retain_versions is None else retain_versions
    if isinstance(retain, bool) or not isinstance(retain, int) or retain < 1:
        raise ConfigError(f"retain_versions must be a whole number >= 1, got {retain!r}")
    grace = parse_duration(settings.grace_period if grace_period is None else grace_period)
    log_retention = parse_duration(settings.log_retention)
    if log_retention < _logstore.MIN_LOG_RETENTION:
        raise ConfigError(
            f"log_retention must be at least {_logstore.MIN_LOG_RETENTION:.0f} s, "
            f"got {settings.log_retention!r}"
        )
    # the cutoff is taken before the log is read: a commit that lands after the read is
    # not seen, but its files are younger than the cutoff (a write commits only while its
    # files are younger than the grace period). Blob stores date files to the second.
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=grace + storage.modified_resolution)
    floor, base, newer = _retained(storage, retain)
    referenced = set(base.files) | {p.path for p in base.index_parts}
    for c in newer:
        referenced.update(f.path for f in c.adds)
        referenced.update(p.path for p in c.index_parts)
    referenced |= view_references(storage)
    report = VacuumReport()
    candidates: list[FileInfo] = []
    for directory in ("table", "indices", INDEX_DIR):
        candidates.extend(storage.walk(directory))
    candidates.extend(i for i in storage.list(LOG_DIR) if "/.tmp-" in "/" + i.path)
    candidates.extend(storage.walk(SCRATCH_DIR))  # left by writers that died mid-job
    for info in candidates:
        if info.path in referenced or info.path.endswith("_common_metadata"):
            continue
        if info.modified is not None and info.modified > cutoff:
            report.kept_young += 1
            continue
        report.removed_files.append(info.path)
        report.bytes_freed += info.size
    report.removed_versions = _logstore.retire(storage, floor, dry_run=True)
    if dry_run:
        return report
    storage.delete(report.removed_files)
    if floor > 0:
        # the checkpoint at the oldest retained version comes first: readers start there
        # once the entries below it are retired
        if not storage.exists(checkpoint_path(floor)):
            _logstore.write_checkpoint(storage, base)
        report.removed_versions = _logstore.retire(storage, floor)
        old_checkpoints = [c for c in _logstore.list_checkpoints(storage) if c < floor]
        storage.delete([checkpoint_path(c) for c in old_checkpoints])
        _logstore.delete_retired(storage, floor, older_than=log_retention)
    return report


def _retained(storage: Storage, retain: int) -> tuple[int, DatasetState, list[Commit]]:
    """The oldest retained version, its state, and the entries after it up to the latest.

    A concurrent or earlier vacuum may have retired more than ``retain`` asks to drop; the
    retained versions then start above the newest retired entry.
    """
    for _ in range(5):
        latest = open_state(storage)
        if latest.origin != "hafen":
            raise DatasetNotFoundError(f"{storage.url}: nothing to vacuum (no hafen log)")
        wanted = max(0, latest.version - retain + 1)
        newer = _logstore.read_entries_down(storage, latest.version, stop=wanted + 1)
        if len(newer) == latest.version - wanted:
            floor = wanted
        else:  # the walk down met a retired entry: everything below it is retired too
            floor = newer[-1].version if newer else latest.version
        try:
            base = latest if floor == latest.version else open_state(storage, floor)
            len(base.files)  # the files of the oldest retained version, read now
        except VersionVacuumedError:
            continue  # a concurrent vacuum retired more meanwhile: look again
        return floor, base, [c for c in newer if c.version > floor]
    raise ConflictError(
        f"{storage.url}: another vacuum kept retiring versions while this one looked for the "
        "oldest retained version; nothing was removed (it has done the work: run again later)"
    )
