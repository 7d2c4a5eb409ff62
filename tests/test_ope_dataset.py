"""Lake episodes -> Trajectories: rewards and masks, the targets' log π (random, a trained policy that acts in
the simulator exactly as it is scored), the logged or fitted log μ, FQE values, and the loader's errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import tasks
from data_lake import Lake
from robot_rl import checkpoint
from robot_rl.algos import ALGOS
from robot_rl.algos.bc import BCConfig
from robot_rl.nets import EncoderConfig, ObservationSpec
from robot_rl.ope.behavior import BehaviorConfig, fit_behavior
from robot_rl.ope.dataset import load_logged, load_trajectories, trajectories_from
from robot_rl.ope.target import RandomTarget, TargetPolicy
from sim.rollout import rollout
from tasks.collect import CollectConfig, collect, to_episode
from tasks.core import censored_gaussian_logp

TASK = "tabletop/reach_red"
SMALL = {"image_size": 16, "cameras": ("front",), "progress": False}
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3 noisy and 1 random reach_red episodes of 20 actions, and one play episode."""
    uri = str(tmp_path_factory.mktemp("ope") / "lake")
    collect(CollectConfig(task=TASK, episodes=3, lake=uri, policy="noisy", max_steps=20, **SMALL))
    collect(CollectConfig(task=TASK, episodes=1, lake=uri, policy="random", seed=1, max_steps=20, **SMALL))
    collect(CollectConfig(task="tabletop/play", episodes=1, lake=uri, policy="noisy", seed=2, max_steps=20, **SMALL))
    return uri


def test_random_target_rewards_mask_and_logged_behavior(lake: str) -> None:
    tr = load_trajectories(lake, "main", task=TASK, target="random", gamma=0.9)
    view = Lake.open(lake).checkout()
    eps = [view.read_episode(r.episode_id) for r in view.episodes(TASK)]
    assert tr.n == 4 and tr.horizon == 20 and (tr.lengths == 20).all() and tr.behavior_source == "logged"
    clipped = np.stack([(np.abs(ep.steps["action"][:-1]) >= 1).any(axis=1) for ep in eps])  # (4, 20)
    assert clipped.any(), "the noisy expert clips some actions"
    # uniform actions put no mass at ±1: a clipped (point-mass) component has probability 0
    np.testing.assert_array_equal(tr.target_logp, np.where(clipped, -np.inf, -4 * math.log(2)))
    for i, ep in enumerate(eps):  # step t's reward and log μ; the last step is no transition
        np.testing.assert_array_equal(tr.rewards[i], ep.steps["reward"][:-1])
        np.testing.assert_allclose(tr.behavior_logp[i], ep.steps["action_logp"][:-1], rtol=1e-6)
    assert tr.rewards.sum() > 0, "the noisy expert reaches the block"
    # success_terminal: each trajectory ends at its first rewarded transition
    cut = load_trajectories(lake, "main", task=TASK, target="random", gamma=0.9, success_terminal=True)
    for i in range(4):
        r = tr.rewards[i]
        want = int(np.argmax(r > 0)) + 1 if (r > 0).any() else 20
        assert cut.lengths[i] == want and cut.rewards[i, want - 1] == r[want - 1]
    one = load_trajectories(lake, "main", task=TASK, target="random", gamma=0.9, max_episodes=2)
    assert one.n == 2 and np.array_equal(one.rewards, tr.rewards[:2])


def test_loader_errors_name_what_to_do(lake: str, tmp_path: Path) -> None:
    expert = str(tmp_path / "expert")
    collect(CollectConfig(task=TASK, episodes=2, lake=expert, policy="expert", max_steps=5, **SMALL))
    with pytest.raises(ValueError, match=r"lake .*expert at main .* 2 of 2 .*'action_logp'.*behavior='model'"):
        load_trajectories(expert, "main", target="random", gamma=0.9)
    with pytest.raises(ValueError, match=r"3-dimensional actions .* 4-dimensional"):
        load_trajectories(lake, "main", task=TASK, target=RandomTarget(3), gamma=0.9)
    with pytest.raises(ValueError, match=r"holds no episodes of task 'tabletop/push_red_to_pad'"):
        load_trajectories(lake, "main", task="tabletop/push_red_to_pad", target="random", gamma=0.9)
    with pytest.raises(ValueError, match="behavior must be"):
        load_trajectories(lake, "main", task=TASK, target="random", gamma=0.9, behavior="nope")


