"""The environment loop: B envs stepped together by one :class:`Policy`, one call per step.

Every rollout in robot-rl runs here: scripted collection into the lake (``tasks.collect``), evaluation
(``robot_rl.evaluate``) and finetuning's online episodes (``robot_rl.finetune``). The loop::

    reset env j with seeds[j]                      (B envs; record: the goal images and goal state)
    policy.reset(envs)                             (per-episode state: goal tensors, expert plans)
    repeat max_steps times:
        actions = policy.act(observations, envs)   (B, A): one call for the whole batch
        step every env that has not ended with its row of ``actions``
        env j ends when it terminates, or (stop_on_success) when ``info["is_success"]``
        stop when every env has ended

Ended envs stay in the batch (their actions are ignored), so a batched policy sees a fixed batch size
and consumes its random numbers the same way whichever envs ended. ``truncated`` does not end an
episode: ``max_steps`` does (it may differ from the env's ``max_episode_steps``).

``record`` (per env, or one flag for all) keeps every observation with the privileged extras the lake
stores (the world's scene vector and the simulator state at every observation, the goal images and
the goal's scene vector); otherwise a :class:`Trajectory` keeps only the first and last observation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import mujoco
import numpy as np

from sim.base import Observation, RobotEnv


class Policy(Protocol):
    """What acts in a rollout: B env observations (and the envs, for policies that read the
    simulator, as the scripted experts do) -> B actions in [-1, 1].

    Implementations: ``tasks.core.ScriptedPolicy`` (scripted experts, noisy or random),
    :class:`RandomPolicy`, ``robot_rl.policy.LearnedPolicy`` (networks on a device).
    """

    def reset(self, envs: Sequence[RobotEnv]) -> None:
        """New episodes began in ``envs`` (just reset): set per-episode state (goal tensors, ...)."""
        ...

    def act(self, observations: Sequence[Observation], envs: Sequence[RobotEnv]) -> np.ndarray:
        """Actions (B, A) for the current observations of the B envs."""
        ...

    # optional: ``observe_rewards(rewards (B,))`` after each step, for policies that condition on the
    # rewards as they come (the Decision Transformer's return-to-go); the loop calls it when present


class RandomPolicy:
    """Uniform random actions in [-1, 1], one ``(B, A)`` draw per step from ``rng``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def reset(self, envs: Sequence[RobotEnv]) -> None:
        pass

    def act(self, observations: Sequence[Observation], envs: Sequence[RobotEnv]) -> np.ndarray:
        shape = (len(envs), envs[0].action_space.shape[0])
        return self.rng.uniform(-1, 1, shape).astype(np.float32)  # (B, A)


@dataclasses.dataclass
class Trajectory:
    """One env's episode as the loop ran it (``T`` actions, ``T + 1`` observations)."""

    seed: int
    first: Observation  # the observation after reset
    last: Observation  # the observation after the last action
    actions: list[np.ndarray] = dataclasses.field(default_factory=list)  # T × (A,)
    rewards: list[float] = dataclasses.field(default_factory=list)  # T
    success: bool = False  # info["is_success"] after the last action (reset's info when T = 0)
    ended: bool = False  # terminated, or succeeded with stop_on_success, before max_steps
    # recorded (``record``), else empty
    observations: list[Observation] = dataclasses.field(default_factory=list)  # T + 1
    scene: list[np.ndarray] = dataclasses.field(default_factory=list)  # T + 1 × env.scene_state()
    sim_states: list[np.ndarray] = dataclasses.field(default_factory=list)  # T + 1 × simulator state
    goal_images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # camera -> (H, W, 3)
    goal_state: np.ndarray | None = None  # env.scene_goal(), float64

    @property
    def steps(self) -> int:
        return len(self.actions)

    @property
    def episode_return(self) -> float:
        return float(sum(self.rewards))


def sim_state(env: RobotEnv) -> np.ndarray:
    """The full integration state of the simulator (``mjSTATE_INTEGRATION``), float64."""
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    out = np.empty(mujoco.mj_stateSize(env.model, spec), np.float64)
    mujoco.mj_getState(env.model, env.data, out, spec)
    return out


def rollout(
    envs: Sequence[RobotEnv],
    policy: Policy,
    seeds: Sequence[int],
    max_steps: int,
    *,
    stop_on_success: bool = True,
    record: bool | Sequence[bool] = False,
) -> list[Trajectory]:
    """One episode in each of ``envs`` (env j reset with ``seeds[j]``), acted by ``policy``."""
    if len(seeds) != len(envs) or not envs:
        raise ValueError(
            f"rollout needs one seed per env and at least one env; got {len(seeds)} seeds, {len(envs)} envs"
        )
    keep = [record] * len(envs) if isinstance(record, bool) else list(record)
    if len(keep) != len(envs):
        raise ValueError(f"record has {len(keep)} flags for {len(envs)} envs")
    trajectories = [_start(env, int(seed), k) for env, seed, k in zip(envs, seeds, keep, strict=True)]
    policy.reset(envs)
    for _ in range(max_steps):
        actions = policy.act([t.last for t in trajectories], envs)  # (B, A)
        if actions.shape[0] != len(envs):
            raise ValueError(f"the policy returned {actions.shape[0]} actions for {len(envs)} envs")
        rewards = np.zeros(len(envs), np.float32)  # (B,) 0 for envs that had ended
        for j, (env, traj, action, k) in enumerate(zip(envs, trajectories, actions, keep, strict=True)):
            if not traj.ended:
                _step(env, traj, action, stop_on_success, k)
                rewards[j] = traj.rewards[-1]
        observe = getattr(policy, "observe_rewards", None)  # optional: policies that condition on rewards
        if observe is not None:
            observe(rewards)
        if all(t.ended for t in trajectories):
            break
    return trajectories


def _start(env: RobotEnv, seed: int, record: bool) -> Trajectory:
    obs, info = env.reset(seed=seed)
    traj = Trajectory(seed, first=obs, last=obs, success=bool(info["is_success"]))
    if record:
        traj.goal_images = env.render_goal()
        traj.goal_state = env.scene_goal()
        _record(env, traj, obs)
    return traj


def _step(env: RobotEnv, traj: Trajectory, action: np.ndarray, stop_on_success: bool, record: bool) -> None:
    obs, reward, terminated, _truncated, info = env.step(action)
    traj.actions.append(action)
    traj.rewards.append(float(reward))
    traj.last, traj.success = obs, bool(info["is_success"])
    traj.ended = bool(terminated or (stop_on_success and traj.success))
    if record:
        _record(env, traj, obs)


def _record(env: RobotEnv, traj: Trajectory, obs: dict[str, Any]) -> None:
    traj.observations.append(obs)
    traj.scene.append(env.scene_state())
    traj.sim_states.append(sim_state(env))
