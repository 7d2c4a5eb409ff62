"""Image success detectors trained from lake episodes (MT-Opt, Kalashnikov et al., 2021, section 5).

A real robot's logs carry no reward. MT-Opt trained one image classifier per task from few labels
("is the task done in this frame?") and used it to label every logged episode. This module trains
such a classifier from a pinned lake snapshot: ``train_detector`` -> ``SuccessDetector``.

Frames and their labels (one camera, ``DetectorConfig.camera``)::

    positives   the last ``positive_steps`` frames of each successful episode of the task
                (record ``success is True``), and every user-labeled frame with success=True
    negatives   the first ``early_steps`` frames of every episode of the task (where they overlap the
                last ``positive_steps`` frames of a successful episode, the last-frame label wins);
                the last ``positive_steps`` frames of failed episodes of the task (``success is False``);
                the last ``other_steps`` (default ``positive_steps``) frames of OTHER tasks' successful
                episodes (a scene that looks finished for another task is not a success of this one;
                a large ``other_steps`` also shows how another task gets there);
                every user-labeled frame with success=False
    unlabeled   everything else (middle frames, episodes with ``success is None``): not used

A user label ``(episode_id, step, success)`` overrides the automatic label of that frame.

Split: by episode, never by frame (frames of one episode are nearly identical; a frame split would
measure memorization). The episodes that hold a positive frame and the others are shuffled
separately (seeded) and ``holdout_fraction`` of each, at least one positive episode, is held out,
so the held-out frames hold both classes. At least two episodes with positive frames are needed.

Training: balanced minibatches (half positives, half negatives, each drawn uniformly with
replacement), not a ``pos_weight``: positives are few (k frames per success) and a balanced batch
sees every one of them often. Each batch gets the DrQ random shift (``data_lake.sampler.random_shift``,
``augment_pad`` pixels). The network is the shared DrQ conv trunk (``robot_rl.nets.encoders``,
``make_trunk``: conv layers -> Linear -> LayerNorm -> tanh) and an MLP head to one logit, trained
with binary cross-entropy and Adam.

Threshold and calibration, on the held-out frames only: the threshold is 0.5 (``threshold_rule``
``balanced``, the boundary balanced minibatches train towards) or, with ``max_f1``, the value that
maximizes F1 on the held-out frames (halfway between the lowest held-out probability called positive
and the next lower one) when they hold at least ``min_threshold_positives`` positive frames; precision,
recall, accuracy and the confusion counts are reported at it (``metrics["threshold_rule"]``: the rule
used). Calibration is a 10-bin reliability curve (equal-width bins of the predicted probability: mean
prediction, observed positive frequency, count) and its expected calibration error.

After training, ``detector.heldout`` (a :class:`HeldOut`: held-out images, labels, probabilities,
episode ids and steps) is what ``robot_rl.detectors.report.plot_report`` draws; it is not saved
(a loaded detector has ``heldout = None``).

A saved detector is a directory::

    <dir>/
    ├── tensors.safetensors   the network's state dict
    └── detector.json         format, detector_id, task, camera, image_size, threshold, metrics,
                              calibration, lake (uri, ref, snapshot_id), counts, split, config

``detector_id`` is ``"det-"`` + the first 12 hex digits of sha256 over the safetensors bytes and the
config JSON: the same weights and config give the same id, and ``load`` checks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn
from tqdm.auto import tqdm

from data_lake.sampler import random_shift
from robot_rl.config import from_dict
from robot_rl.nets.encoders import EncoderConfig, make_trunk

FORMAT = "robot-rl/detector/v1"
TENSORS, META = "tensors.safetensors", "detector.json"
CALIBRATION_BINS = 10
THRESHOLD_RULES = ("balanced", "max_f1")


class DetectorError(ValueError):
    """Bad input to a success detector: a lake without what training needs, a wrong image size, a bad checkpoint."""


def _small_encoder() -> EncoderConfig:
    return EncoderConfig(feature_dim=32, conv_channels=16, conv_layers=3)


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """How a success detector is trained (the sampling is described in the module docstring)."""

    camera: str | None = None  # None: the lake's only camera (an error if it has several)
    positive_steps: int = 3  # the last k frames of each successful episode are positives
    early_steps: int = 3  # the first k frames of every episode of the task are negatives
    other_steps: int | None = None  # the last k frames of other tasks' successes are negatives (None: positive_steps)
    holdout_fraction: float = 0.2  # episodes held out (split by episode, seeded) for threshold and metrics
    threshold_rule: str = "balanced"  # balanced: 0.5 | max_f1: max F1 on the held-out frames (see choose_threshold)
    min_threshold_positives: int = 20  # max_f1 needs this many held-out positive frames; with fewer it uses 0.5
    steps: int = 500  # gradient steps
    batch_size: int = 64  # frames per step, half positives and half negatives
    lr: float = 1e-3  # Adam
    augment_pad: int = 4  # DrQ random shift in pixels; 0 disables
    encoder: EncoderConfig = dataclasses.field(default_factory=_small_encoder)  # the shared conv trunk
    hidden: tuple[int, ...] = (64,)  # MLP head widths between the trunk and the logit
    ensemble: int = 1  # networks trained from seeds seed, seed+1, ...; the detector averages their probabilities
    self_training_rounds: int = 0  # rounds of pseudo-labeling the unlabeled frames and retraining from scratch
    pseudo_positive: float = 0.95  # self-training: an unlabeled frame with p >= this is a positive
    pseudo_negative: float = 0.05  # self-training: an unlabeled frame with p <= this is a negative
    self_training_steps: int | None = None  # gradient steps of each retraining round (None: steps)
    max_pseudo_frames: int = 200_000  # unlabeled frames scored per round (a seeded subsample beyond this)
    median_window: int = 1  # labeling an episode: p is the median over this many frames around each (odd; 1: off)
    seed: int = 0  # the split, the initialization, the batches and the shifts
    device: str = "cpu"  # cpu | cuda | cuda:N
    progress: bool = True  # a tqdm bar while training

    def __post_init__(self) -> None:
        if self.other_steps is not None and self.other_steps < 1:
            raise DetectorError(f"other_steps must be >= 1 or None, got {self.other_steps}")
        if self.positive_steps < 1 or self.early_steps < 0:
            raise DetectorError(
                f"positive_steps must be >= 1 and early_steps >= 0, got {self.positive_steps} and {self.early_steps}"
            )
        if self.threshold_rule not in THRESHOLD_RULES:
            raise DetectorError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {self.threshold_rule!r}")
        if self.min_threshold_positives < 1:
            raise DetectorError(f"min_threshold_positives must be >= 1, got {self.min_threshold_positives}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise DetectorError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.steps < 1 or self.batch_size < 2:
            raise DetectorError(f"steps must be >= 1 and batch_size >= 2, got {self.steps} and {self.batch_size}")
        if not self.lr > 0:
            raise DetectorError(f"lr must be > 0, got {self.lr}")
        if self.augment_pad < 0:
            raise DetectorError(f"augment_pad must be >= 0, got {self.augment_pad}")
        if any(h < 1 for h in self.hidden):
            raise DetectorError(f"hidden widths must be >= 1, got {self.hidden}")
        if self.ensemble < 1 or self.self_training_rounds < 0 or self.max_pseudo_frames < 1:
            raise DetectorError(
                f"ensemble and max_pseudo_frames must be >= 1 and self_training_rounds >= 0, got {self.ensemble}, "
                f"{self.max_pseudo_frames} and {self.self_training_rounds}"
            )
        if not 0.0 < self.pseudo_negative < 0.5 < self.pseudo_positive < 1.0:
            raise DetectorError(
                "pseudo-label thresholds need 0 < pseudo_negative < 0.5 < pseudo_positive < 1, got "
                f"{self.pseudo_negative} and {self.pseudo_positive}"
            )
        if self.self_training_steps is not None and self.self_training_steps < 1:
            raise DetectorError(f"self_training_steps must be >= 1 or None, got {self.self_training_steps}")
        if self.median_window < 1 or self.median_window % 2 == 0:
            raise DetectorError(f"median_window must be an odd number >= 1, got {self.median_window}")
        if self.encoder.trunk != "conv":
            raise DetectorError(f"a detector uses the conv trunk (encoder.trunk='conv'), got {self.encoder.trunk!r}")
        try:
            torch.device(self.device)
        except RuntimeError as e:
            raise DetectorError(f"device must be cpu, cuda or cuda:N, got {self.device!r}") from e


class DetectorNet(nn.Module):
    """uint8 images (B, H, W, C) -> logits (B,): the DrQ conv trunk and an MLP head. C = 3 for one
    camera image (success), 6 for an observation and a goal image stacked (goal reached)."""

    def __init__(self, image_size: tuple[int, int], cfg: Any, channels: int = 3):
        super().__init__()
        self.trunk = make_trunk(channels, image_size, cfg.encoder)
        layers: list[nn.Module] = []
        width = cfg.encoder.feature_dim
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.head = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0  # (B, C, H, W) in [0, 1]
        return self.head(self.trunk(x)).squeeze(-1)  # (B,)


class DetectorEnsemble(nn.Module):
    """Members' logits -> the logit of their mean probability, logit(1/M Σ_m σ(f_m(x)))."""

    def __init__(self, members: Sequence[DetectorNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = torch.stack([torch.sigmoid(m(images)) for m in self.members]).mean(0)  # (B,)
        return torch.logit(p, eps=1e-6)  # (B,)


def build_net(image_size: tuple[int, int], cfg: DetectorConfig) -> nn.Module:
    """One DetectorNet, or a DetectorEnsemble of ``cfg.ensemble`` of them."""
    if cfg.ensemble == 1:
        return DetectorNet(image_size, cfg)
    return DetectorEnsemble([DetectorNet(image_size, cfg) for _ in range(cfg.ensemble)])


def median_filter(p: np.ndarray, window: int) -> np.ndarray:
    """The running median of ``p`` over ``window`` frames (odd), the ends padded with the edge values."""
    if window == 1 or len(p) == 0:
        return p
    h = window // 2
    padded = np.pad(p, h, mode="edge")  # (T + 2h,)
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)  # (T,)


def _proba(net: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 images (N, H, W, C) -> sigmoid(net(x)) float64 (N,), in batches, without gradients."""
    device = next(net.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.as_tensor(images[i : i + batch_size], device=device)
            out.append(torch.sigmoid(net(x)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float64)


@dataclasses.dataclass
class HeldOut:
    """The held-out frames of one training run (what the report draws)."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # bool (N,)
    probs: np.ndarray  # float64 (N,)
    episode_ids: list[str]  # (N,)
    steps: np.ndarray  # int64 (N,) step within the episode


class SuccessDetector:
    """A trained success classifier for one task and camera, with its held-out threshold and metrics."""

    def __init__(
        self,
        net: nn.Module,
        cfg: DetectorConfig,
        *,
        task: str,
        camera: str,
        image_size: tuple[int, int],
        threshold: float,
        metrics: dict[str, Any],
        calibration: dict[str, Any],
        info: dict[str, Any],
    ):
        self.net = net.eval()
        self.cfg = cfg
        self.task, self.camera, self.image_size = task, camera, (int(image_size[0]), int(image_size[1]))
        self.threshold, self.metrics, self.calibration = float(threshold), metrics, calibration
        self.info = info  # lake (uri, ref, snapshot_id), counts, split
        self.heldout: HeldOut | None = None
        self._tensor_bytes = _tensor_bytes(net)
        self.detector_id = _detector_id(self._tensor_bytes, _config_json(cfg))

    @property
    def split(self) -> dict[str, list[str]]:
        """Episode ids of the training and held-out splits."""
        return dict(self.info["split"])

    def __repr__(self) -> str:
        f1 = self.metrics.get("f1", float("nan"))
        return f"SuccessDetector({self.detector_id}, task={self.task!r}, camera={self.camera!r}, f1={f1:.3f})"

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 images (N, H, W, 3) of this detector's camera -> success probabilities float64 (N,)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DetectorError(
                f"predict_proba takes uint8 images (N, H, W, 3), got {images.dtype} {tuple(images.shape)}"
            )
        if tuple(images.shape[1:3]) != self.image_size:
            raise DetectorError(
                f"detector {self.detector_id} was trained on {self.image_size[0]}x{self.image_size[1]} images of "
                f"camera {self.camera!r}, got {images.shape[1]}x{images.shape[2]}; resize them first"
            )
        return _proba(self.net, images, batch_size)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Success calls (N,) bool at the held-out threshold."""
        return self.predict_proba(images) >= self.threshold

    def predict_episodes(
        self, images: np.ndarray, episode_ends: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Success probabilities (N,) of whole episodes stored back to back (``episode_ends``: the end index
        of each; None: one episode), each frame's the median over ``median_window`` frames of its episode.
        This is what ``lake label --detector`` writes; with ``median_window`` 1 it is ``predict_proba``."""
        p = self.predict_proba(images)  # (N,)
        ends = [len(p)] if episode_ends is None else [int(e) for e in episode_ends]
        if ends and ends[-1] != len(p):
            raise DetectorError(f"episode_ends must end at the number of images ({len(p)}), got {ends[-1]}")
        out, start = np.empty_like(p), 0
        for end in ends:
            out[start:end] = median_filter(p[start:end], self.cfg.median_window)
            start = end
        return out

    # ------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "detector_id": self.detector_id,
            "task": self.task,
            **classifier_record(self),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``tensors.safetensors`` and ``detector.json`` (each atomically) to directory ``path``."""
        return save_checkpoint(path, self._tensor_bytes, META, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> SuccessDetector:
        """The detector saved in directory ``path``; a missing, corrupt or foreign checkpoint is a DetectorError."""
        d = Path(path)
        if not (d / META).is_file() or not (d / TENSORS).is_file():
            raise DetectorError(
                f"{d} is not a success detector: it needs {META} and {TENSORS} (robot-rl detector train)"
            )
        try:
            meta = json.loads((d / META).read_text())
            raw = (d / TENSORS).read_bytes()
            tensors = load_bytes(raw)
        except Exception as e:  # JSON or safetensors parse errors of a damaged file
            raise DetectorError(f"{d} holds a corrupt detector checkpoint: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise DetectorError(f"{d / META} has format {got!r}, expected {FORMAT!r}")
        try:
            cfg = from_dict(DetectorConfig, {**meta["config"], "device": device})
            size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
            net = build_net(size, cfg)
            net.load_state_dict(tensors)
        except (KeyError, ValueError, RuntimeError) as e:
            raise DetectorError(f"{d} does not fit this version's detector: {e}") from None
        # the id hashes the config as saved: a checkpoint written before a config field existed still loads
        # (the field takes its default, which reproduces the old behaviour)
        stored_id = _detector_id(raw, meta["config"])
        if stored_id != meta.get("detector_id"):
            raise DetectorError(
                f"{d}: the tensors and config hash to {stored_id}, but detector.json says "
                f"{meta.get('detector_id')}: the files were changed or come from two detectors"
            )
        info_keys = ("lake", "counts", "split")
        det = cls(
            net.to(cfg.device),
            cfg,
            task=meta["task"],
            camera=meta["camera"],
            image_size=size,
            threshold=meta["threshold"],
            metrics=meta["metrics"],
            calibration=meta["calibration"],
            info={k: meta[k] for k in info_keys if k in meta},
        )
        det._tensor_bytes = raw
        det.detector_id = meta["detector_id"]
        return det


def _config_json(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d.pop("device"), d.pop("progress")  # where and how it ran, not what it is
    return json.loads(json.dumps(d))


def _tensor_bytes(net: nn.Module) -> bytes:
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    return save_bytes(tensors, metadata={"format": FORMAT})


def _detector_id(tensor_bytes: bytes, config: dict[str, Any]) -> str:
    """``det-`` + sha256 of the tensors and the config as saved (``_config_json``)."""
    h = hashlib.sha256(tensor_bytes)
    h.update(json.dumps(config, sort_keys=True).encode())
    return "det-" + h.hexdigest()[:12]


def classifier_record(clf: Any) -> dict[str, Any]:
    """What every saved image classifier records: camera, image size, threshold, held-out metrics and
    calibration, its ``info`` (lake, counts, split) and config."""
    return {
        "camera": clf.camera,
        "image_size": list(clf.image_size),
        "threshold": clf.threshold,
        "metrics": clf.metrics,
        "calibration": clf.calibration,
        **clf.info,
        "config": _config_json(clf.cfg),
    }


def save_checkpoint(path: str | os.PathLike[str], tensor_bytes: bytes, meta_name: str, meta: dict[str, Any]) -> Path:
    """Directory ``path`` with ``tensors.safetensors`` and the JSON file ``meta_name``, each written atomically."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / TENSORS, tensor_bytes)
    _atomic_write(out / meta_name, json.dumps(meta, indent=1).encode())
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- data
@dataclasses.dataclass
class _Frames:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # bool (N,)
    episode_ids: list[str]
    steps: np.ndarray  # int64 (N,)


def _lake_view(lake_uri: str, ref: str) -> Any:
    from data_lake import Lake

    try:
        return Lake.open(lake_uri).checkout(ref)
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        raise DetectorError(f"cannot read lake {lake_uri} at {ref}: {e}") from None


def _camera(view: Any, where: str, camera: str | None) -> tuple[str, tuple[int, int]]:
    schema = (view.schema or {}).get("step", {})
    cams = {k[len("images/") :]: v["shape"] for k, v in schema.items() if k.startswith("images/")}
    if camera is None:
        if len(cams) != 1:
            raise DetectorError(
                f"{where} has cameras {sorted(cams) or 'none'}; pass camera=NAME (a detector sees one camera)"
                if cams
                else f"{where} has no camera images; a success detector needs one camera"
            )
        camera = next(iter(cams))
    if camera not in cams:
        raise DetectorError(f"{where} has no camera {camera!r}; its cameras are {sorted(cams)}")
    shape = cams[camera]
    return camera, (int(shape[0]), int(shape[1]))


def _labels(
    view: Any,
    where: str,
    task: str,
    cfg: DetectorConfig,
    user_labels: Sequence[tuple[str, int, bool]],
    episodes: Sequence[str] | None,
) -> tuple[dict[str, dict[int, bool]], dict[str, Any]]:
    """Episode id -> {step: success} of every labeled frame, and the episode records by id."""
    records = {r.episode_id: r for r in view.episodes()}
    own = [r for r in records.values() if r.task == task]
    others = [r for r in records.values() if r.task != task]
    if episodes is not None:  # a restricted run (N labeled episodes) sees only those, of any task
        wanted = set(episodes)
        missing = sorted(wanted - set(records))
        if missing:
            raise DetectorError(f"{where}: episodes={missing[:3]} ({len(missing)} in all) are not in this snapshot")
        own = [r for r in own if r.episode_id in wanted]
        others = [r for r in others if r.episode_id in wanted]
    if not own:
        tasks = sorted({r.task for r in records.values()})
        raise DetectorError(f"{where} holds no episodes of task {task!r}; its tasks are {tasks}")
    labels: dict[str, dict[int, bool]] = {}
    k = cfg.positive_steps
    for r in own:
        lab = labels.setdefault(r.episode_id, {})
        lab.update({s: False for s in range(min(cfg.early_steps, r.length))})
        if r.success is not None:  # success: last k positive (they win over early frames); failure: negative
            lab.update({s: bool(r.success) for s in range(max(0, r.length - k), r.length)})
    k_other = k if cfg.other_steps is None else cfg.other_steps
    for r in others:
        if r.success is True:
            lab = labels.setdefault(r.episode_id, {})
            lab.update({s: False for s in range(max(0, r.length - k_other), r.length)})
    for eid, step, success in user_labels:
        rec = records.get(eid)
        if rec is None:
            raise DetectorError(f"{where}: user label of episode {eid!r}, which is not in this snapshot")
        if not 0 <= int(step) < rec.length:
            raise DetectorError(f"{where}: user label of episode {eid} step {step}, outside its {rec.length} steps")
        labels.setdefault(eid, {})[int(step)] = bool(success)
    if not any(any(v.values()) for v in labels.values()):
        n_failed = sum(r.success is False for r in own)
        raise DetectorError(
            f"{where}: no successful episode of task {task!r} ({len(own)} episodes, {n_failed} failed, "
            f"{len(own) - n_failed} without an outcome) and no user-labeled success frame; "
            "label some frames with user labels or collect successes"
        )
    return labels, records


def _split(labels: dict[str, dict[int, bool]], where: str, cfg: DetectorConfig) -> tuple[list[str], list[str]]:
    """(train, held-out) episode ids: positive-bearing and other episodes each split, seeded."""
    rng = np.random.default_rng(cfg.seed)
    pos = sorted(e for e, v in labels.items() if any(v.values()))
    neg = sorted(e for e, v in labels.items() if not any(v.values()))
    if len(pos) < 2:
        raise DetectorError(
            f"{where}: the held-out split would be empty: {len(pos)} episode with success frames, at least 2 are "
            "needed (one to train on, one to hold out for the threshold); collect or label more successes"
        )
    n_pos = min(len(pos) - 1, max(1, round(cfg.holdout_fraction * len(pos))))
    n_neg = round(cfg.holdout_fraction * len(neg))
    pos_perm = [pos[i] for i in rng.permutation(len(pos))]
    neg_perm = [neg[i] for i in rng.permutation(len(neg))]
    held = pos_perm[:n_pos] + neg_perm[:n_neg]
    train = pos_perm[n_pos:] + neg_perm[n_neg:]
    return sorted(train), sorted(held)


def _read_frames(
    view: Any, records: dict[str, Any], labels: dict[str, dict[int, bool]], ids: Sequence[str], camera: str
) -> _Frames:
    """The labeled frames of episodes ``ids``, read one segment at a time (only the camera's images)."""
    by_segment: dict[str, list[str]] = {}
    for eid in ids:
        by_segment.setdefault(records[eid].segment, []).append(eid)
    images, ys, eids, steps = [], [], [], []
    key = f"images/{camera}"
    for seg, seg_ids in sorted(by_segment.items()):
        data = view.read_segment(seg, fields=[key])
        for eid in seg_ids:
            rec = records[eid]
            idx = sorted(labels[eid])
            images.append(data.steps[key][rec.start + np.asarray(idx, np.int64)])
            ys += [labels[eid][s] for s in idx]
            eids += [eid] * len(idx)
            steps += idx
        del data
    return _Frames(np.concatenate(images), np.asarray(ys, bool), eids, np.asarray(steps, np.int64))


# ---------------------------------------------------------------------------- metrics
def best_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The threshold (predict ``p >= t``) of maximal F1 on these frames, halfway to the next lower probability."""
    values = np.unique(probs)[::-1]  # distinct, descending
    best_f1, best_i = -1.0, 0
    for i, t in enumerate(values):
        f1 = classification_metrics(probs, labels, float(t))["f1"]
        if f1 > best_f1:
            best_f1, best_i = f1, i
    t = float(values[best_i])
    return (t + float(values[best_i + 1])) / 2 if best_i + 1 < len(values) else t


def choose_threshold(probs: np.ndarray, labels: np.ndarray, cfg: DetectorConfig) -> tuple[float, str]:
    """``(threshold, rule used)`` for held-out ``probs`` and ``labels``.

    ``balanced`` (the default): 0.5, the decision boundary that balanced minibatches (half positives, half
    negatives) train towards. ``max_f1``: the threshold of maximal F1 on the held-out frames, if they hold at
    least ``min_threshold_positives`` positive frames and some negatives; otherwise 0.5 (rule ``balanced``).
    The held-out frames are labeled frames only (first and last frames), which a detector separates far more
    easily than the middle of an episode, so their max-F1 threshold can land anywhere in the gap between the
    two classes (0.00 or 1.00 with 3 held-out positives, 0.998 with 30; docs/detectors.md)."""
    enough = int(labels.sum()) >= cfg.min_threshold_positives and not labels.all()
    if cfg.threshold_rule == "max_f1" and enough:
        return best_threshold(probs, labels), "max_f1"
    return 0.5, "balanced"


def classification_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Precision, recall, F1, accuracy and the confusion counts of ``probs >= threshold``."""
    pred = probs >= threshold
    tp, fp = int((pred & labels).sum()), int((pred & ~labels).sum())
    fn, tn = int((~pred & labels).sum()), int((~pred & ~labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": (tp + tn) / max(1, len(labels)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "positives": int(labels.sum()),
        "negatives": int((~labels).sum()),
    }


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """A reliability curve: equal-width bins of the prediction; mean prediction, observed frequency and count
    per bin (None where a bin is empty), and the expected calibration error."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)  # bin of each frame
    mean_pred: list[float | None] = []
    observed: list[float | None] = []
    counts: list[int] = []
    ece = 0.0
    for b in range(bins):
        m = which == b
        counts.append(int(m.sum()))
        if m.any():
            mean_pred.append(float(probs[m].mean()))
            observed.append(float(labels[m].mean()))
            ece += m.mean() * abs(probs[m].mean() - labels[m].mean())
        else:
            mean_pred.append(None)
            observed.append(None)
    return {
        "bin_edges": edges.tolist(),
        "mean_predicted": mean_pred,
        "observed": observed,
        "counts": counts,
        "ece": ece,
    }


# ---------------------------------------------------------------------------- training
def _train(net: DetectorNet, train: _Frames, cfg: DetectorConfig, where: str) -> list[float]:
    device = torch.device(cfg.device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    images = torch.as_tensor(train.images, device=device)  # (N, H, W, 3) uint8
    pos = torch.as_tensor(np.flatnonzero(train.labels))
    neg = torch.as_tensor(np.flatnonzero(~train.labels))
    half = cfg.batch_size // 2
    targets = torch.cat([torch.ones(half), torch.zeros(cfg.batch_size - half)]).to(device)  # (B,)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    losses = []
    net.train()
    bar = tqdm(range(cfg.steps), desc=f"detector {where}", unit="step", disable=not cfg.progress)
    for step in bar:
        idx = torch.cat(
            [
                pos[torch.randint(len(pos), (half,), generator=gen)],
                neg[torch.randint(len(neg), (cfg.batch_size - half,), generator=gen)],
            ]
        )  # (B,) balanced
        x = random_shift(images[idx.to(device)], cfg.augment_pad, gen)  # (B, H, W, 3) uint8
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    net.eval()
    return losses


def _fit(
    frames: _Frames, size: tuple[int, int], cfg: DetectorConfig, where: str, steps: int
) -> tuple[nn.Module, list[float]]:
    """``cfg.ensemble`` networks trained from scratch on ``frames`` (member m from seed ``cfg.seed + m``)
    -> (the network or ensemble, the mean loss over members per step)."""
    members, losses = [], []
    for m in range(cfg.ensemble):
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + m, steps=steps)
        torch.manual_seed(member_cfg.seed)
        net = DetectorNet(size, cfg).to(cfg.device)
        losses.append(
            _train(net, frames, member_cfg, where if cfg.ensemble == 1 else f"{where} [{m + 1}/{cfg.ensemble}]")
        )
        members.append(net)
    mean_losses = np.mean(np.asarray(losses), axis=0).tolist()
    return (members[0] if cfg.ensemble == 1 else DetectorEnsemble(members).eval()), mean_losses


def _unlabeled_frames(
    view: Any,
    records: dict[str, Any],
    labels: dict[str, dict[int, bool]],
    ids: Sequence[str],
    camera: str,
    cfg: DetectorConfig,
) -> np.ndarray:
    """The frames of episodes ``ids`` that carry no label (uint8 (N, H, W, 3)): at most ``max_pseudo_frames``,
    a seeded subsample beyond that, read one segment at a time."""
    candidates = [
        (eid, np.asarray([t for t in range(records[eid].length) if t not in labels.get(eid, {})], np.int64))
        for eid in ids
    ]
    total = sum(len(steps) for _, steps in candidates)
    if total > cfg.max_pseudo_frames:  # keep a seeded subsample of the (episode, step) pairs
        keep = np.zeros(total, bool)
        keep[np.random.default_rng(cfg.seed).choice(total, cfg.max_pseudo_frames, replace=False)] = True
        offsets = np.cumsum([0] + [len(steps) for _, steps in candidates])
        candidates = [(eid, steps[keep[offsets[i] : offsets[i + 1]]]) for i, (eid, steps) in enumerate(candidates)]
    wanted = {eid: dict.fromkeys(steps.tolist(), False) for eid, steps in candidates if len(steps)}
    if not wanted:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return _read_frames(view, records, wanted, list(wanted), camera).images


def _self_train(
    net: nn.Module,
    losses: list[float],
    train: _Frames,
    pool: np.ndarray,
    size: tuple[int, int],
    cfg: DetectorConfig,
    where: str,
) -> tuple[nn.Module, list[float], list[dict[str, int]]]:
    """Self-training: each round scores the unlabeled frames ``pool`` with the current detector (``net``,
    trained with ``losses``), takes p >= pseudo_positive as positives and p <= pseudo_negative as
    negatives, and trains a new detector from scratch on the labeled frames plus these -> (detector, its
    losses, pseudo-label counts per round). With an empty pool the first detector stands."""
    rounds: list[dict[str, int]] = []
    for r in range(cfg.self_training_rounds if len(pool) else 0):
        p = _proba(net, pool)  # (N,)
        pos, neg = p >= cfg.pseudo_positive, p <= cfg.pseudo_negative
        sel = pos | neg
        frames = _Frames(
            np.concatenate([train.images, pool[sel]]),
            np.concatenate([train.labels, pos[sel]]),
            train.episode_ids,
            train.steps,
        )
        net, losses = _fit(frames, size, cfg, f"{where} round {r + 1}", cfg.self_training_steps or cfg.steps)
        rounds.append({"pool": len(p), "positives": int(pos.sum()), "negatives": int(neg.sum())})
    return net, losses, rounds


def train_detector(
    lake_uri: str,
    ref: str,
    task: str,
    cfg: DetectorConfig,
    user_labels: Sequence[tuple[str, int, bool]] | None = None,
    episodes: Sequence[str] | None = None,
    unlabeled: Sequence[str] | None = None,
) -> SuccessDetector:
    """Train a success detector for ``task`` on snapshot ``ref`` of the lake at ``lake_uri``.

    ``user_labels``: ``(episode_id, step, success)`` frames labeled by hand (success -> positive, else
    negative; they override the automatic labels). ``episodes``: only these episodes (to train with N
    labeled episodes; other tasks' listed successes are negatives, unlisted episodes are left out).
    ``unlabeled``: episodes whose frames self-training may pseudo-label (their recorded outcomes are not
    read); None: with ``episodes`` given none, else every episode of the snapshot that has no labeled
    frame. The unlabeled frames of the training split's episodes are always in the pool; held-out
    episodes never are. The returned detector carries ``heldout`` (:class:`HeldOut`) for the report.
    """
    view = _lake_view(lake_uri, ref)
    where = f"lake {lake_uri} at {ref}"
    camera, size = _camera(view, where, cfg.camera)
    labels, records = _labels(view, where, task, cfg, list(user_labels or ()), episodes)
    train_ids, held_ids = _split(labels, where, cfg)
    train = _read_frames(view, records, labels, train_ids, camera)
    held = _read_frames(view, records, labels, held_ids, camera)
    if not train.labels.any() or train.labels.all():
        raise DetectorError(f"{where}: the training split of {task!r} needs positive and negative frames")
    if unlabeled is not None:
        bad = sorted(set(unlabeled) - set(records))
        if bad:
            raise DetectorError(f"{where}: unlabeled={bad[:3]} ({len(bad)} in all) are not in this snapshot")
        labeled = sorted(set(unlabeled) & (set(episodes) if episodes is not None else set(labels)))
        if labeled:
            raise DetectorError(
                f"{where}: unlabeled episodes {labeled[:3]} ({len(labeled)} in all) are also labeled episodes; "
                "an episode is either labeled or unlabeled"
            )

    net, losses = _fit(train, size, cfg, task, cfg.steps)
    rounds: list[dict[str, int]] = []
    if cfg.self_training_rounds:
        if unlabeled is not None:
            extra = list(unlabeled)
        elif episodes is not None:
            extra = []
        else:  # every episode of the snapshot without a labeled frame
            extra = sorted(set(records) - set(labels))
        pool = _unlabeled_frames(view, records, labels, [*train_ids, *extra], camera, cfg)
        net, losses, rounds = _self_train(net, losses, train, pool, size, cfg, task)
    detector = SuccessDetector(
        net, cfg, task=task, camera=camera, image_size=size, threshold=0.5, metrics={}, calibration={}, info={}
    )
    probs = detector.predict_proba(held.images)
    threshold, threshold_rule = choose_threshold(probs, held.labels, cfg)
    counts = {
        "train_episodes": len(train_ids),
        "heldout_episodes": len(held_ids),
        "train_frames": len(train.labels),
        "train_positives": int(train.labels.sum()),
        "heldout_frames": len(held.labels),
        "heldout_positives": int(held.labels.sum()),
        "user_labels": len(user_labels or ()),
        "self_training": rounds,  # per round: unlabeled frames scored, pseudo-positives, pseudo-negatives
    }
    detector.threshold = threshold
    detector.metrics = {
        **classification_metrics(probs, held.labels, threshold),
        "threshold_rule": threshold_rule,
        "episodes": len(held_ids),
        "final_loss": float(np.mean(losses[-20:])),
    }
    detector.calibration = reliability(probs, held.labels)
    detector.info = {
        "lake": {"uri": str(lake_uri), "ref": ref, "snapshot_id": view.snapshot_id},
        "counts": counts,
        "split": {"train": train_ids, "heldout": held_ids},
    }
    detector.heldout = HeldOut(held.images, held.labels, probs, held.episode_ids, held.steps)
    if not math.isfinite(detector.metrics["final_loss"]):
        raise DetectorError(f"{where}: training of the {task!r} detector diverged (loss not finite); lower lr")
    return detector
