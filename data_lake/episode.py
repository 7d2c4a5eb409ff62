"""One robot episode in memory: the unit the lake stores, validates, hashes and exports.

An episode is a dict of per-step arrays that all share the leading time axis ``T`` plus a
small per-episode record. Step arrays are addressed by *field keys*:

    images/<camera>   uint8   (T, H, W, 3)   one or more named RGB camera streams
    depth/<camera>    float32 | uint16 (T, H, W)   optional depth per camera
    state             float32 (T, S)          proprioceptive state
    action            float32 (T, A)          action taken at step t
    reward            float32 (T,)            reward received after action t
    is_first          bool    (T,)            True at t = 0 only
    is_last           bool    (T,)            True at t = T - 1 only
    is_terminal       bool    (T,)            True only at t = T - 1, when the episode ended in
                                              a terminal state (no bootstrapping past it)
    timestamp_ns      int64   (T,)            strictly increasing
    achieved_goal     float32 (T, G)          optional, for sim tasks
    sim_state         float64 (T, D)          optional: the simulator's full state (MuJoCo
                                              mjSTATE_INTEGRATION), so any task's success
                                              detector can relabel the episode later
    action_logp       float32 (T,)            optional, per episode: log μ(a_t | o_t), the log
                                              probability of the logged action under the
                                              (stochastic) policy that took it (finite: a taken
                                              action has positive probability; 0 on the last
                                              step), for off-policy evaluation

Step convention (as RLDS): step ``t`` holds observation ``o_t``, the action ``a_t`` taken in it and
the reward ``r_t`` that followed. The action and reward of the last step (``is_last``) have no
successor observation; learners never use them as a transition.

Per-episode step fields (``PER_EPISODE_STEP_KEYS``: ``action_logp``) may be absent from some
episodes of a lake that stores them (a deterministic expert's or a learned policy's episodes have no
logged probability); the lake keeps NaN rows for those episodes and its readers leave the field out.

Per-episode goal arrays (optional, the commanded goal): ``goal/images/<camera>`` uint8 (H, W, 3)
and ``goal/state`` float32 (G,).

``episode_id`` is the sha256 of the canonical content: every step and goal array (key, dtype,
shape, bytes, in sorted key order) plus ``task``, ``language``, ``success`` and ``robot``.
Provenance (``source``, ``created_at``, ``metadata``) is not hashed, so the same episode recorded
twice is stored once.

File format (``Episode.save_npz`` / ``Episode.load``): one ``.npz`` whose member names are the
field keys above (``images/front``, ``goal/state``, ...) plus ``meta``, a 0-d unicode array
holding the JSON record ``{"task", "language", "success", "source", "robot", "created_at",
"metadata"}``. The directory form holds the same content as ``meta.json`` and one ``<key>.npy``
per field (``images/front.npy``). Both load with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

HASH_VERSION = b"robot-rl/episode/v1\0"
REQUIRED_STEP_KEYS = ("state", "action", "reward", "is_first", "is_last", "is_terminal", "timestamp_ns")
OPTIONAL_STEP_KEYS = ("achieved_goal", "sim_state", "action_logp")
PER_EPISODE_STEP_KEYS = ("action_logp",)
"""Optional step fields an episode may lack even when its lake's schema has them."""
STEP_PREFIXES = ("images/", "depth/")
GOAL_PREFIX = "goal/"
META_KEYS = ("task", "language", "success", "source", "robot", "created_at", "metadata")


