"""Tests for the task registry, the success detectors, goal images and the scripted experts.

The default run checks every task on a few seeds; ``-m slow`` runs the full 20-seed expert
benchmark (the success rates quoted in the task docs).
"""

from __future__ import annotations

import numpy as np
import pytest

import tasks
from sim.base import RobotEnv
from tasks.core import Policy, Task

TABLETOP = [n for n in tasks.names() if n.startswith("tabletop/") and n != "tabletop/play"]
FETCH = [n for n in tasks.names() if n.startswith("fetch/")]
GOAL_TASKS = [n for n in tasks.names() if n != "tabletop/play"]

EXPERT_SEEDS_DEFAULT = (0, 1)
EXPERT_SEEDS_SLOW = tuple(range(20))
MIN_EXPERT_SUCCESS = {name: 0.9 for name in GOAL_TASKS}
MIN_EXPERT_SUCCESS["fetch/slide"] = 0.9
# Tasks whose goal image should match a solved episode's last front frame (< 8/255 mean abs
# error): the goal configuration includes the gripper's resting pose (see tasks.tabletop).
GOAL_IMAGE_TASKS = [
    "tabletop/push_red_to_pad",
    "tabletop/pick_place_red_on_pad",
    "tabletop/move_green_to_goal",
    "tabletop/stack_red_on_blue",
    "tabletop/pick_and_lift_red",
    "tabletop/reach_red",
]


def run_episode(task: Task, env: RobotEnv, seed: int, policy: Policy) -> tuple[list[dict], list[dict]]:
    obs, _ = env.reset(seed=seed)
    observations, infos = [obs], []
    for _ in range(task.max_episode_steps):
        obs, reward, terminated, truncated, info = env.step(policy.act(env))
        assert reward == task.reward(env) == float(info["is_success"])
        observations.append(obs)
        infos.append(info)
        if terminated or truncated:
            break
    assert truncated, "episodes end by truncation at max_episode_steps"
    return observations, infos


def expert_success(name: str, seeds: tuple[int, ...]) -> float:
    task = tasks.get(name)
    env = task.make_env()
    wins = []
    for seed in seeds:
        policy = task.scripted_policy(0.0, np.random.default_rng(seed))
        _, infos = run_episode(task, env, seed, policy)
        wins.append(infos[-1]["is_success"])
    env.close()
    return float(np.mean(wins))


# ------------------------------------------------------------------------------------ registry
def test_registry_lists_every_world() -> None:
    names = tasks.names()
    assert names == sorted(names) and isinstance(tasks.REGISTRY, dict)
    assert len(TABLETOP) >= 8 and "tabletop/play" in names and "pointmaze/umaze" in names
    assert set(FETCH) == {"fetch/reach", "fetch/push", "fetch/pick_and_place", "fetch/slide"}
    for name in names:
        task = tasks.get(name)
        assert task.name == name and task.description and "\n" not in task.description
        assert task.reset_distribution and task.achieved_goal and task.success and task.goal_image


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(KeyError) as err:
        tasks.get("tabletop/fly_to_the_moon")
    message = str(err.value)
    assert "tabletop/fly_to_the_moon" in message
    for name in tasks.names():
        assert name in message


