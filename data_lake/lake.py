"""The episode lake: a versioned store of robot episodes on Icechunk + Zarr v3.

Layout of one snapshot (the Zarr hierarchy inside the Icechunk repository)::

    /                                  root group; attrs["robot_rl_lake"] = {format, created_at, schema}
    └── segments/
        └── <yyyymmddTHHMMSS.ffffff>-<hex>/     one immutable segment (see data_lake.segment)
            ├── episode_ends                    int64 (E,)
            ├── steps/images/<camera>           uint8 (T, H, W, 3)
            ├── steps/depth/<camera>            float32|uint16 (T, H, W)         optional
            ├── steps/state                     float32 (T, S)
            ├── steps/action                    float32 (T, A)
            ├── steps/reward                    float32 (T,)
            ├── steps/is_first|is_last|is_terminal   bool (T,)
            ├── steps/timestamp_ns              int64 (T,)
            ├── steps/achieved_goal             float32 (T, G)                   optional
            ├── steps/sim_state                 float64 (T, D)                   optional
            ├── steps/action_logp               float32 (T,)      optional, per episode (NaN rows: absent)
            ├── goals/images/<camera>, goals/state   (E, ...)                   commanded goals
            ├── labels/<task>                   bool (T,)      success labels, source "sim"
            ├── labels/<task>@<source>          bool (T,)      other sources ("user", detector ids);
            │                                                  attrs: source, created_at, provenance
            └── label_confidence/<task>@<source>   float32 (T,)   in [0, 1], 0: unknown
            attrs["episodes"]: episode_id, length, task, language, success, source, robot,
                               created_at, metadata, and has_goal per goal key

Rules:
- Every write (append, delete, compact) is one Icechunk commit: all of it lands or none does.
  Commits to a local lake hold a file lock (Icechunk's local storage can lose one of two
  concurrent commits); each write rebases onto the branch tip before committing, so writers that
  add different segments never conflict. A conflicting write (two first appends both fixing the
  schema, a compaction racing a delete) is retried from the new tip.
- The first append fixes the schema (field keys, dtypes, per-step shapes, cameras); later
  appends must match it exactly. ``allow_new_fields=True`` adds new fields to the schema;
  episodes stored before lack them (their segments have no such array). The per-episode step
  fields (``action_logp``) are the exception: any episode may lack them, and they join the schema
  with the first episode that has one, without ``allow_new_fields``.
- ``episode_id`` is a content hash: appending an episode already on the branch is a no-op that is
  counted in ``AppendResult.skipped_duplicates``.
- Readers pin a snapshot (:meth:`Lake.checkout`); the same snapshot id returns the same bytes
  forever, whatever is committed later.
- Open a lake inside each process: Icechunk warns that forking after opening a repository can
  deadlock, so a ``Lake`` refuses to be used in a process other than the one that opened it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as dt
import errno
import getpass
import itertools
import json
import os
import random
import re
import shutil
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as zarr_sync

from data_lake import parallel
from data_lake.episode import PER_EPISODE_STEP_KEYS, Episode
from data_lake.segment import (
    SIM_SOURCE,
    SegmentData,
    UnreadableEpisodesError,
    attrs_of,
    concat_segments,
    drop_absent,
    label_key,
    merge_attrs,
    new_segment_name,
    read_segment,
    read_segment_episodes,
    split_label_key,
    walk_arrays,
    write_labels,
    write_segment,
)
from data_lake.storage import (
    Location,
    commit_lock,
    early_writeback,
    fsync_files,
    fsync_new,
    fsync_path,
    fsync_ref,
    fsync_tree,
    listing,
    make_storage,
    new_files,
    parse_uri,
    s3_endpoint,
)
from data_lake.validate import (
    EpisodeValidationError,
    Problem,
    Schema,
    new_field_problems,
    schema_differences,
    schema_of,
    validate_episode,
)
from data_lake.version import __version__

MARKER = "robot_rl_lake"
FORMAT = 1
DEFAULT_URI = "./lake"
DEFAULT_SEGMENT_STEPS = 20_000
MAX_WRITE_ATTEMPTS = 8
# Object stores have no commit lock: a commit that lost the race rebases and retries after a random
# pause of up to BACKOFF_BASE_S * 2**attempt, capped at BACKOFF_MAX_S ("full jitter")
BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 2.0


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based) of a commit that conflicted."""
    return random.uniform(0.0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))


class LakeError(RuntimeError):
    """Base class for lake errors that are not about an episode's content."""


class NotALakeError(LakeError):
    pass


class UnknownRefError(LakeError):
    pass


class AnnotationError(LakeError):
    """Human labels that do not fit the lake (unknown episodes, steps out of range); ``problems``
    lists every one."""

    def __init__(self, task: str, problems: list[str]):
        self.problems = problems
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"annotations of {task!r} rejected, nothing was committed: {'; '.join(problems[:5])}{more}")


