"""OGBench datasets (Park et al. 2024): ``<dataset>.npz`` and its validation split ``<dataset>-val.npz``.

Layout of one file (N steps of 1001-step trajectories laid end to end)::

    observations   float32 (N, D)            state datasets
                   uint8   (N, 64, 64, 3)    visual-* datasets
    actions        float32 (N, A)
    terminals      bool    (N,)              True at the last step of each trajectory: a time
                                             limit, not success; the last one must be True
    qpos           float32 (N, nq)           MuJoCo positions before the action
    qvel           float32 (N, nv)           MuJoCo velocities before the action
    button_states  int64   (N, k)            scene-* and puzzle-* only

There are no rewards. One trajectory becomes one lake episode::

    state           float32 (T, D)   observations (state datasets); visual ones have no state: a
                                     (T, 1) zero placeholder (the lake stores no zero-width arrays)
    images/<camera> uint8 (T, H, W, 3)  observations (visual datasets; camera ``front``)
    action          float32 (T, A)   actions
    reward          float32 (T,)     0 everywhere
    is_terminal     False            (the trajectories end at a time limit)
    achieved_goal   float32 (T, D)   observations (state datasets: goals are the dataset's own
                                     states, as in OGBench)
    sim_state       float64 (T, nq + nv [+ k])   concat(qpos, qvel[, button_states])
    timestamp_ns    int64 (T,)       t / control rate (20 Hz manipspace, 10 Hz pointmaze; other
                                     environments: the mapping's ``rate_hz``)
    task            "ogbench/<env family>"   e.g. ``ogbench/cube-single`` (``visual-`` dropped)
    metadata        {"split": "train" | "val",
                     "ogbench": {dataset, env, family, split, index, start, visual, camera,
                                 sim_state_layout: [{key, start, stop, dtype}], dtypes},
                     "ingest": provenance (source file, its sha256, mapping, format, ...)}

``arrays_from_lake`` reads the episodes back into this layout, exactly (dtypes included).

A file and its ``-val.npz`` sibling are one unit: both are read and checked before any episode is
built, and a problem in either rejects both (also with ``--skip-invalid``), so a lake never holds
the training split of a dataset whose validation split was refused. Arrays are loaded with
``allow_pickle=False``. The environment is never imported or constructed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_lake.episode import Episode
from data_lake.ingest.errors import IngestError, Note
from data_lake.ingest.mapping import Mapping as IngestMapping
from data_lake.ingest.streams import Unit

if TYPE_CHECKING:
    from data_lake.lake import Lake, LakeView

READER_VERSION = "1"
VAL_SUFFIX = "-val.npz"
REQUIRED = ("observations", "actions", "terminals", "qpos", "qvel")
SIM_KEYS = ("qpos", "qvel", "button_states")
DEFAULT_CAMERA = "front"
DATASET_TYPES = ("play", "noisy", "navigate", "stitch", "explore")
# Control rates (1 / env.dt) of the environments whose rate we know; others use mapping.rate_hz.
CONTROL_HZ = {"cube": 20.0, "scene": 20.0, "puzzle": 20.0, "pointmaze": 10.0}


# ---------------------------------------------------------------------------- names
@dataclasses.dataclass(frozen=True)
class DatasetName:
    """``visual-cube-single-play-v0`` -> env ``visual-cube-single-v0``, family ``cube-single``."""

    dataset: str
    env: str
    family: str
    kind: str  # play | noisy | navigate | ... ("" when the name has no known type)

    @classmethod
    def parse(cls, dataset: str) -> DatasetName:
        m = re.fullmatch(r"(.+?)-(" + "|".join(DATASET_TYPES) + r")-(v\d+)", dataset)
        if m is None:  # not an OGBench name we know: the whole stem is the environment
            base = re.sub(r"-v\d+$", "", dataset)
            return cls(dataset, dataset, base.removeprefix("visual-"), "")
        base, kind, ver = m.groups()
        return cls(dataset, f"{base}-{ver}", base.removeprefix("visual-"), kind)

    @property
    def task(self) -> str:
        return f"ogbench/{self.family}"

    @property
    def rate_hz(self) -> float | None:
        return CONTROL_HZ.get(self.family.split("-")[0])


def dataset_of(path: Path) -> str:
    """The dataset name of a training or validation file (``cube-single-play-v0``)."""
    name = path.name
    return name[: -len(VAL_SUFFIX)] if name.endswith(VAL_SUFFIX) else name.removesuffix(".npz")


def val_path(path: Path) -> Path:
    return path.with_name(dataset_of(path) + VAL_SUFFIX)


# ---------------------------------------------------------------------------- reader spec
def is_ogbench(path: Path) -> bool:
    """An ``.npz`` file (a zip) holding at least ``observations`` and ``actions``."""
    if not (path.is_file() and path.suffix == ".npz" and zipfile.is_zipfile(path)):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = {n.removesuffix(".npy") for n in z.namelist()}
    except (OSError, zipfile.BadZipFile):
        return False
    return {"observations", "actions"} <= names


def expand(path: Path) -> list[Path]:
    """Training files under ``path``; a ``-val.npz`` path stands for its pair when the training
    file exists (the pair is read together), else for itself (a validation split on its own)."""
    if path.is_dir():
        found = sorted(p for p in path.rglob("*.npz") if not p.name.endswith(VAL_SUFFIX))
        found += sorted(p for p in path.rglob("*" + VAL_SUFFIX) if not p.with_name(dataset_of(p) + ".npz").is_file())
        return found
    if path.name.endswith(VAL_SUFFIX) and path.with_name(dataset_of(path) + ".npz").is_file():
        return [path.with_name(dataset_of(path) + ".npz")]
    return [path]


# ---------------------------------------------------------------------------- checks
def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (``allow_pickle=False``); IngestError when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickle
        raise IngestError("unsupported_type", f"an array needs pickle to load ({e}); refused", source=str(path)) from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise IngestError("corrupt", f"not a readable .npz file ({e})", source=str(path)) from e


def check_arrays(arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Raise IngestError for the first problem: a missing key, a wrong dtype or ndim, lengths that
    differ, NaN/Inf, an empty file, a last trajectory without its terminal, a 1-step trajectory."""
    for key in REQUIRED:
        if key not in arrays:
            raise IngestError(
                "missing_source",
                f"missing the key {key!r}; an OGBench file holds {list(REQUIRED)} (+ button_states), "
                f"found {sorted(arrays)}",
                source=source,
                where=key,
            )
    obs = arrays["observations"]
    visual = obs.dtype == np.uint8
    expect = {
        "observations": ("uint8", 4) if visual else ("float32", 2),
        "actions": ("float32", 2),
        "terminals": ("bool", 1),
        "qpos": ("float32", 2),
        "qvel": ("float32", 2),
        "button_states": ("int64", 2),
    }
    for key, (dtype, ndim) in expect.items():
        if key not in arrays:
            continue
        a = arrays[key]
        if a.dtype.name != dtype or a.ndim != ndim:
            want = f"{dtype} with {ndim} dimension(s)"
            if key == "observations":
                want = "float32 (N, D) or uint8 (N, H, W, 3)"
            raise IngestError(
                "unsupported_type",
                f"expected {want} (OGBench's layout), found {a.dtype} {a.shape}",
                source=source,
                where=key,
            )
    if visual and obs.shape[-1] != 3:
        raise IngestError("unsupported_type", f"expected RGB frames (N, H, W, 3), found {obs.shape}", source=source)
    n = len(obs)
    for key in (*REQUIRED, "button_states"):
        if key in arrays and len(arrays[key]) != n:
            raise IngestError(
                "shape_change",
                f"{len(arrays[key])} rows, but 'observations' has {n}; every key has one row per step",
                source=source,
                where=key,
            )
    if n == 0:
        raise IngestError("too_short", "the file holds no steps", source=source, where="observations")
    for key in ("observations", "actions", "qpos", "qvel"):
        a = arrays[key]
        if a.dtype.kind == "f":
            bad = ~np.isfinite(a.reshape(n, -1))
            if bad.any():
                r, c = (int(x) for x in np.argwhere(bad)[0])
                raise IngestError(
                    "non_finite",
                    f"value {a.reshape(n, -1)[r, c]} at index [{r}, {c}] is not finite; expected finite numbers",
                    source=source,
                    where=key,
                    step=r,
                )
    if "button_states" in arrays and np.abs(arrays["button_states"]).max(initial=0) >= 2**53:
        raise IngestError(
            "unsupported_type", "values beyond 2**53 cannot be stored exactly", source=source, where="button_states"
        )
    term = arrays["terminals"]
    if not term[-1]:
        last = int(np.flatnonzero(term)[-1]) + 1 if term.any() else 0
        raise IngestError(
            "truncated",
            f"the last step (index {n - 1}) is not a terminal: the trajectory starting at index {last} "
            "has no end; expected terminals[-1] == True",
            source=source,
            where="terminals",
            step=n - 1,
        )
    ends = np.flatnonzero(term) + 1
    lengths = np.diff(ends, prepend=0)
    if (lengths < 2).any():
        k = int(np.argmax(lengths < 2))
        raise IngestError(
            "too_short",
            f"trajectory {k} (index {ends[k] - 1}) has 1 step; an episode needs at least 2",
            source=source,
            where="terminals",
            step=int(ends[k] - 1),
        )


