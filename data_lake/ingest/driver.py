"""The ingest driver: input paths -> readers -> resampled episodes -> one ``Lake.append`` commit.

    paths ──expand──► files ──reader──► units (file, demo, dataset episode)
          ──sync.order / windows / resample──► pieces (one tick grid each)
          ──decode + resize + concat──► Episode (with provenance) ──► Lake.append (one commit)

Rules:
- By default any problem (an error in any file or episode) rejects the whole ingest and nothing
  is committed (``IngestRejected`` lists every problem found). With ``skip_invalid`` the valid
  episodes are committed and the others go to the quarantine report (JSON: source, code,
  details, where, time_ns, step), together with episodes the lake's own validation rejects.
- Re-ingesting is a no-op: a file whose sha256 was already ingested with the same mapping hash
  on the branch is skipped unread, and episodes are content-hashed by the lake (duplicates are
  skipped) whatever their provenance.
- Camera frames take the size in the mapping (``image_size``), else the lake's schema size for
  that camera, else the first frame's size; see ``data_lake.ingest.images`` for the policy.
- Camera and depth frames decode on a thread pool (``_FrameJob``) while the main thread reads
  the episode's vectors; errors are reported for the first bad frame in order, whatever the
  threads did first. Measured effect of this and the readers' fast paths: ``docs/ingest.md``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from data_lake import parallel
from data_lake.episode import ContentHasher, Episode
from data_lake.ingest import hdf5, images, lerobot, mcap_reader, minari, ogbench, rosbag
from data_lake.ingest.errors import IngestError, IngestRejected, Note
from data_lake.ingest.mapping import FORMATS, Mapping, SourceSpec, ValueSpec
from data_lake.ingest.streams import Source, Unit
from data_lake.ingest.sync import Piece, order, resample, span_indices, windows
from data_lake.lake import Lake, WriteResult

FRAME_BATCH = 256  # frames per decode block (fewer for large frames, see _FrameJob)


@dataclasses.dataclass(frozen=True)
class ReaderSpec:
    """How one format is recognised, expanded from directories, and read. ``build`` turns a unit
    into episodes: by default ``episodes_of`` (order, split, resample); formats whose units are
    already one row per step (OGBench) build their own, with fields the mapping cannot express
    (``sim_state``, ``achieved_goal``)."""

    sniff: Callable[[Path], bool]
    expand: Callable[[Path], list[Path]]
    read: Callable[[Path, Mapping], Iterable[Unit | IngestError]]
    describe: str
    build: Callable[[Unit, BuildContext], tuple[list[Episode], list[str], list[Note]]] | None = None


READERS: dict[str, ReaderSpec] = {
    "mcap": ReaderSpec(mcap_reader.is_mcap, mcap_reader.expand, mcap_reader.read, "an MCAP file"),
    "ros1": ReaderSpec(
        rosbag.is_ros1, lambda p: rosbag.expand(p, "ros1"), lambda p, m: rosbag.read(p, m, "ros1"), "a ROS 1 bag"
    ),
    "ros2": ReaderSpec(
        rosbag.is_ros2,
        lambda p: rosbag.expand(p, "ros2"),
        lambda p, m: rosbag.read(p, m, "ros2"),
        "a ROS 2 bag directory",
    ),
    "robomimic": ReaderSpec(hdf5.is_hdf5, hdf5.expand, hdf5.read_robomimic, "a robomimic HDF5 file"),
    "aloha": ReaderSpec(hdf5.is_hdf5, hdf5.expand, hdf5.read_aloha, "an ALOHA HDF5 file"),
    "lerobot": ReaderSpec(lerobot.is_lerobot, lerobot.expand, lerobot.read, "a LeRobot dataset directory"),
    "minari": ReaderSpec(lambda p: minari.main_file(p) is not None, minari.expand, minari.read, "a Minari dataset"),
    "ogbench": ReaderSpec(
        ogbench.is_ogbench, ogbench.expand, ogbench.read, "an OGBench .npz dataset file", ogbench.build
    ),
}
assert set(READERS) == set(FORMATS)


def detect_format(path: Path) -> str | None:
    """What ``path`` looks like (for ``wrong_format`` messages); HDF5 layouts report ``hdf5``."""
    for fmt in ("mcap", "ros1", "ros2", "lerobot", "minari", "ogbench"):
        if READERS[fmt].sniff(path):
            return fmt
    return "hdf5" if hdf5.is_hdf5(path) else None


# ---------------------------------------------------------------------------- the report
@dataclasses.dataclass
class IngestReport:
    """What one ingest did. ``quarantined`` lists every problem of the sources left out."""

    format: str
    files: list[str]
    skipped_files: list[str]  # already ingested with this mapping (same sha256)
    episodes: int  # built from the sources
    frames: int  # steps (ticks) over all built episodes
    images: int  # camera frames decoded
    result: WriteResult | None
    quarantined: list[Note]
    warnings: list[Note]
    sync: dict[str, dict[str, float]]
    seconds: float

    @property
    def snapshot_id(self) -> str | None:
        return self.result.snapshot_id if self.result else None

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "format": self.format,
            "files": self.files,
            "skipped_files": self.skipped_files,
            "episodes": self.episodes,
            "frames": self.frames,
            "images": self.images,
            "snapshot_id": self.snapshot_id,
            "branch": r.branch if r else None,
            "added": r.added if r else 0,
            "skipped_duplicates": r.skipped_duplicates if r else 0,
            "quarantined": [n.to_json() for n in self.quarantined],
            "warnings": [n.to_json() for n in self.warnings],
            "sync": self.sync,
            "seconds": round(self.seconds, 3),
        }


def write_report(path: str | os.PathLike[str], notes: Sequence[Note]) -> Path:
    """The quarantine report: a JSON list of {source, code, details, where, time_ns, step}."""
    p = Path(path)
    p.write_text(json.dumps([n.to_json() for n in notes], indent=1))
    return p


# ---------------------------------------------------------------------------- hashing
def sha256_path(path: Path) -> str:
    """sha256 of a file's bytes; for a directory, of its files' relative paths and bytes."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f is not path:
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- episodes from a unit
class _NoBar:
    def update(self, n: int) -> None:
        pass


