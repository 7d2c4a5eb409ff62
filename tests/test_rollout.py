"""The one environment loop (``sim.rollout.rollout``): scripted and learned policies act through the same
``Policy`` interface, one batched call per step; per-env seeds, stop on success, the step limit and
per-env recording."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import tasks
from robot_rl.algos import BC, BCConfig
from robot_rl.nets import EncoderConfig, ObservationSpec
from robot_rl.policy import LearnedPolicy, policy_act
from sim.base import Observation, RobotEnv
from sim.rollout import Policy, RandomPolicy, rollout
from tasks.core import ScriptedPolicy

TASK = "tabletop/reach_red"


class Counting:
    """A Policy that counts the calls and the batch sizes of another."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.resets, self.calls = policy, 0, []

    def reset(self, envs: Sequence[RobotEnv]) -> None:
        self.resets += 1
        self.policy.reset(envs)

    def act(self, observations: Sequence[Observation], envs: Sequence[RobotEnv]) -> np.ndarray:
        self.calls.append(len(envs))
        actions = self.policy.act(observations, envs)
        assert actions.shape == (len(envs), envs[0].action_space.shape[0]) and actions.dtype == np.float32
        return actions


@pytest.fixture(scope="module")
def envs() -> list[RobotEnv]:
    task = tasks.get(TASK)
    made = [task.make_env(32, ("front",)) for _ in range(2)]
    yield made
    for env in made:
        env.close()


def test_scripted_experts_in_two_envs_stop_at_success(envs: list[RobotEnv]) -> None:
    task = tasks.get(TASK)
    policy = Counting(ScriptedPolicy([task.scripted_policy(0.0, np.random.default_rng(s)) for s in (0, 1)]))
    trajs = rollout(envs, policy, [3, 4], task.max_episode_steps)
    assert [t.seed for t in trajs] == [3, 4]
    assert all(t.success and t.ended and 0 < t.steps < task.max_episode_steps for t in trajs)
    assert policy.resets == 1 and policy.calls == [2] * max(t.steps for t in trajs), "one call per step for both"
    assert all(t.rewards[-1] == 1.0 and t.episode_return == sum(t.rewards) for t in trajs)
    assert all(t.observations == [] and t.sim_states == [] for t in trajs), "nothing recorded unless asked"
    # without stop_on_success the episode runs to the step limit (and success is the last step's)
    (long,) = rollout(
        envs[:1], ScriptedPolicy([task.scripted_policy(0.0, np.random.default_rng(0))]), [3], 60, stop_on_success=False
    )
    assert long.steps == 60 and not long.ended and long.success


def test_a_learned_policy_acts_through_the_same_loop(envs: list[RobotEnv]) -> None:
    spec = ObservationSpec(
        action_dim=4,
        cameras=("front",),
        image_sizes=((32, 32),),
        state_dim=8,
        has_goal=True,
        goal_cameras=("front",),
        goal_image_sizes=((32, 32),),
        goal_state_dim=12,
    )
    algo = BC(BCConfig(hidden=(16,), encoder=EncoderConfig(feature_dim=8, conv_channels=4)), spec)
    learned = Counting(LearnedPolicy(policy_act(algo), spec, "cpu"))
    trajs = rollout(envs, learned, [3, 4], 5, stop_on_success=False, record=[True, False])
    assert [t.steps for t in trajs] == [5, 5] and learned.calls == [2] * 5
    assert learned.policy.goal is not None and learned.policy.goal.images["front"].shape == (2, 3, 32, 32)
    rec, plain = trajs
    assert len(rec.observations) == len(rec.scene) == len(rec.sim_states) == 6 and rec.observations[0] is rec.first
    assert rec.goal_images.keys() == {"front"} and rec.goal_state is not None and rec.goal_state.shape == (12,)
    assert plain.observations == [] and plain.goal_images == {}
    # the same seeds reset the envs alike whoever acts; a scripted run starts from the same observation
    task = tasks.get(TASK)
    (scripted,) = rollout(envs[:1], ScriptedPolicy([task.scripted_policy(0.0, np.random.default_rng(0))]), [3], 1)
    np.testing.assert_array_equal(scripted.first["images"]["front"], rec.first["images"]["front"])
    # acting is a function of the seeds (deterministic actions): a second run repeats every action
    again = rollout(envs, LearnedPolicy(policy_act(algo), spec, "cpu"), [3, 4], 5, stop_on_success=False)
    for a, b in zip(again, trajs, strict=True):
        np.testing.assert_array_equal(np.stack(a.actions), np.stack(b.actions))


def test_random_policy_and_argument_checks(envs: list[RobotEnv]) -> None:
    trajs = rollout(envs, RandomPolicy(np.random.default_rng(0)), [1, 2], 3, stop_on_success=False)
    assert all(t.steps == 3 and np.abs(np.stack(t.actions)).max() <= 1 for t in trajs)
    with pytest.raises(ValueError, match="one seed per env"):
        rollout(envs, RandomPolicy(np.random.default_rng(0)), [1], 3)
    with pytest.raises(ValueError, match="record has 1 flags for 2 envs"):
        rollout(envs, RandomPolicy(np.random.default_rng(0)), [1, 2], 3, record=[True])
