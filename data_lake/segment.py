"""Segments: immutable groups of episodes concatenated along time (the lake's unit of storage).

    segments/<name>/                 group; attrs: format, n_episodes, n_steps, created_at, episodes
    ├── episode_ends                 int64 (E,)   exclusive end offset of each episode in steps/*
    ├── steps/images/<camera>        uint8 (T, H, W, 3)    T = sum of the episodes' lengths
    ├── steps/depth/<camera>         float32|uint16 (T, H, W)
    ├── steps/state, action, ...     (T, ...)              every step field of the lake schema
                                                           (per-episode fields, ``action_logp``:
                                                           NaN rows for episodes without it)
    └── goals/images/<camera>, goals/state   (E, ...)      commanded goals; zeros where absent

``attrs["episodes"]`` is the per-episode table, column-wise (JSON): ``episode_id``, ``length``,
``task``, ``language``, ``success``, ``source``, ``robot``, ``created_at``, ``metadata`` and
``has_goal`` (``{goal key: [bool per episode]}``).

A label set is (task, source); its key is ``<task>`` for source ``sim`` (the layout older lakes
have) and ``<task>@<source>`` otherwise. When segments are merged (compaction, deletes, loading)
a sim set is kept only if every part has it; any other set is kept, the parts without it filled
as unknown (label False, confidence 0), parts without a confidence array at confidence 1.

Names are ``<UTC yyyymmddTHHMMSS.ffffff>-<8 hex>``, so listing order is creation order; a segment
is written once and never resized (a delete or compaction writes a new one and removes the old),
so concurrent writers never touch the same array.

Compression (measured with ``benchmarks/lake.py`` on 2 cores, rendered 64x64 frames): images use
Blosc lz4hc level 3 without shuffle in chunks of about 2 MB along time. Against zstd level 1 it
stored rendered frames 14x smaller instead of 9x and read faster (≈ 750-1100 MB/s against
≈ 600-700 MB/s) at the same ingest speed (≈ 150-190 MB/s); plain lz4 ingests a little faster
but compresses half as well; byte shuffle is a no-op on uint8 and bit shuffle compressed no
better. Noisy frames (real cameras, JPEG-decoded logs) are the exception: lz4hc compresses them
at ≈ 65 MB/s to a ratio of 1.0 (zstd-1: ≈ 800 MB/s, 1.2; lz4: ≈ 5 GB/s, 1.0). So ``_codec``
samples each image array with plain lz4 first: below a ratio of ``NOISY_RATIO`` (1.5) it is
stored with lz4, below ``RAW_RATIO`` (1.1) without any compressor (raw bytes: the write and every
read then cost a copy; ``benchmarks/ingest.py``). The codec is recorded in the array's metadata,
so readers need not know which was chosen. Image arrays are written with zarr's
``write_empty_chunks`` on: zarr otherwise compares every chunk with the fill value before writing
it, a full pass over the frames that a camera stream never benefits from. Low-dimensional fields
use Blosc zstd level 3 with byte shuffle, one chunk per 64k steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec
from zarr.core.array_spec import ArrayConfigParams
from zarr.core.group import GroupMetadata
from zarr.core.metadata import ArrayV2Metadata, ArrayV3Metadata

from data_lake import parallel
from data_lake.episode import PER_EPISODE_STEP_KEYS, Episode

FORMAT = 1
IMAGE_CHUNK_BYTES = 2 << 20
LOWDIM_CHUNK_STEPS = 1 << 16
READ_THREADS = 8
# writes: enough calls in flight to overlap encoding with storage, no more (more threads only
# contend for the GIL: 8 writers were ≈ 5 % slower than 2 on 2 cores, benchmarks/ingest.py)
WRITE_THREADS = max(2, parallel.available_cores())
SIM_SOURCE = "sim"  # labels from the simulator's detector over stored states: ``labels/<task>``
_SOURCE_RE = re.compile(r"[A-Za-z0-9_.-]+")
TABLE_COLUMNS = ("episode_id", "length", "task", "language", "success", "source", "robot", "created_at", "metadata")


def attrs_of(group: zarr.Group) -> dict[str, Any]:
    """A group's attributes as a plain dict (zarr types them as generic JSON)."""
    return dict(group.attrs.asdict())  # type: ignore[arg-type]


