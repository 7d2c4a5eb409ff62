"""A learned policy acting in the simulator: env observations -> the networks' device tensors -> actions.

:class:`LearnedPolicy` is the rollout loop's :class:`sim.rollout.Policy` for networks (evaluation and
finetuning's online episodes run it through :func:`sim.rollout.rollout`). It shows the networks
exactly what they were trained on (their ``ObservationSpec``): the spec's cameras, the state vector
(proprioception, plus the scene vector when the spec observes it), and the conditioning of the
training batches:

    goal   every env's goal images (``env.render_goal()``, the goal configuration from the same
           cameras) and goal state (``env.scene_goal()``, the lake's ``achieved_goal`` layout),
           rendered once per episode at ``reset``
    task   the task's index in the vocabulary the networks were trained with (``task_id``)

The networks are reached through an :data:`ActFn` (tensors in, actions out); :func:`policy_act`
makes one from an algorithm or a loaded :class:`~robot_rl.algos.TrainedPolicy` with an RNG of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from data_lake.batch import Observation
from robot_rl.algos import Algorithm, TrainedPolicy
from robot_rl.nets import ObservationSpec, SpecError
from sim.base import RobotEnv

# (observation, goal, task_ids) on the device -> actions (B, A) in [-1, 1]
ActFn = Callable[[Observation, Observation | None, torch.Tensor | None], torch.Tensor]


def policy_act(source: Algorithm | TrainedPolicy, deterministic: bool = True, seed: int = 0) -> ActFn:
    """``source``'s policy as an ``ActFn`` with an RNG of its own: evaluating never consumes the training
    RNG (so an evaluation does not change the run around it), and sampling policies (CEM draws
    candidates even when deterministic) act the same way at every evaluation."""
    policy = source.policy
    generator = torch.Generator(source.device).manual_seed(seed)

    def act(obs: Observation, goal: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
        return policy(obs, goal, task_ids, deterministic, generator)

    # a policy with a history (the Decision Transformer's context window) learns of new episodes and rewards
    for hook in ("reset_context", "observe_rewards"):
        if hasattr(policy, hook):
            setattr(act, hook, getattr(policy, hook))
    return act


def observation_state(obs: dict[str, Any], spec: ObservationSpec) -> np.ndarray:
    """The state vector the networks were trained on, from an env observation: proprioception
    (``obs["state"]``) and, when the spec observes it, the scene vector (``obs["scene"]``)."""
    parts = []
    if spec.proprio_dim:
        parts.append(obs["state"])
    if spec.scene_state_dim:
        if "scene" not in obs:
            raise SpecError("the agent observes the scene vector (scene_state_dim > 0) but the env gives no 'scene'")
        parts.append(obs["scene"])
    state = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    if state.shape[0] != spec.state_dim:
        raise SpecError(
            f"the agent's state has {spec.state_dim} dims ({spec.proprio_dim} proprioception + {spec.scene_state_dim} "
            f"scene); the env gives {state.shape[0]}"
        )
    return state


def to_device_observation(
    frames: list[dict[str, np.ndarray]], states: list[np.ndarray] | None, spec_cams: Sequence[str], device: torch.device
) -> Observation:
    """B camera dicts (uint8 (H, W, 3)) and states -> an Observation of float images (B, 3, H, W) on ``device``."""
    images = {}
    for cam in spec_cams:
        x = torch.from_numpy(np.stack([f[cam] for f in frames])).to(device)  # (B, H, W, 3) uint8
        images[cam] = x.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)
    state = None if states is None else torch.from_numpy(np.stack(states).astype(np.float32)).to(device)  # (B, S)
    return Observation(images, state)


class LearnedPolicy:
    """Networks (``act``) acting in B envs: a :class:`sim.rollout.Policy`.

    Args:
        act: the networks, ``(observation, goal, task_ids) -> actions`` on ``device``.
        spec: what the networks observe.
        device: where they run.
        task_id: the task's index in the training vocabulary (task-conditioned networks only).
    """

    def __init__(
        self, act: ActFn, spec: ObservationSpec, device: str | torch.device, task_id: int | None = None
    ) -> None:
        if spec.num_tasks and task_id is None:
            raise SpecError(f"the networks are conditioned on {spec.num_tasks} tasks; give the task's task_id")
        self.act_fn, self.spec, self.device, self.task_id = act, spec, torch.device(device), task_id
        self.goal: Observation | None = None  # (B, ...) of the current episodes
        self.task_ids: torch.Tensor | None = None  # (B,)

    def reset(self, envs: Sequence[RobotEnv]) -> None:
        """The goal (images and state of every env's goal configuration) and task ids of new episodes."""
        spec = self.spec
        self.goal = None
        if spec.has_goal:
            frames = [env.render_goal() for env in envs]
            states = [env.scene_goal() for env in envs] if spec.goal_state_dim else None
            if states is not None and states[0].shape[0] != spec.goal_state_dim:
                raise SpecError(
                    f"the agent's goal state has {spec.goal_state_dim} dims; the env's scene goal has "
                    f"{states[0].shape[0]}"
                )
            self.goal = to_device_observation(frames, states, spec.goal_cameras, self.device)
        self.task_ids = None
        if spec.num_tasks and self.task_id is not None:  # __init__: task-conditioned networks have a task_id
            self.task_ids = torch.full((len(envs),), self.task_id, device=self.device)  # (B,)
        reset_context = getattr(self.act_fn, "reset_context", None)
        if reset_context is not None:  # a policy with a history: new episodes start with empty windows
            reset_context(len(envs))

    def observe_rewards(self, rewards: np.ndarray) -> None:
        """The rewards (B,) of the step just taken, for policies that condition on them (``policy_act``'s hooks)."""
        observe = getattr(self.act_fn, "observe_rewards", None)
        if observe is not None:
            observe(rewards, self.task_ids)

    def act(self, observations: Sequence[dict[str, Any]], envs: Sequence[RobotEnv]) -> np.ndarray:
        spec = self.spec
        states = [observation_state(o, spec) for o in observations] if spec.state_dim else None
        obs = to_device_observation([o["images"] for o in observations], states, spec.cameras, self.device)
        return self.act_fn(obs, self.goal, self.task_ids).float().cpu().numpy()  # (B, A)