def _provenance(provenance: dict[str, Any] | None) -> dict[str, Any]:
    """A label set's provenance as plain JSON (checked: it is stored in zarr attributes)."""
    prov = dict(provenance or {})
    reserved = {"source", "created_at", "parts"} & set(prov)
    if reserved:
        raise ValueError(f"provenance may not set {sorted(reserved)} (the lake records them)")
    try:
        return dict(json.loads(json.dumps(prov)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"provenance must be JSON (str, numbers, lists, dicts), got {prov!r}: {e}") from e


def _checked_labels(
    out: np.ndarray | tuple[np.ndarray, np.ndarray], T: int, where: str, source: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """A detector's (labels bool (T,), confidence float (T,) in [0, 1] or None), checked."""
    values, conf = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
    values = np.asarray(values)
    if values.shape != (T,):
        raise LakeError(f"detector for {where} returned labels of shape {values.shape}; expected ({T},)")
    if conf is None:
        return values, None
    if source == SIM_SOURCE:
        raise LakeError(f"detector for {where} returned a confidence, but sim labels carry none; pass another source")
    conf = np.asarray(conf, dtype=np.float64)
    if conf.shape != (T,):
        raise LakeError(f"detector for {where} returned confidence of shape {conf.shape}; expected ({T},)")
    bad = ~((conf >= 0) & (conf <= 1))  # NaN included
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LakeError(
            f"detector for {where} returned confidence outside [0, 1] at {int(bad.sum())} steps "
            f"(step {i}: {float(conf[i])})"
        )
    return values, conf


class LakeStorageError(LakeError):
    """The storage under a lake failed (read-only, full, missing or damaged files)."""


def _s3_hint(low: str, loc: Location) -> str | None:
    """What to do about an S3 error (credentials, bucket, endpoint), or None when it is none of those.
    Specific codes first: the text also holds random request ids."""
    b = loc.bucket
    if "nosuchbucket" in low:
        return f"bucket {b!r} does not exist: create it first (e.g. aws s3 mb s3://{b})"
    if "no providers in chain" in low or "credential provider" in low or ("credentials" in low and "missing" in low):
        return (
            f"no AWS credentials found for bucket {b!r}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE with ~/.aws/credentials)"
        )
    if any(w in low for w in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "forbidden")):
        return (
            f"the credentials were rejected for bucket {b!r}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) and the bucket's policy"
        )
    if any(w in low for w in ("dispatch failure", "connection refused", "connect error", "dns error", "timed out")):
        where = s3_endpoint(loc) or "the AWS endpoint"
        return (
            f"could not reach {where} for bucket {b!r}: check the endpoint (?endpoint_url=... in the URI, or "
            "AWS_ENDPOINT_URL) and the network"
        )
    return None


def _storage_hint(text: str, loc: Location) -> str:
    low = text.lower()
    if loc.scheme == "s3" and (hint := _s3_hint(low, loc)):
        return hint
    if "read-only file system" in low or "erofs" in low or "os error 30" in low:
        return f"the file system holding {loc.path} is mounted read-only: remount it read-write, or copy the lake"
    if "no space left" in low or "enospc" in low or "os error 28" in low or "quota" in low:
        return (
            f"the disk holding {loc.path} is full: free space (df -h {loc.path}) and retry; "
            "`robot-rl lake gc` removes what failed writes left behind"
        )
    if "permission denied" in low or "os error 13" in low:
        return f"no permission to write under {loc.path}: fix its permissions or use another lake"
    if "not found" in low or "no such file" in low or "os error 2" in low:
        return f"a file of the lake is missing; run `robot-rl lake verify --lake {loc.uri}` for a full damage report"
    return f"run `robot-rl lake verify --lake {loc.uri}` to check the lake"


@contextlib.contextmanager
def storage_errors(what: str, loc: Location, unchanged: bool = True) -> Iterator[None]:
    """Turn Icechunk and OS errors under ``what`` into one clear :class:`LakeStorageError`: what
    failed, where, that the lake is unchanged (writes commit all or nothing), and what to do."""
    try:
        yield
    except (ic.IcechunkError, OSError) as e:
        if isinstance(e, LakeError):
            raise
        text = str(e).strip()
        lines = text.splitlines() or [type(e).__name__]
        reason = next((ln for ln in lines if "os error" in ln.lower()), lines[0])
        if loc.scheme == "s3":  # the root cause is the innermost "-> ..." line of Icechunk's chain
            reason = next((ln for ln in reversed(lines) if "->" in ln), reason).split("->", 1)[-1]
            reason = re.sub(r'Error \{ code: "(\w+)", message: "([^"]*?)\.?".*\}', r"\1: \2", reason)
        reason = re.sub(r"^[\s|│×x]*\s(?=\S)", "", reason).removeprefix("object store error ").strip()
        state = "; the lake is unchanged (nothing was committed)" if unchanged else ""
        hint = _storage_hint(text, loc)
        hint = hint[0].upper() + hint[1:]
        raise LakeStorageError(f"could not {what} at {loc.uri}: {reason[:300]}{state}. {hint}") from e


# ---------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class EpisodeRecord:
    """One row of the episode table, with where the episode lives."""

    episode_id: str
    segment: str
    index: int
    start: int
    stop: int
    task: str
    language: str | None
    success: bool | None
    source: str
    robot: str
    created_at: str
    metadata: dict[str, Any]
    goal_keys: tuple[str, ...]

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class Quarantined:
    label: str
    episode_id: str | None
    problems: list[Problem]

    def to_json(self) -> dict[str, Any]:
        return {
            "episode": self.label,
            "episode_id": self.episode_id,
            "reasons": [dataclasses.asdict(p) for p in self.problems],
        }


@dataclasses.dataclass(frozen=True)
class WriteResult:
    snapshot_id: str | None  # None when nothing was committed
    branch: str
    added: int = 0
    removed: int = 0
    skipped_duplicates: int = 0
    quarantined: tuple[Quarantined, ...] = ()
    segments_before: int = 0
    segments_after: int = 0
    conflict_retries: int = 0  # commits that lost a race with another writer and were redone

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["quarantined"] = [q.to_json() for q in self.quarantined]
        return d


@dataclasses.dataclass(frozen=True)
class CommitInfo:
    snapshot_id: str
    parent_id: str | None
    written_at: str
    message: str
    author: str
    operation: str
    episodes_added: int
    episodes_removed: int
    episodes_total: int
    metadata: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What :meth:`Lake.verify` found (``data_lake.verify``). ``problems`` holds every finding as
    one line; the same findings, structured: ``damaged_chunks`` (segment, array, chunk, rows,
    error, file, episodes), ``damaged_episodes`` (episode_id, segment, index, reason, details) and
    ``damaged_segments`` (segment, error, episodes). Each dict also carries its ``message`` line."""

    snapshot_id: str
    episodes_checked: int
    problems: list[str]
    damaged_chunks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    damaged_episodes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    damaged_segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "episodes_checked": self.episodes_checked,
            "ok": self.ok,
            "problems": self.problems,
            "damaged_chunks": self.damaged_chunks,
            "damaged_episodes": self.damaged_episodes,
            "damaged_segments": self.damaged_segments,
        }


# ---------------------------------------------------------------------------- segment names
# The segment names of snapshots, by snapshot id (this process's cache). A new snapshot's names are
# an ancestor's plus the diff between them (Icechunk's transaction logs: cost per commit, not per
# node), so a commit does not list the whole lake: listing ``segments/`` walks every node and
# chunk reference (78 ms at 151 one-episode segments, and growing; benchmarks/scale.py).
_SEGMENT_NAMES: dict[str, frozenset[str]] = {}
SEGMENT_NAMES_CACHE = 4_096  # snapshots whose names are kept (cleared whole when full)
NAME_DIFF_STEPS = 64  # ancestors searched for one with known names before listing instead


def _segment_paths(paths: Iterable[str]) -> set[str]:
    """Segment names among node paths (``/segments/<name>``; deeper nodes are not segments)."""
    out = set()
    for p in paths:
        parts = p.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "segments":
            out.add(parts[1])
    return out


def _list_segments(store: Any, path: str) -> list[str]:
    prefix = f"{path}/segments" if path else "segments"

    async def names() -> list[str]:
        return [n async for n in store.list_dir(prefix) if n != "zarr.json"]

    return zarr_sync(names())


def remember_segment_names(snapshot_id: str, names: Iterable[str]) -> None:
    """Cache the segment names of a snapshot this process just committed (known from its session)."""
    if len(_SEGMENT_NAMES) >= SEGMENT_NAMES_CACHE:
        _SEGMENT_NAMES.clear()
    _SEGMENT_NAMES[snapshot_id] = frozenset(names)


def segment_names_at(repo: ic.Repository, snapshot_id: str) -> frozenset[str]:
    """The segment names of snapshot ``snapshot_id``: cached, or a cached ancestor's names plus the
    snapshot diff since it, or (no ancestor known within ``NAME_DIFF_STEPS``) a listing."""
    known = _SEGMENT_NAMES.get(snapshot_id)
    if known is not None:
        return known
    names: set[str] | None = None
    for steps, info in enumerate(repo.ancestry(snapshot_id=snapshot_id)):
        if steps > NAME_DIFF_STEPS:
            break
        base = _SEGMENT_NAMES.get(info.id)
        if base is not None:
            diff = repo.diff(from_snapshot_id=info.id, to_snapshot_id=snapshot_id)
            names = (set(base) | _segment_paths(diff.new_groups)) - _segment_paths(diff.deleted_groups)
            break
    if names is None:
        session = repo.readonly_session(snapshot_id=snapshot_id)
        root = zarr.open_group(session.store, mode="r")
        names = set(_list_segments(session.store, "")) if "segments" in root else set()
    remember_segment_names(snapshot_id, names)
    return _SEGMENT_NAMES[snapshot_id]


# ---------------------------------------------------------------------------- pinned view
# Segment attributes by segment name, shared by every view in the process: reading each segment's
# table on every commit made commits O(segments) in round trips (≈ 1.2 ms each on a local disk;
# 0.55 s per commit at 150 segments, benchmarks/scale.py).
_SEGMENT_ATTRS: dict[str, dict[str, Any]] = {}
SEGMENT_ATTRS_CACHE = 200_000  # segments whose tables are kept (cleared whole when full)


class LakeView:
    """A read-only view of one snapshot. Everything it returns is pinned to ``snapshot_id``."""

    def __init__(self, session: ic.Session, snapshot_id: str, ref: str, repo: ic.Repository | None = None):
        self.snapshot_id = snapshot_id
        self.ref = ref
        self._repo = repo
        self._root = zarr.open_group(session.store, mode="r")
        meta = attrs_of(self._root).get(MARKER)
        if not isinstance(meta, dict):
            raise NotALakeError(f"snapshot {snapshot_id} has no robot-rl lake marker")
        self.schema: Schema | None = meta.get("schema")
        self._records: list[EpisodeRecord] | None = None

    # ------------------------------------------------------------ table
    def segment_names(self) -> list[str]:
        """The segments' names in lake order. With the repository known, from the names of a
        recent snapshot (the process's cache) plus the snapshot diffs since, plus this session's
        own changes: the cost follows the commits since, not the lake's size. Otherwise one
        listing of ``segments/``, whose cost grows with every node and chunk in the lake."""
        if self._repo is not None:
            session = self._root.store_path.store.session  # type: ignore[attr-defined]  # an IcechunkStore
            names = set(segment_names_at(self._repo, session.snapshot_id))
            if not session.read_only and session.has_uncommitted_changes:
                changes = session.status()  # costs a pass over the snapshot's nodes: only when needed
                names |= _segment_paths(changes.new_groups)
                names -= _segment_paths(changes.deleted_groups)
            return sorted(names)
        return sorted(_list_segments(self._root.store_path.store, self._root.store_path.path))

    def _segment(self, name: str) -> zarr.Group:
        g = self._root[f"segments/{name}"]
        assert isinstance(g, zarr.Group)
        return g

    def _segment_attrs(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The attributes (episode table, goal flags) of segments ``names``: from the process's
        cache (a segment's attributes never change once written: names are unique, segments are
        never rewritten in place), the others read together in one round of concurrent gets."""
        missing = [n for n in names if n not in _SEGMENT_ATTRS]
        if missing:
            store, path = self._root.store_path.store, self._root.store_path.path
            prefix = f"{path}/segments" if path else "segments"
            proto = default_buffer_prototype()

            async def read() -> list[Any]:
                return list(await asyncio.gather(*(store.get(f"{prefix}/{n}/zarr.json", proto) for n in missing)))

            for n, buf in zip(missing, zarr_sync(read()), strict=True):
                if buf is None:
                    raise LakeError(f"segment {n} has no metadata (zarr.json) in snapshot {self.snapshot_id}")
                attrs = json.loads(buf.to_bytes()).get("attributes", {})
                if "episodes" not in attrs:
                    raise LakeError(f"segment {n} has no episode table in snapshot {self.snapshot_id}")
                if len(_SEGMENT_ATTRS) >= SEGMENT_ATTRS_CACHE:
                    _SEGMENT_ATTRS.clear()
                _SEGMENT_ATTRS[n] = attrs
        return {n: _SEGMENT_ATTRS[n] for n in names}

    def episodes(self, task: str | None = None) -> list[EpisodeRecord]:
        """The episode table in lake order (segment creation order, then position)."""
        if self._records is None:
            out: list[EpisodeRecord] = []
            names = self.segment_names()
            for name, a in self._segment_attrs(names).items():
                t = a["episodes"]
                ends = np.cumsum(t["length"])
                for i, eid in enumerate(t["episode_id"]):
                    out.append(
                        EpisodeRecord(
                            episode_id=eid,
                            segment=name,
                            index=i,
                            start=int(ends[i] - t["length"][i]),
                            stop=int(ends[i]),
                            task=t["task"][i],
                            language=t["language"][i],
                            success=t["success"][i],
                            source=t["source"][i],
                            robot=t["robot"][i],
                            created_at=t["created_at"][i],
                            metadata=t["metadata"][i],
                            goal_keys=tuple(k for k, f in a.get("has_goal", {}).items() if f[i]),
                        )
                    )
            self._records = out
        return [r for r in self._records if task is None or r.task == task]

    def episode_ids(self) -> list[str]:
        return [r.episode_id for r in self.episodes()]

    def __len__(self) -> int:
        return len(self.episodes())

    # ------------------------------------------------------------ data
    def read_segment(self, name: str, fields: Sequence[str] | None = None) -> SegmentData:
        return read_segment(self._segment(name), fields)

    def read_episode(self, episode_id: str) -> Episode:
        """Read one episode (random access: prefer ``iter_episodes`` or ``load`` for many)."""
        rec = next((r for r in self.episodes() if r.episode_id == episode_id), None)
        if rec is None:
            raise KeyError(f"episode {episode_id} is not in snapshot {self.snapshot_id}")
        g = self._segment(rec.segment)
        a = attrs_of(g)
        steps = drop_absent({p: np.asarray(arr[rec.start : rec.stop]) for p, arr in _arrays(g, "steps")})
        goal = {p: np.asarray(arr[rec.index]) for p, arr in _arrays(g, "goals") if a["has_goal"][p][rec.index]}
        meta = {
            k: getattr(rec, k) for k in ("task", "language", "success", "source", "robot", "created_at", "metadata")
        }
        return Episode(steps=steps, goal=goal, **meta)

    def iter_segments(self, fields: Sequence[str] | None = None, threads: int = 2) -> Iterable[SegmentData]:
        """Read segments in lake order, prefetching the next ones on ``threads`` threads."""
        names = self.segment_names()
        with cf.ThreadPoolExecutor(max(1, threads)) as pool:
            futures = [pool.submit(self.read_segment, n, fields) for n in names[: threads + 1]]
            for i in range(len(names)):
                seg = futures[i].result()
                if i + threads + 1 < len(names):
                    futures.append(pool.submit(self.read_segment, names[i + threads + 1], fields))
                futures[i] = None  # type: ignore[call-overload]  # release memory
                yield seg

    def iter_episodes(self, task: str | None = None) -> Iterable[Episode]:
        for seg in self.iter_segments():
            for i, t in enumerate(seg.table["task"]):
                if task is None or t == task:
                    yield seg.episode(i)

    def load(self, fields: Sequence[str] | None = None, progress: bool = True, threads: int = 4) -> SegmentData:
        """Materialize the whole snapshot in RAM as one concatenated ``SegmentData``."""
        names = self.segment_names()
        with cf.ThreadPoolExecutor(max(1, threads)) as pool:
            segs = list(
                tqdm(
                    pool.map(lambda n: self.read_segment(n, fields), names),
                    total=len(names),
                    desc=f"load {self.snapshot_id[:8]}",
                    unit="seg",
                    disable=not progress,
                )
            )
        return concat_segments(segs, self.snapshot_id)

    def label_sets(self) -> list[dict[str, Any]]:
        """The stored label sets: task, source, key, provenance (merged over segments as
        ``data_lake.segment.merge_attrs`` says), segments covered (of all), steps, confidence stored."""
        found: dict[str, dict[str, Any]] = {}
        names = self.segment_names()
        for name in names:
            g = self._segment(name)
            conf = {p for p, _ in _arrays(g, "label_confidence")}
            for key, arr in _arrays(g, "labels"):
                task, source = split_label_key(key)
                d = found.setdefault(
                    key,
                    {
                        "task": task,
                        "source": source,
                        "key": key,
                        "segments": [],
                        "steps": 0,
                        "confidence": False,
                        "_p": [],
                    },
                )
                d["segments"].append(name)
                d["steps"] += int(arr.shape[0])
                d["confidence"] |= key in conf
                d["_p"].append({"source": source, **dict(arr.attrs.asdict())})  # type: ignore[arg-type]
        out = []
        for key in sorted(found):
            d = found[key]
            d["provenance"] = merge_attrs(d.pop("_p"))
            d["of_segments"] = len(names)
            out.append(d)
        return out

    def info(self) -> dict[str, Any]:
        recs = self.episodes()
        raw = 0
        for name in self.segment_names():
            for _, arr in _arrays(self._segment(name), "steps") + _arrays(self._segment(name), "goals"):
                raw += arr.nbytes
        return {
            "snapshot_id": self.snapshot_id,
            "ref": self.ref,
            "episodes": len(recs),
            "steps": sum(r.length for r in recs),
            "segments": len(self.segment_names()),
            "raw_bytes": raw,
            "tasks": dict(sorted(Counter(r.task for r in recs).items())),
            "schema": self.schema,
        }


def _stored_ref(name: str) -> str:
    """Branch and tag names may contain '/' (``finetune/<run>``); Icechunk's may not: store it as '@'."""
    if "@" in name:
        raise LakeError(f"branch and tag names may not contain '@' (it stands for '/' in storage): {name!r}")
    return name.replace("/", "@")


def _user_ref(stored: str) -> str:
    return stored.replace("@", "/")


STAGING_PREFIX = "robot-rl-staging-"  # local commits land here first (see Lake._transaction)


def _half_created(repo: ic.Repository) -> bool:
    """An Icechunk repository whose creation stopped before the lake's first commit: only the
    branch main, at Icechunk's empty initial snapshot, no tags."""
    if repo.list_tags() or set(repo.list_branches()) != {"main"}:
        return False
    history = list(itertools.islice(repo.ancestry(branch="main"), 2))
    if len(history) != 1:
        return False
    try:
        zarr.open_group(repo.readonly_session("main").store, mode="r")
    except zarr.errors.GroupNotFoundError:
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_creations(path: Path) -> None:
    """Remove ``.<name>.creating-<pid>-<hex>-<host>`` siblings of ``path`` left by creations on this
    host whose process is gone (a crash before the rename)."""
    host = socket.gethostname()
    for tmp in path.parent.glob(f".{path.name}.creating-*"):
        pid, _, rest = tmp.name.rsplit(".creating-", 1)[1].partition("-")
        if rest.partition("-")[2] == host and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _arrays(group: zarr.Group, prefix: str) -> list[tuple[str, zarr.Array]]:
    if prefix not in group:
        return []
    sub = group[prefix]
    assert isinstance(sub, zarr.Group)
    return walk_arrays(sub)


# ---------------------------------------------------------------------------- the lake
def default_author() -> str:
    return os.environ.get("ROBOT_RL_AUTHOR") or f"{getpass.getuser()}@{socket.gethostname()}"


class Lake:
    """A versioned episode store. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, loc: Location, repo: ic.Repository):
        self.location = loc
        self._repo = repo
        self._pid = os.getpid()
        # fsync a local commit's files before its branch moves (docs/lake.md, "Durability");
        # benchmarks turn it off to measure what it costs
        self.durable = os.environ.get("ROBOT_RL_LAKE_FSYNC", "1") != "0"

    # ------------------------------------------------------------ open / create
    @classmethod
    def create(cls, uri: str | os.PathLike[str] = DEFAULT_URI) -> Lake:
        """Create an empty lake at ``uri``.

        Creation is atomic for users: a local lake is built in a hidden sibling directory and
        renamed into place once its first commit is durable, so a crash leaves either no lake or
        a whole one. A half-created repository (an Icechunk repository without the lake's first
        commit, e.g. left by an older version or on object storage) is finished instead.
        """
        loc = parse_uri(uri)
        if loc.scheme == "file":
            return cls._create_local(loc)
        storage = make_storage(loc, create=loc.scheme == "memory")
        with storage_errors("create the lake", loc):
            exists = loc.scheme != "memory" and ic.Repository.exists(storage)
        if exists:
            repo = ic.Repository.open(storage)
            if _half_created(repo):
                return cls._first_commit(loc, repo)
            raise LakeError(f"a repository already exists at {loc.uri}; open it with Lake.open")
        with storage_errors("create the lake", loc):
            return cls._first_commit(loc, ic.Repository.create(storage))

    @classmethod
    def _create_local(cls, loc: Location) -> Lake:
        p = Path(loc.path)
        if p.exists() and not p.is_dir():
            raise LakeError(f"{loc.path} exists and is not a directory; pick a new path")
        if p.exists() and any(p.iterdir()):
            storage = make_storage(loc, create=False)
            if ic.Repository.exists(storage):
                repo = ic.Repository.open(storage)
                if _half_created(repo):
                    return cls._first_commit(loc, repo)
                raise LakeError(f"a repository already exists at {loc.path}; open it, or pick a new path")
            raise LakeError(f"{loc.path} already exists and is not an empty directory; open it, or pick a new path")
        with storage_errors("create the lake", loc):
            p.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_creations(p)
            tmp = p.parent / f".{p.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}-{socket.gethostname()}"
            try:
                tmp.mkdir()
                tloc = Location(str(tmp), "file", str(tmp))
                cls._first_commit(tloc, ic.Repository.create(make_storage(tloc, create=True)))
                fsync_tree(str(tmp))
                try:
                    os.rename(tmp, p)  # atomic; replaces ``p`` only if it is an empty directory
                except OSError as e:
                    if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        raise LakeError(f"{loc.path} was created by someone else meanwhile; open it") from e
                    raise
                fsync_path(str(p.parent))
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return cls(loc, ic.Repository.open(make_storage(loc, create=False)))

    @classmethod
    def _first_commit(cls, loc: Location, repo: ic.Repository) -> Lake:
        """The lake's first commit (its marker) on a fresh or half-created repository."""
        lake = cls(loc, repo)
        with storage_errors("create the lake", loc), commit_lock(loc):
            session = repo.writable_session("main")
            root = zarr.group(store=session.store)
            now = dt.datetime.now(dt.UTC).isoformat()
            root.attrs[MARKER] = {"format": FORMAT, "created_at": now, "schema": None}
            root.require_group("segments")
            session.commit("init robot-rl lake", metadata=lake._commit_meta("init", 0, 0, 0))
        return lake

    @classmethod
    def open(cls, uri: str | os.PathLike[str] = DEFAULT_URI) -> Lake:
        loc = parse_uri(uri)
        if loc.scheme == "file" and not Path(loc.path).is_dir():
            raise NotALakeError(
                f"no lake at {loc.path}: the directory does not exist; create one with `robot-rl lake init {loc.uri}`"
            )
        try:
            storage = make_storage(loc, create=False)
        except FileNotFoundError as e:
            raise NotALakeError(str(e)) from e
        with storage_errors("open the lake", loc, unchanged=False):
            exists = ic.Repository.exists(storage)
        if not exists:
            raise NotALakeError(
                f"{loc.uri} is not a lake (no Icechunk repository there); "
                f"create one with `robot-rl lake init {loc.uri}`"
            )
        with storage_errors("open the lake", loc):
            repo = ic.Repository.open(storage)
            lake = cls(loc, repo)
            try:
                root = zarr.open_group(repo.readonly_session("main").store, mode="r")
            except zarr.errors.GroupNotFoundError:
                root = None
        marker = attrs_of(root).get(MARKER) if root is not None else None
        if not isinstance(marker, dict):
            if _half_created(repo):
                raise NotALakeError(
                    f"{loc.uri} is a half-created lake: its creation was interrupted before the first commit "
                    f"(nothing is stored in it); finish it with `robot-rl lake init {loc.uri}`"
                )
            raise NotALakeError(f"{loc.uri} is an Icechunk repository but not a robot-rl lake (no '{MARKER}' marker)")
        if marker.get("format") != FORMAT:
            raise NotALakeError(f"{loc.uri}: lake format {marker.get('format')} is not supported (expected {FORMAT})")
        return lake

    @classmethod
    def open_or_create(cls, uri: str | os.PathLike[str] = DEFAULT_URI) -> Lake:
        """Open the lake at ``uri``; create it (or finish a half-created one) if there is none."""
        try:
            return cls.open(uri)
        except NotALakeError:
            return cls.create(uri)  # refuses a non-empty directory that is not a lake

    @property
    def repo(self) -> ic.Repository:
        if os.getpid() != self._pid:
            raise LakeError(
                f"this Lake was opened in process {self._pid} and used in process {os.getpid()}; "
                "open the lake inside each worker process (Icechunk can deadlock after fork)"
            )
        return self._repo

    # ------------------------------------------------------------ refs
    def branches(self) -> list[str]:
        return sorted(_user_ref(b) for b in self.repo.list_branches() if not b.startswith(STAGING_PREFIX))

    def tags(self) -> list[str]:
        return sorted(_user_ref(t) for t in self.repo.list_tags())

    def resolve(self, ref: str = "main") -> str:
        """A snapshot id for ``ref``: ``branch:NAME``, ``tag:NAME``, ``snapshot:ID``, or a bare
        branch, tag or snapshot id (tried in that order)."""
        kind, _, name = ref.partition(":") if ":" in ref else ("", "", ref)
        name = _stored_ref(name) if kind != "snapshot" else name
        try:
            if kind in ("", "branch") and (kind == "branch" or name in self.repo.list_branches()):
                return self.repo.lookup_branch(name)
            if kind in ("", "tag") and (kind == "tag" or name in self.repo.list_tags()):
                return self.repo.lookup_tag(name)
            if kind in ("", "snapshot"):
                return self.repo.lookup_snapshot(name).id
        except ic.IcechunkError:
            pass
        raise UnknownRefError(
            f"unknown ref {ref!r} in {self.location}; branches: {self.branches()}, tags: {self.tags()}, "
            "or a snapshot id from `robot-rl lake log`"
        )

    def checkout(self, ref: str = "main") -> LakeView:
        """A read-only view pinned to the snapshot ``ref`` points at now."""
        snap = self.resolve(ref)
        return LakeView(self.repo.readonly_session(snapshot_id=snap), snap, ref, self.repo)

    def tag(self, name: str, ref: str = "main") -> str:
        snap = self.resolve(ref)
        if _stored_ref(name) in self.repo.list_tags():
            raise LakeError(
                f"tag {name!r} already exists (at {self.repo.lookup_tag(_stored_ref(name))}); tags are immutable"
            )
        with storage_errors(f"create tag {name!r}", self.location):
            self.repo.create_tag(_stored_ref(name), snap)
            if self.location.scheme == "file" and self.durable:
                fsync_ref(self.location.path, _stored_ref(name), kind="tag")
        return snap

    def branch(self, name: str, ref: str = "main") -> str:
        snap = self.resolve(ref)
        if _stored_ref(name) in self.repo.list_branches():
            raise LakeError(f"branch {name!r} already exists (at {self.repo.lookup_branch(_stored_ref(name))})")
        with storage_errors(f"create branch {name!r}", self.location):
            self.repo.create_branch(_stored_ref(name), snap)
            if self.location.scheme == "file" and self.durable:
                fsync_ref(self.location.path, _stored_ref(name))
        return snap

    def log(self, ref: str = "main", limit: int | None = None) -> list[CommitInfo]:
        out: list[CommitInfo] = []
        for s in self.repo.ancestry(snapshot_id=self.resolve(ref)):
            m = dict(s.metadata or {})
            out.append(
                CommitInfo(
                    snapshot_id=s.id,
                    parent_id=s.parent_id,
                    written_at=s.written_at.isoformat(),
                    message=s.message,
                    author=m.get("author", ""),
                    operation=m.get("operation", "" if s.parent_id else "create"),
                    episodes_added=int(m.get("episodes_added", 0)),
                    episodes_removed=int(m.get("episodes_removed", 0)),
                    episodes_total=int(m.get("episodes_total", 0)),
                    metadata={k: v for k, v in m.items() if k not in _META_KEYS},
                )
            )
            if limit is not None and len(out) >= limit:
                break
        return out

    def info(self, ref: str = "main") -> dict[str, Any]:
        d = self.checkout(ref).info()
        d["uri"] = self.location.uri
        d["branches"] = self.branches()
        d["tags"] = self.tags()
        d["stored_bytes"] = self.repo.chunk_storage_stats().native_bytes
        return d

    def diff(self, a: str, b: str) -> dict[str, Any]:
        va, vb = self.checkout(a), self.checkout(b)
        ia, ib = set(va.episode_ids()), set(vb.episode_ids())
        return {
            "from": va.snapshot_id,
            "to": vb.snapshot_id,
            "added": [e for e in vb.episode_ids() if e not in ia],
            "removed": [e for e in va.episode_ids() if e not in ib],
        }

    def verify(self, ref: str = "main", progress: bool = False) -> VerifyReport:
        """Read every chunk of the snapshot on its own, recompute the hash of every episode whose
        chunks all read, and check the layout's invariants (``data_lake.verify``). Every damaged
        chunk, episode and segment is reported; nothing stops at the first. Only reads."""
        from data_lake.verify import verify_lake

        return verify_lake(self, ref, progress=progress)

    def export(
        self,
        out_dir: str | os.PathLike[str],
        ref: str = "main",
        task: str | None = None,
        episode_ids: Iterable[str] | None = None,
    ) -> list[Path]:
        """Write episodes as ``<episode_id>.npz`` files (the append format) into ``out_dir``."""
        wanted = set(episode_ids) if episode_ids is not None else None
        view = self.checkout(ref)
        out: list[Path] = []
        for ep in view.iter_episodes(task):
            eid = ep.episode_id
            if wanted is None or eid in wanted:
                out.append(ep.save_npz(Path(out_dir) / f"{eid}.npz"))
        if wanted is not None and len(out) < len(wanted):
            missing = sorted(wanted - {p.stem for p in out})
            raise KeyError(f"episodes not in snapshot {view.snapshot_id}: {missing[:5]}")
        return out

    # ------------------------------------------------------------ writes
    def append(
        self,
        episodes: Iterable[Episode],
        *,
        branch: str = "main",
        message: str | None = None,
        skip_invalid: bool = False,
        allow_new_fields: bool = False,
        metadata: dict[str, Any] | None = None,
        author: str | None = None,
        labels: Sequence[str] | None = None,
        segment_steps: int = DEFAULT_SEGMENT_STEPS,
    ) -> WriteResult:
        """Append episodes in one commit.

        Each episode is validated on its own and against the lake's schema; by default one bad
        episode rejects the whole append (``EpisodeValidationError``, nothing committed). With
        ``skip_invalid`` the valid ones are committed and the others returned in ``quarantined``.
        Episodes already on the branch (same content hash) are skipped and counted. ``labels`` name
        the episodes in errors (file paths, say); the default is their position.
        """
        eps = list(episodes)
        labels = list(labels) if labels is not None else [f"#{i}" for i in range(len(eps))]
        if len(labels) != len(eps):
            raise ValueError(f"{len(labels)} labels for {len(eps)} episodes")
        quarantined: list[Quarantined] = []
        good: list[tuple[str, cf.Future[str], Episode]] = []
        hashing = parallel.pool("lake-hash", parallel.available_cores())
        for label, ep in zip(labels, eps, strict=True):
            probs = validate_episode(ep)
            if probs:
                quarantined.append(Quarantined(label, None, probs))
            else:  # content hashes (sha256 releases the GIL) run while the transaction opens
                good.append((label, hashing.submit(_episode_id, ep), ep))
        if quarantined and not skip_invalid:
            for _, fut, _ in good:
                fut.cancel()
            q = quarantined[0]
            raise EpisodeValidationError(q.label, q.problems)

        def write(root: zarr.Group, view_ids: set[str]) -> dict[str, Any]:
            schema = attrs_of(root)[MARKER].get("schema")
            first = schema is None
            changed = False
            schema = schema or {"step": {}, "goal": {}}
            keep: list[tuple[str, Episode]] = []
            schema_q: list[Quarantined] = []
            seen = set(view_ids)
            dup = 0
            for label, fut, ep in good:
                eid = fut.result()
                if eid in seen:
                    dup += 1
                    continue
                es = schema_of(ep)
                if first:
                    schema, first = es, False
                    changed = True
                probs, additions = schema_differences(schema, es)
                optional = {k: v for k, v in additions["step"].items() if k in PER_EPISODE_STEP_KEYS}
                if optional:  # per-episode fields join the schema on their own (other episodes may lack them)
                    schema = {**schema, "step": {**schema["step"], **optional}}
                    additions = {**additions, "step": {k: v for k, v in additions["step"].items() if k not in optional}}
                    changed = True
                if any(additions[p] for p in additions):
                    if allow_new_fields:
                        schema = {p: {**schema[p], **additions[p]} for p in schema}
                        changed = True
                    else:
                        probs += new_field_problems(additions)
                if probs:
                    schema_q.append(Quarantined(label, eid, probs))
                    continue
                seen.add(eid)
                keep.append((eid, ep))
            if schema_q and not skip_invalid:
                raise EpisodeValidationError(schema_q[0].label, schema_q[0].problems)
            if keep and changed:
                root.attrs[MARKER] = {**attrs_of(root)[MARKER], "schema": schema}
            ids, eps = [eid for eid, _ in keep], [ep for _, ep in keep]
            segments = _write_batched(root, eps, ids, schema, segment_steps)
            return {"added": len(keep), "skipped_duplicates": dup, "quarantined": schema_q, "segments": segments}

        res = self._transaction(branch, "append", message, metadata, author, write, dedup=True)
        return dataclasses.replace(res, quarantined=tuple(quarantined) + res.quarantined)

    def delete(
        self,
        *,
        episode_ids: Iterable[str] | None = None,
        task: str | None = None,
        branch: str = "main",
        message: str | None = None,
        author: str | None = None,
    ) -> WriteResult:
        """Remove episodes (by id and/or task) in one new commit; older snapshots keep them."""
        if episode_ids is None and task is None:
            raise ValueError("delete needs episode ids or a task")
        ids = set(episode_ids or ())

        def write(root: zarr.Group, _: set[str]) -> dict[str, Any]:
            view = _root_view(root, self.repo)
            recs = view.episodes()
            doomed = {r.episode_id for r in recs if r.episode_id in ids or (task is not None and r.task == task)}
            unknown = ids - {r.episode_id for r in recs}
            if unknown:
                raise KeyError(f"not on branch {branch!r}: {sorted(unknown)[:5]} ({len(unknown)} ids)")
            if not doomed:
                raise LakeError(f"no episodes of task {task!r} on branch {branch!r}")
            touched = sorted({r.segment for r in recs if r.episode_id in doomed})
            for name in touched:
                rows = [r for r in recs if r.segment == name]  # in segment order: rows[i].index == i
                keep = [r.index for r in rows if r.episode_id not in doomed]
                try:  # only the kept episodes' chunks: a damaged chunk of a deleted episode is not read
                    seg = read_segment_episodes(view._segment(name), keep)
                except UnreadableEpisodesError as e:
                    bad = [rows[i].episode_id for i in e.errors]
                    raise LakeError(
                        f"cannot rewrite segment {name} without the deleted episodes: episodes it would keep "
                        f"are unreadable ({next(iter(e.errors.values()))}): {', '.join(bad)}; delete them too "
                        f"(add {' '.join('--episode ' + b for b in bad)}), or restore an earlier snapshot "
                        "(`robot-rl lake verify` lists the damage); nothing was committed"
                    ) from e
                del root[f"segments/{name}"]
                if keep:
                    eps, kept_ids = seg.episodes(), list(seg.table["episode_id"])
                    _write_batched(
                        root, eps, kept_ids, view.schema, 10**12, name_like=name, labels=_EpisodeLabels([seg])
                    )
            return {"removed": len(doomed)}

        return self._transaction(branch, "delete", message, None, author, write)

    def compact(
        self,
        *,
        branch: str = "main",
        target_steps: int = DEFAULT_SEGMENT_STEPS,
        message: str | None = None,
        author: str | None = None,
    ) -> WriteResult:
        """Merge runs of consecutive small segments into segments of up to ``target_steps`` steps.

        One commit; the episode order, contents and hashes are unchanged (re-read and checked
        before committing). A branch with nothing to merge is left as is (no commit).
        """

        def write(root: zarr.Group, _: set[str]) -> dict[str, Any]:
            view = _root_view(root, self.repo)
            names = view.segment_names()
            sizes = {n: int(a["n_steps"]) for n, a in view._segment_attrs(names).items()}
            groups: list[list[str]] = [[]]
            for n in names:
                cur = groups[-1]
                if cur and sum(sizes[c] for c in cur) + sizes[n] > target_steps:
                    groups.append([])
                groups[-1].append(n)
            merges = [g for g in groups if len(g) > 1]
            if not merges:
                return {"nothing": True}
            before = view.episode_ids()
            for group in merges:
                eps: list[Episode] = []
                ids: list[str] = []
                segs: list[SegmentData] = []
                for n in group:
                    seg = view.read_segment(n)
                    eps += seg.episodes()
                    ids += seg.table["episode_id"]
                    segs.append(seg)
                    del root[f"segments/{n}"]
                _write_batched(root, eps, ids, view.schema, 10**12, name_like=group[0], labels=_EpisodeLabels(segs))
            after_view = _root_view(root, self.repo)
            if after_view.episode_ids() != before:
                raise LakeError("compaction changed the episode order; nothing was committed")
            for seg in after_view.iter_segments(threads=1):
                for i, eid in enumerate(seg.table["episode_id"]):
                    if seg.episode(i).episode_id != eid:
                        raise LakeError(f"compaction changed episode {eid}; nothing was committed")
            return {"segments_before": len(names), "segments_after": len(after_view.segment_names())}

        return self._transaction(branch, "compact", message, None, author, write)

    def label(
        self,
        task: str,
        detector: Callable[[SegmentData], np.ndarray | tuple[np.ndarray, np.ndarray]],
        *,
        source: str = SIM_SOURCE,
        provenance: dict[str, Any] | None = None,
        branch: str = "main",
        overwrite: bool = False,
        message: str | None = None,
        author: str | None = None,
        progress: bool = False,
    ) -> WriteResult:
        """Store per-step success labels of ``task`` from ``source`` for every episode, in one commit.

        ``detector(segment)`` returns bool (T,) labels for a segment's stored steps, or a tuple
        (labels bool (T,), confidence float (T,) in [0, 1]). Source ``sim`` (the simulator's
        detector over stored states) is stored at ``segments/<name>/labels/<task>`` without
        confidence; any other source (``user``, a detector id) at ``labels/<task>@<source>``, its
        confidence at ``label_confidence/<task>@<source>``. ``provenance`` (detector_id, threshold,
        checkpoint, camera, ...) goes into the label arrays' attributes and the commit metadata.
        Labels are carried through compaction and deletes, so relabeling is reproducible from the
        snapshot id alone. Segments already labeled for (task, source) are skipped unless ``overwrite``.
        """
        key = label_key(task, source)
        prov = _provenance(provenance)
        what = f"{task!r} from source {source!r}"

        def write(root: zarr.Group, _: set[str]) -> dict[str, Any]:
            view = _root_view(root, self.repo)
            todo = [n for n in view.segment_names() if overwrite or f"labels/{key}" not in view._segment(n)]
            if not todo:
                return {"nothing": True}
            attrs = {"source": source, "created_at": dt.datetime.now(dt.UTC).isoformat(), **prov}
            n_steps = 0
            for name in tqdm(todo, desc=f"label {key}", disable=not progress):
                seg = view.read_segment(name)
                T = int(seg.episode_ends[-1])
                values, conf = _checked_labels(detector(seg), T, f"{what} on segment {name}", source)
                write_labels(view._segment(name), key, values, conf, attrs)
                n_steps += T
            return {"labelled_steps": n_steps, "segments_after": len(todo)}

        meta = {"task": task, "source": source, "provenance": prov}
        return self._transaction(branch, "label", message or f"label {key}", meta, author, write)

    def annotate(
        self,
        task: str,
        rows: Iterable[tuple[str, int, bool]],
        *,
        source: str = "user",
        branch: str = "main",
        message: str | None = None,
        author: str | None = None,
    ) -> WriteResult:
        """Merge human success labels ``rows`` = (episode_id, step, success) into the label set
        (task, ``source``), in one commit.

        Labeled steps get their value at confidence 1; the others keep earlier labels of that set,
        or are unknown (label False, confidence 0). Unknown episode ids, steps out of range and
        contradicting duplicates raise :class:`AnnotationError` listing them; nothing is committed.
        """
        key = label_key(task, source)
        if source == SIM_SOURCE:
            raise ValueError("annotations need a source other than 'sim' (which carries no confidence); use 'user'")
        given: dict[tuple[str, int], bool] = {}
        problems: list[str] = []
        for n, row in enumerate(rows):
            eid, step, ok = tuple(row) if len(row) == 3 else (None, None, None)
            if (
                not isinstance(eid, str)
                or isinstance(step, bool)
                or not isinstance(step, (int, np.integer))
                or not (isinstance(ok, (bool, np.bool_)) or ok in (0, 1))
            ):
                problems.append(f"row {n}: expected (episode_id str, step int, success bool), got {row!r}")
                continue
            if given.setdefault((eid, int(step)), bool(ok)) != bool(ok):
                problems.append(f"row {n}: episode {eid} step {step} is labeled both True and False")
        if problems:
            raise AnnotationError(task, problems)
        if not given:
            raise AnnotationError(task, ["no rows given"])
        who = author or default_author()

        def write(root: zarr.Group, _: set[str]) -> dict[str, Any]:
            view = _root_view(root, self.repo)
            recs = {r.episode_id: r for r in view.episodes()}
            bad = [f"unknown episode {e}" for e in sorted({e for e, _ in given if e not in recs})]
            bad += [
                f"episode {e} step {t} is out of range (it has {recs[e].length} steps: 0..{recs[e].length - 1})"
                for e, t in sorted(given)
                if e in recs and not 0 <= t < recs[e].length
            ]
            if bad:
                raise AnnotationError(task, bad)
            by_segment: dict[str, list[tuple[int, bool]]] = {}
            for (e, t), ok in given.items():
                by_segment.setdefault(recs[e].segment, []).append((recs[e].start + t, ok))
            now = dt.datetime.now(dt.UTC).isoformat()
            for name, marks in sorted(by_segment.items()):
                group = view._segment(name)
                T = int(attrs_of(group)["n_steps"])
                values, conf = np.zeros(T, bool), np.zeros(T, np.float32)
                if f"labels/{key}" in group:
                    old = group[f"labels/{key}"]
                    assert isinstance(old, zarr.Array)
                    values = np.asarray(old[...]).astype(bool)
                    c = group[f"label_confidence/{key}"] if f"label_confidence/{key}" in group else None
                    conf = np.asarray(c[...], np.float32) if isinstance(c, zarr.Array) else np.ones(T, np.float32)
                idx = np.array([i for i, _ in marks], np.int64)
                values[idx] = [ok for _, ok in marks]
                conf[idx] = 1.0
                write_labels(group, key, values, conf, {"source": source, "created_at": now, "author": who})
            return {"segments_after": len(by_segment)}

        n_eps = len({e for e, _ in given})
        meta = {"task": task, "source": source, "provenance": {"author": who}, "annotated_steps": len(given)}
        msg = message or f"annotate {key}: {len(given)} steps of {n_eps} episodes"
        return self._transaction(branch, "annotate", msg, meta, author, write)

    # ------------------------------------------------------------ transaction plumbing
    def _commit_meta(
        self,
        op: str,
        added: int,
        removed: int,
        total: int,
        author: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            **(extra or {}),
            "author": author or default_author(),
            "operation": op,
            "episodes_added": added,
            "episodes_removed": removed,
            "episodes_total": total,
            "tool": f"robot-rl {__version__}",
        }

    def _transaction(
        self,
        branch: str,
        op: str,
        message: str | None,
        metadata: dict[str, Any] | None,
        author: str | None,
        write: Callable[[zarr.Group, set[str]], dict[str, Any]],
        dedup: bool = False,
    ) -> WriteResult:
        """Run ``write`` on a fresh session of ``branch`` and commit it, retrying on conflicts.

        The bulk of the writing happens outside the commit lock; under the lock the session is
        rebased onto the tip and, for appends, re-checked for episodes a concurrent writer added
        meanwhile (then rewritten without them) before the commit. Storage failures (read-only,
        full disk) raise :class:`LakeStorageError`; the branch has not moved.

        On local storage the commit is durable before the branch moves (``durable``): the session
        writes on a private staging branch; its new chunks are fsynced, then under the lock it is
        rebased onto the branch's tip and committed, the new manifests, snapshot and transaction
        log are fsynced, and only then is ``branch`` reset to the new snapshot (its ref fsynced).
        A power loss at any point leaves ``branch`` at a snapshot whose files are all on disk.
        """
        if _stored_ref(branch) not in self.repo.list_branches():
            raise UnknownRefError(f"no branch {branch!r}; branches: {self.branches()}")
        stored = _stored_ref(branch)
        staged = self.location.scheme == "file" and self.durable
        root_dir = self.location.path
        retries = 0
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            staging = f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{socket.gethostname()}"
            chunk_sync: cf.Future[None] | None = None
            try:
                with storage_errors(op, self.location):
                    if staged:
                        before = listing(root_dir)
                        self.repo.create_branch(staging, self.repo.lookup_branch(stored))
                    session = self.repo.writable_session(staging if staged else stored)
                    root = zarr.open_group(session.store, mode="r+")
                    base_ids = set(_root_view(root, self.repo).episode_ids()) if dedup else set()
                    # durable local writes: the disk starts on the chunks while the rest are written
                    head_start = early_writeback(root_dir, {"chunks": before["chunks"]}) if staged else None
                    with head_start or contextlib.nullcontext():
                        stats = write(root, base_ids)
                    if stats.pop("nothing", False) or not session.has_uncommitted_changes:
                        return WriteResult(None, branch, **_only(stats, WriteResult))
                    if staged:  # the chunks written so far sync while the commit below runs (joined before
                        # the branch moves); chunks a rewrite adds meanwhile are in the final fsync_new
                        paths, listed = new_files(root_dir, {"chunks": before["chunks"]})
                        before["chunks"] = listed["chunks"]
                        chunk_sync = parallel.pool("lake-fsync", 1).submit(fsync_files, root_dir, paths, ["chunks"])
                    with commit_lock(self.location):
                        for commit_try in itertools.count():
                            tip = self.repo.lookup_branch(stored)
                            if staged:
                                self.remove_stale_staging()
                                self.repo.reset_branch(staging, tip)
                            session.rebase(ic.ConflictDetector())
                            root = zarr.open_group(session.store, mode="r+")
                            view = _root_view(root, self.repo)
                            if dedup:
                                stats, view = self._drop_raced_duplicates(root, view, stats, write)
                                if not stats.get("added"):  # a concurrent writer added them all: a no-op
                                    session.discard_changes()
                                    return WriteResult(None, branch, **_only(stats, WriteResult))
                            total = len(view.episode_ids())
                            meta = self._commit_meta(
                                op, stats.get("added", 0), stats.get("removed", 0), total, author, metadata
                            )
                            if dedup:
                                meta["skipped_duplicates"] = stats.get("skipped_duplicates", 0)
                            msg = message or _default_message(op, stats)
                            # no rebase_with: a tip that moved since the rebase above raises ConflictError; on
                            # object stores (no lock) we wait, rebase and redo the duplicate check, so it stays exact
                            try:
                                snap = session.commit(msg, metadata=meta)
                                # the next commit's base: its segments are those of the episodes just counted
                                remember_segment_names(snap, {r.segment for r in view.episodes()})
                            except ic.ConflictError:
                                if self.location.scheme != "s3" or commit_try + 1 >= MAX_WRITE_ATTEMPTS:
                                    raise
                                retries += 1
                                time.sleep(backoff_s(commit_try))
                                continue
                            break
                        if staged:
                            assert chunk_sync is not None
                            chunk_sync.result()
                            fsync_new(root_dir, before)  # chunks written since, manifests, snapshot, log
                            self.repo.reset_branch(stored, snap, from_snapshot_id=tip)
                            fsync_ref(root_dir, stored)
            except (ic.RebaseFailedError, ic.ConflictError):
                retries += 1
                self._pause_before_retry(_attempt)
                continue
            except LakeStorageError as e:
                if isinstance(e.__cause__, (ic.RebaseFailedError, ic.ConflictError)):
                    retries += 1
                    self._pause_before_retry(_attempt)
                    continue
                raise
            finally:
                if staged:
                    self._drop_staging(staging)
            return WriteResult(snap, branch, **_only(stats, WriteResult), conflict_retries=retries)
        raise LakeError(
            f"{op} on branch {branch!r} kept conflicting with concurrent writers ({MAX_WRITE_ATTEMPTS} attempts)"
        )

    def _pause_before_retry(self, attempt: int) -> None:
        """Writers on an object store (no commit lock) that conflicted back off, so they do not
        collide again at once; local writers retry at once (the lock already orders them)."""
        if self.location.scheme == "s3":
            time.sleep(backoff_s(attempt))

    def _drop_staging(self, staging: str) -> None:
        """Delete a staging branch (if it was created) and its empty ref directory."""
        with contextlib.suppress(ic.IcechunkError, OSError):
            if staging in self.repo.list_branches():
                self.repo.delete_branch(staging)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(self.location.path, "refs", f"branch.{staging}"))

    def remove_stale_staging(self) -> None:
        """Delete the staging branches of writers on this host that died mid-write (call it holding
        the commit lock; every local write and ``robot-rl lake gc`` do)."""
        host = socket.gethostname()
        for b in self.repo.list_branches():
            if b.startswith(STAGING_PREFIX):
                pid, _, rest = b[len(STAGING_PREFIX) :].partition("-")
                if rest.partition("-")[2] == host and pid.isdigit() and not _pid_alive(int(pid)):
                    self._drop_staging(b)

    @staticmethod
    def _drop_raced_duplicates(
        root: zarr.Group,
        view: LakeView,
        stats: dict[str, Any],
        write: Callable[[zarr.Group, set[str]], dict[str, Any]],
    ) -> tuple[dict[str, Any], LakeView]:
        """Rewrite our segments without the episodes a concurrent writer committed meanwhile;
        returns the stats and a view of the result."""
        ours = set(stats["segments"])
        records = view.episodes()
        others = {r.episode_id for r in records if r.segment not in ours}
        mine = {r.episode_id for r in records if r.segment in ours}
        if not others & mine:
            return stats, view
        for name in ours:
            del root[f"segments/{name}"]
        # write() re-checks every offered episode against all the others, base ones included
        return write(root, others), _root_view(root, view._repo)


_META_KEYS = {"author", "operation", "episodes_added", "episodes_removed", "episodes_total", "tool"}


def _only(stats: dict[str, Any], cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    out = {k: v for k, v in stats.items() if k in names}
    if "quarantined" in out:
        out["quarantined"] = tuple(out["quarantined"])
    return out


def _default_message(op: str, stats: dict[str, Any]) -> str:
    if op == "append":
        return f"append {stats.get('added', 0)} episodes"
    if op == "delete":
        return f"delete {stats.get('removed', 0)} episodes"
    if op == "compact":
        return f"compact {stats.get('segments_before')} segments into {stats.get('segments_after')}"
    return op


def _root_view(root: zarr.Group, repo: ic.Repository | None = None) -> LakeView:
    """A view of a writable session's current state (uncommitted changes included); ``repo``: the
    session's repository (segment names then come from snapshot diffs, see ``segment_names``)."""
    view = LakeView.__new__(LakeView)
    view.snapshot_id, view.ref, view._root, view._records = "(uncommitted)", "", root, None
    view._repo = repo
    view.schema = attrs_of(root)[MARKER].get("schema")
    return view


def _episode_id(ep: Episode) -> str:
    return ep.episode_id


class _EpisodeLabels:
    """The label sets of each episode of some segments, in order (what a rewrite carries over)."""

    def __init__(self, segs: Sequence[SegmentData]):
        spans = [(s, i) for s in segs for i in range(len(s.episode_ends))]
        self.values = [s.episode_labels(i) for s, i in spans]
        self.confidence = [s.episode_label_confidence(i) for s, i in spans]
        self.attrs = [s.label_attrs for s, _ in spans]


def _write_batched(
    root: zarr.Group,
    episodes: Sequence[Episode],
    ids: Sequence[str],
    schema: Schema | None,
    segment_steps: int,
    name_like: str | None = None,
    labels: _EpisodeLabels | None = None,
) -> list[str]:
    """Write episodes into as few segments as fit ``segment_steps`` each; returns the names.

    ``ids`` are the episodes' ids; ``name_like`` keeps a rewritten segment's timestamp prefix, so
    lake order is preserved.
    """
    if not episodes:
        return []
    assert schema is not None
    names: list[str] = []
    start, steps = 0, 0
    bounds: list[tuple[int, int]] = []
    for pos, ep in enumerate(episodes):
        if pos > start and steps + len(ep) > segment_steps:
            bounds.append((start, pos))
            start, steps = pos, 0
        steps += len(ep)
    bounds.append((start, len(episodes)))
    for a, b in bounds:
        if name_like is not None:
            name = name_like.split("-")[0] + "-" + new_segment_name().split("-")[1]
        else:
            name = new_segment_name()
        if labels is None:
            write_segment(root, name, episodes[a:b], ids[a:b], schema)
        else:
            lab, conf, attrs = labels.values[a:b], labels.confidence[a:b], labels.attrs[a:b]
            write_segment(root, name, episodes[a:b], ids[a:b], schema, lab, conf, attrs)
        names.append(name)
    return names


def write_quarantine_report(path: str | os.PathLike[str], result: WriteResult) -> Path:
    path = Path(path)
    path.write_text(json.dumps([q.to_json() for q in result.quarantined], indent=1))
    return path
