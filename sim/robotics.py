"""gymnasium-robotics worlds (Fetch and PointMaze) behind the robot-rl observation contract.

Each wrapper builds the registered environment with ``gymnasium.make(env_id).unwrapped``, steps it
unchanged, and replaces only what is observed:

* ``images``: rendered through our own :class:`sim.render.CameraRenderer` on the env's model and
  data, with a free camera framed so the workspace fills a 64x64 image (not the env's 480x480
  human-view camera). Goal marker sites (``target0`` / ``target``) are moved to a hidden site
  group, so images never show the goal; it is given by ``desired_goal`` and the goal image.
* ``state``: proprioception only. Fetch (10,): grip position (3), grip velocity (3, m per step),
  finger joint positions (2), finger velocities (2, per step). PointMaze (4,): ball x, y, vx, vy.
* ``achieved_goal`` / ``desired_goal``: the env's own, as float32.
* ``info["is_success"]``: the env's own verdict: Fetch ``info["is_success"]`` (distance < 5 cm),
  PointMaze ``info["success"]`` (distance <= 0.45 m).

Goal configurations for :meth:`RobotEnv.render_goal`: Fetch object tasks put the object at the
goal (orientation and gripper unchanged); FetchReach drives the arm until its grip site is at the
goal (20 env-steps of mocap servoing, simulated and then undone); PointMaze puts the ball at the
goal at rest.

gymnasium-robotics is imported lazily (it is slow to import and prints a deprecation banner).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from sim.base import RobotEnv
from sim.render import CameraSpec, FreeCamera

GOAL_MARKER_GROUP = 4
"""Site group that goal markers are moved to; never drawn in observations."""

FETCH_ENV_IDS = ("FetchReach-v4", "FetchPush-v4", "FetchPickAndPlace-v4", "FetchSlide-v4")
POINTMAZE_ENV_IDS = ("PointMaze_UMaze-v3",)

# Cameras look from the far side of the table back at the robot, framed on where objects and
# goals can be: +-0.15 m around the gripper start (Slide: up to 0.7 m in front of it).
FETCH_CAMERAS: dict[str, dict[str, FreeCamera]] = {
    "FetchReach-v4": {"front": FreeCamera((1.34, 0.75, 0.55), 0.95, 180.0, -40.0)},
    "FetchPush-v4": {"front": FreeCamera((1.34, 0.75, 0.42), 0.62, 180.0, -62.0)},
    "FetchPickAndPlace-v4": {"front": FreeCamera((1.34, 0.75, 0.58), 0.95, 180.0, -35.0)},
    "FetchSlide-v4": {"front": FreeCamera((1.62, 0.75, 0.42), 1.0, 180.0, -80.0)},
}
POINTMAZE_CAMERAS: dict[str, dict[str, FreeCamera]] = {
    "PointMaze_UMaze-v3": {"top": FreeCamera((0.0, 0.0, 0.0), 4.9, 90.0, -90.0)},
}


def _make_unwrapped(env_id: str, **kwargs: Any) -> Any:
    import gymnasium_robotics  # lazy: slow import that prints a banner

    gym.register_envs(gymnasium_robotics)
    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith(("Fetch", "PointMaze")))
        raise KeyError(f"{env_id!r} is not registered by gymnasium-robotics; known: {known}")
    return gym.make(env_id, **kwargs).unwrapped


def _hide_site(model: mujoco.MjModel, name: str) -> None:
    site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, name)
    if site < 0:
        raise KeyError(f"site {name!r} not found in the model")
    model.site_group[site] = GOAL_MARKER_GROUP


def _select_cameras(available: dict[str, FreeCamera], cameras: Sequence[str] | None) -> dict[str, CameraSpec]:
    names = list(available) if cameras is None else list(cameras)
    unknown = [c for c in names if c not in available]
    if unknown or not names:
        raise ValueError(f"cameras must be a non-empty subset of {list(available)}, got {cameras}")
    return {name: available[name] for name in names}


class FetchEnv(RobotEnv):
    """A Fetch task (``FetchReach/Push/PickAndPlace/Slide-v4``) with robot-rl observations.

    The action is Fetch's own: ``dx, dy, dz`` (x 5 cm per step, relative to the current gripper)
    and a finger command (ignored by Reach, Push and Slide, whose fingers are blocked).
    """

    def __init__(
        self,
        env_id: str,
        image_size: int = 64,
        cameras: Sequence[str] | None = None,
        max_episode_steps: int = 50,
        seed: int | None = None,
    ) -> None:
        if env_id not in FETCH_ENV_IDS:
            raise ValueError(f"env_id must be one of {FETCH_ENV_IDS}, got {env_id!r}")
        self.env_id = env_id
        self.inner = _make_unwrapped(env_id)
        model, data = self.inner.model, self.inner.data
        _hide_site(model, "target0")
        self._object_joint = "object0:joint" if self.inner.has_object else None
        self._last_success = False
        super().__init__(
            model=model,
            data=data,
            cameras=_select_cameras(FETCH_CAMERAS[env_id], cameras),
            image_size=image_size,
            action_dim=4,
            state_dim=10,
            goal_dim=3,
            max_episode_steps=max_episode_steps,
            seed=seed,
            hidden_site_groups=(GOAL_MARKER_GROUP,),
        )

    @property
    def has_object(self) -> bool:
        return bool(self.inner.has_object)

    def grip_pos(self) -> np.ndarray:
        """Position of the ``robot0:grip`` site (3,) (a copy)."""
        return self.data.site("robot0:grip").xpos.copy()

    def object_pos(self) -> np.ndarray:
        """Position of the ``object0`` site (3,) (a copy); Fetch tasks with an object only."""
        if not self.has_object:
            raise ValueError(f"{self.env_id} has no object")
        return self.data.site("object0").xpos.copy()

    def finger_gap(self) -> float:
        """Sum of the two finger joint positions (m): about 0.1 open, 0 closed."""
        return float(
            self.data.joint("robot0:l_gripper_finger_joint").qpos[0]
            + self.data.joint("robot0:r_gripper_finger_joint").qpos[0]
        )

    @property
    def goal(self) -> np.ndarray:
        return np.asarray(self.inner.goal)

    def _reset_world(self, seed: int | None, options: dict[str, Any] | None) -> None:
        obs, _ = self.inner.reset(seed=seed, options=options)
        self._last_success = bool(self.inner._is_success(obs["achieved_goal"], self.inner.goal))

    def _apply_action(self, action: np.ndarray) -> None:
        _, _, _, _, info = self.inner.step(action.astype(np.float32))
        self._last_success = bool(info["is_success"])

    def proprio(self) -> np.ndarray:
        grip_pos, *_, gripper_state, _, _, _, grip_velp, gripper_vel = self.inner.generate_mujoco_observations()
        return np.concatenate([grip_pos, grip_velp, gripper_state, gripper_vel])

    def achieved_goal(self) -> np.ndarray:
        return self.object_pos() if self.has_object else self.grip_pos()

    def desired_goal(self) -> np.ndarray:
        return self.goal.copy()

    def _success(self) -> bool:
        return self._last_success

    def _pose_goal(self) -> None:
        goal = self.goal
        if self._object_joint is not None:
            qpos = self.data.joint(self._object_joint).qpos
            qpos[:3] = goal  # the object0 site sits at the body origin
            self.data.joint(self._object_joint).qvel[:] = 0.0
            return
        for _ in range(20):  # Reach: servo the mocap until the grip site is at the goal
            mujoco.mj_forward(self.model, self.data)
            self.data.mocap_pos[0] += goal - self.data.site("robot0:grip").xpos
            mujoco.mj_step(self.model, self.data, nstep=self.inner.n_substeps)


class PointMazeEnv(RobotEnv):
    """``PointMaze_UMaze-v3`` (continuing task, fixed goal) with robot-rl observations.

    The action is the env's own: force on the ball in x and y, in [-1, 1].
    """

    def __init__(
        self,
        env_id: str = "PointMaze_UMaze-v3",
        image_size: int = 64,
        cameras: Sequence[str] | None = None,
        max_episode_steps: int = 300,
        seed: int | None = None,
    ) -> None:
        if env_id not in POINTMAZE_ENV_IDS:
            raise ValueError(f"env_id must be one of {POINTMAZE_ENV_IDS}, got {env_id!r}")
        self.env_id = env_id
        self.inner = _make_unwrapped(env_id)
        model, data = self.inner.model, self.inner.data
        _hide_site(model, "target")
        self._last_success = False
        super().__init__(
            model=model,
            data=data,
            cameras=_select_cameras(POINTMAZE_CAMERAS[env_id], cameras),
            image_size=image_size,
            action_dim=2,
            state_dim=4,
            goal_dim=2,
            max_episode_steps=max_episode_steps,
            seed=seed,
            hidden_site_groups=(GOAL_MARKER_GROUP,),
        )

    @property
    def maze(self) -> Any:
        """The env's ``Maze`` (map, cell <-> xy conversions)."""
        return self.inner.maze

    @property
    def goal(self) -> np.ndarray:
        return np.asarray(self.inner.goal)

    def ball_pos(self) -> np.ndarray:
        return self.data.qpos[:2].copy()

    def ball_vel(self) -> np.ndarray:
        return self.data.qvel[:2].copy()

    def _reset_world(self, seed: int | None, options: dict[str, Any] | None) -> None:
        _, info = self.inner.reset(seed=seed, options=options)
        self._last_success = bool(info["success"])

    def _apply_action(self, action: np.ndarray) -> None:
        _, _, _, _, info = self.inner.step(action.astype(np.float32))
        self._last_success = bool(info["success"])

    def proprio(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[:2], self.data.qvel[:2]])

    def achieved_goal(self) -> np.ndarray:
        return self.ball_pos()

    def desired_goal(self) -> np.ndarray:
        return self.goal.copy()

    def _success(self) -> bool:
        return self._last_success

    def _pose_goal(self) -> None:
        self.data.qpos[:2] = self.goal
        self.data.qvel[:2] = 0.0
