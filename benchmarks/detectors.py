"""Learned success detectors against the simulator's truth, and MT-Opt trained on their labels.

    .venv/bin/python -m benchmarks.detectors [--quick] [--no-mtopt] [--json PATH] [--out DIR]
        [--image-size N] [--detector-steps N] [--labeled 5,20,100] [--seed N]

Data (one fresh local lake, 32x32 front and wrist cameras): per task, noisy scripted episodes that
reach the goal and stay there in most episodes (``reach_red`` at action noise 0.3, ``push_red_to_pad``
at 0.2; episodes run their full length, ``success`` is the simulator's check on the last frame), split
by collection seed into a labeling pool and held-out test episodes. The truth is the simulator's own
detector, run over every stored state of every episode (``robot-rl lake label --task``, source
``sim``): per frame, is the task solved.

Detectors (``robot_rl.detectors``; ``reach_red`` sees the wrist camera, ``push_red_to_pad`` the front
camera; the last 10 frames of a success are positives, every frame of the other task's successes is a
negative, threshold 0.5): trained with N labeled episodes per task, N in (5, 20, 100): N episodes of
the task and N of the other task (their recorded outcomes are the labels: final frames of successes
are positives; early frames, failures' final frames and the other task's successes are negatives).
The benchmark's detector is an ensemble of 3, self-trained for 2 rounds on the pool's other episodes
(given as ``unlabeled``: their outcomes are not read) and the middle frames of the labeled ones, its
labels smoothed by a 5-frame median within each episode. The plain detector (one network, no
self-training, frame by frame) is the baseline, trained in the same run on the same episodes.
Scored on EVERY frame of the held-out episodes of both tasks at the detector's own threshold, as
``lake label --detector`` would label them: precision, recall and F1 against the simulator's labels
of that task. Target: F1 >= 0.9 with 20 labeled episodes on reach and push. ``--no-mtopt`` stops
after the detectors.

MT-Opt (from states: proprioception + scene vector; task-conditioned; 4 conservative negative actions
per row; MT-Opt's data sharing
``p_task`` = 0.5 reads the success labels of the other task on every episode; success ends an episode,
as in MT-Opt, since the scripted episodes run on after it), trained twice on the
same snapshot with the same budget and seed: with the simulator's labels (``label_source=sim``) and
with the labels of the N = 20 detectors (``robot-rl lake label --detector``: label source = the
detector id, confidences stored; ``min_label_confidence`` 0). Success over both tasks' held-out
evaluation seeds, Wilson 95%. Target: within 0.1 of the true labels' success.

JSON: ``<task>_n<N>_{precision,recall,f1}`` (the labels), ``<task>_n<N>_frame_f1`` (frame by frame, no
median), ``<task>_n<N>_baseline_{precision,recall,f1}``, ``<task>_n<N>_threshold``, ``mtopt_{sim,detector}_success``
(with ``_ci_low``/``_ci_high``), ``mtopt_gap`` (sim − detector), ``budget_*``, ``seconds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.report import report, with_ci

if TYPE_CHECKING:
    from robot_rl.detectors import DetectorConfig, SuccessDetector

TASKS = ("tabletop/reach_red", "tabletop/push_red_to_pad")
# action noise of the scripted policies: they reach the goal and stay there in most episodes (reach_red
# succeeds in every episode at 0.3, push_red_to_pad in about 3 of 4 at 0.2), so the final frames of a
# success are success frames; at reach 1.0 the gripper jitters in and out of the 3 cm ball and only
# 58% of the last 3 frames of "successful" episodes are success frames (docs/detectors.md)
NOISE = {"tabletop/reach_red": 0.3, "tabletop/push_red_to_pad": 0.2}
CAMERAS = ("front", "wrist")  # both are collected; each task's detector sees one
CAMERA = {"tabletop/reach_red": "wrist", "tabletop/push_red_to_pad": "front"}
POSITIVE_STEPS = 10  # the last 10 frames of a success are positives (98-99% of them are success frames)
OTHER_STEPS = 1000  # every frame of the other task's successful episodes is a negative (not only the last 10)
ENSEMBLE = 3  # networks per detector, their probabilities averaged
SELF_TRAINING_ROUNDS = 2  # pseudo-label the unlabeled pool (p >= 0.95 / <= 0.05), retrain from scratch
MEDIAN_WINDOW = 5  # labels: each frame's p is the median over 5 frames of its episode
GAMMA = 0.97
MTOPT_NEGATIVES = 4  # MT-Opt's conservative term (negative_actions)
LEARNED = "learned"  # the label source both tasks' detectors write


@dataclasses.dataclass(frozen=True)
class Budget:
    pool: int  # labeling-pool episodes per task
    test: int  # held-out episodes per task
    labeled: tuple[int, ...]
    image_size: int
    detector_steps: int
    mtopt_updates: int
    batch: int
    eval_episodes: int


QUICK = Budget(pool=8, test=4, labeled=(4,), image_size=16, detector_steps=20, mtopt_updates=20, batch=32,
               eval_episodes=2)  # fmt: skip
FULL = Budget(pool=100, test=40, labeled=(5, 20, 100), image_size=32, detector_steps=500, mtopt_updates=2500,
              batch=128, eval_episodes=50)  # fmt: skip


def build_lake(uri: str, b: Budget) -> dict[str, dict[str, list[str]]]:
    """Collect the pool (seeds 0, 1) and test (seeds 10, 11) episodes; label every frame for both tasks
    with the simulator's detector -> task -> {"pool": ids, "test": ids}."""
    from data_lake import Lake
    from tasks.collect import CollectConfig, collect
    from tasks.label import detector_over_states

    seeds = {}
    for k, task in enumerate(TASKS):
        for part, n, seed in (("pool", b.pool, k), ("test", b.test, 10 + k)):
            collect(
                CollectConfig(
                    task=task, episodes=n, lake=uri, policy="noisy", noise=NOISE[task], seed=seed,
                    image_size=b.image_size, cameras=CAMERAS, workers=2, progress=False,
                )
            )  # fmt: skip
            seeds[seed] = (task, part)
    split: dict[str, dict[str, list[str]]] = {t: {"pool": [], "test": []} for t in TASKS}
    for r in Lake.open(uri).checkout().episodes():  # lake order: the collection order
        task, part = seeds[int(r.metadata["collect_seed"])]
        split[task][part].append(r.episode_id)
    lake = Lake.open(uri)
    for task in TASKS:
        lake.label(task, detector_over_states(task))
    lake.tag("v1")
    return split