@dataclasses.dataclass
class BuildContext:
    """What building episodes needs beyond the unit: the mapping, the format, the frame size per
    camera (fixed by the first episode when neither the mapping nor the lake gives one), the
    source's sha256 and a progress bar (anything with ``update(n)``)."""

    mapping: Mapping
    fmt: str
    sizes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # "images/<cam>" -> (H, W)
    source_sha: str = ""
    frames_bar: Any = dataclasses.field(default_factory=_NoBar)


def _step_specs(m: Mapping) -> list[SourceSpec]:
    specs = [*m.cameras.values(), *m.depth.values(), *m.state, *m.action]
    if m.reward.source is not None:
        specs.append(m.reward.source)
    return specs


def episodes_of(unit: Unit, ctx: BuildContext) -> tuple[list[Episode], list[str], list[Note]]:
    """Every episode of one unit (labels, warnings); raises IngestError for a bad unit."""
    m = ctx.mapping
    notes = list(unit.notes)
    sources: dict[str, Source] = {}
    for name, s in unit.sources.items():
        s2, n = order(s, m.sync.on_backwards)
        sources[name] = s2
        notes += n
    origin = min((int(s.t_ns[0]) for s in sources.values() if len(s.t_ns)), default=0)
    step = {s.name: sources[s.name] for s in _step_specs(m)}
    marker, starts = None, None
    if m.episodes.split == "marker":
        assert m.episodes.marker is not None
        marker = sources[m.episodes.marker.name]
        starts = np.asarray(marker.values(m.episodes.marker, "marker", np.arange(len(marker.t_ns))), dtype=bool)
    wins, n = windows(step, marker, starts, m)
    notes += n
    pieces: list[Piece] = []
    for w in wins:
        p, n = resample(step, w, m, origin)
        pieces += p
        notes += n
    if not pieces:
        raise IngestError(
            "too_short",
            f"no episode of at least {m.episodes.min_steps} ticks at {m.rate_hz} Hz: "
            + "; ".join(str(x.details) for x in notes if x.code in ("too_short", "gap"))[:500],
        )
    eps, labels, extra = [], [], []
    for k, piece in enumerate(pieces):
        label = unit.label + (f"[{k}]" if len(pieces) > 1 else "")
        ep, own = _episode(unit, piece, sources, ctx, k, len(pieces), notes, label)
        eps.append(ep)
        labels.append(label)
        extra += [dataclasses.replace(n, source=n.source or label) for n in own]
    return eps, labels, notes + extra


