"""Learning checks on the MuJoCo tabletop, from states, through the real pipeline (collect -> lake ->
pretrain -> evaluate on held-out reset seeds). These failed before issue 13's fixes (state and goal
normalization, the Gaussian actor head, the Monte-Carlo lower bound, γ matched to the horizon):

- Actionable Models and goal-conditioned IQL reach >= 0.8 of ``tabletop/reach_red`` goals having
  seen hindsight goals only (no reward, no commanded goal), from proprioception + scene state;
- IQL on the task's own sparse reward with its commanded goal state (300 episodes: 200 noisy
  expert, 100 random; 5,000 updates at B=256) reaches >= 0.97 on 100 held-out seeds.

Marked slow (minutes each on 2 cores): ``make test-slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data_lake.sampler import RelabelConfig
from robot_rl.checkpoint import load_policy
from robot_rl.evaluate import EvalConfig, evaluate, policy_act
from robot_rl.hydra_utils import algo_settings
from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain
from tasks.collect import collect_mix

pytestmark = pytest.mark.slow
GAMMA = 0.97
TASK = "tabletop/reach_red"
STEPS = {"actionable_models": 2000, "iql": 5000}  # AM needs fewer: 0.57 for GC-IQL at 2,000
STATES = ObsConfig(cameras=(), use_state=True, scene_state=True, augment_pad=0)


def build(uri: str, runs: list[tuple[str, int, str]]) -> str:
    mix = [(task, n, policy, None) for task, n, policy in runs]
    collect_mix(uri, mix, image_size=32, cameras=("front",), workers=2, progress=False)
    return uri


@pytest.fixture(scope="module")
def hindsight_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """60 noisy reach_red episodes and 60 play episodes: the data the issue tried as a new user."""
    return build(
        str(tmp_path_factory.mktemp("hindsight") / "lake"), [(TASK, 60, "noisy"), ("tabletop/play", 60, "noisy")]
    )


def success(run: Path, episodes: int) -> float:
    policy, _ = load_policy(run / "checkpoints" / "latest")
    cfg = EvalConfig(tasks=(TASK,), episodes=episodes, seed=700_000, num_envs=4, video_episodes=0, progress=False)
    return evaluate(policy_act(policy), policy.spec, cfg).success_rate


@pytest.mark.parametrize("algo", ["actionable_models", "iql"])
def test_reaches_goals_from_hindsight_relabeling_alone(algo: str, hindsight_lake: str, tmp_path: Path) -> None:
    run = pretrain(
        PretrainConfig(
            algo=algo,
            algo_cfg=algo_settings(algo, gamma=GAMMA, mc_lower_bound=True),
            lake=LakeConfig(hindsight_lake, "tag:v1"),
            obs=STATES,
            task=TaskConfig(
                relabel=RelabelConfig(future=0.3, final=0.4, negative=0.3, commanded=0, task=0, gamma=GAMMA)
            ),
            steps=STEPS[algo],
            batch_size=256,
            run_dir=str(tmp_path / algo),
            save_every=STEPS[algo],
            progress=False,
        )
    )
    rate = success(run, 40)
    assert rate >= 0.8, f"{algo} reached {rate:.2f} of {TASK} goals"


def test_iql_learns_reach_red_from_its_own_reward(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    uri = build(str(tmp_path_factory.mktemp("single") / "lake"), [(TASK, 200, "noisy"), (TASK, 100, "random")])
    run = pretrain(
        PretrainConfig(
            algo="iql",
            algo_cfg=algo_settings("iql", gamma=GAMMA),
            lake=LakeConfig(uri, "tag:v1"),
            obs=STATES,
            task=TaskConfig(
                relabel=RelabelConfig(
                    future=0, final=0, negative=0, commanded=1.0, task=0, gamma=GAMMA, success_terminal=True
                )
            ),
            steps=5000,
            batch_size=256,
            run_dir=str(tmp_path / "iql"),
            save_every=5000,
            progress=False,
        )
    )
    rate = success(run, 100)
    assert rate >= 0.97, f"IQL reached {rate:.2f} of {TASK} (d3rlpy 0.99 on the same data)"