def frames_and_truth(uri: str, ids: list[str], task: str, camera: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every frame (N, H, W, 3) of ``camera`` in the episodes ``ids``, the simulator's label of ``task`` on
    each (N,) and the end index of each episode (E,)."""
    from data_lake import Lake

    view = Lake.open(uri).checkout("tag:v1")
    wanted = set(ids)
    images, truth = [], []
    for name in view.segment_names():
        seg = view.read_segment(name)
        start = 0
        for i, end in enumerate(seg.episode_ends):
            if seg.table["episode_id"][i] in wanted:
                images.append(seg.steps[f"images/{camera}"][start:end])
                truth.append(seg.labels[task][start:end])
            start = int(end)
    ends = np.cumsum([len(t) for t in truth])
    return np.concatenate(images), np.concatenate(truth).astype(bool), ends


def detector_configs(task: str, b: Budget, seed: int = 0) -> dict[str, DetectorConfig]:
    """The benchmark's detector (``full``) and, measured in the same run, the plain one it improves on
    (``baseline``: one network, no self-training, frame by frame)."""
    from robot_rl.detectors import DetectorConfig

    baseline = DetectorConfig(
        camera=CAMERA[task],
        positive_steps=POSITIVE_STEPS,
        other_steps=OTHER_STEPS,
        steps=b.detector_steps,
        seed=seed,
        progress=False,
    )
    full = dataclasses.replace(
        baseline,
        ensemble=ENSEMBLE,
        self_training_rounds=SELF_TRAINING_ROUNDS,
        self_training_steps=2 * b.detector_steps,
        median_window=MEDIAN_WINDOW,
    )
    return {"full": full, "baseline": baseline}


def score(probs: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of ``probs >= threshold`` against the simulator's labels."""
    from robot_rl.detectors.success import classification_metrics

    return {k: float(v) for k, v in classification_metrics(probs, truth, threshold).items()}


def mtopt(uri: str, out: Path, b: Budget, label_source: str, seed: int = 0):  # type: ignore[no-untyped-def]
    """Pretrain MT-Opt from states with the labels of ``label_source``; evaluate on held-out seeds."""
    from data_lake.sampler import RelabelConfig
    from robot_rl.checkpoint import load_policy
    from robot_rl.evaluate import EvalConfig, evaluate, policy_act
    from robot_rl.hydra_utils import algo_settings
    from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain

    relabel = RelabelConfig(
        future=0,
        final=0,
        negative=0,
        commanded=0,
        task=1.0,
        gamma=GAMMA,
        p_task=0.5,
        label_source=label_source,
        success_terminal=True,  # MT-Opt's episodes end at success: the stored reward stays 1 after it
    )
    run = pretrain(
        PretrainConfig(
            algo="mt_opt",
            # 4 uniform negative actions per row pushed to Q = 0: without them offline MT-Opt's CEM picks
            # actions the data never took (reach_red 0.04 against 1.00 with them; docs/detectors.md)
            algo_cfg=algo_settings("mt_opt", gamma=GAMMA, hidden=[256, 256], negative_actions=MTOPT_NEGATIVES),
            lake=LakeConfig(uri, "tag:labeled"),
            obs=ObsConfig(cameras=(), use_state=True, scene_state=True, augment_pad=0),
            task=TaskConfig(conditioning="task", relabel=relabel, task_balanced=True),
            steps=b.mtopt_updates,
            batch_size=b.batch,
            seed=seed,
            run_dir=str(out / f"mtopt_{label_source}"),
            save_every=b.mtopt_updates,
            progress=False,
        )
    )
    trained, meta = load_policy(run / "checkpoints" / "latest")
    ecfg = EvalConfig(tasks=TASKS, episodes=b.eval_episodes, seed=900_000, num_envs=4, video_episodes=0, progress=False)
    return evaluate(policy_act(trained), trained.spec, ecfg, task_vocab=meta["tasks"])


def run_mtopt(
    uri: str, out: Path, b: Budget, chosen: dict[str, SuccessDetector], n_chosen: int, figs: dict[str, float]
) -> None:
    """Label the lake with the chosen detectors, then MT-Opt on the simulator's and on the detectors' labels."""
    from data_lake import Lake
    from robot_rl.detectors.label import label_with_detector

    lake = Lake.open(uri)
    for task, det in chosen.items():  # one source for both tasks' detectors: what MT-Opt reads
        label_with_detector(lake, det, out / f"detector_{task.split('/')[1]}_n{n_chosen}", source=LEARNED)
    lake.tag("labeled")
    for name, source in (("sim", "sim"), ("detector", LEARNED)):
        t1 = time.perf_counter()
        res = mtopt(uri, out, b, source)
        with_ci(figs, f"mtopt_{name}_success", res.summary)
        for task, stats in res.per_task.items():
            figs[f"mtopt_{name}_{task.split('/')[1]}_success"] = float(stats["success_rate"])
        figs[f"mtopt_{name}_s"] = time.perf_counter() - t1
        (out / f"mtopt_{name}_eval.json").write_text(json.dumps(res.to_json(), indent=1))
    figs["mtopt_gap"] = figs["mtopt_sim_success"] - figs["mtopt_detector_success"]


def main() -> None:
    from robot_rl.detectors import train_detector

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    p.add_argument("--out", help="keep the detectors, their reports and the MT-Opt runs here")
    p.add_argument("--no-mtopt", action="store_true", help="only the detectors (skip the two MT-Opt runs)")
    p.add_argument("--image-size", type=int, help="override the budget's camera size (collected and seen)")
    p.add_argument("--detector-steps", type=int, help="override the budget's detector training steps")
    p.add_argument("--labeled", help="override the budget's labeled-episode counts, e.g. 20 or 5,20")
    p.add_argument("--seed", type=int, default=0, help="the detectors' seed (split, initialization, batches)")
    a = p.parse_args()
    b = QUICK if a.quick else FULL
    labeled = tuple(int(n) for n in a.labeled.split(",")) if a.labeled else None
    overrides = {"image_size": a.image_size, "detector_steps": a.detector_steps, "labeled": labeled}
    b = dataclasses.replace(b, **{k: v for k, v in overrides.items() if v is not None})
    t0 = time.perf_counter()
    figs: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = Path(a.out) if a.out else root / "runs"
        out.mkdir(parents=True, exist_ok=True)
        uri = str(root / "lake")
        split = build_lake(uri, b)
        figs["collect_label_s"] = time.perf_counter() - t0
        test_ids = [i for t in TASKS for i in split[t]["test"]]
        chosen: dict[str, SuccessDetector] = {}  # the N = 20 detectors: they label the lake for MT-Opt
        n_chosen = 20 if 20 in b.labeled else b.labeled[-1]
        for task in TASKS:
            images, truth, ends = frames_and_truth(uri, test_ids, task, CAMERA[task])
            other = next(t for t in TASKS if t != task)
            for n in b.labeled:
                episodes = split[task]["pool"][:n] + split[other]["pool"][:n]
                unlabeled = split[task]["pool"][n:] + split[other]["pool"][n:]  # outcomes not read
                key = f"{task.split('/')[1]}_n{n}"
                for name, cfg in detector_configs(task, b, a.seed).items():
                    t1 = time.perf_counter()
                    det = train_detector(uri, "tag:v1", task, cfg, episodes=episodes, unlabeled=unlabeled)
                    prefix = key if name == "full" else f"{key}_{name}"
                    # scored as `lake label --detector` labels: per episode, with the detector's median window
                    s = score(det.predict_episodes(images, ends), truth, det.threshold)
                    figs |= {f"{prefix}_{m}": v for m, v in s.items() if m in ("precision", "recall", "f1")}
                    figs[f"{prefix}_s"] = time.perf_counter() - t1
                    if name == "full":
                        figs[f"{key}_frame_f1"] = score(det.predict_proba(images), truth, det.threshold)["f1"]
                        figs[f"{key}_threshold"] = det.threshold
                        det.save(out / f"detector_{key}")
                        if n == n_chosen:
                            chosen[task] = det
            figs[f"{task.split('/')[1]}_test_frames"] = float(len(truth))
            figs[f"{task.split('/')[1]}_test_positives"] = float(truth.sum())
        if not a.no_mtopt:
            run_mtopt(uri, out, b, chosen, n_chosen, figs)
    figs |= {
        "budget_pool_episodes_per_task": float(b.pool),
        "budget_test_episodes_per_task": float(b.test),
        "budget_detector_steps": float(b.detector_steps),
        "budget_mtopt_updates": float(b.mtopt_updates),
        "budget_eval_episodes_per_task": float(b.eval_episodes),
        "image_size": float(b.image_size),
        "seconds": time.perf_counter() - t0,
    }
    n = 20 if 20 in b.labeled else b.labeled[-1]
    targets = {f"{t.split('/')[1]}_n{n}_f1": ">= 0.9" for t in TASKS}
    if not a.no_mtopt:
        targets["mtopt_gap"] = "<= 0.1"
    report(figs, targets, a.json, skip=tuple(k for k in figs if k.endswith(("_ci_low", "_ci_high"))))


if __name__ == "__main__":
    main()
