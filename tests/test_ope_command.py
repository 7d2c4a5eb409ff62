"""`robot-rl ope` end to end on a real lake (noisy tabletop episodes collected here, with their logged
action_logp), with checkpoints pretrained here for a few steps: every estimator with finite values and
intervals, a ranking of two checkpoints and the metrics against a truth file, the one-line errors of
bad input (no logged μ, a policy of another action space, an unknown estimator), and pretraining's
``ope_every`` (ope/* scalars, training unchanged)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_lake.sampler import RelabelConfig
from robot_rl import checkpoint
from robot_rl.algos.bc import BC, BCConfig
from robot_rl.cli import main
from robot_rl.config import LakeConfig, ObsConfig
from robot_rl.ope.dataset import load_logged, load_trajectories, trajectories_from
from robot_rl.ope.estimators import importance_sampling
from robot_rl.ope.run import NAMES
from robot_rl.ope.target import TargetPolicy
from robot_rl.pretrain import PretrainConfig, TaskConfig, pretrain
from tasks.collect import CollectConfig, collect

torch.set_num_threads(1)

TASK = "tabletop/reach_red"
CHEAP = [  # small models so the whole file stays fast
    "fqe.steps=10",
    "fqe.batch_size=16",
    "fqe.hidden=[16]",
    "dualdice.steps=50",
    "lstd.num_features=32",
    "n_boot=50",
    "progress=false",
]


def lake(tmp: Path, policy: str, episodes: int) -> str:
    uri = str(tmp / "lake")
    collect(
        CollectConfig(
            task=TASK,
            episodes=episodes,
            lake=uri,
            policy=policy,
            cameras=(),
            image_size=16,
            max_steps=20,
            progress=False,
        )
    )
    return uri


@pytest.fixture(scope="module")
def noisy_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    return lake(tmp_path_factory.mktemp("noisy"), "noisy", 6)


@pytest.fixture(scope="module")
def expert_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    return lake(tmp_path_factory.mktemp("expert"), "expert", 3)  # the noiseless expert logs no action_logp


def bc_config(uri: str, run: Path, steps: int, seed: int = 0, **kw: object) -> PretrainConfig:
    return PretrainConfig(
        algo="bc",
        algo_cfg={"hidden": [16, 16]},
        lake=LakeConfig(uri, "main"),
        obs=ObsConfig(cameras=(), use_state=True, scene_state=True, augment_pad=0),
        task=TaskConfig(conditioning="none", relabel=RelabelConfig(future=0, final=0, negative=0, task=1.0)),
        steps=steps,
        batch_size=16,
        seed=seed,
        run_dir=str(run),
        log_every=2,
        prefetch=1,
        progress=False,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def runs(noisy_lake: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("runs")
    a = pretrain(bc_config(noisy_lake, tmp / "a", steps=2))
    b = pretrain(bc_config(noisy_lake, tmp / "b", steps=6, seed=1))
    return str(a), str(b)


def ope(capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["ope", *overrides])
    out, err = capsys.readouterr()
    return rc, out, err


def test_two_checkpoints_every_estimator_ranking_and_truth(
    noisy_lake: str, runs: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = runs
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({a: 0.4, b: 0.6}))
    out = tmp_path / "ope"
    estimators = "[dm,is,pdis,wis,cwpdis,dr,wdr,dualdice,lstdq,fqe]"  # dm is fqe: reported once, as fqe
    rc, stdout, _ = ope(
        capsys, f"ckpt=[{a},{b}]", f"lake.uri={noisy_lake}", f"task={TASK}", f"estimators={estimators}",
        f"out={out}", f"truth={truth}", *CHEAP,
    )  # fmt: skip
    assert rc == 0
    assert "N(0, 0.2²)" in stdout and "ranking (highest estimate first)" in stdout and "against the truth" in stdout
    report = json.loads((out / "ope.json").read_text())
    assert report["sigma"] == 0.2 and report["behavior"] == "logged"
    assert report["estimators"] == list(NAMES)
    per = report["tasks"][TASK]
    for label in (a, b):
        result = per["policies"][label]
        assert result["trajectories"] == 6 and 0 < result["ess"] <= 6
        assert set(result["estimates"]) == set(NAMES)
        for name, e in result["estimates"].items():
            low, high = e["ci"]
            assert math.isfinite(e["value"]) and math.isfinite(low) and math.isfinite(high), (label, name, e)
            assert low <= high
    for name in NAMES:
        order = per["ranking"][name]
        assert sorted(order) == sorted([a, b])
        values = [per["policies"][p]["estimates"][name]["value"] for p in order]
        assert values[0] >= values[1]
        m = per["metrics"][name]
        assert m["spearman"] in (-1.0, 1.0, None)  # None: both estimates tied (e.g. WIS on one trajectory)
        assert 0 <= m["regret_at_1"] <= 1 and m["relative_absolute_error"] >= 0
    # the command's IS is the library's IS of the same stochastic target on the same trajectories
    traj = load_trajectories(
        noisy_lake, "main", target=TargetPolicy.load(a, 0.2), gamma=0.99, task=TASK, success_terminal=True
    )
    assert per["policies"][a]["estimates"]["is"]["value"] == pytest.approx(importance_sampling(traj), rel=1e-9)
    assert (out / "ope.png").stat().st_size > 1000


def test_unknown_estimator_lists_the_known_ones(
    noisy_lake: str, runs: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = ope(capsys, f"ckpt={runs[0]}", f"lake.uri={noisy_lake}", "estimators=[is,magic]", *CHEAP)
    assert rc == 2 and err.count("\n") == 1
    assert "unknown estimator(s) ['magic']; known: fqe, is, pdis, wis, cwpdis, dr, wdr, dualdice, lstdq" in err


def test_lake_without_logged_probabilities(
    expert_lake: str, runs: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [f"ckpt={runs[0]}", f"lake.uri={expert_lake}", "estimators=[is,wis]", f"out={tmp_path}", *CHEAP]
    rc, _, err = ope(capsys, *args)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "have no logged action probability" in err and "behavior='model'" in err
    rc, stdout, _ = ope(capsys, *args, "behavior=model", "behavior_model.steps=10")
    assert rc == 0 and "a fitted behavior model" in stdout
    result = json.loads((tmp_path / "ope.json").read_text())["tasks"][TASK]["policies"][runs[0]]
    for e in result["estimates"].values():
        assert math.isfinite(e["value"]) and any("fitted behavior model" in w for w in e["warnings"])


def test_policy_of_another_action_space_is_refused(
    noisy_lake: str, runs: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trained, meta = checkpoint.load_policy(checkpoint.resolve_checkpoint(runs[0]))
    spec = dataclasses.replace(trained.spec, action_dim=2)  # the data's actions are 4-dimensional
    other = BC(BCConfig(hidden=(16,)), spec, torch.device("cpu"))
    checkpoint.save_policy(tmp_path / "policy", other, meta)
    rc, _, err = ope(capsys, f"ckpt={tmp_path / 'policy'}", f"lake.uri={noisy_lake}", "estimators=[is]", *CHEAP)
    assert rc == 2 and err.count("\n") == 1
    assert "acts with 2-dimensional actions but the logged data" in err and "4-dimensional" in err


def test_ope_every_logs_scalars_and_leaves_training_unchanged(
    noisy_lake: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_ope = bc_config(
        noisy_lake,
        tmp_path / "ope",
        steps=4,
        ope_every=2,
        ope_estimators=("is", "wis", "fqe"),
        ope_fqe_steps=3,
    )
    pretrain(with_ope)
    assert "in-sample" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "ope" / "scalars.jsonl").read_text().splitlines()]
    ope_rows = [r for r in rows if "ope/is" in r]
    assert [r["step"] for r in ope_rows] == [2, 4]
    for r in ope_rows:
        assert all(math.isfinite(r[k]) for k in ("ope/is", "ope/wis", "ope/fqe", "ope/ess"))
        assert r["ope/in_sample"] == 1.0 and r["ope/wis"] >= 0  # a weighted average of returns
    plain = pretrain(dataclasses.replace(with_ope, run_dir=str(tmp_path / "plain"), ope_every=0))
    got = load_file(str(tmp_path / "ope" / "checkpoints" / "latest" / "tensors.safetensors"))
    want = load_file(str(plain / "checkpoints" / "latest" / "tensors.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_goal_sources_each_on_their_own(
    noisy_lake: str, runs: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """goals=[final,future]: a goal-conditioned policy valued per hindsight goal source, FQE relabeled alike."""
    relabel = RelabelConfig(future=0.7, final=0.3, negative=0, task=0, reward_rule="distance")
    cfg = bc_config(noisy_lake, tmp_path / "gc", steps=3)
    gc = str(pretrain(dataclasses.replace(cfg, task=TaskConfig(conditioning="goal", relabel=relabel))))
    out = tmp_path / "ope"
    rc, stdout, _ = ope(
        capsys, f"ckpt={gc}", f"lake.uri={noisy_lake}", "goals=[final,future]", "estimators=[fqe,is,wdr]",
        f"out={out}", *CHEAP,
    )  # fmt: skip
    assert rc == 0 and "hindsight sources final, future" in stdout and "goals=final: 6 logged trajectories" in stdout
    report = json.loads((out / "ope.json").read_text())
    assert report["goals"] == ["final", "future"] and report["goal_reward"] == "distance"
    assert set(report["tasks"]) == {"goals=final", "goals=future"}
    for unit in report["tasks"].values():
        estimates = unit["policies"][gc]["estimates"]
        assert set(estimates) == {"fqe", "is", "wdr"}
        assert all(math.isfinite(e["value"]) for e in estimates.values())
    # the command's IS on final goals is the library's, on the episodes' own last observations
    data = load_logged(noisy_lake, "main", goal_source="final", success_terminal=True)
    traj = trajectories_from(data, TargetPolicy.load(gc, 0.2), 0.99)
    assert traj.n == 6 and (traj.rewards.sum(1) == 1).all()  # each reaches its final step, then stops
    got = report["tasks"]["goals=final"]["policies"][gc]["estimates"]["is"]["value"]
    assert got == pytest.approx(importance_sampling(traj), rel=1e-9)
    # a policy that reads no goal cannot be valued on goals
    rc, _, err = ope(capsys, f"ckpt={runs[0]}", f"lake.uri={noisy_lake}", "goals=[final]", *CHEAP)
    assert rc == 2 and err.count("\n") == 1 and "evaluates goal-conditioned policies" in err and runs[0] in err