# ---------------------------------------------------------------------------- episodes
@dataclasses.dataclass(frozen=True)
class Layout:
    """How a dataset's arrays become episodes: the camera name, task, clock and robot."""

    camera: str = DEFAULT_CAMERA
    task: str = ""  # "" -> ogbench/<family>
    rate_hz: float = 20.0  # for environments not in CONTROL_HZ
    robot: str = ""


def episodes_from_arrays(
    arrays: Mapping[str, np.ndarray],
    name: DatasetName,
    split: str,
    provenance: Mapping[str, Any],
    layout: Layout = Layout(),
    source: str = "",
) -> list[Episode]:
    """One episode per trajectory of checked arrays (``check_arrays``), in file order.

    ``provenance`` lands in each episode's ``metadata["ingest"]``; ``source`` prefixes the
    episodes' ``source`` (``<source>#<split><index>``). Both the ingest reader and the generator
    (``tasks.ogbench_data``) build their episodes here."""
    obs = arrays["observations"]
    visual = obs.dtype == np.uint8
    sims = [(k, arrays[k]) for k in SIM_KEYS if k in arrays]
    sim_layout, col = [], 0
    for k, a in sims:
        sim_layout.append({"key": k, "start": col, "stop": col + a.shape[1], "dtype": a.dtype.name})
        col += a.shape[1]
    sim = np.concatenate([a.astype(np.float64) for _, a in sims], axis=1)  # (N, nq + nv [+ k])
    ends = np.flatnonzero(arrays["terminals"]) + 1
    starts = np.concatenate([[0], ends[:-1]])
    step_ns = 1e9 / (name.rate_hz or layout.rate_hz)
    out = []
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        T = b - a
        state = np.zeros((T, 1), np.float32) if visual else obs[a:b]  # the lake stores no (T, 0)
        meta = {
            "split": split,
            "ogbench": {
                "dataset": name.dataset,
                "env": name.env,
                "family": name.family,
                "split": split,
                "index": i,
                "start": a,
                "visual": bool(visual),
                "camera": layout.camera if visual else None,
                "sim_state_layout": sim_layout,
                "dtypes": {k: v.dtype.name for k, v in arrays.items()},
            },
            "ingest": dict(provenance),
        }
        ep = Episode.make(
            images={layout.camera: obs[a:b]} if visual else {},
            state=state,
            action=arrays["actions"][a:b],
            reward=np.zeros(T, np.float32),
            timestamp_ns=np.round(np.arange(T) * step_ns).astype(np.int64),
            is_terminal=False,
            achieved_goal=None if visual else obs[a:b],
            task=layout.task or name.task,
            source=f"{source}#{split}{i}",
            robot=layout.robot,
            metadata=meta,
        )
        out.append(ep.replace(steps={**ep.steps, "sim_state": sim[a:b]}))
    return out