def test_policy_levels() -> None:
    task = tasks.get("tabletop/reach_red")
    env = task.make_env(seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    for level in tasks.NOISE_LEVELS:
        action = tasks.make_policy(task, level, rng).act(env)
        assert action.shape == (4,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
    expert, noisy = task.scripted_policy(0.0, rng), task.scripted_policy(0.3, rng)
    assert not np.allclose(expert.act(env), noisy.act(env))
    with pytest.raises(ValueError, match="unknown policy level"):
        tasks.make_policy(task, "optimal", rng)
    with pytest.raises(ValueError, match="noise"):
        task.scripted_policy(-0.1, rng)
    obs, _ = env.reset()
    with pytest.raises(TypeError, match="pass the env"):
        expert.act(obs)
    env.close()


# ------------------------------------------------------------------------- every task's contract
@pytest.mark.parametrize("name", tasks.names())
def test_task_env_contract(name: str) -> None:
    task = tasks.get(name)
    env = task.make_env(image_size=48, cameras=task.cameras, seed=0)
    obs, info = env.reset()
    assert set(obs["images"]) == set(task.cameras)
    for image in obs["images"].values():
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert obs["state"].dtype == np.float32 and obs["state"].ndim == 1
    np.testing.assert_array_equal(task.goal_state(env), obs["desired_goal"])
    assert task.is_success(env) == info["is_success"]
    policy = task.random_policy(np.random.default_rng(0))
    for _ in range(3):
        obs, reward, _, _, info = env.step(policy.act(env))
        assert obs["achieved_goal"].shape == obs["desired_goal"].shape
        assert reward == task.reward(env) == float(task.is_success(env))
    goal = task.goal_images(env)
    assert set(goal) == set(task.cameras) and all(g.shape == (48, 48, 3) for g in goal.values())
    env.close()


@pytest.mark.parametrize("name", FETCH)
def test_fetch_detector_agrees_with_env(name: str) -> None:
    """The state-based detector matches gymnasium-robotics' own ``info["is_success"]``."""
    task = tasks.get(name)
    env = task.make_env()
    verdicts = []
    for seed, noise, steps in ((0, 0.0, task.max_episode_steps), (1, 0.5, 20)):
        policy = task.scripted_policy(noise, np.random.default_rng(seed))
        env.reset(seed=seed)
        for _ in range(steps):
            _, _, _, _, info = env.step(policy.act(env))
            assert task.is_success(env) == info["is_success"]
            verdicts.append(info["is_success"])
    assert any(verdicts) and not all(verdicts), "the check must see both outcomes"
    env.close()


def test_pointmaze_detector_agrees_with_env() -> None:
    task = tasks.get("pointmaze/umaze")
    env = task.make_env()
    policy = task.scripted_policy(0.0, np.random.default_rng(0))
    env.reset(seed=0)
    verdicts = []
    for _ in range(120):
        _, _, _, _, info = env.step(policy.act(env))
        assert task.is_success(env) == info["is_success"] == env.inner.compute_reward(env.achieved_goal(), env.goal, {})
        verdicts.append(info["is_success"])
    assert any(verdicts) and not all(verdicts)
    env.close()


# ----------------------------------------------------------------------------- experts and goals
@pytest.mark.parametrize("name", GOAL_TASKS)
def test_expert_solves_a_few_seeds(name: str) -> None:
    assert expert_success(name, EXPERT_SEEDS_DEFAULT) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", GOAL_TASKS)
def test_expert_success_rate_20_seeds(name: str) -> None:
    rate = expert_success(name, EXPERT_SEEDS_SLOW)
    print(f"{name}: expert success {rate:.2f} over {len(EXPERT_SEEDS_SLOW)} seeds")
    assert rate >= MIN_EXPERT_SUCCESS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tabletop/push_red_to_pad", "tabletop/pick_place_red_on_pad"])
def test_noise_lowers_success(name: str) -> None:
    task = tasks.get(name)
    env = task.make_env()
    rates = {}
    for noise in (0.0, 0.3):
        wins = []
        for seed in range(10):
            _, infos = run_episode(task, env, seed, task.scripted_policy(noise, np.random.default_rng(seed)))
            wins.append(infos[-1]["is_success"])
        rates[noise] = np.mean(wins)
    assert rates[0.3] < rates[0.0]
    env.close()


@pytest.mark.parametrize("name", GOAL_IMAGE_TASKS)
def test_goal_image_matches_solved_last_frame(name: str) -> None:
    """The goal image commanded at reset vs the last front frame of a solved expert episode."""
    task = tasks.get(name)
    env = task.make_env()
    env.reset(seed=3)
    goal = task.goal_images(env)["front"]
    observations, infos = run_episode(task, env, 3, task.scripted_policy(0.0, np.random.default_rng(3)))
    assert infos[-1]["is_success"]
    last = observations[-1]["images"]["front"]
    error = np.abs(goal.astype(np.int16) - last).mean() / 255
    first_error = np.abs(goal.astype(np.int16) - observations[0]["images"]["front"]).mean() / 255
    assert error < 8 / 255, f"goal image differs from the solved frame by {error * 255:.1f}/255"
    if name != "tabletop/reach_red":
        assert first_error > error, "the goal image must be closer to the solved frame than to the start"
    env.close()


@pytest.mark.parametrize("name", ["tabletop/push_blue_to_pad", "fetch/push", "pointmaze/umaze", "tabletop/play"])
def test_same_seed_same_expert_episode(name: str) -> None:
    task = tasks.get(name)
    episodes = []
    for _ in range(2):
        env = task.make_env(cameras=task.cameras[:1])
        obs, _ = env.reset(seed=4)
        policy = task.scripted_policy(0.3, np.random.default_rng(9))
        chunks = [obs["images"][task.cameras[0]].tobytes()]
        for _ in range(min(task.max_episode_steps, 40)):
            action = policy.act(env)
            obs, *_ = env.step(action)
            chunks += [action.tobytes(), obs["state"].tobytes(), obs["images"][task.cameras[0]].tobytes()]
        episodes.append(b"".join(chunks))
        env.close()
    assert episodes[0] == episodes[1]


def test_play_chains_subtasks_without_reward() -> None:
    task = tasks.get("tabletop/play")
    env = task.make_env(seed=0)
    obs, _ = env.reset()
    start = obs["achieved_goal"].reshape(3, 3)
    policy = task.scripted_policy(0.0, np.random.default_rng(0))
    kinds = set()
    for _ in range(task.max_episode_steps):
        obs, reward, _, _, info = env.step(policy.act(env))
        kinds.add(policy.expert.subtask.kind)
        assert reward == 0.0 and not info["is_success"]
    moved = np.linalg.norm(obs["achieved_goal"].reshape(3, 3) - start, axis=1)
    assert len(kinds) >= 3, f"play should mix sub-tasks, saw {kinds}"
    assert (moved > 0.05).sum() >= 2, f"play should move several blocks, moved {moved}"
    env.close()