def label_key(task: str, source: str = SIM_SOURCE) -> str:
    """The key of label set (task, source) under ``labels/`` and ``label_confidence/``."""
    if not task or "@" in task or task.startswith("/") or task.endswith("/"):
        raise ValueError(f"label task must be a non-empty name without '@' or a leading/trailing '/', got {task!r}")
    if not _SOURCE_RE.fullmatch(source):
        raise ValueError(f"label source must match [A-Za-z0-9_.-]+ (e.g. 'user', 'det-1a2b3c4d5e6f'), got {source!r}")
    return task if source == SIM_SOURCE else f"{task}@{source}"


def split_label_key(key: str) -> tuple[str, str]:
    """(task, source) of a label key."""
    task, _, source = key.partition("@")
    return task, source or SIM_SOURCE


def new_segment_name(when: dt.datetime | None = None) -> str:
    when = when or dt.datetime.now(dt.UTC)
    return f"{when:%Y%m%dT%H%M%S.%f}-{uuid.uuid4().hex[:8]}"


NOISY_RATIO = 1.5  # below this lz4 ratio on a sample, images are treated as noisy (sensor noise): lz4
RAW_RATIO = 1.1  # below this, incompressible: stored raw


def _codec(key: str, data: np.ndarray | None = None) -> list[BloscCodec]:
    """The compressors of one array. Images: lz4hc-3, unless a sample of ``data`` barely
    compresses (camera noise, JPEG-decoded real frames), where lz4hc searches at ~65 MB/s for
    nothing: then plain lz4 (GB/s), or none at all when lz4 gains under 10 %."""
    if key.startswith(("images/", "depth/")):
        ratio = _sample_ratio(data) if data is not None and data.size else None
        if ratio is not None and ratio < RAW_RATIO:
            return []
        if ratio is not None and ratio < NOISY_RATIO:
            return [BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")]
        return [BloscCodec(cname="lz4hc", clevel=3, shuffle="noshuffle")]
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]


def _array_config(key: str) -> ArrayConfigParams:
    """Image and depth chunks are written even when all zero (no fill-value scan; see above)."""
    return {"write_empty_chunks": True} if key.startswith(("images/", "depth/")) else {}