class EpisodeFormatError(ValueError):
    """An episode file or directory that cannot be read as an episode."""


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@dataclasses.dataclass(frozen=True)
class Episode:
    """An episode: per-step arrays (``steps``), goal arrays (``goal``) and its record.

    ``steps`` maps field keys (see the module docstring) to arrays with leading axis T;
    ``goal`` maps ``images/<camera>`` / ``state`` to per-episode goal arrays (no ``goal/`` prefix).
    Construct with :meth:`Episode.make` for the common typed fields.
    """

    steps: Mapping[str, np.ndarray]
    goal: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    task: str = ""
    language: str | None = None
    success: bool | None = None
    source: str = ""
    robot: str = ""
    created_at: str = dataclasses.field(default_factory=_utc_now)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    _content_id: str | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    # ----------------------------------------------------------------- construction
    @classmethod
    def make(
        cls,
        *,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        timestamp_ns: np.ndarray | None = None,
        is_terminal: bool = False,
        depth: Mapping[str, np.ndarray] | None = None,
        achieved_goal: np.ndarray | None = None,
        goal_images: Mapping[str, np.ndarray] | None = None,
        goal_state: np.ndarray | None = None,
        **record: Any,
    ) -> Episode:
        """Build an episode from typed fields; flags are derived from the length.

        ``timestamp_ns`` defaults to 0, 1e8, 2e8, ... (10 Hz). ``is_terminal`` marks the last step
        as terminal. ``record`` takes ``task``, ``language``, ``success``, ``source``, ``robot``,
        ``created_at``, ``metadata``.
        """
        T = len(action)
        steps: dict[str, np.ndarray] = {f"images/{k}": v for k, v in images.items()}
        steps.update({f"depth/{k}": v for k, v in (depth or {}).items()})
        steps["state"] = state
        steps["action"] = action
        steps["reward"] = reward
        flags = np.zeros((3, T), dtype=bool)
        flags[0, 0] = True
        flags[1, -1] = True
        flags[2, -1] = is_terminal
        steps["is_first"], steps["is_last"], steps["is_terminal"] = flags
        steps["timestamp_ns"] = np.arange(T, dtype=np.int64) * 100_000_000 if timestamp_ns is None else timestamp_ns
        if achieved_goal is not None:
            steps["achieved_goal"] = achieved_goal
        goal: dict[str, np.ndarray] = {f"images/{k}": v for k, v in (goal_images or {}).items()}
        if goal_state is not None:
            goal["state"] = goal_state
        return cls(steps=steps, goal=goal, **record)

    # ----------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.steps["action"]) if "action" in self.steps else 0

    @property
    def cameras(self) -> list[str]:
        return sorted(k.split("/", 1)[1] for k in self.steps if k.startswith("images/"))

    def record(self) -> dict[str, Any]:
        """The JSON-serializable per-episode record (no arrays)."""
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k in META_KEYS for v in [getattr(self, k)]}

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array under its file key: step keys as is, goal keys prefixed with ``goal/``."""
        out = dict(self.steps)
        out.update({GOAL_PREFIX + k: v for k, v in self.goal.items()})
        return out

    @property
    def episode_id(self) -> str:
        """sha256 of the canonical content (see the module docstring)."""
        if self._content_id is not None:
            return self._content_id
        return content_hash(self.arrays(), self.task, self.language, self.success, self.robot)

    def with_hash(self, prefix: ContentHasher) -> Episode:
        """This episode, its id computed from ``prefix``: a :class:`ContentHasher` that was fed
        this episode's first arrays in key order (while they were being built) and not finished.
        The remaining arrays are hashed here. The id is then kept, so the arrays must not change
        afterwards; ``replace`` returns an episode that hashes itself again."""
        arrays = self.arrays()
        keys = sorted(arrays)
        if keys[: len(prefix.keys)] != prefix.keys:
            raise ValueError(f"the prefix hashed {prefix.keys}, but the episode's first keys are {keys}")
        for key in keys[len(prefix.keys) :]:
            prefix.add(key, arrays[key])
        out = dataclasses.replace(self)
        object.__setattr__(out, "_content_id", prefix.finish(self.task, self.language, self.success, self.robot))
        return out

    def replace(self, **changes: Any) -> Episode:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- files
    def save_npz(self, path: str | os.PathLike[str], *, compress: bool = False) -> Path:
        """Write the episode as one ``.npz`` (atomically: a temp file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {k: np.ascontiguousarray(v) for k, v in self.arrays().items()}
        payload["meta"] = np.array(json.dumps(self.record(), sort_keys=True))
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                save = np.savez_compressed if compress else np.savez
                save(f, **payload)  # type: ignore[arg-type]
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Episode:
        """Read an episode from an ``.npz`` file or an episode directory (see module docstring)."""
        path = Path(path)
        if path.is_dir():
            return _load_dir(path)
        if path.suffix != ".npz":
            raise EpisodeFormatError(f"{path}: expected an episode .npz file or directory, found {path.suffix!r}")
        if path.is_file() and not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                head = f.read(16)
            raise EpisodeFormatError(
                f"{path}: not an npz archive (an .npz file is a zip archive; this one starts with {head!r})"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise EpisodeFormatError(f"{path}: not a readable .npz episode ({e})") from e
        if "meta" not in arrays:
            raise EpisodeFormatError(f"{path}: missing the 'meta' member (the episode record as JSON)")
        meta = _parse_meta(str(arrays.pop("meta")), path)
        return _from_arrays(arrays, meta, path)


def _parse_meta(text: str, where: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise EpisodeFormatError(f"{where}: 'meta' is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise EpisodeFormatError(f"{where}: 'meta' must be a JSON object, found {type(meta).__name__}")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise EpisodeFormatError(f"{where}: unknown keys in 'meta': {unknown}; allowed: {list(META_KEYS)}")
    return meta


def _from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any], where: Path) -> Episode:
    steps = {k: v for k, v in arrays.items() if not k.startswith(GOAL_PREFIX)}
    goal = {k[len(GOAL_PREFIX) :]: v for k, v in arrays.items() if k.startswith(GOAL_PREFIX)}
    if not meta.get("source"):
        meta = {**meta, "source": f"file:{where}"}
    return Episode(steps=steps, goal=goal, **meta)


def _load_dir(path: Path) -> Episode:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise EpisodeFormatError(f"{path}: an episode directory needs meta.json (the episode record)")
    meta = _parse_meta(meta_path.read_text(), meta_path)
    arrays: dict[str, np.ndarray] = {}
    for f in sorted(path.rglob("*.npy")):
        if f.is_symlink():
            raise EpisodeFormatError(f"{f}: symbolic links are not followed in episode directories")
        key = f.relative_to(path).with_suffix("").as_posix()
        try:
            arrays[key] = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EpisodeFormatError(f"{f}: not a readable .npy array ({e})") from e
    return _from_arrays(arrays, meta, path)


def save_dir(episode: Episode, path: str | os.PathLike[str]) -> Path:
    """Write the directory form of an episode (``meta.json`` + one ``.npy`` per key)."""
    path = Path(path)
    for key, value in episode.arrays().items():
        target = path / f"{key}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.ascontiguousarray(value), allow_pickle=False)
    (path / "meta.json").write_text(json.dumps(episode.record(), sort_keys=True, indent=1))
    return path


def iter_episode_paths(paths: list[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand inputs into episode paths: ``.npz`` files, episode directories (with meta.json),
    or directories that contain either (searched one level deep, sorted)."""
    for p in map(Path, paths):
        if p.is_file() or (p / "meta.json").is_file():
            yield p
        elif p.is_dir():
            found = sorted(c for c in p.iterdir() if c.suffix == ".npz" or (c / "meta.json").is_file())
            if not found:
                raise EpisodeFormatError(f"{p}: no episode .npz files or episode directories inside")
            yield from found
        else:
            raise EpisodeFormatError(f"{p}: no such file or directory")


def content_hash(
    arrays: Mapping[str, np.ndarray], task: str, language: str | None, success: bool | None, robot: str
) -> str:
    """sha256 over sorted (key, dtype, shape, bytes) and the identifying record fields."""
    h = ContentHasher()
    for key in sorted(arrays):
        h.add(key, arrays[key])
    return h.finish(task, language, success, robot)


class ContentHasher:
    """:func:`content_hash` fed one array at a time in sorted key order, and an array's rows block
    by block if they arrive that way: an episode can be hashed while it is still being built (log
    ingest hashes each camera's frames as they are decoded). Feeding keys out of order raises."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(HASH_VERSION)
        self.keys: list[str] = []

    def begin(self, key: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        """Start array ``key``; its bytes follow through :meth:`rows`, in row order."""
        if self.keys and key <= self.keys[-1]:
            raise ValueError(f"key {key!r} after {self.keys[-1]!r}: keys must come in sorted order")
        self.keys.append(key)
        le = np.dtype(dtype).newbyteorder("<")
        self._h.update(f"{key}\0{le.str}\0{tuple(int(n) for n in shape)}\0".encode())

    def rows(self, a: np.ndarray) -> None:
        """The next rows of the current array."""
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        self._h.update(np.ascontiguousarray(a).data)

    def add(self, key: str, a: np.ndarray) -> None:
        """A whole array."""
        a = np.asarray(a)
        self.begin(key, a.dtype, a.shape)
        self.rows(a)

    def finish(self, task: str, language: str | None, success: bool | None, robot: str) -> str:
        ident = {"task": task, "language": language, "success": success, "robot": robot}
        self._h.update(json.dumps(ident, sort_keys=True).encode())
        return self._h.hexdigest()