def _policy(tmp_path: Path, action_dim: int = 4) -> Path:
    """A small randomly initialized goal- and task-conditioned BC policy from images and states, saved."""
    spec = ObservationSpec(
        action_dim=action_dim,
        cameras=("front",),
        image_sizes=((16, 16),),
        state_dim=20,
        scene_state_dim=12,
        has_goal=True,
        goal_state_dim=12,
        num_tasks=2,
    )
    cfg = BCConfig(encoder=EncoderConfig(conv_layers=2, feature_dim=8), hidden=(32,), seed=3)
    algo = ALGOS["bc"](cfg, spec, "cpu")
    return checkpoint.save_policy(tmp_path / "policy", algo, {"tasks": ["tabletop/play", TASK]})


def test_trained_target_acts_in_the_simulator_as_it_is_scored(tmp_path: Path) -> None:
    target = TargetPolicy.load(str(_policy(tmp_path)), sigma=0.2)
    assert target.task_id(TASK) == 1
    env = tasks.get(TASK).make_env(16, ("front",))
    (traj,) = rollout([env], target.rollout_policy(TASK, seed=7), [123], 12, stop_on_success=False, record=True)
    uri = str(tmp_path / "lake")
    Lake.create(uri).append([to_episode(traj, env, TASK, "test", {"env_seed": 123})])
    env.close()
    data = load_logged(uri)
    logp, means = target.score_logged(data)
    generator = torch.Generator().manual_seed(7)  # the rollout's draws, one (1, A) per step
    eps = torch.cat([torch.randn((1, 4), generator=generator) for _ in range(12)]).numpy()
    np.testing.assert_allclose(data.actions, np.clip(means + 0.2 * eps, -1, 1), atol=1e-5)
    np.testing.assert_allclose(logp, censored_gaussian_logp(data.actions, means, 0.2), rtol=1e-9)
    rows, obs, goals, task_ids = next(data.device_batches(target.spec, target.task_id, "cpu", 5))
    direct = target.log_prob(obs, goals, task_ids, torch.from_numpy(data.actions[rows]))
    np.testing.assert_allclose(direct.numpy(), logp[rows], rtol=1e-9)
    # the episode has no logged log μ: a behavior model, or an error; a 3-dim policy on 4-dim data: an error
    with pytest.raises(ValueError, match="behavior='model'"):
        trajectories_from(data, target, 0.9)
    small = TargetPolicy.load(str(_policy(tmp_path / "three", action_dim=3)), sigma=0.2)
    with pytest.raises(ValueError, match=r"acts with 3-dimensional actions but the logged data .* 4-dimensional"):
        trajectories_from(data, small, 0.9)


def test_fqe_values_use_the_targets_own_actions(lake: str, tmp_path: Path) -> None:
    from robot_rl.ope.fqe import FQEConfig, FQEModel, build_networks

    target = TargetPolicy.load(str(_policy(tmp_path)), sigma=0.2)
    data = load_logged(lake, "main", task=TASK)
    spec = ObservationSpec(action_dim=4, state_dim=20, scene_state_dim=12, has_goal=True, goal_state_dim=12)
    cfg = FQEConfig(hidden=(16,), gamma=0.9, n_action_samples=4)
    fqe = FQEModel(cfg, spec, 0.2, build_networks(cfg, spec))
    tr = trajectories_from(data, target, 0.9, fqe=fqe)
    assert tr.q_hat is not None and tr.v_hat is not None and np.isfinite(tr.v_hat).all()
    _, means = target.score_logged(data)
    rows, obs, goals, _ = next(data.device_batches(spec, lambda t: None, "cpu", 20))  # episode 0
    q, v = fqe.q_and_v(obs, goals, None, torch.from_numpy(data.actions[rows]), torch.from_numpy(means[rows]))
    np.testing.assert_allclose(tr.q_hat[0], q.numpy(), rtol=1e-6)
    np.testing.assert_allclose(tr.v_hat[0], v.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"noise σ=0.3, the target policy has σ=0.2"):
        trajectories_from(data, target, 0.9, fqe=FQEModel(cfg, spec, 0.3, build_networks(cfg, spec)))


