"""`robot-rl detector train task=... lake.uri=... lake.ref=...`: train an image success detector for one task
on a pinned lake snapshot. Prints the held-out precision, recall, F1 and threshold, and writes the
detector (``tensors.safetensors``, ``detector.json``) and ``report.png`` to ``out``.
The training is ``robot_rl.detectors.train_detector``; the guide is docs/detectors.md."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from robot_rl.hydra_utils import describe


def add_detector_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "detector",
        help="image success detectors for logs without rewards (MT-Opt): train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = p.add_subparsers(dest="detector_command", required=True, metavar="ACTION")
    t = dsub.add_parser(
        "train",
        help="train a success detector for one task from lake images",
        description=__doc__ + "\n\nDefaults (configs/detector/detector.yaml):\n\n" + describe("detector"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "overrides",
        nargs="*",
        help="key=value settings, e.g. task=tabletop/reach_red lake.uri=./lake camera=front steps=300 out=DIR",
    )
    t.add_argument("-v", "--verbose", action="store_true", help="on errors, the traceback")
    t.set_defaults(func=lambda a: run_train_command(a.overrides))
    g = dsub.add_parser(
        "train-goal",
        help="train a goal-reached classifier reached(o, g) from hindsight pairs of lake images",
        description="A goal-reached classifier: the reward of relabeled image goals where no state distance "
        "exists (robot-rl pretrain task.reward_classifier=DIR).\n\nDefaults (configs/goal_reached.yaml):\n\n"
        + describe("goal_reached"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("overrides", nargs="*", help="key=value settings, e.g. lake.uri=./lake camera=front within=2")
    g.add_argument("-v", "--verbose", action="store_true", help="on errors, the traceback")
    g.set_defaults(func=lambda a: run_train_goal_command(a.overrides))


def run_train_command(overrides: list[str]) -> int:
    from robot_rl.config import LakeConfig, from_dict
    from robot_rl.detectors import DetectorConfig, DetectorError, train_detector
    from robot_rl.detectors.report import plot_report
    from robot_rl.hydra_utils import compose

    c: dict[str, Any] = compose("detector", overrides)
    task, out, episodes, labels_file = c.pop("task"), c.pop("out"), c.pop("episodes"), c.pop("labels")
    unlabeled = c.pop("unlabeled")
    lake = from_dict(LakeConfig, c.pop("lake"))
    cfg = from_dict(DetectorConfig, c)
    user_labels = _read_labels(labels_file, DetectorError) if labels_file else None
    episodes = [episodes] if isinstance(episodes, str) else episodes
    unlabeled = [unlabeled] if isinstance(unlabeled, str) else unlabeled

    t0 = time.perf_counter()
    det = train_detector(
        lake.uri, lake.ref, str(task), cfg, user_labels=user_labels, episodes=episodes, unlabeled=unlabeled
    )
    seconds = time.perf_counter() - t0
    out_dir = (
        Path(out) if out else Path("runs/detectors") / f"{str(task).replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    det.save(out_dir)
    assert det.heldout is not None
    png = plot_report(det, det.heldout.images, det.heldout.labels, det.heldout.probs, out_dir / "report.png")

    m, n = det.metrics, det.info["counts"]
    print(f"detector {det.detector_id}  task {det.task}  camera {det.camera}  {det.image_size[0]}x{det.image_size[1]}")
    print(f"  lake {lake.uri} at {lake.ref} (snapshot {det.info['lake']['snapshot_id']})")
    print(
        f"  train: {n['train_episodes']} episodes, {n['train_frames']} frames ({n['train_positives']} positive); "
        f"{cfg.steps} steps in {seconds:.1f}s"
    )
    print(
        f"  held-out: {n['heldout_episodes']} episodes, {n['heldout_frames']} frames "
        f"({n['heldout_positives']} positive)"
    )
    print(
        f"  threshold {det.threshold:.3f}: precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
        f"F1 {m['f1']:.3f}  accuracy {m['accuracy']:.3f}  (tp {m['tp']} fp {m['fp']} tn {m['tn']} fn {m['fn']})"
    )
    for r, st in enumerate(n["self_training"], start=1):
        print(
            f"  self-training round {r}: {st['pool']} unlabeled frames -> {st['positives']} pseudo-positives, "
            f"{st['negatives']} pseudo-negatives"
        )
    print(f"  calibration: ECE {det.calibration['ece']:.3f}")
    print(f"\nsaved: {out_dir}  report: {png}")
    return 0


def run_train_goal_command(overrides: list[str]) -> int:
    from robot_rl.config import LakeConfig, from_dict
    from robot_rl.detectors.goal_reached import GoalReachedConfig, train_goal_reached
    from robot_rl.hydra_utils import compose

    c: dict[str, Any] = compose("goal_reached", overrides)
    out, episodes = c.pop("out"), c.pop("episodes")
    lake = from_dict(LakeConfig, c.pop("lake"))
    cfg = from_dict(GoalReachedConfig, c)
    t0 = time.perf_counter()
    clf = train_goal_reached(lake.uri, lake.ref, cfg, [episodes] if isinstance(episodes, str) else episodes)
    out_dir = Path(out) if out else Path("runs/detectors") / f"goal-reached-{time.strftime('%Y%m%d-%H%M%S')}"
    clf.save(out_dir)
    m, split = clf.metrics, clf.info["split"]
    print(f"goal-reached classifier {clf.classifier_id}  camera {clf.camera}  {clf.image_size[0]}x{clf.image_size[1]}")
    print(
        f"  {len(split['train'])} train / {len(split['heldout'])} held-out episodes; {cfg.steps} steps in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    print(
        f"  held-out pairs ({m['positives']} reached, {m['negatives']} not): threshold {clf.threshold:.3f}  "
        f"precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}; ECE {clf.calibration['ece']:.3f}"
    )
    print(f"\nsaved: {out_dir}")
    return 0


def _read_labels(path: str, error: type[Exception]) -> list[tuple[str, int, bool]]:
    """Hand labels from a JSON file: ``[[episode_id, step, success], ...]``."""
    try:
        rows = json.loads(Path(path).read_text())
        return [(str(e), int(s), bool(ok)) for e, s, ok in rows]
    except (OSError, ValueError, TypeError) as e:
        raise error(f"labels={path}: expected a JSON list of [episode_id, step, true|false] rows ({e})") from None
