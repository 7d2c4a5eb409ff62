"""Learning diagnostics: calibration metrics and plots, success by start-to-goal distance, and the
calibration pass of `robot-rl pretrain` on held-out episodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_lake import Lake
from data_lake.batch import FUTURE, NEGATIVE
from data_lake.synthetic import synthetic_episode
from robot_rl.diagnostics import calibration_metrics, plot_calibration, plot_success_by_distance, success_by_distance
from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, held_out_episodes, pretrain


def test_calibration_metrics_by_source() -> None:
    q = np.array([0.9, 0.5, 0.2, 0.0])
    mc = np.array([0.81, 0.9, 0.0, 0.0])
    src = np.array([FUTURE, FUTURE, NEGATIVE, NEGATIVE])
    m = calibration_metrics({"q": q, "mc": mc, "source": src})
    assert m["gap"] == pytest.approx(np.mean(q - mc))
    assert m["below"] == pytest.approx(0.25)  # only 0.5 < 0.9 - 0.05
    assert m["future/gap"] == pytest.approx(((0.9 - 0.81) + (0.5 - 0.9)) / 2)
    assert m["negative/q_mean"] == pytest.approx(0.1) and m["negative/mc_mean"] == 0
    assert np.isnan(m["negative/corr"]), "G is constant on negatives: no correlation"


def test_plots_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cal = {"q": rng.random(200), "mc": rng.random(200), "source": rng.integers(0, 3, 200)}
    assert plot_calibration(cal, tmp_path / "c.png", "t").stat().st_size > 5000
    rows = success_by_distance([{"start_distance": 0.05, "success": True}], [0.0, 0.1])
    assert plot_success_by_distance({"a": rows}, tmp_path / "s.png", "t").stat().st_size > 5000
    # regression: 6/6 and 0/11 put a Wilson end a hair inside the rate (matplotlib refused the error bars)
    eps = [{"start_distance": 0.05, "success": True}] * 6 + [{"start_distance": 0.15, "success": False}] * 11
    rows = success_by_distance(eps, [0.0, 0.1, 0.2])
    assert [r["success_rate"] for r in rows] == [1.0, 0.0]
    assert plot_success_by_distance({"a": rows}, tmp_path / "edges.png", "t").stat().st_size > 5000


def test_success_by_distance_bins_with_wilson_intervals() -> None:
    eps = [{"start_distance": d, "success": s} for d, s in [(0.01, True), (0.04, True), (0.06, False), (0.3, True)]]
    rows = success_by_distance(eps, [0.0, 0.05, 0.1, 0.2])
    assert [(r["lo"], r["episodes"], r["success_rate"]) for r in rows] == [(0.0, 2, 1.0), (0.05, 1, 0.0)]
    assert rows[0]["ci95"][0] < 1.0 == rows[0]["ci95"][1]
    assert all(r["hi"] <= 0.2 for r in rows), "episodes beyond the last edge are not counted"


def test_pretrain_calibrates_on_held_out_episodes(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    lake = Lake.create(uri)
    lake.append([synthetic_episode(s, length=10, size=16) for s in range(6)])
    view = lake.checkout("main")
    train, held = held_out_episodes(view, 2)
    assert len(held) == 2 and train is not None and not set(held) & set(train)
    assert len(train) + len(held) == 6
    with pytest.raises(ValueError, match="would hold out all"):
        held_out_episodes(view, 6)
    run = tmp_path / "run"
    cfg = PretrainConfig(
        algo="iql",
        algo_cfg={"encoder": {"feature_dim": 8, "conv_channels": 4, "conv_layers": 2}, "hidden": [16, 16]},
        lake=LakeConfig(uri, "main"),
        obs=ObsConfig(cameras=("front",), augment_pad=0),
        task=TaskConfig(),
        steps=4,
        batch_size=8,
        run_dir=str(run),
        save_every=2,
        progress=False,
        calibration_episodes=2,
    )
    pretrain(cfg)
    rows = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    cal = [r for r in rows if "calibration/q_mean" in r]
    assert [r["step"] for r in cal] == [2, 4]
    summary = json.loads((run / "calibration.json").read_text())
    assert summary["step"] == 4 and np.isfinite(summary["calibration/q_mean"])
    assert (run / "calibration.png").stat().st_size > 5000
