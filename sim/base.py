"""The one environment surface every robot-rl world speaks (Gymnasium API, dict observations).

Observation (all worlds)::

    {
        "images":        {camera_name: uint8 (H, W, 3)},   # one entry per requested camera
        "state":         float32 (S,),                     # proprioception only
        "achieved_goal": float32 (G,),                     # what the task measures (see the task)
        "desired_goal":  float32 (G,),                     # the commanded goal, same layout
        "scene":         float32 (Z,),                     # the world's configuration (privileged)
    }

``scene`` is :meth:`RobotEnv.scene_state`: the same layout for every task of a world (tabletop:
gripper then the three block centres), what the lake stores as ``achieved_goal``. Learners that
observe objects "from states" (``obs.scene_state``) read it; a real robot would need a perception
system to provide it.

``step`` returns ``(obs, reward, terminated, truncated, info)`` with the sparse reward
``1.0 if info["is_success"] else 0.0``, ``terminated = False`` (tasks are continuing; the
scripted experts hold the solved state) and ``truncated`` after ``max_episode_steps`` steps.

Subclasses implement the world: ``_reset_world``, ``_apply_action``, ``proprio``,
``achieved_goal``, ``desired_goal``, ``_success`` and ``_pose_goal`` (move the simulator into
the goal configuration for :meth:`RobotEnv.render_goal`). The base class owns the camera renderer,
the episode clock, seeding and the state save/restore used by goal rendering.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from sim.render import CameraRenderer, CameraSpec

Observation = dict[str, Any]


@contextmanager
def preserved_state(model: mujoco.MjModel, data: mujoco.MjData) -> Iterator[None]:
    """Run the block, then put ``data`` back exactly as it was (every field, bit for bit).

    ``mj_copyData`` copies the whole of ``mjData``: qpos, qvel, act, ctrl, mocap poses, time,
    warm-start accelerations, contacts and all derived quantities, so physics and observations
    continue as if the block had never run.
    """
    saved = mujoco.MjData(model)
    mujoco.mj_copyData(saved, model, data)
    try:
        yield
    finally:
        mujoco.mj_copyData(data, model, saved)


class RobotEnv(gym.Env[Observation, np.ndarray], abc.ABC):
    """Base class: image + proprio + goal observations, sparse success reward, goal rendering.

    Args:
        model, data: the MuJoCo model and data that are simulated and rendered.
        cameras: observation camera names, in order, each mapped to how to render it.
        image_size: images are ``image_size x image_size`` pixels.
        action_dim, state_dim, goal_dim: sizes of the action, ``state`` and goal vectors.
        max_episode_steps: ``truncated`` becomes True after this many steps.
        seed: seed used by the first ``reset()`` that is called without one.
        hidden_site_groups: site groups never drawn (goal markers would leak the goal).
        scene_dim: size of :meth:`scene_state` (default ``goal_dim``, as the default ``scene_state``).
    """

    # gymnasium declares ``metadata`` an instance variable; it is per class (RUF012 wants the ClassVar)
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}  # type: ignore[misc]
    action_space: gym.spaces.Box  # (action_dim,) in [-1, 1]: its shape is never None
    render_images: bool = True
    """False: observations carry no images (``images == {}``): state-only agents skip the renderer,
    which costs more than the physics step in most worlds. Goal images and ``render`` still work."""

    def __init__(
        self,
        *,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        cameras: Mapping[str, CameraSpec],
        image_size: int,
        action_dim: int,
        state_dim: int,
        goal_dim: int,
        max_episode_steps: int,
        seed: int | None = None,
        hidden_site_groups: Sequence[int] = (),
        scene_dim: int | None = None,
    ) -> None:
        if max_episode_steps <= 0:
            raise ValueError(f"max_episode_steps must be > 0, got {max_episode_steps}")
        self.model, self.data = model, data
        self.render_mode = "rgb_array"
        self.max_episode_steps = max_episode_steps
        self.elapsed_steps = 0
        self.episode_id = 0
        """Number of resets so far; policies use it to notice a new episode."""
        self._pending_seed = seed
        self.renderer = CameraRenderer(model, cameras, image_size, image_size, hidden_site_groups=hidden_site_groups)
        image = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(
            {
                "images": gym.spaces.Dict({name: image for name in cameras}),
                "state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
                "achieved_goal": gym.spaces.Box(-np.inf, np.inf, (goal_dim,), np.float32),
                "desired_goal": gym.spaces.Box(-np.inf, np.inf, (goal_dim,), np.float32),
                "scene": gym.spaces.Box(-np.inf, np.inf, (scene_dim or goal_dim,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)

    # ----------------------------------------------------------------- world hooks (subclass)
    @abc.abstractmethod
    def _reset_world(self, seed: int | None, options: dict[str, Any] | None) -> None:
        """Randomize the world from ``self.np_random`` and sample the goal."""

    @abc.abstractmethod
    def _apply_action(self, action: np.ndarray) -> None:
        """Apply a clipped action and advance the physics one control step."""

    @abc.abstractmethod
    def proprio(self) -> np.ndarray:
        """Proprioceptive state vector, float64 (S,)."""

    @abc.abstractmethod
    def achieved_goal(self) -> np.ndarray:
        """What the task measures, float64 (G,)."""

    @abc.abstractmethod
    def desired_goal(self) -> np.ndarray:
        """The commanded goal, same layout as :meth:`achieved_goal`."""

    @abc.abstractmethod
    def _success(self) -> bool:
        """Success of the current simulator state."""

    @abc.abstractmethod
    def _pose_goal(self) -> None:
        """Move ``self.data`` into the goal configuration (the base calls mj_forward after)."""

    # ------------------------------------------------------------------------- Gymnasium API
    @property
    def camera_names(self) -> tuple[str, ...]:
        return self.renderer.camera_names

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        self.elapsed_steps = 0
        self.episode_id += 1
        self._reset_world(seed, options)
        return self.observe(), {"is_success": self._success()}

    def step(self, action: np.ndarray) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        self._apply_action(np.clip(action, -1.0, 1.0))
        self.elapsed_steps += 1
        success = self._success()
        truncated = self.elapsed_steps >= self.max_episode_steps
        return self.observe(), float(success), False, truncated, {"is_success": success}

    def observe(self) -> Observation:
        """The observation for the current simulator state (renders every camera)."""
        return {
            "images": self.renderer.render_all(self.data) if self.render_images else {},
            "state": self.proprio().astype(np.float32),
            "achieved_goal": self.achieved_goal().astype(np.float32),
            "desired_goal": self.desired_goal().astype(np.float32),
            "scene": np.asarray(self.scene_state(), dtype=np.float32),
        }

    def render(self) -> np.ndarray:
        """The first observation camera's view of the current state, uint8 (H, W, 3)."""
        return self.renderer.render(self.data, self.camera_names[0])

    def is_success(self) -> bool:
        """Success of the current simulator state (what ``info["is_success"]`` reports)."""
        return self._success()

    def scene_state(self) -> np.ndarray:
        """The world's configuration vector, the same layout for every task of the world (what
        the lake stores as ``achieved_goal``, so one lake holds many tasks). Default: the task's
        ``achieved_goal``; worlds with several objects override it (tabletop: gripper + blocks)."""
        return self.achieved_goal()

    def scene_goal(self) -> np.ndarray:
        """:meth:`scene_state` of the goal configuration (what the goal image shows), state restored."""
        with preserved_state(self.model, self.data):
            self._pose_goal()
            mujoco.mj_forward(self.model, self.data)
            return np.asarray(self.scene_state(), dtype=np.float64)

    def render_goal(self) -> dict[str, np.ndarray]:
        """Images of the goal configuration from every camera; the state is restored exactly.

        What the goal configuration contains (which bodies move, whether the gripper does) is
        defined by each world's ``_pose_goal`` and documented on the task.
        """
        with preserved_state(self.model, self.data):
            self._pose_goal()
            mujoco.mj_forward(self.model, self.data)
            return self.renderer.render_all(self.data)

    def close(self) -> None:
        self.renderer.close()