def _sample_ratio(data: np.ndarray, sample_bytes: int = 1 << 20) -> float:
    """Compression ratio of plain lz4 (GB/s) on up to ``sample_bytes`` from the middle of ``data``."""
    from numcodecs import Blosc

    flat = data.reshape(-1).view(np.uint8) if data.dtype != np.uint8 else data.reshape(-1)
    start = max(0, flat.size // 2 - sample_bytes // 2)
    sample = np.ascontiguousarray(flat[start : start + sample_bytes])
    return sample.nbytes / max(1, len(Blosc(cname="lz4", clevel=1, shuffle=Blosc.NOSHUFFLE).encode(sample)))


def _chunks(key: str, shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    per_step = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    steps = LOWDIM_CHUNK_STEPS if per_step < 1024 else max(1, IMAGE_CHUNK_BYTES // per_step)
    return (max(1, min(steps, shape[0])), *shape[1:])


@dataclasses.dataclass(frozen=True)
class SegmentData:
    """A segment read into memory: concatenated step arrays, goals and the table."""

    name: str
    steps: dict[str, np.ndarray]
    goals: dict[str, np.ndarray]
    episode_ends: np.ndarray
    table: dict[str, list[Any]]
    has_goal: dict[str, list[bool]]
    labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # label key -> (T,) bool
    label_confidence: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # key -> (T,) float32
    label_attrs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # key -> provenance

    def episode_labels(self, i: int) -> dict[str, np.ndarray]:
        start = int(self.episode_ends[i - 1]) if i else 0
        return {t: v[start : int(self.episode_ends[i])] for t, v in self.labels.items()}

    def episode_label_confidence(self, i: int) -> dict[str, np.ndarray]:
        start = int(self.episode_ends[i - 1]) if i else 0
        return {t: v[start : int(self.episode_ends[i])] for t, v in self.label_confidence.items()}

    def episode(self, i: int) -> Episode:
        start = int(self.episode_ends[i - 1]) if i else 0
        stop = int(self.episode_ends[i])
        goal = {k: v[i] for k, v in self.goals.items() if self.has_goal[k][i]}
        rec = {c: self.table[c][i] for c in TABLE_COLUMNS if c not in ("episode_id", "length")}
        return Episode(steps=drop_absent({k: v[start:stop] for k, v in self.steps.items()}), goal=goal, **rec)

    def episodes(self) -> list[Episode]:
        return [self.episode(i) for i in range(len(self.episode_ends))]


def drop_absent(steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One episode's step arrays without the per-episode fields it lacks (stored as NaN rows)."""
    return {k: v for k, v in steps.items() if not (k in PER_EPISODE_STEP_KEYS and np.isnan(v).all())}


def write_segment(
    root: zarr.Group,
    name: str,
    episodes: Sequence[Episode],
    episode_ids: Sequence[str],
    schema: dict[str, dict[str, dict[str, Any]]],
    labels: Sequence[dict[str, np.ndarray]] | None = None,
    label_confidence: Sequence[dict[str, np.ndarray]] | None = None,
    label_attrs: Sequence[dict[str, dict[str, Any]]] | None = None,
) -> int:
    """Write one segment under ``segments/<name>``; returns the number of steps written.

    ``labels`` (one dict per episode, label key -> (T,) bool success labels) and
    ``label_confidence`` (the same, float32) are merged as :func:`merge_label_sets` says;
    ``label_attrs`` (one dict per episode, label key -> provenance) as :func:`merge_attrs` says.
    """
    lengths = np.array([len(e) for e in episodes], dtype=np.int64)
    arrays: list[tuple[str, str, np.ndarray, str]] = []  # (path, field key, data, dtype)
    for key, spec in schema["step"].items():
        present = [e.steps[key] for e in episodes if key in e.steps]
        if not present:
            continue  # a field added to the schema after these episodes' format (allow_new_fields)
        if len(present) < len(episodes) and key in PER_EPISODE_STEP_KEYS:  # NaN rows: the episode lacks it
            shape, dtype = tuple(spec["shape"]), spec["dtype"]
            present = [e.steps[key] if key in e.steps else np.full((len(e), *shape), np.nan, dtype) for e in episodes]
        data = np.concatenate(present) if len(present) > 1 else np.asarray(present[0])
        arrays.append((f"steps/{key}", key, data, spec["dtype"]))
    has_goal: dict[str, list[bool]] = {}
    for key, spec in schema["goal"].items():
        flags = [key in e.goal for e in episodes]
        if not any(flags):
            continue
        has_goal[key] = flags
        data = np.zeros((len(episodes), *spec["shape"]), dtype=spec["dtype"])
        for i, e in enumerate(episodes):
            if flags[i]:
                data[i] = e.goal[key]
        arrays.append((f"goals/{key}", key, data, spec["dtype"]))
    arrays.append(("episode_ends", "episode_ends", np.cumsum(lengths), "int64"))
    # the segment group, its subgroups and every array in one call: creating arrays one by one
    # checks and rewrites every parent group for each (≈ 3x slower for a 10-array segment)
    nodes: dict[str, GroupMetadata | ArrayV2Metadata | ArrayV3Metadata] = {name: GroupMetadata()}
    raw: set[str] = set()  # arrays stored without a compressor
    for path, key, data, dtype in arrays:
        sample = data if path.startswith("steps/") else None  # goal images: one frame per episode, lz4hc
        chunks = _chunks(key, data.shape, data.dtype.itemsize)
        codecs = _codec(key, sample)
        nodes[f"{name}/{path}"] = array_metadata(data.shape, dtype, chunks, codecs)
        if not codecs:
            raw.add(path)
    made = dict(root.require_group("segments").create_hierarchy(nodes))
    group = made[name]
    assert isinstance(group, zarr.Group)
    writes = []
    raw_arrays = []
    for path, key, data, _ in arrays:
        arr = made[f"{name}/{path}"]
        assert isinstance(arr, zarr.Array)
        if path in raw:
            raw_arrays.append((arr, data))
            continue
        arr = arr.with_config(_array_config(key))
        writes += [(arr, data, sl) for sl in _chunk_slices(arr)]
    pool = parallel.pool("segment-write", WRITE_THREADS)
    raw_written = pool.submit(put_raw_chunks, raw_arrays)
    # each sync zarr call waits on zarr's event loop: several in flight overlap their encoding and I/O
    list(pool.map(lambda w: w[0].__setitem__(w[2], w[1][w[2]]), writes))
    raw_written.result()
    if labels:
        confs = label_confidence or [{} for _ in labels]
        provs = label_attrs or [{} for _ in labels]
        parts: list[LabelPart] = [
            (int(n), lab, conf, prov) for n, lab, conf, prov in zip(lengths, labels, confs, provs, strict=True)
        ]
        values, confidence, attrs = merge_label_sets(parts)
        for key in values:
            write_labels(group, key, values[key], confidence.get(key), attrs.get(key))
    records = [e.record() for e in episodes]
    table: dict[str, list[Any]] = {"episode_id": list(episode_ids), "length": lengths.tolist()}
    for c in TABLE_COLUMNS[2:]:
        table[c] = [r[c] if c != "success" or r[c] is None else bool(r[c]) for r in records]
    group.attrs.update(
        {
            "format": FORMAT,
            "n_episodes": len(episodes),
            "n_steps": int(lengths.sum()),
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "episodes": table,
            "has_goal": has_goal,
        }
    )
    return int(lengths.sum())


RAW_BYTES_IN_FLIGHT = 256 << 20  # chunk bytes handed to the store at once by put_raw_chunks


def put_raw_chunks(arrays: Sequence[tuple[zarr.Array, np.ndarray]]) -> None:
    """Write every chunk of freshly created arrays that have no compressor (``bytes`` codec only:
    a chunk is its C-order little-endian bytes, an edge chunk padded to the full chunk shape with
    the fill value) straight to the store, all at once: the store gets a view of each chunk's
    rows, not a copy, and zarr's per-call path (its event-loop round trip, the chunk copied into
    a new buffer, a fill-value scan) is skipped. On 2 cores this writes 37 MB of 64x64 camera
    frames in ≈ 12-20 ms instead of ≈ 45-70 ms through ``zarr.Array.__setitem__`` (the store's own
    speed: benchmarks/ingest.py). Readers see exactly what ``__setitem__`` would have stored
    (tests/test_lake.py compares the two byte for byte)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    items = []
    for arr, data in arrays:
        meta = arr.metadata
        assert isinstance(meta, ArrayV3Metadata) and [c.to_dict()["name"] for c in meta.codecs] == ["bytes"], meta
        assert data.shape == arr.shape and all(c == n for c, n in zip(arr.chunks[1:], arr.shape[1:], strict=True))
        le = data.dtype.newbyteorder("<")
        step = arr.chunks[0]
        for i, start in enumerate(range(0, arr.shape[0], step)):
            rows = np.ascontiguousarray(data[start : start + step], dtype=le)
            if len(rows) < step:  # the edge chunk: stored whole, padded with the fill value (0)
                rows = np.concatenate([rows, np.zeros((step - len(rows), *rows.shape[1:]), le)])
            key = f"{arr.path}/{meta.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))}"
            items.append((key, rows.reshape(-1).view(np.uint8)))
    if not items:
        return
    store = arrays[0][0].store_path.store
    buffer = default_buffer_prototype().buffer

    async def put_all() -> None:
        room = asyncio.Semaphore(max(1, RAW_BYTES_IN_FLIGHT // max(1, items[0][1].nbytes)))

        async def put(key: str, flat: np.ndarray) -> None:
            async with room:
                await store.set(key, buffer.from_array_like(flat))

        await asyncio.gather(*(put(k, v) for k, v in items))

    sync(put_all())


def array_metadata(
    shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...], compressors: Sequence[BloscCodec]
) -> ArrayV3Metadata:
    """The Zarr v3 metadata ``zarr.Group.create_array(shape=, dtype=, chunks=, compressors=,
    fill_value=0)`` writes (the tests check they agree), built directly for ``create_hierarchy``."""
    itemsize = np.dtype(dtype).itemsize
    codecs = [BytesCodec().to_dict(), *(dataclasses.replace(c, typesize=itemsize).to_dict() for c in compressors)]
    return ArrayV3Metadata.from_dict(
        {
            "zarr_format": 3,
            "node_type": "array",
            "shape": list(shape),
            "data_type": np.dtype(dtype).name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": codecs,
            "attributes": {},
        }
    )


def _chunk_slices(arr: zarr.Array) -> list[slice]:
    """One write per chunk along time: zarr encodes a value that is exactly one chunk as is, but
    copies every chunk of a larger value into a new fill-value buffer first."""
    step = arr.chunks[0]
    return [slice(i, min(i + step, arr.shape[0])) for i in range(0, arr.shape[0], step)] or [slice(0, 0)]


def write_labels(
    group: zarr.Group,
    key: str,
    values: np.ndarray,
    confidence: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
) -> None:
    """Store the label set ``key`` (:func:`label_key`) in a segment: ``labels/<key>`` bool (T,)
    with ``attrs`` (default: source and created_at), and ``label_confidence/<key>`` float32 (T,)
    if ``confidence`` is given (a stale one is removed otherwise)."""
    chunks = (max(1, min(LOWDIM_CHUNK_STEPS, len(values))),)
    arr = group.create_array(
        f"labels/{key}", shape=values.shape, dtype="bool", fill_value=False, chunks=chunks, overwrite=True
    )
    arr[...] = values.astype(bool)
    if attrs is None:
        attrs = {"source": split_label_key(key)[1], "created_at": dt.datetime.now(dt.UTC).isoformat()}
    arr.attrs.update(attrs)
    if confidence is not None:
        conf = group.create_array(
            f"label_confidence/{key}",
            shape=values.shape,
            dtype="float32",
            fill_value=0.0,
            chunks=chunks,
            overwrite=True,
        )
        conf[...] = confidence.astype(np.float32)
    elif f"label_confidence/{key}" in group:
        del group[f"label_confidence/{key}"]


def merge_attrs(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One provenance for label parts merged into one array: the parts' own if they agree, else
    what they agree on plus ``parts`` (each distinct provenance once)."""
    flat: list[dict[str, Any]] = []
    for a in parts:
        flat += a["parts"] if "parts" in a else [a]
    distinct = list({json.dumps(a, sort_keys=True, default=str): a for a in flat}.values())
    if len(distinct) <= 1:
        return dict(distinct[0]) if distinct else {}
    common = {k: v for k, v in distinct[0].items() if all(d.get(k) == v for d in distinct[1:])}
    return {**common, "parts": distinct}


LabelPart = tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, Any]]]


def merge_label_sets(
    parts: Sequence[LabelPart],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Label sets of consecutive parts ``(n_steps, labels, confidence, attrs)`` as one part.

    A sim set (no confidence) is kept only where every part has it; any other set is kept, parts
    without it filled as unknown (label False, confidence 0) and parts without a confidence array
    at confidence 1. Returns (labels, confidence, attrs), keyed by label key.
    """
    values: dict[str, np.ndarray] = {}
    confidence: dict[str, np.ndarray] = {}
    attrs: dict[str, dict[str, Any]] = {}
    for key in sorted({k for _, lab, _, _ in parts for k in lab}):
        have = [key in lab for _, lab, _, _ in parts]
        if not all(have) and split_label_key(key)[1] == SIM_SOURCE:
            continue
        values[key] = np.concatenate([lab[key] if key in lab else np.zeros(n, bool) for n, lab, _, _ in parts])
        if not all(have) or any(key in conf for _, _, conf, _ in parts):
            confidence[key] = np.concatenate(
                [
                    (conf[key] if key in conf else np.ones(n, np.float32)) if key in lab else np.zeros(n, np.float32)
                    for n, lab, conf, _ in parts
                ]
            ).astype(np.float32)
        attrs[key] = merge_attrs([a[key] for _, lab, _, a in parts if key in lab and key in a])
    return values, confidence, attrs


def _label_attrs(arrays: Sequence[tuple[str, zarr.Array]]) -> dict[str, dict[str, Any]]:
    """Provenance of each label set ``(key, labels array)`` (``source`` from the key where none is stored)."""
    return {path: {"source": split_label_key(path)[1], **dict(arr.attrs.asdict())} for path, arr in arrays}  # type: ignore[arg-type]


def _arrays_under(group: zarr.Group, prefix: str) -> list[tuple[str, zarr.Array]]:
    if prefix not in group:
        return []
    sub = group[prefix]
    assert isinstance(sub, zarr.Group)
    return walk_arrays(sub)


def read_segment(group: zarr.Group, fields: Sequence[str] | None = None) -> SegmentData:
    """Read a whole segment (optionally only some step fields), all arrays at once.

    The arrays are fetched concurrently: each sync zarr read waits on zarr's event loop, so
    several in flight overlap their I/O and decompression.
    """
    attrs = attrs_of(group)
    jobs: list[tuple[dict[str, np.ndarray], str, zarr.Array]] = []
    steps: dict[str, np.ndarray] = {}
    goals: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    confidence: dict[str, np.ndarray] = {}
    outs = (("steps", steps), ("goals", goals), ("labels", labels), ("label_confidence", confidence))
    for prefix, out in outs:
        for path, arr in _arrays_under(group, prefix):
            if prefix == "steps" and fields is not None and path not in fields:
                continue
            jobs.append((out, path, arr))
    reads = parallel.pool("segment-read", READ_THREADS).map(lambda j: j[2][...], jobs)
    for (out, path, _), data in zip(jobs, reads, strict=True):
        out[path] = data
    ends = group["episode_ends"]
    assert isinstance(ends, zarr.Array)
    return SegmentData(
        name=group.basename,
        steps=steps,
        goals=goals,
        episode_ends=np.asarray(ends[...]),
        table=attrs["episodes"],
        has_goal=attrs.get("has_goal", {}),
        labels=labels,
        label_confidence=confidence,
        label_attrs=_label_attrs([(path, arr) for out, path, arr in jobs if out is labels]),
    )


def walk_arrays(group: zarr.Group, prefix: str = "") -> list[tuple[str, zarr.Array]]:
    out: list[tuple[str, zarr.Array]] = []
    for name, member in group.members():
        if isinstance(member, zarr.Array):
            out.append((prefix + name, member))
        else:
            out.extend(walk_arrays(member, prefix + name + "/"))
    return out


def error_summary(e: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of an exception: Icechunk's storage errors run to dozens of lines
    (its first line names the failure and, for a missing chunk file, the file)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if first.startswith("x "):  # the marker of Icechunk's error reports
        first = first[2:]
    return f"{type(e).__name__}: {first[:limit]}" if first else type(e).__name__


class UnreadableEpisodesError(Exception):
    """Episodes of a segment could not be read; ``errors`` maps their positions to why."""

    def __init__(self, segment: str, errors: dict[int, str]):
        self.segment = segment
        self.errors = dict(sorted(errors.items()))
        first = next(iter(self.errors.values()), "")
        super().__init__(f"segment {segment}: episodes at positions {list(self.errors)} are unreadable: {first}")


def read_segment_episodes(group: zarr.Group, indices: Sequence[int]) -> SegmentData:
    """Some episodes of a segment (positions ``indices``) as a segment of their own: their step
    ranges of ``steps/*``, ``labels/*`` and ``label_confidence/*``, their rows of ``goals/*`` and their table rows, in
    segment order. Chunks that hold none of them are never read, so a damaged chunk of another
    episode does not matter (``Lake.delete`` keeps a segment's other episodes this way).

    Consecutive episodes are read as one range per array; where a range fails, its episodes are
    read one by one to find which. Raises :class:`UnreadableEpisodesError` naming every requested
    episode that cannot be read.
    """
    attrs = attrs_of(group)
    table: dict[str, list[Any]] = attrs["episodes"]
    lengths = np.asarray(table["length"], dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    idx = sorted(set(int(i) for i in indices))
    runs: list[list[int]] = []
    for i in idx:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    arrays: list[tuple[str, str, zarr.Array]] = []  # (prefix, path, array)
    for prefix in ("steps", "goals", "labels", "label_confidence"):
        arrays += [(prefix, path, arr) for path, arr in _arrays_under(group, prefix)]

    def rows(prefix: str, first: int, last: int) -> slice:
        """Rows of episodes ``first..last`` (inclusive): episode rows for goals, steps otherwise."""
        return slice(first, last + 1) if prefix == "goals" else slice(int(starts[first]), int(ends[last]))

    def fetch(job: tuple[zarr.Array, slice]) -> np.ndarray | str:
        try:
            return np.asarray(job[0][job[1]])
        except Exception as e:  # storage, decompression, ...: reported per episode below
            return error_summary(e)

    pool = parallel.pool("segment-read", READ_THREADS)
    jobs = [(arr, rows(prefix, run[0], run[-1])) for run in runs for prefix, _, arr in arrays]
    results = list(pool.map(fetch, jobs))
    per_run = [results[k * len(arrays) : (k + 1) * len(arrays)] for k in range(len(runs))]
    errors: dict[int, str] = {}
    for k, run in enumerate(runs):
        if all(isinstance(r, np.ndarray) for r in per_run[k]):
            continue
        # a damaged chunk in this range: read its episodes one by one to find the unreadable ones
        singles = list(pool.map(fetch, [(arr, rows(prefix, i, i)) for i in run for prefix, _, arr in arrays]))
        pieces: list[list[np.ndarray]] = [[] for _ in arrays]
        run_errors: dict[int, str] = {}
        for j, i in enumerate(run):
            got = singles[j * len(arrays) : (j + 1) * len(arrays)]
            bad = [f"{p}/{path}: {r}" for (p, path, _), r in zip(arrays, got, strict=True) if isinstance(r, str)]
            if bad:
                run_errors[i] = bad[0]
            for a, r in enumerate(got):
                if isinstance(r, np.ndarray):
                    pieces[a].append(r)
        errors.update(run_errors)
        if not run_errors:  # the range failed but each of its episodes reads on its own (a transient error)
            per_run[k] = [np.concatenate(p) for p in pieces]
    if errors:
        raise UnreadableEpisodesError(group.basename, errors)
    steps: dict[str, np.ndarray] = {}
    goals: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    confidence: dict[str, np.ndarray] = {}
    outs = {"steps": steps, "goals": goals, "labels": labels, "label_confidence": confidence}
    for a, (prefix, path, arr) in enumerate(arrays):
        parts = [per_run[k][a] for k in range(len(runs))]
        assert all(isinstance(p, np.ndarray) for p in parts)
        data = np.concatenate(parts) if parts else np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
        outs[prefix][path] = data
    return SegmentData(
        name=group.basename,
        steps=steps,
        goals=goals,
        episode_ends=np.cumsum(lengths[idx]) if idx else np.zeros(0, np.int64),
        table={c: [v[i] for i in idx] for c, v in table.items()},
        has_goal={k: [f[i] for i in idx] for k, f in attrs.get("has_goal", {}).items()},
        labels=labels,
        label_confidence=confidence,
        label_attrs=_label_attrs([(path, arr) for prefix, path, arr in arrays if prefix == "labels"]),
    )


def _steps_or_absent(seg: SegmentData, key: str, segs: list[SegmentData]) -> np.ndarray:
    """``seg``'s step field ``key``; NaN rows (absent) for a per-episode field none of its episodes has."""
    if key in seg.steps:
        return seg.steps[key]
    like = next(s.steps[key] for s in segs if key in s.steps)
    return np.full((int(seg.episode_ends[-1]) if len(seg.episode_ends) else 0, *like.shape[1:]), np.nan, like.dtype)


def concat_segments(segs: list[SegmentData], name: str) -> SegmentData:
    """Segments concatenated in order into one (label sets merged as :func:`merge_label_sets` says)."""
    if len(segs) == 1:
        return segs[0]
    keys = sorted({k for s in segs for k in s.steps})
    missing = [(s.name, k) for s in segs for k in keys if k not in s.steps and k not in PER_EPISODE_STEP_KEYS]
    if missing:
        raise ValueError(f"cannot concatenate: segment {missing[0][0]} lacks field {missing[0][1]!r}; pass fields=")
    offsets = np.cumsum([0] + [int(s.episode_ends[-1]) for s in segs[:-1]])
    table = {c: [v for s in segs for v in s.table[c]] for c in segs[0].table} if segs else {}
    gkeys = sorted({k for s in segs for k in s.goals})
    goals, has_goal = {}, {}
    for k in gkeys:
        src = next(s.goals[k] for s in segs if k in s.goals)
        goals[k] = np.concatenate(
            [s.goals.get(k, np.zeros((len(s.episode_ends), *src.shape[1:]), src.dtype)) for s in segs]
        )
        has_goal[k] = [f for s in segs for f in s.has_goal.get(k, [False] * len(s.episode_ends))]
    parts: list[LabelPart] = [
        (int(s.episode_ends[-1]) if len(s.episode_ends) else 0, s.labels, s.label_confidence, s.label_attrs)
        for s in segs
    ]
    labels, confidence, label_attrs = merge_label_sets(parts)
    return SegmentData(
        name=name,
        labels=labels,
        label_confidence=confidence,
        label_attrs=label_attrs,
        steps={k: np.concatenate([_steps_or_absent(s, k, segs) for s in segs]) for k in keys},
        goals=goals,
        episode_ends=np.concatenate([s.episode_ends + o for s, o in zip(segs, offsets, strict=True)])
        if segs
        else np.zeros(0, np.int64),
        table=table,
        has_goal=has_goal,
    )
