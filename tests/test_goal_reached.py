"""Goal-reached classifiers: learned from hindsight pairs of a synthetic lake where the goal frame is
recognizable (held-out F1), the split is by episode, save/load round-trips, and as a reward it changes
only a batch's relabeled rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_lake import Episode, Lake
from data_lake.batch import COMMANDED, FINAL, FUTURE, NEGATIVE, TASK
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from robot_rl.detectors import DetectorError
from robot_rl.detectors.goal_reached import (
    GoalReachedClassifier,
    GoalReachedConfig,
    classifier_rewards,
    train_goal_reached,
)

torch.set_num_threads(1)
T = 24
FAST = GoalReachedConfig(
    within=1, far=8, steps=250, batch_size=32, lr=2e-3, augment_pad=1, eval_pairs=400, progress=False
)


def _episode(rng: np.random.Generator, k: int) -> Episode:
    """A bright 3x3 square moving along a random straight path: frames far apart differ, close ones match."""
    start = rng.integers(0, 3, 2)
    end = rng.integers(10, 13, 2)
    flip = rng.random(2) < 0.5
    start, end = np.where(flip, end, start), np.where(flip, start, end)  # each axis crosses the image
    images = rng.integers(0, 40, (T, 16, 16, 3)).astype(np.uint8)
    colour = rng.integers(150, 256, 3)
    for t in range(T):
        r, c = np.round(start + (end - start) * t / (T - 1)).astype(int)
        images[t, r : r + 3, c : c + 3] = colour
    return Episode.make(
        images={"front": images},
        state=rng.normal(size=(T, 2)).astype(np.float32),
        action=rng.uniform(-1, 1, (T, 2)).astype(np.float32),
        reward=np.zeros(T, np.float32),
        task="synthetic/move",
        goal_images={"front": images[-1]},
        achieved_goal=rng.normal(size=(T, 2)).astype(np.float32),
        goal_state=np.zeros(2, np.float32),
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("gr") / "lake")
    rng = np.random.default_rng(0)
    Lake.create(uri).append([_episode(rng, k) for k in range(16)])
    return uri


def test_learns_hindsight_pairs_and_round_trips(lake: str, tmp_path: Path) -> None:
    clf = train_goal_reached(lake, "main", FAST)
    assert clf.camera == "front" and clf.image_size == (16, 16)
    split = clf.info["split"]
    assert not set(split["train"]) & set(split["heldout"]) and len(split["heldout"]) >= 1  # by episode
    assert clf.metrics["f1"] >= 0.85, clf.metrics
    view = Lake.open(lake).checkout()
    ep = view.read_episode(split["heldout"][0])
    frames = ep.steps["images/front"]
    near = clf.predict_proba(frames[:-1], frames[1:])  # one step ahead
    far = clf.predict_proba(frames[:-12], frames[12:])  # twelve steps ahead: the square moved 5+ pixels
    assert (near >= clf.threshold).mean() >= 0.8 and (far < clf.threshold).mean() >= 0.8, (near, far)
    loaded = GoalReachedClassifier.load(clf.save(tmp_path / "clf"))
    assert loaded.classifier_id == clf.classifier_id and loaded.threshold == clf.threshold
    np.testing.assert_array_equal(loaded.predict_proba(frames, frames[::-1]), clf.predict_proba(frames, frames[::-1]))
    with pytest.raises(DetectorError, match="takes uint8 16x16 RGB goals"):
        clf.predict_proba(frames, frames[:, :8])
    with pytest.raises(DetectorError, match="is not a goal-reached classifier"):
        GoalReachedClassifier.load(tmp_path)


def test_rewards_only_the_relabeled_rows(lake: str) -> None:
    clf = train_goal_reached(lake, "main", GoalReachedConfig(steps=5, eval_pairs=20, progress=False))
    relabel = RelabelConfig(future=0.3, final=0.2, negative=0.2, commanded=0.2, task=0.1)
    cfg = SamplerConfig(batch_size=128, cameras=("front",), relabel=relabel, augment_pad=0, seed=0)
    with Sampler(Lake.open(lake).checkout(), cfg, progress=False) as sampler:
        batch = next(sampler)
    out = classifier_rewards(batch, clf)
    src = batch.goal_source
    judged = (src == FUTURE) | (src == FINAL) | (src == NEGATIVE)
    kept = (src == COMMANDED) | (src == TASK)
    assert judged.any() and kept.any()
    assert torch.equal(out.rewards[kept], batch.rewards[kept]) and torch.equal(
        out.terminals[kept], batch.terminals[kept]
    )
    want = clf.reached(batch.next_observations.images["front"][judged], batch.goals.images["front"][judged])
    assert torch.equal(out.rewards[judged], want) and torch.equal(out.terminals[judged], want)


def test_command_and_pretraining_with_the_classifier(
    lake: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from robot_rl.cli import main
    from robot_rl.config import LakeConfig, ObsConfig
    from robot_rl.pretrain import PretrainConfig, TaskConfig, pretrain

    out = tmp_path / "clf"
    args = ["detector", "train-goal", f"lake.uri={lake}", "steps=5", "eval_pairs=20", "progress=false", f"out={out}"]
    assert main(args) == 0
    assert "goal-reached classifier gr-" in capsys.readouterr().out and (out / "goal_reached.json").is_file()
    assert main(["detector", "train-goal", f"lake.uri={lake}", "within=5", "far=3"]) == 2
    assert "far > within" in capsys.readouterr().err

    relabel = RelabelConfig(future=0.6, final=0.2, negative=0.2, task=0.0)
    cfg = PretrainConfig(
        algo="iql",
        algo_cfg={"hidden": [16]},
        lake=LakeConfig(lake, "main"),
        obs=ObsConfig(cameras=("front",), use_state=False, augment_pad=0),
        task=TaskConfig(conditioning="goal", relabel=relabel, reward_classifier=str(out)),
        steps=2,
        batch_size=8,
        run_dir=str(tmp_path / "run"),
        prefetch=1,
        progress=False,
    )
    run = pretrain(cfg)
    meta = json.loads((run / "run.json").read_text())
    assert json.dumps(meta).count(json.loads((out / "goal_reached.json").read_text())["classifier_id"]) >= 1
    with pytest.raises(ValueError, match="needs task.conditioning=goal"):
        pretrain(
            PretrainConfig(
                algo="iql", algo_cfg={"hidden": [16]}, lake=LakeConfig(lake, "main"), obs=cfg.obs,
                task=TaskConfig(conditioning="none", relabel=RelabelConfig(future=0, final=0, negative=0, task=1.0),
                                reward_classifier=str(out)),
                steps=1, batch_size=8, run_dir=str(tmp_path / "bad"), prefetch=1, progress=False,
            )
        )  # fmt: skip
