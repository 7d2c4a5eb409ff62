"""Goal-reached classifiers: reached(s, g) from an observation image and a goal image.

Where a goal is an image and no state distance exists (a real robot's camera, a goal photo), the
reward of a relabeled goal needs a judge of "is this the goal?". Hindsight gives the labels for free
(as in Actionable Models' goal relabeling and the learned rewards of Fu et al., 2018, VICE): within
one episode, the frame at t and the frame a few steps later show the same situation.

Pairs (one camera; the frames of the chosen episodes, in memory)::

    positive    (o_t, o_j) of one episode with 0 <= j − t <= ``within``
    negative    (o_t, o_j) with o_j from another episode (probability ``p_other``), else from the same
                episode ``far`` or more steps away (from another episode when the episode is too short)

Frames of other episodes can show the same scene (a reach that never touched the blocks looks like
the start of another episode): those negatives are label noise, which the held-out metrics include.

Network: the success detector's (``robot_rl.detectors.success.DetectorNet``: the DrQ conv trunk and
an MLP head) on the two images stacked as 6 channels (early fusion: the trunk compares them pixel by
pixel). Balanced minibatches of fresh pairs, BCE, Adam, the DrQ shift on each image independently.
Split by episode, as the success detector's; threshold (max F1), metrics and the reliability curve
on ``eval_pairs`` held-out pairs drawn once with a fixed seed.

As a reward: :func:`classifier_rewards` replaces the rewards and terminals of a batch's relabeled
rows (goal sources future, final, negative) by ``p(reached(o_{t+1}, g)) >= threshold``; commanded and
task rows keep their stored rewards, and ``mc_returns`` stay the sampler's (index rule). ``robot-rl
pretrain`` applies it with ``task.reward_classifier=DIR``.

A saved classifier is a directory: ``tensors.safetensors`` and ``goal_reached.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from torch import nn
from tqdm.auto import tqdm

from data_lake.batch import FINAL, FUTURE, NEGATIVE, Batch
from data_lake.sampler import random_shift
from robot_rl.config import from_dict
from robot_rl.detectors.success import (
    TENSORS,
    DetectorError,
    DetectorNet,
    _camera,
    _config_json,
    _detector_id,
    _lake_view,
    _small_encoder,
    _tensor_bytes,
    best_threshold,
    classification_metrics,
    classifier_record,
    reliability,
    save_checkpoint,
)
from robot_rl.nets.encoders import EncoderConfig

FORMAT = "robot-rl/goal-reached/v1"
META = "goal_reached.json"
RELABELED = (FUTURE, FINAL, NEGATIVE)  # the goal sources whose reward the classifier judges


@dataclasses.dataclass(frozen=True)
class GoalReachedConfig:
    """How a goal-reached classifier is trained (pairs as in the module docstring)."""

    camera: str | None = None  # None: the lake's only camera
    within: int = 2  # positives: the goal is 0 .. within steps ahead in the same episode
    far: int = 10  # same-episode negatives: at least this many steps apart
    p_other: float = 0.5  # share of negatives from another episode
    holdout_fraction: float = 0.2  # episodes held out (by episode, seeded)
    eval_pairs: int = 2000  # held-out pairs for the threshold and metrics
    steps: int = 500
    batch_size: int = 64  # pairs per step, half positive
    lr: float = 1e-3
    augment_pad: int = 4  # DrQ shift of each image; 0 disables
    encoder: EncoderConfig = dataclasses.field(default_factory=_small_encoder)
    hidden: tuple[int, ...] = (64,)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.within < 0 or self.far <= self.within:
            raise DetectorError(f"need within >= 0 and far > within, got within={self.within}, far={self.far}")
        if not 0.0 <= self.p_other <= 1.0 or not 0.0 < self.holdout_fraction < 1.0:
            raise DetectorError(
                f"p_other must be in [0, 1] and holdout_fraction in (0, 1), got {self.p_other}, {self.holdout_fraction}"
            )
        if min(self.steps, self.eval_pairs) < 1 or self.batch_size < 2 or not self.lr > 0 or self.augment_pad < 0:
            raise DetectorError("need steps, eval_pairs >= 1, batch_size >= 2, lr > 0 and augment_pad >= 0")
        if self.encoder.trunk != "conv":
            raise DetectorError(
                f"the classifier uses the conv trunk (encoder.trunk='conv'), got {self.encoder.trunk!r}"
            )


@dataclasses.dataclass(frozen=True)
class _Episodes:
    """The frames of some episodes, concatenated."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    starts: np.ndarray  # (E,) first row of each episode
    lengths: np.ndarray  # (E,)
    ids: list[str]

    def pairs(self, n: int, positive: bool, cfg: GoalReachedConfig, rng: np.random.Generator) -> np.ndarray:
        """(n, 2) rows (observation, goal) of positive or negative pairs."""
        e = rng.integers(0, len(self.ids), n)  # (n,) episodes
        L = self.lengths[e]
        t = rng.integers(0, L)  # (n,) steps
        if positive:
            j = np.minimum(t + rng.integers(0, cfg.within + 1, n), L - 1)
            return np.stack([self.starts[e] + t, self.starts[e] + j], 1)
        other = (rng.random(n) < cfg.p_other) | (L <= cfg.far)  # too short for a far step: another episode
        if len(self.ids) < 2 and other.any():
            raise DetectorError("negative pairs from other episodes need at least 2 episodes")
        # same episode, |j − t| >= far: a step from [0, t − far] ∪ [t + far, L − 1]
        before, after = np.maximum(t - cfg.far + 1, 0), np.maximum(L - t - cfg.far, 0)
        u = rng.integers(0, np.maximum(before + after, 1))
        j_same = np.where(u < before, u, t + cfg.far + (u - before))
        e2 = rng.integers(0, max(len(self.ids) - 1, 1), n)
        e2 = e2 + (e2 >= e)  # another episode
        e2 = np.minimum(e2, len(self.ids) - 1)
        j_other = self.starts[e2] + rng.integers(0, self.lengths[e2])
        return np.stack([self.starts[e] + t, np.where(other, j_other, self.starts[e] + j_same)], 1)