def test_behavior_model_recovers_the_logged_probabilities(tmp_path: Path) -> None:
    """Fitted on 30 noisy-expert episodes (σ = 0.3), μ̂ scores the logged actions close to the logged log μ:
    the mean per step within 0.3 nats, the mean absolute error per step far below the uniform density's."""
    uri = str(tmp_path / "lake")
    collect(CollectConfig(task=TASK, episodes=30, lake=uri, policy="noisy", max_steps=40, **SMALL))
    data = load_logged(uri)
    model = fit_behavior(uri, "main", BehaviorConfig(steps=500, batch_size=128, seed=0))
    fitted, logged = model.score_logged(data), data.logged_logp
    uniform = np.abs(-4 * math.log(2) - logged).mean()
    assert abs(fitted.mean() - logged.mean()) < 0.3, (fitted.mean(), logged.mean())
    assert np.abs(fitted - logged).mean() < 0.5 * uniform, (np.abs(fitted - logged).mean(), uniform)
    assert any("behavior/val_log_prob" in row for row in model.history)
    tr = trajectories_from(data, "random", 0.9, behavior=model)
    assert tr.behavior_source == "model"
    np.testing.assert_allclose(tr.behavior_logp[tr.mask], fitted)
    # deterministic for a seed
    quick = BehaviorConfig(steps=20, eval_every=10, seed=4)
    a, b = fit_behavior(uri, "main", quick), fit_behavior(uri, "main", quick)
    np.testing.assert_array_equal(a.score_logged(data), b.score_logged(data))


def test_hindsight_goals_final_and_future(lake: str) -> None:
    """goal_source=final/future: each episode's own observation as the goal, rewards by the sampler's rule."""
    view = Lake.open(lake).checkout()
    records = view.episodes()
    eps = [view.read_episode(r.episode_id) for r in records]
    final = load_logged(lake, "main", goal_source="final", goal_epsilon=0.02)
    assert final.goal_source == "final" and final.num_episodes == 5 and all(final.has_goal["state"])
    for i, ep in enumerate(eps):
        ag, last = ep.steps["achieved_goal"], len(ep.steps["action"]) - 1
        np.testing.assert_array_equal(final.goals["images/front"][i], ep.steps["images/front"][last])
        np.testing.assert_array_equal(final.goals["state"][i], ag[last])
        want = (np.linalg.norm(ag[1:] - ag[last], axis=-1) < 0.02).astype(float)  # r_t = 1[‖ag_{t+1} − g‖ < ε]
        np.testing.assert_array_equal(final.rewards[final.rows_of(i)], want)
    assert final.rewards[final.starts + final.lengths - 1].all(), "the last transition reaches its own final step"

    future = load_logged(lake, "main", goal_source="future", goal_reward="index", success_terminal=True, goal_seed=3)
    again = load_logged(lake, "main", goal_source="future", goal_reward="index", success_terminal=True, goal_seed=3)
    np.testing.assert_array_equal(future.lengths, again.lengths)  # the goal steps are seeded
    other = load_logged(lake, "main", goal_source="future", goal_reward="index", goal_seed=4)
    assert not np.array_equal(future.lengths, other.lengths), "another seed draws other goal steps"
    for i, ep in enumerate(eps):
        j = int(future.lengths[i])  # index rule: the trajectory is the j transitions up to the goal's step
        assert 1 <= j <= 20
        np.testing.assert_array_equal(future.rewards[future.rows_of(i)], np.arange(1, j + 1) == j)
        np.testing.assert_array_equal(future.goals["images/front"][i], ep.steps["images/front"][j])
        np.testing.assert_array_equal(future.steps["state"][future.rows_of(i)], ep.steps["state"][:j])

    with pytest.raises(ValueError, match="unknown goal source 'past'; known: commanded, final, future"):
        load_logged(lake, "main", goal_source="past")
    with pytest.raises(ValueError, match="reward_task=.* and goal_source='final' both define the reward"):
        load_logged(lake, "main", goal_source="final", reward_task=TASK)
