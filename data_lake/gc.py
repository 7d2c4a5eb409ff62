"""Garbage collection: delete the objects of a lake that no branch or tag can reach.

What is removed (Icechunk's ``Repository.garbage_collect``):

- chunks, manifests, snapshots, transaction logs and attribute files that no branch, no tag and
  no ancestor of either references: above all the chunks of writes that never committed. An
  append writes its segments in a writable Icechunk session and only its commit makes them
  reachable, so an append that failed or was killed leaves its chunk files behind (≈ 4 MB per
  failed append of a typical batch). Also the snapshot of a commit that lost a conflict.
- with ``expire_older_than`` (opt-in; CLI ``--expire-snapshots-older-than``): history older than
  that is first cut from every branch and tag (``Repository.expire_snapshots``), so the snapshots
  of that age that no branch or tag points at directly, and the chunks only they held (episodes
  deleted since, segments compacted since), are removed too.

What is never removed:

- anything younger than ``min_age`` (default :data:`DEFAULT_MIN_AGE`, one day). Another process
  may be in the middle of a write: it has written its chunks and not yet committed (it may be
  waiting for the commit lock this collection holds), so its chunks are unreachable *for now*.
  Deleting them would make its commit reference missing chunks. Use ``min_age=0`` only when you
  know no writer is running anywhere.
- any snapshot in the history of a branch or a tag, unless you expire history. By default nothing
  is expired: training runs and checkpoints record the snapshot id they read
  (``lake.ref=<snapshot id>``), and that id must keep resolving. Expired snapshot ids stop
  resolving unless a tag or branch points at them directly.
- branches and tags: expiry never deletes them (``delete_expired_branches=False``,
  ``delete_expired_tags=False``); tag a snapshot before expiring to keep it.
- refs, the repository config and the lake's commit-lock file.

A collection holds the lake's commit lock (:func:`data_lake.storage.commit_lock`), so no commit
of this package lands mid-collection.

Dry runs: Icechunk's own dry run only counts. For a local lake the exact list of files is computed
by running the real collection on a copy of the lake directory made next to it (chunks and
manifests hard-linked, so the copy is cheap and keeps every file's modification time; the small
metadata files copied with their times, so nothing done to the copy can touch the lake), diffing
the two listings and deleting the copy. Other storage reports Icechunk's counts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import icechunk as ic

from data_lake.lake import Lake
from data_lake.storage import LOCK_NAME, commit_lock

DEFAULT_MIN_AGE = dt.timedelta(days=1)

# object kind -> the top-level directory Icechunk keeps it in (local storage)
KIND_DIRS: dict[str, str] = {
    "chunks": "chunks",
    "manifests": "manifests",
    "snapshots": "snapshots",
    "transaction_logs": "transactions",
    "attributes": "attributes",
}
_DIR_KINDS = {d: k for k, d in KIND_DIRS.items()}
_LINKED_DIRS = ("chunks", "manifests")  # written once and never rewritten: hard-linked into a dry-run copy
_STAGING = re.compile(r"#\d+$")  # object_store writes a local file as "<name>#<n>", then renames it
_AGE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_UNIT_NAMES = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclasses.dataclass(frozen=True)
class GCReport:
    """What a collection removed, or would remove (``dry_run``).

    ``counts`` are per kind (:data:`KIND_DIRS`), from Icechunk. ``bytes_by_kind`` and ``files``
    (absolute paths) are known for local lakes only, else None.
    """

    uri: str
    dry_run: bool
    min_age_s: float
    cutoff: str  # ISO 8601 UTC: objects written at or after it were kept
    expire_before: str | None  # ISO 8601 UTC: history older than this was expired; None: no expiry
    expired_snapshots: tuple[str, ...]  # expired snapshot ids that no branch or tag points at
    counts: Mapping[str, int]
    bytes: int
    bytes_by_kind: Mapping[str, int] | None
    files: tuple[str, ...] | None

    @property
    def objects(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["counts"] = dict(self.counts)
        d["bytes_by_kind"] = dict(self.bytes_by_kind) if self.bytes_by_kind is not None else None
        d["files"] = list(self.files) if self.files is not None else None
        d["expired_snapshots"] = list(self.expired_snapshots)
        d["objects"] = self.objects
        return d


def parse_age(text: str, flag: str = "--min-age", *, bare_unit: str | None = None) -> dt.timedelta:
    """``0``, ``90s``, ``30m``, ``12h``, ``1d``, ``2w`` (or ``1.5d``) as a timedelta.

    A number without a unit is read in ``bare_unit``; with ``bare_unit=None`` only ``0`` may
    omit it. Anything else raises ``ValueError`` naming ``flag`` and the expected format.
    """
    m = _AGE.fullmatch(text.strip())
    expected = "an age such as 0, 30m, 12h, 1d or 2w (units s, m, h, d, w)"
    if bare_unit is not None:
        expected += (
            f"; a plain number is in {dict(s='seconds', m='minutes', h='hours', d='days', w='weeks')[bare_unit]}"
        )
    if m is None:
        raise ValueError(f"{flag}: expected {expected}, got {text!r}")
    value, unit = float(m.group(1)), m.group(2) or bare_unit
    if unit is None:
        if value != 0:
            raise ValueError(f"{flag}: {text!r} needs a unit: expected {expected}")
        unit = "s"
    return dt.timedelta(seconds=value * _UNIT_S[unit])


def format_age(age: dt.timedelta) -> str:
    """The inverse of :func:`parse_age` for whole units: ``1d``, ``12h``, ``0``."""
    s = age.total_seconds()
    if s == 0:
        return "0"
    for unit in ("w", "d", "h", "m"):
        if s % _UNIT_S[unit] == 0:
            return f"{int(s // _UNIT_S[unit])}{unit}"
    return f"{s:g}s"


def collect_garbage(
    lake: Lake,
    *,
    min_age: dt.timedelta = DEFAULT_MIN_AGE,
    expire_older_than: dt.timedelta | None = None,
    dry_run: bool = False,
) -> GCReport:
    """Delete (or with ``dry_run`` list) the lake's objects that no branch or tag reaches.

    Objects younger than ``min_age`` are kept whatever they are (a concurrent writer's chunks are
    unreachable until its commit). ``expire_older_than`` first cuts history older than that from
    every branch and tag, so those snapshot ids stop resolving unless a branch or tag points at
    them; branches and tags themselves are never deleted. Holds the lake's commit lock throughout.
    """
    if min_age < dt.timedelta(0):
        raise ValueError(f"min_age must be >= 0, got {min_age}")
    if expire_older_than is not None and expire_older_than < dt.timedelta(0):
        raise ValueError(f"expire_older_than must be >= 0, got {expire_older_than}")
    loc = lake.location
    if dry_run and expire_older_than is not None and loc.scheme != "file":
        raise ValueError(
            f"a dry run with snapshot expiry needs a local lake: Icechunk cannot simulate expiry on {loc.scheme}:// "
            "storage (run without --expire-snapshots-older-than to see what gc alone would remove)"
        )
    with commit_lock(loc):
        if not dry_run and loc.scheme == "file":
            lake.remove_stale_staging()  # a killed writer's staging branch would keep its chunks
        now = dt.datetime.now(dt.UTC)  # after taking the lock, which can take a while
        cutoff = now - min_age
        expire_before = now - expire_older_than if expire_older_than is not None else None
        files: list[str] | None = None
        sizes: dict[str, int] = {}
        if loc.scheme == "file" and dry_run:
            expired, summary, removed, sizes = _on_copy(Path(loc.path), cutoff, expire_before)
            files = [os.path.join(loc.path, rel) for rel in removed]
        elif loc.scheme == "file":
            before = _listing(Path(loc.path))
            expired, summary = _collect(lake.repo, cutoff, expire_before, dry_run=False)
            after = _listing(Path(loc.path))
            removed = sorted(set(before) - set(after))
            sizes = {rel: before[rel] for rel in removed}
            files = [os.path.join(loc.path, rel) for rel in removed]
        else:
            expired, summary = _collect(lake.repo, cutoff, expire_before, dry_run=dry_run)
    counts = {
        "chunks": summary.chunks_deleted,
        "manifests": summary.manifests_deleted,
        "snapshots": summary.snapshots_deleted,
        "transaction_logs": summary.transaction_logs_deleted,
        "attributes": summary.attributes_deleted,
    }
    by_kind: dict[str, int] | None = None
    if files is not None:
        by_kind = dict.fromkeys(KIND_DIRS, 0)
        for rel, size in sizes.items():
            by_kind[_kind_of(rel)] += size
    return GCReport(
        uri=loc.uri,
        dry_run=dry_run,
        min_age_s=min_age.total_seconds(),
        cutoff=cutoff.isoformat(),
        expire_before=expire_before.isoformat() if expire_before is not None else None,
        expired_snapshots=tuple(sorted(expired)),
        counts=counts,
        bytes=sum(sizes.values()) if files is not None else summary.bytes_deleted,
        bytes_by_kind=by_kind,
        files=tuple(files) if files is not None else None,
    )


def _collect(
    repo: ic.Repository, cutoff: dt.datetime, expire_before: dt.datetime | None, *, dry_run: bool
) -> tuple[set[str], ic.GCSummary]:
    """Expire history (if asked), then collect; returns the expired snapshot ids no ref points at."""
    expired: set[str] = set()
    if expire_before is not None:
        expired = set(repo.expire_snapshots(expire_before, delete_expired_branches=False, delete_expired_tags=False))
        # Icechunk also returns snapshots a branch or tag points at (they stay): keep the ones that go
        expired -= {repo.lookup_branch(b) for b in repo.list_branches()}
        expired -= {repo.lookup_tag(t) for t in repo.list_tags()}
    return expired, repo.garbage_collect(cutoff, dry_run=dry_run)


def _on_copy(
    root: Path, cutoff: dt.datetime, expire_before: dt.datetime | None
) -> tuple[set[str], ic.GCSummary, list[str], dict[str, int]]:
    """Run the real collection on a copy of the lake directory; returns what it removed there."""
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.gc-dry-run-", dir=root.parent))
    except OSError as e:
        raise OSError(
            f"a dry run of gc copies the lake (hard links) into a scratch directory next to it, "
            f"and {root.parent} is not writable: {e}"
        ) from e
    try:
        copy = scratch / root.name
        _link_tree(root, copy)
        before = _listing(copy)
        repo = ic.Repository.open(ic.local_filesystem_storage(str(copy)))
        expired, summary = _collect(repo, cutoff, expire_before, dry_run=False)
        del repo
        removed = sorted(set(before) - set(_listing(copy)))
        return expired, summary, removed, {rel: before[rel] for rel in removed}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a lake directory: chunks and manifests as hard links (falling back to copies where the
    filesystem refuses links), the rest copied; modification times are kept either way."""
    for dirpath, _dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        out = dst / rel_dir
        out.mkdir(parents=True, exist_ok=True)
        top = Path(rel_dir).parts[0] if rel_dir != "." else ""
        for name in filenames:
            if (rel_dir == "." and name == LOCK_NAME) or _STAGING.search(name):
                continue
            s, d = os.path.join(dirpath, name), out / name
            if top in _LINKED_DIRS:
                try:
                    os.link(s, d)
                    continue
                except OSError:
                    pass
            shutil.copy2(s, d)


def _listing(root: Path) -> dict[str, int]:
    """Relative path -> size of every object gc may delete (files under the kinds' directories)."""
    out: dict[str, int] = {}
    for d in KIND_DIRS.values():
        for dirpath, _dirnames, filenames in os.walk(root / d):
            for name in filenames:
                if _STAGING.search(name):
                    continue
                p = os.path.join(dirpath, name)
                try:
                    out[os.path.relpath(p, root)] = os.stat(p).st_size
                except FileNotFoundError:  # removed meanwhile
                    pass
    return out


def _kind_of(rel: str) -> str:
    return _DIR_KINDS[Path(rel).parts[0]]


__all__ = ["DEFAULT_MIN_AGE", "KIND_DIRS", "GCReport", "collect_garbage", "format_age", "parse_age"]