class GoalReachedClassifier:
    """A trained reached(o, g) classifier for one camera, with its held-out threshold and metrics."""

    def __init__(
        self,
        net: DetectorNet,
        cfg: GoalReachedConfig,
        *,
        camera: str,
        image_size: tuple[int, int],
        threshold: float,
        metrics: dict[str, Any],
        calibration: dict[str, Any],
        info: dict[str, Any],
    ):
        self.net, self.cfg = net.eval(), cfg
        self.camera, self.image_size = camera, (int(image_size[0]), int(image_size[1]))
        self.threshold, self.metrics, self.calibration, self.info = float(threshold), metrics, calibration, info
        self._tensor_bytes = _tensor_bytes(net)
        self.classifier_id = "gr-" + _detector_id(self._tensor_bytes, _config_json(cfg))[4:]

    def predict_proba(self, observations: np.ndarray, goals: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 (N, H, W, 3) observation and goal images -> p(reached) float64 (N,)."""
        obs, goals = np.asarray(observations), np.asarray(goals)
        for what, a in (("observations", obs), ("goals", goals)):
            if a.ndim != 4 or a.dtype != np.uint8 or tuple(a.shape[1:]) != (*self.image_size, 3):
                raise DetectorError(
                    f"goal-reached classifier {self.classifier_id} takes uint8 {self.image_size[0]}x"
                    f"{self.image_size[1]} RGB {what} of camera {self.camera!r}, got {a.dtype} {tuple(a.shape)}"
                )
        if len(obs) != len(goals):
            raise DetectorError(f"{len(obs)} observations but {len(goals)} goals")
        device = next(self.net.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(obs), batch_size):
                x = torch.as_tensor(np.concatenate([obs[i : i + batch_size], goals[i : i + batch_size]], -1))
                out.append(torch.sigmoid(self.net(x.to(device))).double().cpu().numpy())  # (b,)
        return np.concatenate(out) if out else np.zeros(0, np.float64)

    @torch.no_grad()
    def reached(self, observations: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        """Device images as the learners see them (float (B, 3, H, W) in [0, 1]) -> reached (B,) float 0/1."""
        x = torch.cat([observations, goals], 1)  # (B, 6, H, W)
        logits = self.net.head(self.net.trunk(x.to(next(self.net.parameters()).device))).squeeze(-1)  # (B,)
        return (torch.sigmoid(logits) >= self.threshold).float().to(observations.device)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "classifier_id": self.classifier_id,
            **classifier_record(self),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``tensors.safetensors`` and ``goal_reached.json`` (each atomically) to directory ``path``."""
        return save_checkpoint(path, self._tensor_bytes, META, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> GoalReachedClassifier:
        d = Path(path)
        if not (d / META).is_file() or not (d / TENSORS).is_file():
            raise DetectorError(f"{d} is not a goal-reached classifier: it needs {META} and {TENSORS}")
        try:
            meta = json.loads((d / META).read_text())
            raw = (d / TENSORS).read_bytes()
            cfg = from_dict(GoalReachedConfig, {**meta["config"], "device": device})
            size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
            net = DetectorNet(size, cfg, channels=6)
            net.load_state_dict(load_bytes(raw))
        except Exception as e:  # damaged JSON / tensors, or another version's layout
            raise DetectorError(f"{d} holds an unreadable goal-reached classifier: {e}") from None
        if meta.get("format") != FORMAT:
            raise DetectorError(f"{d / META} has format {meta.get('format')!r}, expected {FORMAT!r}")
        clf = cls(
            net.to(cfg.device), cfg, camera=meta["camera"], image_size=size, threshold=meta["threshold"],
            metrics=meta["metrics"], calibration=meta["calibration"], info={k: meta[k] for k in ("lake", "split")},
        )  # fmt: skip
        if clf.classifier_id != meta.get("classifier_id"):
            raise DetectorError(f"{d}: the tensors and config do not match classifier {meta.get('classifier_id')}")
        return clf


def _episodes(view: Any, camera: str, ids: Sequence[str]) -> _Episodes:
    wanted, images, lengths, order = set(ids), [], [], []
    for name in view.segment_names():
        seg = view.read_segment(name, [f"images/{camera}"])
        start = 0
        for i, end in enumerate(seg.episode_ends):
            eid = seg.table["episode_id"][i]
            if eid in wanted:
                images.append(seg.steps[f"images/{camera}"][start:end])
                lengths.append(int(end) - start)
                order.append(eid)
            start = int(end)
    lengths_a = np.array(lengths, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths_a)[:-1]]).astype(np.int64)
    return _Episodes(np.concatenate(images), starts, lengths_a, order)