# ---------------------------------------------------------------------------- the reader
@dataclasses.dataclass
class OGBenchUnit(Unit):
    """A dataset's checked arrays per split (``train``, ``val``) and their files' sha256."""

    splits: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    files: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # split -> (path, sha256)
    # the sha256 of ``path`` itself is the driver's (BuildContext.source_sha); "" here


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _check_mapping(mapping: IngestMapping) -> Layout:
    """The mapping's say over an OGBench file: camera name, task, rate, robot. Keys are fixed."""
    if [s.label() for s in mapping.state] != ["observations"] or [s.label() for s in mapping.action] != ["actions"]:
        raise IngestError(
            "mapping",
            "the ogbench format maps fixed keys: state: [observations], action: [actions] "
            "(see configs/ingest/ogbench.yaml), found state: "
            f"{[s.label() for s in mapping.state]}, action: {[s.label() for s in mapping.action]}",
            source=mapping.path,
        )
    if len(mapping.cameras) > 1 or mapping.depth:
        raise IngestError(
            "mapping", "ogbench: at most one camera (visual-* observations) and no depth", source=mapping.path
        )
    camera = next(iter(mapping.cameras), DEFAULT_CAMERA)
    task = mapping.task.constant if isinstance(mapping.task.constant, str) else ""
    return Layout(camera=camera, task=task, rate_hz=mapping.rate_hz, robot=mapping.robot)


