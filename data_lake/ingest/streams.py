"""What readers hand to the driver: a *unit* (a file, a demo, a dataset episode) holding one
*source* per topic/key: its timestamps and a way to read values at chosen sample indices.

Values are read lazily, only at the samples the resampler picks, in one of these roles
(``image`` and ``depth`` from several decode threads at once, on disjoint samples, so sources
must be safe for that):

    vector   float64 (n, D)        state / action parts, rewards, flags (D = 1)
    image    uint8 (n, H, W, 3)    RGB camera frames at the source's size
    depth    uint16|float32 (n, H, W)
    text     list[str]             task names, language instructions
    marker   bool (n,)             whether a sample starts an episode (``episodes.split: marker``)
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_lake.ingest import images
from data_lake.ingest.errors import IngestError, Note
from data_lake.ingest.mapping import SourceSpec

ROLES = ("vector", "image", "depth", "text", "marker")


class Source(abc.ABC):
    """One topic/key of one unit: timestamps ``t_ns`` int64 (N,) and values on demand."""

    name: str
    t_ns: np.ndarray

    @abc.abstractmethod
    def values(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Any:
        """Values at sample indices ``idx`` (non-decreasing) in ``role`` (see module docstring)."""

    def frames(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Iterable[np.ndarray]:
        """The ``image``/``depth`` values at ``idx`` one frame at a time, so that callers can
        decode straight into their own array (``stack_frames(..., out=)``)."""
        return iter(self.values(spec, role, idx))

    def frames_into(self, spec: SourceSpec, role: str, idx: np.ndarray, out: np.ndarray) -> None:
        """Decode the ``image``/``depth`` values at ``idx`` into ``out`` (len(idx), ...), whose
        rows have the shape and dtype of the episode's first frame; a frame that differs is
        ``shape_change``. Sources with a faster way (``ros.MessageSource``) override this."""
        stack_frames(self.frames(spec, role, idx), self, idx, out=out)

    def subset(self, keep: np.ndarray) -> Source:
        """The same source restricted to samples ``keep`` (indices, increasing)."""
        return SubsetSource(self, keep)

    def error(self, code: str, details: str, i: int | None = None) -> IngestError:
        t = int(self.t_ns[i]) if i is not None and len(self.t_ns) else None
        return IngestError(code, details, where=self.name, time_ns=t)


class EmptySource(Source):
    """A mapped topic/key with no sample in this unit: a success/terminal flag whose topic has no
    message (or none in what a truncated recording kept). Flags read from it are unknown."""

    def __init__(self, name: str):
        self.name, self.t_ns = name, np.zeros(0, dtype=np.int64)

    def values(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Any:
        if len(idx):
            raise IndexError(f"{self.name} has no samples; asked for {len(idx)}")
        if role == "text":
            return []
        if role == "marker":
            return np.zeros(0, dtype=bool)
        return np.zeros((0, 1), dtype=np.float64)


class SubsetSource(Source):
    def __init__(self, base: Source, keep: np.ndarray):
        self.base, self.keep = base, keep
        self.name, self.t_ns = base.name, base.t_ns[keep]

    def values(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Any:
        return self.base.values(spec, role, self.keep[idx])

    def frames(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Iterable[np.ndarray]:
        return self.base.frames(spec, role, self.keep[idx])

    def frames_into(self, spec: SourceSpec, role: str, idx: np.ndarray, out: np.ndarray) -> None:
        self.base.frames_into(spec, role, self.keep[idx], out)


def select(vec: np.ndarray, spec: SourceSpec, src: Source, i: int) -> np.ndarray:
    """Apply ``indices`` to one 1-D value."""
    if spec.indices is None:
        return vec
    if max(spec.indices) >= len(vec):
        raise src.error(
            "shape_change",
            f"indices {list(spec.indices)} need at least {max(spec.indices) + 1} values, found {len(vec)}",
            i,
        )
    return vec[list(spec.indices)]


def stack_vectors(rows: Sequence[np.ndarray], src: Source, idx: np.ndarray) -> np.ndarray:
    """Stack per-sample 1-D vectors, reporting the first whose length differs from the first's."""
    n0 = len(rows[0]) if rows else 0
    for k, r in enumerate(rows):
        if len(r) != n0:
            raise src.error(
                "shape_change", f"{len(r)} values, but the first sample of this episode has {n0}", int(idx[k])
            )
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), n0)


