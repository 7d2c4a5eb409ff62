"""Success detectors trained from lake images: a separable synthetic lake is learned (held-out F1, separated
probabilities), the split is by episode, save/load round-trips, the errors name what to do, the command
writes a checkpoint and a report, and a real tabletop lake trains."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_lake import Episode, Lake
from robot_rl.cli import main
from robot_rl.detectors import DetectorConfig, DetectorError, SuccessDetector, train_detector
from robot_rl.detectors.report import plot_report
from robot_rl.detectors.success import choose_threshold
from tasks.collect import CollectConfig, collect

torch.set_num_threads(1)

TASK, OTHER, NEVER = "synthetic/stack", "synthetic/other", "synthetic/never"
T = 10
FAST = DetectorConfig(steps=120, batch_size=32, lr=2e-3, augment_pad=2, progress=False)


def _frames(rng: np.random.Generator, n: int, square: tuple[int, int, int] | None) -> np.ndarray:
    """(n, 16, 16, 3) dark noise, with a bright 5x5 square of colour ``square`` somewhere near the middle."""
    img = rng.integers(0, 90, (n, 16, 16, 3)).astype(np.uint8)
    if square is not None:
        for i in range(n):
            r, c = rng.integers(3, 8, 2)
            img[i, r : r + 5, c : c + 5] = square
    return img


def _episode(rng: np.random.Generator, task: str, success: bool, square: tuple[int, int, int] | None) -> Episode:
    images = _frames(rng, T, None)
    if square is not None:
        images[-3:] = _frames(rng, 3, square)  # the scene looks finished in the last frames
    return Episode.make(
        images={"front": images},
        state=rng.normal(size=(T, 3)).astype(np.float32),
        action=rng.uniform(-1, 1, (T, 2)).astype(np.float32),
        reward=np.r_[np.zeros(T - 1), float(success)].astype(np.float32),
        task=task,
        success=success,
    )


WHITE, BLUE = (255, 255, 255), (40, 60, 250)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """TASK: 10 successes (a white square at the end), 6 failures; OTHER: 4 successes (a blue square);
    NEVER: 3 failures only."""
    rng = np.random.default_rng(0)
    eps = [_episode(rng, TASK, True, WHITE) for _ in range(10)]
    eps += [_episode(rng, TASK, False, None) for _ in range(6)]
    eps += [_episode(rng, OTHER, True, BLUE) for _ in range(4)]
    eps += [_episode(rng, NEVER, False, None) for _ in range(3)]
    uri = str(tmp_path_factory.mktemp("detector") / "lake")
    Lake.create(uri).append(eps)
    return uri


@pytest.fixture(scope="module")
def trained(lake: str) -> SuccessDetector:
    return train_detector(lake, "main", TASK, FAST)


def test_separable_lake_is_learned(trained: SuccessDetector) -> None:
    det = trained
    assert det.task == TASK and det.camera == "front" and det.image_size == (16, 16)
    assert det.metrics["f1"] >= 0.95, det.metrics
    assert det.metrics["precision"] >= 0.9 and det.metrics["recall"] >= 0.9
    assert 0.0 < det.threshold < 1.0
    rng = np.random.default_rng(123)  # fresh frames, never seen
    p_yes = det.predict_proba(_frames(rng, 20, WHITE))
    p_no = det.predict_proba(_frames(rng, 20, None))
    p_blue = det.predict_proba(_frames(rng, 20, BLUE))  # another task's success is not this one's
    assert p_yes.dtype == np.float64 and p_yes.shape == (20,)
    assert p_yes.min() > det.threshold > max(p_no.max(), p_blue.max()), (p_yes.min(), p_no.max(), p_blue.max())
    cal = det.calibration
    assert (
        len(cal["bin_edges"]) == 11
        and sum(cal["counts"]) == det.metrics["tp"] + det.metrics["fp"] + det.metrics["tn"] + det.metrics["fn"]
    )


def test_threshold_rule_falls_back_to_balanced_with_few_heldout_positives(trained: SuccessDetector) -> None:
    assert trained.threshold == 0.5 and trained.metrics["threshold_rule"] == "balanced"  # the default rule
    probs = np.array([0.01, 0.2, 0.3, 0.9, 0.95, 0.99])
    labels = np.array([False, False, True, True, True, True])
    max_f1 = dataclasses.replace(FAST, threshold_rule="max_f1", min_threshold_positives=4)
    assert choose_threshold(probs, labels, max_f1) == (0.25, "max_f1")  # halfway between 0.3 and 0.2
    few = dataclasses.replace(max_f1, min_threshold_positives=5)  # 4 held-out positives are too few
    assert choose_threshold(probs, labels, few) == (0.5, "balanced")
    assert choose_threshold(probs, labels, FAST) == (0.5, "balanced")
    with pytest.raises(DetectorError, match="threshold_rule"):
        dataclasses.replace(FAST, threshold_rule="best")


def test_other_steps_takes_more_frames_of_other_tasks_successes(lake: str, trained: SuccessDetector) -> None:
    wide = train_detector(lake, "main", TASK, dataclasses.replace(FAST, steps=1, other_steps=T))
    frames = {
        k: d.info["counts"]["train_frames"] + d.info["counts"]["heldout_frames"]
        for k, d in [("3", trained), ("T", wide)]
    }
    assert frames["T"] - frames["3"] == 4 * (T - FAST.positive_steps)  # 4 OTHER successes: every frame, not the last 3
    assert wide.info["counts"]["train_positives"] == trained.info["counts"]["train_positives"]
    with pytest.raises(DetectorError, match="other_steps"):
        dataclasses.replace(FAST, other_steps=0)


def test_split_is_by_episode(lake: str, trained: SuccessDetector) -> None:
    split, counts = trained.split, trained.info["counts"]
    train, held = set(split["train"]), set(split["heldout"])
    assert train and held and not train & held
    view = Lake.open(lake).checkout()
    labeled = {r.episode_id for r in view.episodes() if r.task == TASK or (r.task == OTHER and r.success)}
    assert train | held == labeled  # every episode of the task, and other tasks' successes as negatives
    assert trained.heldout is not None and set(trained.heldout.episode_ids) <= held
    assert counts["train_episodes"] == len(train) and counts["heldout_episodes"] == len(held)
    assert counts["heldout_frames"] == len(trained.heldout.labels) and trained.heldout.labels.any()
    # 10 successes: 2 held out (20%), and 20% of the 10 episodes without success frames
    assert len(held & {r.episode_id for r in view.episodes(TASK) if r.success}) == 2
    assert trained.info["lake"]["snapshot_id"] == view.snapshot_id
    # the same seed gives the same split; another seed another one
    other = train_detector(lake, "main", TASK, dataclasses.replace(FAST, steps=1, seed=5))
    again = train_detector(lake, "main", TASK, dataclasses.replace(FAST, steps=1))
    assert again.split == trained.split and other.split != trained.split


def test_save_load_round_trip(trained: SuccessDetector, tmp_path: Path) -> None:
    out = trained.save(tmp_path / "det")
    meta = json.loads((out / "detector.json").read_text())
    assert meta["detector_id"] == trained.detector_id and trained.detector_id.startswith("det-")
    assert len(trained.detector_id) == 16 and meta["split"] == trained.split and meta["threshold"] == trained.threshold
    loaded = SuccessDetector.load(out)
    images = _frames(np.random.default_rng(7), 12, WHITE)
    np.testing.assert_array_equal(loaded.predict_proba(images), trained.predict_proba(images))
    assert loaded.detector_id == trained.detector_id and loaded.metrics == meta["metrics"]
    assert loaded.heldout is None
    with pytest.raises(DetectorError, match="needs detector.json and tensors.safetensors"):
        SuccessDetector.load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "detector.json").write_text("{not json")
    (tmp_path / "bad" / "tensors.safetensors").write_bytes(b"junk")
    with pytest.raises(DetectorError, match="corrupt"):
        SuccessDetector.load(tmp_path / "bad")
    meta["config"]["lr"] = 0.5  # the same shapes, another config: not the detector the id names
    (out / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(DetectorError, match="files were changed"):
        SuccessDetector.load(out)
    meta["config"]["hidden"] = [64, 64]  # a config that does not describe these tensors
    (out / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(DetectorError, match="does not fit"):
        SuccessDetector.load(out)


def test_a_checkpoint_from_before_the_newer_config_fields_loads(trained: SuccessDetector, tmp_path: Path) -> None:
    """A detector saved before ``other_steps``, ``threshold_rule`` and ``min_threshold_positives`` existed
    (its config lacks them, its id hashes that config) loads, with its own threshold."""
    import hashlib

    out = trained.save(tmp_path / "old")
    meta = json.loads((out / "detector.json").read_text())
    for key in ("other_steps", "threshold_rule", "min_threshold_positives"):
        del meta["config"][key]
    h = hashlib.sha256((out / "tensors.safetensors").read_bytes())
    h.update(json.dumps(meta["config"], sort_keys=True).encode())
    meta["detector_id"], meta["threshold"] = "det-" + h.hexdigest()[:12], 0.37
    (out / "detector.json").write_text(json.dumps(meta))
    loaded = SuccessDetector.load(out)
    assert loaded.detector_id == meta["detector_id"] and loaded.threshold == 0.37
    assert loaded.cfg.threshold_rule == "balanced" and loaded.cfg.other_steps is None


def test_errors_name_what_to_do(lake: str, trained: SuccessDetector, tmp_path: Path) -> None:
    one = dataclasses.replace(FAST, steps=1)
    with pytest.raises(DetectorError, match=r"lake .* at main: no successful episode of task 'synthetic/never'.*user"):
        train_detector(lake, "main", NEVER, one)
    with pytest.raises(DetectorError, match=r"holds no episodes of task 'synthetic/nope'; its tasks are"):
        train_detector(lake, "main", "synthetic/nope", one)
    with pytest.raises(DetectorError, match=r"cannot read lake .*nowhere at main"):
        train_detector(str(tmp_path / "nowhere"), "main", TASK, one)
    with pytest.raises(DetectorError, match=r"no camera 'wrist'; its cameras are \['front'\]"):
        train_detector(lake, "main", TASK, dataclasses.replace(one, camera="wrist"))
    with pytest.raises(DetectorError, match="trained on 16x16 images of camera 'front', got 8x8"):
        trained.predict_proba(np.zeros((2, 8, 8, 3), np.uint8))
    view = Lake.open(lake).checkout()
    wins = [r.episode_id for r in view.episodes(TASK) if r.success]
    fails = [r.episode_id for r in view.episodes(TASK) if not r.success]
    with pytest.raises(DetectorError, match="held-out split would be empty: 1 episode with success frames, at least 2"):
        train_detector(lake, "main", TASK, one, episodes=[wins[0], *fails])
    with pytest.raises(DetectorError, match="holdout_fraction must be in"):
        DetectorConfig(holdout_fraction=0.0)
    # hand labels make a task without recorded successes trainable (here: the last frame of each NEVER episode)
    never = view.episodes(NEVER)
    det = train_detector(lake, "main", NEVER, one, user_labels=[(r.episode_id, r.length - 1, True) for r in never])
    assert det.info["counts"]["user_labels"] == 3
    assert det.info["counts"]["train_positives"] + det.info["counts"]["heldout_positives"] == 3
    with pytest.raises(DetectorError, match="not in this snapshot"):
        train_detector(lake, "main", TASK, one, user_labels=[("f" * 64, 0, True)])


def test_report_png(trained: SuccessDetector, tmp_path: Path) -> None:
    h = trained.heldout
    assert h is not None
    png = plot_report(trained, h.images, h.labels, h.probs, tmp_path / "r" / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(DetectorError, match="one label and probability per image"):
        plot_report(trained, h.images, h.labels[:-1], h.probs, tmp_path / "x.png")


def test_cli_trains_and_errors(lake: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "det"
    args = ["detector", "train", f"task={TASK}", f"lake.uri={lake}", "steps=30", "batch_size=16", "progress=false"]
    assert main([*args, f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "F1" in printed and "threshold" in printed and str(out) in printed
    for name in ("detector.json", "tensors.safetensors", "report.png"):
        assert (out / name).stat().st_size > 0, name
    assert SuccessDetector.load(out).task == TASK
    assert main([*args[:2], "task=synthetic/nope", f"lake.uri={lake}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "synthetic/nope" in err[0]
    assert main(["detector", "train", f"lake.uri={lake}"]) == 2
    assert "missing required setting 'task'" in capsys.readouterr().err


def test_real_tabletop_lake_trains(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    small = {"image_size": 16, "cameras": ("front",), "progress": False, "max_steps": 12}
    collect(CollectConfig(task="tabletop/reach_red", episodes=3, lake=uri, policy="expert", **small))
    collect(CollectConfig(task="tabletop/reach_red", episodes=2, lake=uri, policy="random", seed=1, **small))
    det = train_detector(uri, "main", "tabletop/reach_red", dataclasses.replace(FAST, steps=20))
    out = det.save(tmp_path / "det")
    assert (out / "tensors.safetensors").exists() and json.loads((out / "detector.json").read_text())[
        "camera"
    ] == "front"
    assert det.info["counts"]["train_frames"] > 0 and np.isfinite(det.metrics["final_loss"])


def test_labels_from_a_detector_carry_provenance_and_guide_annotation(
    lake: str, trained: SuccessDetector, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lake label --detector`: versioned labels (source = the detector id) with confidences and provenance,
    beside the other sources; `lake annotate --suggest`: the least certain frames first, as a CSV to fill in."""
    import csv
    import shutil

    uri = str(tmp_path / "lake")
    shutil.copytree(lake, uri)
    ckpt = trained.save(tmp_path / "det")
    assert main(["lake", "label", "--lake", uri, "--task", TASK, "--detector", str(ckpt)]) == 0
    assert trained.detector_id in capsys.readouterr().out
    view = Lake.open(uri).checkout()
    (entry,) = [d for d in view.label_sets() if d["source"] == trained.detector_id]
    assert entry["task"] == TASK and entry["confidence"]
    prov = entry["provenance"]
    assert prov["detector_id"] == trained.detector_id and prov["threshold"] == trained.threshold
    assert prov["checkpoint"] == str(ckpt) and prov["camera"] == "front"
    key = f"{TASK}@{trained.detector_id}"
    for name in view.segment_names():
        seg = view.read_segment(name)
        p = trained.predict_proba(seg.steps["images/front"])
        np.testing.assert_array_equal(seg.labels[key], p >= trained.threshold)
        np.testing.assert_allclose(seg.label_confidence[key], np.maximum(p, 1 - p), rtol=1e-6)
    # the frames to label by hand: lowest margin first, written as a CSV with a blank success column
    out = tmp_path / "suggest.csv"
    args = ["lake", "annotate", "--lake", uri, "--task", TASK, "--suggest", "5", "--detector", str(ckpt)]
    assert main([*args, "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    margins = [float(r["margin"]) for r in rows]
    assert len(rows) == 5 and margins == sorted(margins) and all(r["success"] == "" for r in rows)
    every = np.concatenate(
        [np.abs(trained.predict_proba(view.read_segment(n).steps["images/front"]) - trained.threshold)
         for n in view.segment_names()]
    )  # fmt: skip
    assert margins[-1] <= np.sort(every)[4] + 1e-4  # none of the frames left out is less certain
    rows[0]["success"], rows[1]["success"] = "true", "false"  # a human fills in two of them
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["lake", "annotate", "--lake", uri, "--task", TASK, str(out)]) == 0
    assert "2 steps (1 success)" in capsys.readouterr().out
    # a detector of another image size, or of another task, is refused in one line
    small = Lake.create(tmp_path / "other")
    rng = np.random.default_rng(5)
    ep = _episode(rng, TASK, True, WHITE)
    small.append([dataclasses.replace(ep, steps={**ep.steps, "images/front": ep.steps["images/front"][:, :8, :8]})])
    assert main(["lake", "label", "--lake", str(tmp_path / "other"), "--task", TASK, "--detector", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "trained on 16x16 'front' images" in err and "8x8" in err and err.count("\n") == 1
    assert main(["lake", "label", "--lake", uri, "--task", OTHER, "--detector", str(ckpt)]) == 2
    assert "calls 'synthetic/stack'" in capsys.readouterr().err


# ------------------------------------------------------------------ ensembles, self-training, smoothing
def test_an_ensemble_averages_its_members_and_round_trips(lake: str, tmp_path: Path) -> None:
    from robot_rl.detectors.success import DetectorEnsemble

    det = train_detector(lake, "main", TASK, dataclasses.replace(FAST, steps=40, ensemble=3))
    assert isinstance(det.net, DetectorEnsemble) and len(det.net.members) == 3
    images = _frames(np.random.default_rng(3), 8, WHITE)
    x = torch.as_tensor(images)
    with torch.no_grad():
        members = torch.stack([torch.sigmoid(m(x)) for m in det.net.members]).double().numpy()  # (3, 8)
    assert not np.allclose(members[0], members[1])  # different seeds: different members
    np.testing.assert_allclose(det.predict_proba(images), members.mean(0), rtol=1e-5, atol=1e-6)
    loaded = SuccessDetector.load(det.save(tmp_path / "ens"))
    np.testing.assert_array_equal(loaded.predict_proba(images), det.predict_proba(images))
    assert loaded.detector_id == det.detector_id
    with pytest.raises(DetectorError, match="ensemble"):
        dataclasses.replace(FAST, ensemble=0)


def test_self_training_pseudo_labels_only_unlabeled_frames(lake: str) -> None:
    """Half of the task's successes are given as unlabeled: their outcomes are not read, their frames join the
    pool with the unlabeled middle frames of the training episodes; the square frames become pseudo-positives."""
    view = Lake.open(lake).checkout()
    wins = [r.episode_id for r in view.episodes(TASK) if r.success]
    fails = [r.episode_id for r in view.episodes(TASK) if not r.success]
    others = [r.episode_id for r in view.episodes(OTHER)]
    cfg = dataclasses.replace(FAST, self_training_rounds=2, pseudo_positive=0.8, pseudo_negative=0.2)
    det = train_detector(lake, "main", TASK, cfg, episodes=wins[:5] + fails + others, unlabeled=wins[5:])
    counts, train = det.info["counts"], set(det.split["train"])
    assert not set(wins[5:]) & (train | set(det.split["heldout"]))  # unlabeled: neither trained as labeled nor held out
    # pool: every frame of the 5 unlabeled episodes; T - 6 middle frames of each of the task's training episodes
    # (3 early, 3 last labeled), T - 3 of each other-task success (its last 3 frames are negatives)
    expected = 5 * T + sum(T - 6 if e in wins or e in fails else T - 3 for e in train)
    assert [r["pool"] for r in counts["self_training"]] == [expected, expected]
    for r in counts["self_training"]:
        # the square shows in the last 3 frames of each unlabeled success, nowhere else in the pool
        assert 12 <= r["positives"] <= 15 and r["negatives"] >= 0.9 * (expected - 15), r
    rng = np.random.default_rng(9)
    assert det.predict_proba(_frames(rng, 10, WHITE)).min() > 0.5 > det.predict_proba(_frames(rng, 10, BLUE)).max()
    with pytest.raises(DetectorError, match="either labeled or unlabeled"):
        train_detector(lake, "main", TASK, cfg, episodes=wins + fails, unlabeled=wins[:1])
    with pytest.raises(DetectorError, match="unlabeled=.*not in this snapshot"):
        train_detector(lake, "main", TASK, cfg, unlabeled=["f" * 64])
    # with no episode list, the pool also takes every episode without a labeled frame (NEVER's failures)
    one = dataclasses.replace(cfg, steps=1, self_training_rounds=1)
    det = train_detector(lake, "main", TASK, one)
    outcome = {r.episode_id: (r.task, r.success) for r in view.episodes()}
    pool = 3 * T + sum(T - 6 if outcome[e][0] == TASK else T - 3 for e in det.split["train"])
    assert det.info["counts"]["self_training"][0]["pool"] == pool
    with pytest.raises(DetectorError, match="pseudo-label thresholds"):
        dataclasses.replace(FAST, pseudo_positive=0.4)


def test_median_window_smooths_within_each_episode(trained: SuccessDetector) -> None:
    from robot_rl.detectors.success import median_filter

    np.testing.assert_array_equal(median_filter(np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0]), 3), [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(median_filter(np.array([0.2, 0.9]), 1), [0.2, 0.9])
    rng = np.random.default_rng(4)
    parts = [_frames(rng, 4, None), _frames(rng, 1, WHITE), _frames(rng, 1, None), _frames(rng, 2, WHITE)]
    images = np.concatenate(parts)  # (8, 16, 16, 3): the square in frames 4, 6 and 7
    p = trained.predict_proba(images)
    np.testing.assert_array_equal(trained.predict_episodes(images), p)  # median_window 1: frame by frame
    smooth = SuccessDetector(
        trained.net, dataclasses.replace(trained.cfg, median_window=3), task=TASK, camera="front",
        image_size=(16, 16), threshold=0.5, metrics={}, calibration={}, info={},
    )  # fmt: skip
    one = smooth.predict_episodes(images)  # one episode: the lone square frame 4 is outvoted by its neighbours
    assert one[4] < 0.5 < p[4]
    two = smooth.predict_episodes(images, [5, 8])  # two episodes: frame 4 ends the first, its window is (3, 4, 4)
    np.testing.assert_allclose(two[:5], median_filter(p[:5], 3))
    np.testing.assert_allclose(two[5:], median_filter(p[5:], 3))
    assert two[4] > 0.5
    with pytest.raises(DetectorError, match="episode_ends must end"):
        smooth.predict_episodes(images, [5, 7])
    with pytest.raises(DetectorError, match="median_window"):
        dataclasses.replace(FAST, median_window=2)


def test_labels_are_the_smoothed_calls_and_record_the_window(
    lake: str, trained: SuccessDetector, tmp_path: Path
) -> None:
    import shutil

    from robot_rl.detectors.label import label_with_detector
    from robot_rl.detectors.success import median_filter

    uri = str(tmp_path / "lake")
    shutil.copytree(lake, uri)
    smooth = SuccessDetector(
        trained.net, dataclasses.replace(trained.cfg, median_window=5), task=TASK, camera="front",
        image_size=(16, 16), threshold=0.5, metrics={}, calibration={}, info={},
    )  # fmt: skip
    label_with_detector(Lake.open(uri), smooth, source="smooth")
    view = Lake.open(uri).checkout()
    (entry,) = [d for d in view.label_sets() if d["source"] == "smooth"]
    assert entry["provenance"]["median_window"] == 5
    for name in view.segment_names():
        seg = view.read_segment(name)
        images = seg.steps["images/front"]
        want = smooth.predict_episodes(images, seg.episode_ends) >= 0.5
        np.testing.assert_array_equal(seg.labels[f"{TASK}@smooth"], want)
        # no window reaches across an episode boundary: each episode's labels are its own frames' median
        start = 0
        for end in seg.episode_ends:
            p = trained.predict_proba(images[start:end])
            np.testing.assert_array_equal(want[start:end], median_filter(p, 5) >= 0.5)
            start = int(end)