def read(path: Path, mapping: IngestMapping) -> Iterator[Unit | IngestError]:
    """One unit per dataset: the training file and its ``-val.npz`` sibling, both checked."""
    _check_mapping(mapping)
    files = {"train": path}
    if path.name.endswith(VAL_SUFFIX):
        files = {"val": path}
    elif val_path(path).is_file():
        files["val"] = val_path(path)
    unit = OGBenchUnit(path, str(path), {}, "ogbench", f"{READER_VERSION}/numpy-{np.__version__}")
    for split, p in files.items():
        arrays = load_npz(p)
        check_arrays(arrays, str(p))
        unit.splits[split] = arrays
        unit.files[split] = (str(p), "" if p == path else sha256_file(p))
    unit.info = {"dataset": dataset_of(path), "files": {s: f for s, (f, _) in unit.files.items()}}
    yield unit


def build(unit: Unit, ctx: Any) -> tuple[list[Episode], list[str], list[Note]]:
    """Every episode of one ``read`` unit (the driver's ``ReaderSpec.build`` for this format)."""
    assert isinstance(unit, OGBenchUnit)
    layout = _check_mapping(ctx.mapping)
    name = DatasetName.parse(dataset_of(unit.path))
    eps: list[Episode] = []
    labels: list[str] = []
    for split, arrays in unit.splits.items():
        src, sha = unit.files[split]
        prov = {
            "source": src,
            "source_sha256": sha or ctx.source_sha,
            "format": ctx.fmt,
            "reader": unit.reader,
            "reader_version": unit.reader_version,
            "mapping": ctx.mapping.path,
            "mapping_sha256": ctx.mapping.sha256,
            "dataset": name.dataset,
            "env": name.env,
            "split": split,
            "sync": {},  # one row per step: nothing resampled
            "warnings": [],
        }
        new = episodes_from_arrays(arrays, name, split, prov, layout, source=f"ingest:{src}")
        ctx.frames_bar.update(sum(len(e) for e in new))
        eps += new
        labels += [f"{src}#{split}{i}" for i in range(len(new))]
    return eps, labels, []


# ---------------------------------------------------------------------------- back to npz
def arrays_from_lake(
    lake: Lake | LakeView | str,
    dataset: str | None = None,
    split: str = "train",
    ref: str = "main",
) -> dict[str, np.ndarray]:
    """The OGBench arrays of ``dataset``'s ``split`` as stored in a lake (a ``Lake``, a pinned
    ``LakeView`` or a URI), trajectories in their file order, with the original dtypes.

    ``dataset`` may be omitted when the lake holds one OGBench dataset."""
    from data_lake.lake import Lake, LakeView

    view = lake if isinstance(lake, LakeView) else (lake if isinstance(lake, Lake) else Lake.open(lake)).checkout(ref)
    recs = [r for r in view.episodes() if isinstance(r.metadata.get("ogbench"), dict)]
    names = sorted({r.metadata["ogbench"]["dataset"] for r in recs})
    if dataset is None:
        if len(names) != 1:
            raise ValueError(f"pass dataset=...: the lake holds OGBench datasets {names}")
        dataset = names[0]
    recs = [r for r in recs if r.metadata["ogbench"]["dataset"] == dataset and r.metadata["ogbench"]["split"] == split]
    if not recs:
        raise KeyError(f"no {split} episodes of OGBench dataset {dataset!r} in snapshot {view.snapshot_id}")
    eps: dict[str, Episode] = {}
    for seg in sorted({r.segment for r in recs}):  # whole segments: far faster than per-episode reads
        data = view.read_segment(seg)
        eps.update({r.episode_id: data.episode(r.index) for r in recs if r.segment == seg})
    recs.sort(key=lambda r: r.metadata["ogbench"]["index"])
    parts: dict[str, list[np.ndarray]] = {}
    for rec in recs:
        og = rec.metadata["ogbench"]
        ep = eps[rec.episode_id]
        obs = ep.steps[f"images/{og['camera']}"] if og["visual"] else ep.steps["state"]
        term = np.zeros(len(ep), bool)
        term[-1] = True
        row = {"observations": obs, "actions": ep.steps["action"], "terminals": term}
        for part in og["sim_state_layout"]:
            row[part["key"]] = ep.steps["sim_state"][:, part["start"] : part["stop"]]
        for k, v in row.items():
            parts.setdefault(k, []).append(np.asarray(v).astype(og["dtypes"][k], copy=False))
    return {k: np.concatenate(v) for k, v in parts.items()}