def stack_frames(
    frames: Iterable[np.ndarray], src: Source, idx: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Per-sample frames (decoded one at a time) straight into one array (n, ...): ``out`` when
    given, else a new one shaped by the first frame. Reports the first frame whose shape or dtype
    differs from ``out``'s rows (or the first frame's)."""
    for k, f in enumerate(frames):
        if out is None:
            out = np.empty((len(idx), *f.shape), dtype=f.dtype)
        elif f.shape != out.shape[1:] or f.dtype != out.dtype:
            raise src.error(
                "shape_change",
                f"frame {f.dtype} {f.shape}, but the first frame of this episode is {out.dtype} {out.shape[1:]}",
                int(idx[k]),
            )
        out[k] = f
    return out if out is not None else np.zeros((0, 1, 1, 3), np.uint8)


def _take(arr: Any, idx: np.ndarray) -> np.ndarray:
    """``arr[idx]`` for numpy arrays and h5py datasets (which want increasing, unique indices)."""
    if isinstance(arr, np.ndarray):
        return arr[idx]
    uniq, inv = np.unique(idx, return_inverse=True)
    if len(uniq) == 0:
        return np.asarray(arr[0:0])
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    block = np.asarray(arr[lo:hi]) if len(uniq) * 2 >= hi - lo else np.asarray(arr[list(uniq)])
    rows = block[uniq - lo] if len(uniq) * 2 >= hi - lo else block
    return rows[inv]


class ArraySource(Source):
    """Values stored as an array with the sample axis first (HDF5 datasets, Parquet columns).

    Images: uint8 (N, H, W, 3) or grey (N, H, W); or ``encoded``: (N, L) uint8 rows or a list of
    bytes holding JPEG/PNG (ALOHA's ``compress=True`` padded frames, LeRobot image columns).
    ``as_stored``: the bytes were written by ``cv2.imencode`` of an RGB array (ALOHA), so the
    decoded array is kept in the stored channel order instead of converted from BGR.
    ``channels: bgr`` in the mapping swaps the result either way.
    """

    def __init__(self, name: str, t_ns: np.ndarray, data: Any, *, encoded: bool = False, as_stored: bool = False):
        self.name, self.t_ns, self.data = name, t_ns, data
        self.encoded, self.as_stored = encoded, as_stored

    def values(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Any:
        if spec.joints is not None:
            raise self.error("unsupported_type", "'joints' selects JointState joints by name; use 'indices' here")
        if role == "text":
            raw = _take(self.data, idx) if not isinstance(self.data, list) else [self.data[i] for i in idx]
            return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(raw, dtype=object).ravel()]
        if role in ("image", "depth") and self.encoded:
            raw = [self.data[int(i)] for i in idx] if isinstance(self.data, list) else _take(self.data, idx)
            frames = (
                images.decode_bytes(
                    buf if isinstance(buf, bytes) else np.asarray(buf, dtype=np.uint8),
                    depth=role == "depth",
                    as_stored=self.as_stored,
                    where=self.name,
                    time_ns=int(self.t_ns[idx[k]]),
                )
                for k, buf in enumerate(raw)
            )
            out = stack_frames(frames, self, idx)
            return images.to_rgb(out, spec.channels) if role == "image" else out
        arr = _take(self.data, idx)
        if role == "image":
            if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3)):
                raise self.error(
                    "unsupported_encoding",
                    f"expected uint8 frames (N, H, W, 3) or (N, H, W), found {arr.dtype} frames of {arr.shape[1:]}",
                )
            return images.to_rgb(arr, spec.channels)
        if role == "depth":
            if arr.ndim == 4 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.ndim != 3 or arr.dtype not in (np.uint16, np.float32, np.float64):
                raise self.error(
                    "unsupported_encoding", f"expected depth (N, H, W) uint16 or float, found {arr.dtype} {arr.shape}"
                )
            return arr.astype(np.float32) if arr.dtype == np.float64 else arr
        if arr.dtype.kind not in "biuf":
            raise self.error("unsupported_type", f"expected numbers, found dtype {arr.dtype}")
        vec = arr.reshape(len(arr), -1).astype(np.float64)
        if role == "marker":
            return vec.any(axis=1) if vec.shape[1] else np.ones(len(vec), bool)
        if spec.indices is not None:
            if max(spec.indices) >= vec.shape[1]:
                raise self.error(
                    "shape_change", f"indices {list(spec.indices)} but values have {vec.shape[1]} elements"
                )
            vec = vec[:, list(spec.indices)]
        return vec


class LazyFrames(Source):
    """Frames produced all at once by a loader (a decoded video), cached after the first use.
    Safe to call from several decode threads: the loader runs once."""

    def __init__(self, name: str, t_ns: np.ndarray, load: Callable[[], np.ndarray]):
        self.name, self.t_ns, self._load = name, t_ns, load
        self._frames: np.ndarray | None = None
        self._lock = threading.Lock()

    def values(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Any:
        if role != "image":
            raise self.error("unsupported_type", f"a video stream can only be a camera, not {role}")
        with self._lock:
            if self._frames is None:
                self._frames = self._load()
        return images.to_rgb(self._frames[idx], spec.channels)


@dataclasses.dataclass
class Unit:
    """One natural piece of input: a file (bags, MCAP, ALOHA), a demo (robomimic) or a dataset
    episode (LeRobot, Minari). ``label`` names it in errors and reports (``file#demo_3``)."""

    path: Path
    label: str
    sources: dict[str, Source]
    reader: str
    reader_version: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[Note] = dataclasses.field(default_factory=list)
