"""Chunk-level verification of one lake snapshot (``Lake.verify``, ``robot-rl lake verify``).

What is checked in the snapshot a ref points at, segment by segment (``segments/<name>``):

1. **Segment metadata.** The attributes and episode table must be readable and consistent: every
   table column as long as ``episode_id``, lengths of at least 2 steps, ``episode_ends`` equal to
   the running sum of the lengths, every ``steps/*`` array as long as the segment. A segment whose
   metadata cannot be read is reported and skipped; the next segment is checked all the same.
2. **Every chunk, on its own.** Each chunk of each array (``episode_ends``, ``steps/*``,
   ``goals/*``, ``labels/*``) is read by itself, so a missing, truncated or corrupt chunk file
   costs that chunk only. A chunk that cannot be read or decoded (an Icechunk storage error, a
   decompression error, ...) is recorded with its segment, array, chunk index, rows, the error's
   first line and, where it can be found, its file (``chunks/<ID>`` in the lake): Icechunk's error
   names the file when it is missing or empty; a file that reads but does not decode (truncated,
   say) is found by its content in a local lake's ``chunks/`` directory. Each damaged chunk is
   mapped to the episodes it holds data of: rows of ``steps/*`` and ``labels/*`` are steps (every
   episode whose step range overlaps the chunk), rows of ``goals/*`` and ``episode_ends`` are
   episodes.
3. **Every other episode.** An episode none of whose chunks is damaged is rebuilt from the chunks
   just read, its content hash recomputed (it must equal its id) and its content validated
   (``validate_episode``; ``too_short`` is the layout check's business). An id stored twice is
   reported.

Nothing stops at the first problem: the report lists every damaged chunk, every damaged episode
with its reason (``unreadable chunk``, ``content hash mismatch``, ``invalid content``,
``unreadable episode``) and every damaged segment, both as one line each in ``problems`` and as
dicts (:class:`data_lake.lake.VerifyReport`). A change that still decodes (a flipped bit inside
compressed image data, say) shows up as a content hash mismatch of the episodes concerned; the
chunk itself cannot be named then, as Blosc keeps no checksum.

Verification only reads. The recoveries (restore an earlier snapshot, or delete the damaged
episodes as a new commit) are described in docs/lake.md, "Verifying and repairing a lake".
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from data_lake import parallel
from data_lake.lake import LakeError, LakeView, VerifyReport
from data_lake.segment import READ_THREADS, TABLE_COLUMNS, SegmentData, attrs_of, error_summary, walk_arrays
from data_lake.validate import validate_episode

if TYPE_CHECKING:
    from data_lake.lake import Lake

UNREADABLE_CHUNK = "unreadable chunk"
HASH_MISMATCH = "content hash mismatch"
INVALID_CONTENT = "invalid content"
UNREADABLE_EPISODE = "unreadable episode"

# Icechunk names a chunk file `chunks/<ID>` (key=...) or `chunk_id=<ID>`; ids are 20 base32 characters
_CHUNK_FILE = re.compile(r"(?:chunks/|chunk_id=)([0-9A-Z]{20})\b")


def verify_lake(lake: Lake, ref: str = "main", progress: bool = False) -> VerifyReport:
    """Verify the snapshot ``ref`` points at (see the module docstring). An unknown ref raises
    :class:`~data_lake.lake.UnknownRefError`; a snapshot that cannot be opened at all (a damaged
    snapshot file) is reported, not raised."""
    snap = lake.resolve(ref)
    try:
        view = LakeView(lake.repo.readonly_session(snapshot_id=snap), snap, ref)
    except LakeError:  # not a lake snapshot (Icechunk's empty first one): a wrong ref, not damage
        raise
    except Exception as e:  # a damaged snapshot or repository file
        msg = f"snapshot {snap}: cannot be opened: {error_summary(e)}"
        return VerifyReport(snap, 0, [msg], damaged_segments=[{"segment": None, "error": msg, "message": msg}])
    chunks_dir = Path(lake.location.path) / "chunks" if lake.location.scheme == "file" else None
    return verify_view(view, chunks_dir=chunks_dir, progress=progress)


def verify_view(
    view: LakeView, *, chunks_dir: str | os.PathLike[str] | None = None, progress: bool = False
) -> VerifyReport:
    """Verify one pinned view. ``chunks_dir`` (a local lake's ``chunks/``) lets damaged chunks
    whose error does not name their file be matched to it by content."""
    run = _Verification(view, Path(chunks_dir) if chunks_dir is not None else None)
    try:
        names = view.segment_names()
    except Exception as e:
        run.segment_problem(None, f"snapshot {view.snapshot_id}: the segment list is unreadable: {error_summary(e)}")
        names = []
    for name in tqdm(names, desc="verify", unit="seg", disable=not progress):
        run.check_segment(name)
    return run.report()


BLOSC_HEADER_BYTES = 16  # Blosc v1: version, versionlz, flags, typesize, nbytes, blocksize, cbytes


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """One chunk of one array: its grid coordinates and the region it covers."""

    path: str  # array path inside the segment, e.g. steps/images/front
    array: zarr.Array
    coords: tuple[int, ...]
    region: tuple[slice, ...]

    @property
    def rows(self) -> tuple[int, int]:
        return (self.region[0].start, self.region[0].stop) if self.region else (0, 1)


def _chunks_of(path: str, arr: zarr.Array) -> list[_Chunk]:
    grid = [range(n) for n in arr.cdata_shape]
    out = []
    for coords in itertools.product(*grid):
        region = tuple(slice(c * k, min((c + 1) * k, s)) for c, k, s in zip(coords, arr.chunks, arr.shape, strict=True))
        out.append(_Chunk(path, arr, tuple(int(c) for c in coords), region))
    return out


def _raw_bytes(chunk: _Chunk) -> bytes | None:
    """The chunk's stored bytes, undecoded (None: never written)."""
    arr = chunk.array
    key = f"{arr.path}/{arr.metadata.encode_chunk_key(chunk.coords)}"
    buf = sync(arr.store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _blosc_framing_error(chunk: _Chunk) -> str | None:
    """A Blosc-compressed chunk whose stored size differs from the size its header records, or None.

    Checked on the raw bytes before decoding: Blosc (v1) decompresses by the header's compressed
    size, not the buffer's, so a truncated chunk reads past its end and may decode to anything,
    even to the original frames from memory freed earlier in the process; such a chunk must be
    reported, never decoded. A chunk that was never written (no bytes) is not checked."""
    arr = chunk.array
    if not chunk.coords or not any(isinstance(c, BloscCodec) for c in getattr(arr.metadata, "codecs", ())):
        return None
    raw = _raw_bytes(chunk)
    if raw is None:
        return None
    if len(raw) < BLOSC_HEADER_BYTES:
        return f"truncated Blosc chunk: {len(raw)} bytes, shorter than the {BLOSC_HEADER_BYTES}-byte header"
    recorded = int.from_bytes(raw[12:16], "little")  # the header's compressed size (cbytes)
    if recorded != len(raw):
        return f"damaged Blosc chunk: its header records {recorded} bytes, the chunk has {len(raw)}"
    return None


def _chunk_label(coords: tuple[int, ...]) -> str:
    return "[" + ",".join(str(c) for c in coords) + "]"


class _Verification:
    """The findings of one verification, accumulated segment by segment."""

    def __init__(self, view: LakeView, chunks_dir: Path | None):
        self.view = view
        self.files = _ChunkFiles(chunks_dir)
        self.episodes_checked = 0
        self.seen: dict[str, str] = {}
        self.damaged_chunks: list[dict[str, Any]] = []
        self.damaged_episodes: list[dict[str, Any]] = []
        self.damaged_segments: list[dict[str, Any]] = []
        self.other: list[str] = []

    # ------------------------------------------------------------ findings
    def segment_problem(self, name: str | None, message: str, episodes: list[str] | None = None) -> None:
        self.damaged_segments.append(
            {"segment": name, "error": message, "episodes": list(episodes or []), "message": message}
        )

    def episode_problem(self, eid: str, name: str, index: int, reason: str, details: list[str], line: str) -> None:
        self.damaged_episodes.append(
            {
                "episode_id": eid,
                "segment": name,
                "index": index,
                "reason": reason,
                "details": details,
                "message": f"episode {eid} in segment {name}: {line}",
            }
        )

    def report(self) -> VerifyReport:
        problems = [
            d["message"] for group in (self.damaged_segments, self.damaged_chunks, self.damaged_episodes) for d in group
        ]
        return VerifyReport(
            snapshot_id=self.view.snapshot_id,
            episodes_checked=self.episodes_checked,
            problems=problems + self.other,
            damaged_chunks=self.damaged_chunks,
            damaged_episodes=self.damaged_episodes,
            damaged_segments=self.damaged_segments,
        )

    # ------------------------------------------------------------ one segment
    def check_segment(self, name: str) -> None:
        try:
            group = self.view._segment(name)
            attrs = attrs_of(group)
            table, has_goal = _table(attrs)
            arrays = walk_arrays(group)
        except Exception as e:  # unreadable or malformed metadata: report, go on with the next segment
            self.segment_problem(name, f"segment {name}: metadata unreadable: {error_summary(e)}")
            return
        ids: list[str] = table["episode_id"]
        lengths = np.asarray(table["length"], dtype=np.int64)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        data, damaged = self._read_chunks(arrays)

        # damaged chunks -> the episodes they hold
        hit: dict[int, list[str]] = {}
        for chunk, error in damaged:
            where = _episodes_of(chunk.path, chunk.rows, starts, ends, len(ids))
            for i in where:
                hit.setdefault(i, []).append(f"{chunk.path} chunk {_chunk_label(chunk.coords)}: {error}")
            file = _file_in(error) or self.files.find(chunk)
            short = ", ".join(ids[i][:12] for i in where) or "none"
            a, b = chunk.rows
            self.damaged_chunks.append(
                {
                    "segment": name,
                    "array": chunk.path,
                    "chunk": list(chunk.coords),
                    "rows": [a, b],
                    "error": error,
                    "file": file,
                    "episodes": [ids[i] for i in where],
                    "message": f"segment {name}: {chunk.path} chunk {_chunk_label(chunk.coords)} (rows {a}:{b}) "
                    f"unreadable, file {file or 'unknown'}: {error}; episodes {short}",
                }
            )

        # the layout (as before: a segment whose offsets disagree with its table is not checked further)
        ends_ok = "episode_ends" in data and not any(c.path == "episode_ends" for c, _ in damaged)
        if (ends_ok and list(data["episode_ends"]) != list(ends)) or (lengths < 2).any():
            self.segment_problem(name, f"segment {name}: episode_ends do not match the table's lengths", ids)
            return
        if "episode_ends" not in data:
            self.segment_problem(name, f"segment {name}: has no episode_ends array", ids)
        total = int(ends[-1]) if len(ends) else 0
        for path, arr in arrays:
            if path.startswith("steps/") and arr.shape[0] != total:
                self.segment_problem(name, f"segment {name}: {path} has {arr.shape[0]} steps, episode_ends say {total}")

        # every episode with no damaged chunk: rebuild, rehash, validate
        seg = SegmentData(
            name=name,
            steps={p.removeprefix("steps/"): v for p, v in data.items() if p.startswith("steps/")},
            goals={p.removeprefix("goals/"): v for p, v in data.items() if p.startswith("goals/")},
            episode_ends=ends,
            table=table,
            has_goal=has_goal,
            labels={p.removeprefix("labels/"): v for p, v in data.items() if p.startswith("labels/")},
        )
        for i, eid in enumerate(ids):
            self.episodes_checked += 1
            if eid in self.seen:
                self.other.append(f"episode {eid} is stored twice (segments {self.seen[eid]} and {name})")
            self.seen[eid] = name
            if i in hit:
                n = len(hit[i])
                line = f"unreadable chunk{'s' if n > 1 else ''}: " + "; ".join(h.split(": ", 1)[0] for h in hit[i])
                self.episode_problem(eid, name, i, UNREADABLE_CHUNK, hit[i], line)
                continue
            try:
                ep = seg.episode(i)
                new_id = ep.episode_id
            except Exception as e:
                self.episode_problem(eid, name, i, UNREADABLE_EPISODE, [error_summary(e)], error_summary(e))
                continue
            if new_id != eid:
                detail = f"content hash is now {new_id}"
                self.episode_problem(eid, name, i, HASH_MISMATCH, [detail], detail)
                continue
            bad = [p for p in validate_episode(ep) if p.code != "too_short"]
            if bad:
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                self.episode_problem(eid, name, i, INVALID_CONTENT, [str(p) for p in bad], f"{bad[0]}{more}")

    def _read_chunks(
        self, arrays: list[tuple[str, zarr.Array]]
    ) -> tuple[dict[str, np.ndarray], list[tuple[_Chunk, str]]]:
        """Every chunk of ``arrays`` read on its own into whole arrays (zeros where damaged);
        returns the arrays and the damaged chunks with their errors."""
        data: dict[str, np.ndarray] = {}
        jobs: list[_Chunk] = []
        damaged: list[tuple[_Chunk, str]] = []
        for path, arr in arrays:
            try:
                data[path] = np.zeros(arr.shape, dtype=arr.dtype)
                jobs += _chunks_of(path, arr)
            except Exception as e:  # an array whose metadata makes no sense
                damaged.append((_Chunk(path, arr, (), ()), error_summary(e)))

        def read(chunk: _Chunk) -> str | None:
            try:
                framing = _blosc_framing_error(chunk)
                if framing is not None:
                    return framing
                data[chunk.path][chunk.region] = chunk.array[chunk.region]
            except Exception as e:  # IcechunkError, decompression errors, ValueError, OSError, ...
                return error_summary(e)
            return None

        errors = parallel.pool("verify-read", READ_THREADS).map(read, jobs)
        damaged += [(chunk, err) for chunk, err in zip(jobs, errors, strict=True) if err is not None]
        return data, damaged


def _table(attrs: dict[str, Any]) -> tuple[dict[str, list[Any]], dict[str, list[bool]]]:
    """A segment's episode table and goal flags, checked for shape (KeyError/ValueError if bad)."""
    table = attrs["episodes"]
    n = len(table["episode_id"])
    for c in TABLE_COLUMNS:
        if len(table[c]) != n:
            raise ValueError(f"episode table column {c!r} has {len(table[c])} rows, episode_id has {n}")
    has_goal = attrs.get("has_goal", {})
    for k, flags in has_goal.items():
        if len(flags) != n:
            raise ValueError(f"has_goal[{k!r}] has {len(flags)} rows for {n} episodes")
    return table, has_goal


def _episodes_of(path: str, rows: tuple[int, int], starts: np.ndarray, ends: np.ndarray, n: int) -> list[int]:
    """Positions of the episodes a chunk covering ``rows`` (along axis 0) of array ``path`` holds."""
    a, b = rows
    if path.startswith(("steps/", "labels/", "label_confidence/")):
        return [int(i) for i in np.flatnonzero((starts < b) & (ends > a))]
    if path.startswith("goals/") or path == "episode_ends":
        return list(range(max(0, a), min(b, n)))
    return list(range(n))  # an array of unknown layout: every episode is suspect


def _file_in(error: str) -> str | None:
    m = _CHUNK_FILE.search(error)
    return f"chunks/{m.group(1)}" if m else None


class _ChunkFiles:
    """Finds the file behind a chunk that reads but does not decode, by its bytes: Icechunk stores
    each chunk as one file ``chunks/<ID>`` holding exactly its bytes (local lakes only)."""

    def __init__(self, chunks_dir: Path | None):
        self.dir = chunks_dir
        self._by_size: dict[int, list[str]] | None = None

    def find(self, chunk: _Chunk) -> str | None:
        if self.dir is None or not chunk.coords:
            return None
        try:
            raw = _raw_bytes(chunk)
            if raw is None:
                return None
            if self._by_size is None:
                index: dict[int, list[str]] = {}
                with os.scandir(self.dir) as it:
                    for entry in it:
                        if entry.is_file():
                            index.setdefault(entry.stat().st_size, []).append(entry.name)
                self._by_size = index
            matches = [n for n in self._by_size.get(len(raw), []) if (self.dir / n).read_bytes() == raw]
        except Exception:  # the chunk cannot even be fetched: its error names the file if anything does
            return None
        return f"chunks/{matches[0]}" if len(matches) == 1 else None
