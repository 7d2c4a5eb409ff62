"""LeRobot datasets (v2.0, v2.1, v3.0) on local disk, with ``pyarrow`` and PyAV; the ``lerobot``
package is never imported.

    meta/info.json               codebase_version, fps, features, data_path, video_path, chunks_size
    v2.x  meta/episodes.jsonl    {episode_index, tasks, length}; meta/tasks.jsonl {task_index, task}
          data/chunk-000/episode_000000.parquet                       one file per episode
          videos/chunk-000/<video_key>/episode_000000.mp4             one file per episode and camera
    v3.0  meta/episodes/chunk-000/file-000.parquet   episode_index, length, data/chunk_index,
                                 data/file_index, videos/<key>/{chunk_index, file_index,
                                 from_timestamp, to_timestamp}
          meta/tasks.parquet     task strings (the index) -> task_index
          data/chunk-000/file-000.parquet      many episodes, rows tagged with episode_index
          videos/<key>/chunk-000/file-000.mp4  many episodes back to back

Keys in the mapping are feature names (``observation.state``, ``action``, ``next.reward``,
``observation.images.top``); ``task`` is the row's task text (from ``task_index``). Timestamps
come from the ``timestamp`` column (snapped onto the ``k / fps`` grid when within a quarter frame,
as float32 seconds are not exact); a video frame belongs to the row whose time (plus the
episode's ``from_timestamp`` in v3) is within half a frame of it. ``image`` features (PNG bytes
in the Parquet file) are decoded with OpenCV.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_lake.ingest.errors import IngestError
from data_lake.ingest.mapping import Mapping
from data_lake.ingest.streams import ArraySource, LazyFrames, Source, Unit


def version() -> str:
    return f"pyarrow {pa.__version__}, av {av.__version__}"


def is_lerobot(path: Path) -> bool:
    return (path / "meta" / "info.json").is_file()


def expand(path: Path) -> list[Path]:
    if is_lerobot(path) or not path.is_dir():
        return [path]
    return sorted(p.parent.parent for p in path.rglob("meta/info.json")) or [path]


def _read_table(path: Path, root: Path) -> pa.Table:
    if not path.is_file():
        raise IngestError("missing_source", f"{path.relative_to(root)} is missing", source=str(root))
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        msg = str(e)
        code = (
            "truncated"
            if "magic" in msg.lower() or "end of file" in msg.lower() or "size" in msg.lower()
            else "corrupt"
        )
        raise IngestError(
            code, f"{path.relative_to(root)} is not a readable Parquet file: {msg}", source=str(root)
        ) from e


def _jsonl(path: Path, root: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise IngestError("corrupt", f"{path.relative_to(root)}: {e}", source=str(root)) from e


def _column(table: pa.Table, key: str, where: str) -> np.ndarray:
    """A Parquet column as (N,) or (N, D) numbers, or (N,) objects (text, image structs)."""
    col = table.column(key).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        lengths = np.asarray(col.value_lengths().to_numpy(zero_copy_only=False))
        if len(lengths) and (lengths != lengths[0]).any():
            i = int(np.argmax(lengths != lengths[0]))
            raise IngestError(
                "shape_change", f"row {i} has {lengths[i]} values, row 0 has {lengths[0]}", where=where, step=i
            )
        flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False))
        return flat.reshape(len(col), -1)
    if pa.types.is_struct(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return np.asarray(col.to_numpy(zero_copy_only=False))


def snap(ts: np.ndarray, fps: float) -> np.ndarray:
    """Timestamps within a quarter frame of the ``k / fps`` grid snapped onto it: LeRobot stores
    float32 seconds, whose rounding (0.1 -> 0.10000000149) would otherwise shift samples past ticks."""
    k = np.round(ts * fps)
    on_grid = np.abs(ts - k / fps) < 0.25 / fps
    return np.where(on_grid, k / fps, ts)


def decode_video(path: Path, times_s: np.ndarray, fps: float, where: str, root: Path) -> np.ndarray:
    """Frames (N, H, W, 3) RGB at ``times_s`` (seconds in the file), each within half a frame."""
    if not path.is_file():
        raise IngestError("missing_source", f"video {path.relative_to(root)} is missing", where=where)
    tol = 0.5 / fps
    lo, hi = float(times_s.min()) - tol, float(times_s.max()) + tol
    frames: list[np.ndarray] = []
    stamps: list[float] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if lo > 1.0 and stream.time_base is not None:
                container.seek(int(lo / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(stamps) / fps
                if t < lo:
                    continue
                if t > hi:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
                stamps.append(t)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise IngestError("decode", f"video {path.relative_to(root)} does not decode: {e}", where=where) from e
    if not frames:
        raise IngestError(
            "decode", f"no frames between {lo:.3f} s and {hi:.3f} s in {path.relative_to(root)}", where=where
        )
    st = np.asarray(stamps)
    j = np.clip(np.searchsorted(st, times_s), 1, len(st) - 1) if len(st) > 1 else np.zeros(len(times_s), int)
    if len(st) > 1:
        j = np.where(np.abs(st[j - 1] - times_s) <= np.abs(st[j] - times_s), j - 1, j)
    err = np.abs(st[j] - times_s)
    if (err > tol).any():
        k = int(np.argmax(err > tol))
        raise IngestError(
            "decode",
            f"no frame of {path.relative_to(root)} within {tol * 1e3:.1f} ms of {times_s[k]:.4f} s "
            f"(nearest at {st[j[k]]:.4f} s; {len(st)} frames decoded)",
            where=where,
            step=k,
        )
    return np.stack([frames[i] for i in j])


class _Dataset:
    """The dataset's metadata, and each episode's rows and video locations."""

    def __init__(self, root: Path):
        self.root = root
        try:
            self.info = json.loads((root / "meta" / "info.json").read_text())
        except (OSError, ValueError) as e:
            raise IngestError("corrupt", f"meta/info.json: {e}", source=str(root)) from e
        self.version = str(self.info.get("codebase_version", ""))
        if not self.version.startswith(("v2", "v3")):
            raise IngestError(
                "wrong_format", f"codebase_version {self.version!r}; versions v2.x and v3.x are read", source=str(root)
            )
        self.v3 = self.version.startswith("v3")
        self.fps = float(self.info["fps"])
        self.features: dict[str, Any] = self.info.get("features", {})
        self.chunks_size = int(self.info.get("chunks_size", 1000))
        self._table_cache: tuple[Path, pa.Table] | None = None
        if self.v3:
            files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
            if not files:
                raise IngestError("missing_source", "no meta/episodes/*/*.parquet", source=str(root))
            eps = pa.concat_tables([_read_table(f, root) for f in files]).to_pylist()
            tasks = _read_table(root / "meta" / "tasks.parquet", root)
            names = [
                c for c in tasks.column_names if c != "task_index" and pa.types.is_string(tasks.schema.field(c).type)
            ]
            if not names:
                raise IngestError("corrupt", "meta/tasks.parquet has no task text column", source=str(root))
            self.tasks = dict(
                zip(tasks.column("task_index").to_pylist(), tasks.column(names[0]).to_pylist(), strict=True)
            )
        else:
            eps = _jsonl(root / "meta" / "episodes.jsonl", root)
            self.tasks = {d["task_index"]: d["task"] for d in _jsonl(root / "meta" / "tasks.jsonl", root)}
        self.episodes = sorted(eps, key=lambda e: int(e["episode_index"]))

    def inside(self, rel: str) -> Path:
        """``root / rel``, refusing paths that leave the dataset (from a hostile info.json)."""
        p = (self.root / rel).resolve()
        if self.root.resolve() not in p.parents:
            raise IngestError("corrupt", f"path {rel!r} in meta/info.json leaves the dataset", source=str(self.root))
        return p

    def data_file(self, ep: dict[str, Any]) -> Path:
        e = int(ep["episode_index"])
        if self.v3:
            rel = self.info["data_path"].format(
                chunk_index=int(ep["data/chunk_index"]), file_index=int(ep["data/file_index"])
            )
        else:
            rel = self.info["data_path"].format(episode_chunk=e // self.chunks_size, episode_index=e)
        return self.inside(rel)

    def rows(self, ep: dict[str, Any]) -> pa.Table:
        path = self.data_file(ep)
        if self._table_cache is None or self._table_cache[0] != path:
            self._table_cache = (path, _read_table(path, self.root))
        table = self._table_cache[1]
        if self.v3 or "episode_index" in table.column_names:
            mask = np.asarray(table.column("episode_index").to_numpy()) == int(ep["episode_index"])
            table = table.filter(pa.array(mask))
        return table

    def video(self, ep: dict[str, Any], key: str) -> tuple[Path, float]:
        e = int(ep["episode_index"])
        if self.v3:
            rel = self.info["video_path"].format(
                video_key=key,
                chunk_index=int(ep[f"videos/{key}/chunk_index"]),
                file_index=int(ep[f"videos/{key}/file_index"]),
            )
            return self.inside(rel), float(ep[f"videos/{key}/from_timestamp"])
        rel = self.info["video_path"].format(episode_chunk=e // self.chunks_size, video_key=key, episode_index=e)
        return self.inside(rel), 0.0


def read(path: Path, mapping: Mapping) -> Iterator[Unit | IngestError]:
    """One unit per dataset episode, in episode order."""
    if not is_lerobot(path):
        raise IngestError("wrong_format", "not a LeRobot dataset: no meta/info.json", source=str(path))
    ds = _Dataset(path)
    wanted = mapping.names()
    unknown = sorted(wanted - set(ds.features) - {"task"})
    if unknown:
        raise IngestError(
            "missing_source",
            f"keys {unknown} are not features of the dataset; features: {sorted(ds.features)}",
            source=str(path),
        )
    for ep in ds.episodes:
        label = f"{path}#episode_{int(ep['episode_index']):06d}"
        try:
            yield _unit(ds, ep, mapping, wanted, label)
        except IngestError as e:
            yield e.located(label)


def _unit(ds: _Dataset, ep: dict[str, Any], mapping: Mapping, wanted: set[str], label: str) -> Unit:
    table = ds.rows(ep)
    if table.num_rows == 0:
        raise IngestError("missing_source", "the episode has no rows in its data file", where=str(ds.data_file(ep)))
    ts = snap(_column(table, "timestamp", "timestamp").astype(np.float64).ravel(), ds.fps)  # (N,) seconds
    t_ns = np.round(ts * 1e9).astype(np.int64)
    sources: dict[str, Source] = {}
    for key in sorted(wanted):
        if key == "task":
            idx = _column(table, "task_index", "task_index").astype(np.int64).ravel()
            missing = sorted(set(idx.tolist()) - set(ds.tasks))
            if missing:
                raise IngestError("missing_source", f"task_index {missing} not in the tasks table", where="task_index")
            sources[key] = ArraySource(key, t_ns, np.array([ds.tasks[i] for i in idx], dtype=object))
            continue
        dtype = ds.features[key].get("dtype")
        if dtype == "video":
            video, start = ds.video(ep, key)

            def load(video: Path = video, start: float = start, key: str = key) -> np.ndarray:
                return decode_video(video, start + ts, ds.fps, key, ds.root)

            sources[key] = LazyFrames(key, t_ns, load)
        elif dtype == "image":
            cells = _column(table, key, key)
            blobs = [_image_bytes(c, ds.root, key) for c in cells]
            sources[key] = ArraySource(key, t_ns, blobs, encoded=True)
        else:
            if key not in table.column_names:
                raise IngestError(
                    "missing_source", f"feature {key!r} has no column in {ds.data_file(ep).name}", where=key
                )
            sources[key] = ArraySource(key, t_ns, _column(table, key, key))
    info = {"codebase_version": ds.version, "episode_index": int(ep["episode_index"]), "fps": ds.fps}
    if ds.info.get("robot_type"):
        info["robot_type"] = ds.info["robot_type"]
    return Unit(ds.root, label, sources, "lerobot", version(), info=info)


def _image_bytes(cell: Any, root: Path, key: str) -> bytes:
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        if cell.get("path"):
            p = (root / cell["path"]).resolve()
            if root.resolve() not in p.parents:
                raise IngestError("corrupt", f"image path {cell['path']!r} points outside the dataset", where=key)
            return p.read_bytes()
    raise IngestError(
        "unsupported_encoding", f"image cell {str(cell)[:80]!r} holds neither bytes nor a path", where=key
    )