def train_goal_reached(
    lake_uri: str, ref: str, cfg: GoalReachedConfig, episodes: Sequence[str] | None = None
) -> GoalReachedClassifier:
    """Train reached(o, g) on hindsight pairs of snapshot ``ref`` (``episodes``: only these ids)."""
    view = _lake_view(lake_uri, ref)
    where = f"lake {lake_uri} at {ref}"
    camera, size = _camera(view, where, cfg.camera)
    ids = sorted({r.episode_id for r in view.episodes()} if episodes is None else set(episodes))
    if len(ids) < 3:
        raise DetectorError(f"{where}: a goal-reached classifier needs at least 3 episodes (train and held out)")
    rng = np.random.default_rng(cfg.seed)
    perm = [ids[i] for i in rng.permutation(len(ids))]
    n_held = min(len(ids) - 2, max(1, round(cfg.holdout_fraction * len(ids))))
    held_ids, train_ids = sorted(perm[:n_held]), sorted(perm[n_held:])
    train, held = _episodes(view, camera, train_ids), _episodes(view, camera, held_ids)
    torch.manual_seed(cfg.seed)
    net = DetectorNet(size, cfg, channels=6).to(cfg.device)
    _train(net, train, cfg, rng)
    clf = GoalReachedClassifier(
        net, cfg, camera=camera, image_size=size, threshold=0.5, metrics={}, calibration={},
        info={"lake": {"uri": str(lake_uri), "ref": ref, "snapshot_id": view.snapshot_id},
              "split": {"train": train_ids, "heldout": held_ids}},
    )  # fmt: skip
    eval_rng = np.random.default_rng(cfg.seed + 1)
    half = cfg.eval_pairs // 2
    rows = np.concatenate(
        [held.pairs(half, True, cfg, eval_rng), held.pairs(cfg.eval_pairs - half, False, cfg, eval_rng)]
    )
    labels = np.arange(len(rows)) < half
    probs = clf.predict_proba(held.images[rows[:, 0]], held.images[rows[:, 1]])
    clf.threshold = best_threshold(probs, labels)
    clf.metrics = classification_metrics(probs, labels, clf.threshold)
    clf.calibration = reliability(probs, labels)
    return clf


def _train(net: DetectorNet, data: _Episodes, cfg: GoalReachedConfig, rng: np.random.Generator) -> None:
    device = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = torch.as_tensor(data.images, device=device)  # (N, H, W, 3) uint8
    half = cfg.batch_size // 2
    targets = torch.cat([torch.ones(half), torch.zeros(cfg.batch_size - half)]).to(device)  # (B,)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    net.train()
    for _ in tqdm(range(cfg.steps), desc="goal-reached classifier", unit="step", disable=not cfg.progress):
        rows = torch.as_tensor(
            np.concatenate([data.pairs(half, True, cfg, rng), data.pairs(cfg.batch_size - half, False, cfg, rng)])
        )  # (B, 2)
        o = random_shift(images[rows[:, 0]], cfg.augment_pad, gen)  # (B, H, W, 3)
        g = random_shift(images[rows[:, 1]], cfg.augment_pad, gen)  # (B, H, W, 3)
        loss = nn.functional.binary_cross_entropy_with_logits(net(torch.cat([o, g], -1)), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()


def classifier_rewards(batch: Batch, clf: GoalReachedClassifier) -> Batch:
    """``batch`` with r = d = reached(o_{t+1}, g) on its relabeled rows (future, final, negative goals),
    judged on the classifier's camera; other rows unchanged."""
    if batch.goals is None or clf.camera not in batch.goals.images:
        raise DetectorError(f"the goal-reached classifier judges camera {clf.camera!r}; the batch's goals have none")
    rows = torch.isin(batch.goal_source, torch.tensor(RELABELED, device=batch.goal_source.device))  # (B,)
    if not rows.any():
        return batch
    r = clf.reached(batch.next_observations.images[clf.camera][rows], batch.goals.images[clf.camera][rows])  # (b,)
    rewards, terminals = batch.rewards.clone(), batch.terminals.clone()
    rewards[rows], terminals[rows] = r, r
    return dataclasses.replace(batch, rewards=rewards, terminals=terminals)