def _vectors(
    specs: Sequence[SourceSpec], sources: dict[str, Source], piece: Piece, role: str
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    parts, layout, col = [], [], 0
    for spec in specs:
        src, idx = sources[spec.name], piece.idx[spec.name]
        v = np.asarray(src.values(spec, "vector", idx), dtype=np.float64)  # (T, d)
        bad = ~np.isfinite(v)
        if bad.any():
            r = int(np.argmax(bad.any(axis=1)))
            raise IngestError(
                "non_finite",
                f"{role} value {v[r][bad[r]][0]} at sample {int(idx[r])} is not finite; expected finite numbers",
                where=spec.label(),
                time_ns=int(src.t_ns[idx[r]]),
                step=r,
            )
        parts.append(v)
        layout.append({"source": spec.label(), "start": col, "stop": col + v.shape[1]})
        col += v.shape[1]
    out = np.concatenate(parts, axis=1).astype(np.float32)  # (T, D)
    if not np.isfinite(out).all():
        r, c = np.argwhere(~np.isfinite(out))[0]
        src_label = next(x["source"] for x in layout if x["start"] <= c < x["stop"])
        raise IngestError("non_finite", f"{role} value overflows float32 at column {c}", where=src_label, step=int(r))
    return out, layout


class _FrameJob:
    """One camera's frames of one episode, decoded on the decode pool in blocks while the caller
    builds the rest of the episode.

    The first frame is decoded here, synchronously: it fixes the source frame shape and dtype
    that every later frame must keep and, unless the mapping or the lake gave one, the lake frame
    size. Each block then decodes its frames one at a time (``Source.frames``) straight into its
    rows of one preallocated array, resizing each on the way when the sizes differ. Blocks hold
    ``FRAME_BATCH`` frames, fewer for large frames, so that the frames the pool holds at once stay
    under ``FRAMES_IN_FLIGHT_BYTES`` (sources that read a whole block at once, HDF5 say).
    ``result`` waits for the blocks in order and raises the error of the earliest failing one, so
    errors name the same frame whatever the thread timing.
    """

    def __init__(
        self, cam_key: str, spec: SourceSpec, sources: dict[str, Source], piece: Piece, ctx: BuildContext, depth: bool
    ):
        self.src, self.idx, self.spec, self.ctx = sources[spec.name], piece.idx[spec.name], spec, ctx
        self.role, self.depth = ("depth" if depth else "image"), depth
        first = np.asarray(self.src.values(spec, self.role, self.idx[:1]))
        self.first_shape, self.dtype = first.shape[1:], first.dtype
        ctx.sizes.setdefault(cam_key, (int(first.shape[1]), int(first.shape[2])))
        H, W = self.size = ctx.sizes[cam_key]
        self.out = np.empty((len(self.idx), H, W, *first.shape[3:]), dtype=first.dtype)
        self.out[:1] = images.fit(first, self.size, ctx.mapping.resize, depth=depth)
        threads = DECODE_THREADS_PER_CORE * parallel.available_cores()
        rows = max(1, min(FRAME_BATCH, FRAMES_IN_FLIGHT_BYTES // (threads * max(1, first[:1].nbytes))))
        pool = parallel.pool("ingest-decode", threads)
        self.blocks = [
            (b0, min(b0 + rows, len(self.idx)), pool.submit(self._block, b0, min(b0 + rows, len(self.idx))))
            for b0 in range(1, len(self.idx), rows)
        ]

    def _block(self, b0: int, b1: int) -> None:
        sel, rows = self.idx[b0:b1], self.out[b0:b1]
        if rows.shape[1:] == self.first_shape:  # no resize: decode straight into the episode's rows
            self.src.frames_into(self.spec, self.role, sel, rows)
            return
        for k, f in enumerate(self.src.frames(self.spec, self.role, sel)):
            if f.shape != self.first_shape or f.dtype != self.dtype:
                raise IngestError(
                    "shape_change",
                    f"frame {f.dtype} {f.shape}, but the episode's first frame is {self.dtype} {self.first_shape}",
                    where=self.spec.name,
                    time_ns=int(self.src.t_ns[sel[k]]),
                    step=b0 + k,
                )
            rows[k] = images.fit(f[None], self.size, self.ctx.mapping.resize, depth=self.depth)[0]

    def result(self) -> tuple[np.ndarray, list[int]]:
        """The frames (T, H, W[, 3]) and the source frame size [h, w]."""
        self.ctx.frames_bar.update(1)
        for b0, b1, fut in self.blocks:
            try:
                fut.result()
            except BaseException:
                self.cancel()
                raise
            self.ctx.frames_bar.update(b1 - b0)
        return self.out, [int(self.first_shape[0]), int(self.first_shape[1])]

    def hash_into(self, h: ContentHasher, key: str) -> None:
        """Feed the frames to ``h`` under ``key``, each block as soon as it is decoded."""
        h.begin(key, self.out.dtype, self.out.shape)
        h.rows(self.out[:1])
        for b0, b1, fut in self.blocks:
            fut.result()
            h.rows(self.out[b0:b1])

    def cancel(self) -> None:
        """Drop the blocks not started and wait for the running ones (they write into ``out``)."""
        for _, _, fut in self.blocks:
            fut.cancel()
        cf.wait([fut for _, _, fut in self.blocks])


# One decode thread per core. libjpeg-turbo (simplejpeg) and OpenCV release the GIL while they
# decode, but every frame also takes it back (message parsing, the call): with small frames
# (64x64 JPEGs decode in ≈ 20 µs) more threads only add GIL hand-offs. Measured with OpenCV on
# 2 cores, 3,000 frames, 15 interleaved repeats: one per core 0.096-0.120 s to build the episode,
# two per core 0.105-0.146 s; with simplejpeg and the hash on its own thread, 1, 2 and 3 decode
# threads in all built it in the same time (medians 114-124 ms over 10 interleaved repeats on a
# busy machine). Large frames decode mostly outside the GIL and use every thread.
DECODE_THREADS_PER_CORE = 1
FRAMES_IN_FLIGHT_BYTES = 512 << 20  # source frames the decode pool holds at once, at most


def _reduce(
    vs: ValueSpec, role: str, sources: dict[str, Source], piece: Piece, default_reduce: str, notes: list[Note]
) -> Any:
    """A per-episode value: the constant, or the source's samples in the episode's span reduced.

    Flags with no sample in the span (nor before it) are unknown: None, with a warning; text
    sources (task, language) must have one."""
    if vs.source is None:
        return vs.constant
    src = sources[vs.source.name]
    ii = span_indices(src, piece.span)
    if len(ii) == 0:
        details = "no sample during the episode or before it"
        if len(src.t_ns) == 0:
            details = "the topic/key has no sample at all in this source"
        if role != "text":
            notes.append(
                Note("missing_source", details + "; left unknown", where=vs.source.label(), time_ns=piece.span[0])
            )
            return None
        raise IngestError("missing_source", details, where=vs.source.label(), time_ns=piece.span[0])
    vals = src.values(vs.source, role, ii)
    how = vs.source.reduce or default_reduce
    if role == "text":
        texts = list(vals)
        return texts[-1] if how == "last" else texts[0]
    flags = np.asarray(np.asarray(vals, dtype=np.float64).reshape(len(ii), -1).any(axis=1))  # (n,) bool
    return bool({"any": flags.any(), "all": flags.all(), "last": flags[-1], "first": flags[0]}[how])


def _episode(
    unit: Unit,
    piece: Piece,
    sources: dict[str, Source],
    ctx: BuildContext,
    k: int,
    n_pieces: int,
    notes: list[Note],
    label: str,
) -> tuple[Episode, list[Note]]:
    """One episode from one piece; also returns the warnings found building it."""
    m = ctx.mapping
    T = len(piece.ticks)
    jobs: list[tuple[str, _FrameJob]] = []
    try:  # frames decode on the pool while the vectors are read here; frame errors come first
        streams = {**{f"images/{c}": v for c, v in m.cameras.items()}, **{f"depth/{c}": v for c, v in m.depth.items()}}
        for key, spec in streams.items():
            try:
                jobs.append((key, _FrameJob(key, spec, sources, piece, ctx, depth=key.startswith("depth/"))))
            except IngestError:
                for _, job in jobs:
                    job.result()  # an earlier camera's bad frame is reported first
                raise
        try:
            state, state_layout = _vectors(m.state, sources, piece, "state")
            action, action_layout = _vectors(m.action, sources, piece, "action")
        except IngestError:
            for _, job in jobs:
                job.result()  # raises a frame error instead, if there is one
            raise
        hashing = parallel.pool("ingest-hash", 1).submit(_hash_frames, action, jobs)
        frames = {key: job.result() for key, job in jobs}
    except BaseException:
        for _, job in jobs:
            job.cancel()
        raise
    cams = {key.split("/", 1)[1]: f for key, (f, _) in frames.items() if key.startswith("images/")}
    depth = {key.split("/", 1)[1]: f for key, (f, _) in frames.items() if key.startswith("depth/")}
    src_sizes = {key: size for key, (_, size) in frames.items()}
    if not m.cameras:
        ctx.frames_bar.update(T)
    if m.reward.source is not None:
        r, _ = _vectors([m.reward.source], sources, piece, "reward")
        if r.shape[1] != 1:
            raise IngestError(
                "shape_change",
                f"a reward source gives one value per sample, found {r.shape[1]}",
                where=m.reward.source.label(),
            )
        reward = r[:, 0]
    else:
        reward = np.full(T, float(m.reward.constant or 0.0), dtype=np.float32)
    own: list[Note] = []
    success = _reduce(m.success, "vector", sources, piece, "any", own)
    if m.terminal.constant == "success":
        terminal = bool(success)
    else:
        terminal = bool(_reduce(m.terminal, "vector", sources, piece, "any", own))
    task = _reduce(m.task, "text", sources, piece, "first", own) or ""
    language = _reduce(m.language, "text", sources, piece, "first", own)
    prov = {
        "source": str(unit.path),
        "source_sha256": ctx.source_sha,
        "unit": unit.label,
        "piece": k,
        "pieces": n_pieces,
        "time_range_ns": [int(piece.ticks[0]), int(piece.ticks[-1])],
        "format": ctx.fmt,
        "reader": unit.reader,
        "reader_version": unit.reader_version,
        "mapping": m.path,
        "mapping_sha256": m.sha256,
        "rate_hz": m.rate_hz,
        "resize": m.resize,
        "source_image_sizes": src_sizes,
        "state_layout": state_layout,
        "action_layout": action_layout,
        "sync": piece.stats,
        "warnings": [n.to_json() for n in [*notes, *own]],
        "info": unit.info,
    }
    ep = Episode.make(
        images=cams,
        depth=depth or None,
        state=state,
        action=action,
        reward=reward,
        timestamp_ns=piece.ticks.astype(np.int64),
        is_terminal=terminal,
        task=str(task),
        language=None if language is None else str(language),
        success=success,
        source=f"ingest:{label}",
        robot=m.robot,
        metadata={"ingest": prov},
    )
    return ep.with_hash(hashing.result()), own


def _hash_frames(action: np.ndarray, jobs: list[tuple[str, _FrameJob]]) -> ContentHasher:
    """The episode's content hash (``Episode.episode_id``) over its first keys in sorted order,
    ``action`` and then the frames of each camera (``depth/`` before ``images/``), block by block
    as they are decoded: sha256 runs on its own thread while the frames decode, instead of over
    the whole episode after it is built. ``Episode.with_hash`` adds the remaining keys."""
    h = ContentHasher()
    h.add("action", action)
    for key, job in sorted(jobs, key=lambda kj: kj[0]):
        job.hash_into(h, key)
    return h


# ---------------------------------------------------------------------------- the whole ingest
def expand_inputs(paths: Sequence[str | os.PathLike[str]], fmt: str) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise IngestError("not_found", "no such file or directory", source=str(p))
        found = READERS[fmt].expand(p)
        if not found:
            raise IngestError("not_found", f"no {READERS[fmt].describe} inside", source=str(p))
        out += found
    return list(dict.fromkeys(out))


def _check_format(path: Path, fmt: str) -> None:
    if READERS[fmt].sniff(path):
        return
    seen = detect_format(path)
    hint = f"it looks like {seen}" if seen else "its format is not recognised"
    if fmt == "ros2" and path.is_dir() and not (path / "metadata.yaml").exists():
        storage = sorted(p.name for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
        if storage:  # what a recorder that was killed leaves: storage, no metadata.yaml yet
            hint = (
                f"it holds {storage[:3]} but no metadata.yaml (a recording cut off before the recorder "
                "wrote it?): run `ros2 bag reindex` on it, or ingest its .mcap files with --format mcap"
            )
    raise IngestError("wrong_format", f"--format {fmt} expects {READERS[fmt].describe}; {hint}", source=str(path))


def _lake_state(lake: Lake, branch: str) -> tuple[set[tuple[str, str]], dict[str, tuple[int, int]]]:
    """What the branch already holds, from one checkout: the (source sha256, mapping sha256) pairs
    already ingested, and the frame size of each camera in its schema."""
    if branch not in lake.branches():
        return set(), {}
    view = lake.checkout(branch)
    done = set()
    for rec in view.episodes():
        ing = rec.metadata.get("ingest") if isinstance(rec.metadata, dict) else None
        if isinstance(ing, dict):
            done.add((str(ing.get("source_sha256")), str(ing.get("mapping_sha256"))))
    schema = view.schema or {"step": {}}
    sizes = {
        k: (int(v["shape"][0]), int(v["shape"][1]))
        for k, v in schema["step"].items()
        if k.startswith(("images/", "depth/"))
    }
    return done, sizes


def _sync_summary(eps: Iterable[Episode]) -> dict[str, dict[str, float]]:
    """Per stream over all episodes: the mean age over every tick (episodes weighted by their
    length), the worst age, and the ticks dropped as stale (each episode counts its own, see
    ``data_lake.ingest.sync``, so every dropped tick is counted once)."""
    acc: dict[str, dict[str, float]] = {}
    for e in eps:
        for name, s in e.metadata["ingest"]["sync"].items():
            a = acc.setdefault(
                name, {"episodes": 0, "ticks": 0, "age_ms_mean": 0.0, "age_ms_max": 0.0, "stale_ticks": 0}
            )
            a["episodes"] += 1
            a["ticks"] += len(e)
            a["age_ms_mean"] += s["age_ms_mean"] * len(e)
            a["age_ms_max"] = max(a["age_ms_max"], s["age_ms_max"])
            a["stale_ticks"] += s["stale_ticks"]
    for a in acc.values():
        a["age_ms_mean"] = round(a["age_ms_mean"] / max(a["ticks"], 1), 3)
    return acc


def ingest(
    paths: Sequence[str | os.PathLike[str]],
    mapping: Mapping,
    lake: Lake,
    *,
    fmt: str | None = None,
    branch: str = "main",
    message: str | None = None,
    author: str | None = None,
    skip_invalid: bool = False,
    allow_new_fields: bool = False,
    progress: bool = False,
) -> IngestReport:
    """Read ``paths`` with ``mapping`` and append the episodes to ``lake`` in one commit.

    Raises ``IngestRejected`` (nothing committed) when any source is bad and not
    ``skip_invalid``; the lake's own ``EpisodeValidationError`` likewise.
    """
    t0 = time.perf_counter()
    fmt = _resolve_format(fmt, mapping)
    files = expand_inputs(paths, fmt)
    done, sizes = _lake_state(lake, branch)
    ctx = BuildContext(mapping, fmt, sizes)
    for cam in [*(f"images/{c}" for c in mapping.cameras), *(f"depth/{c}" for c in mapping.depth)]:
        if mapping.image_size is not None:
            ctx.sizes[cam] = mapping.image_size
    episodes: list[Episode] = []
    labels: list[str] = []
    errors: list[Note] = []
    warnings: list[Note] = []
    skipped: list[str] = []
    file_bar = tqdm(files, desc=f"ingest {fmt}", unit="file", disable=not progress)
    with tqdm(desc="frames", unit="frame", disable=not progress, leave=False) as frames_bar:
        ctx.frames_bar = frames_bar
        for path in file_bar:
            try:
                _check_format(path, fmt)
                ctx.source_sha = sha256_path(path)
                if (ctx.source_sha, mapping.sha256) in done:
                    skipped.append(str(path))
                    continue
                with gc_paused():
                    for item in _units(path, mapping, fmt):
                        if isinstance(item, IngestError):
                            errors.append(item.located(str(path)).note)
                            continue
                        try:
                            eps, labs, notes = (READERS[fmt].build or episodes_of)(item, ctx)
                        except IngestError as e:
                            errors.append(e.located(item.label).note)
                            continue
                        finally:
                            _release(item)
                        episodes += eps
                        labels += labs
                        warnings += [dataclasses.replace(n, source=n.source or item.label) for n in notes]
            except IngestError as e:
                errors.append(e.located(str(path)).note)
    file_bar.close()
    if errors and not skip_invalid:
        raise IngestRejected(errors)
    result = None
    if episodes:
        result = lake.append(
            episodes,
            branch=branch,
            message=message or f"ingest {len(episodes)} episodes from {len(files) - len(skipped)} {fmt} source(s)",
            skip_invalid=skip_invalid,
            allow_new_fields=allow_new_fields,
            metadata={"ingest": {"format": fmt, "mapping_sha256": mapping.sha256, "files": len(files) - len(skipped)}},
            author=author,
            labels=labels,
        )
        for q in result.quarantined:
            errors += [Note(p.code, p.details, q.label, p.field, None, p.step) for p in q.problems]
    return IngestReport(
        format=fmt,
        files=[str(p) for p in files],
        skipped_files=skipped,
        episodes=len(episodes),
        frames=sum(len(e) for e in episodes),
        images=sum(len(e) * (len(e.cameras)) for e in episodes),
        result=result,
        quarantined=errors,
        warnings=warnings,
        sync=_sync_summary(episodes),
        seconds=time.perf_counter() - t0,
    )


def _resolve_format(fmt: str | None, mapping: Mapping) -> str:
    if fmt is not None and fmt not in FORMATS:
        raise IngestError("mapping", f"--format must be one of {list(FORMATS)}, found {fmt!r}")
    if fmt and mapping.format and fmt != mapping.format:
        raise IngestError(
            "mapping", f"--format {fmt} disagrees with the mapping's format: {mapping.format}", source=mapping.path
        )
    out = fmt or mapping.format
    if out is None:
        raise IngestError("mapping", "no format: give --format or 'format:' in the mapping", source=mapping.path)
    if out not in ("mcap", "ros1", "ros2") and mapping.sync.time == "header":
        raise IngestError("mapping", f"sync.time: header needs message headers; {out} has none", source=mapping.path)
    return out


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while one input is read and built: that allocates
    hundreds of thousands of small acyclic objects (records, messages, headers), each batch of
    which would trigger a collection; reading and building ran 1.3-1.8x faster without it
    (benchmarks/ingest.py). Re-enabled afterwards, also on errors."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _units(path: Path, mapping: Mapping, fmt: str) -> Iterator[Unit | IngestError]:
    yield from READERS[fmt].read(path, mapping)


def _release(unit: Unit) -> None:
    """Drop decoded-message caches once a unit's episodes are built."""
    for s in unit.sources.values():
        drop = getattr(s, "drop_cache", None)
        if drop is not None:
            drop()
