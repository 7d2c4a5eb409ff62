"""robot-rl simulation worlds.

Importing ``sim`` first chooses the offscreen GL backend (see :mod:`sim.render`), so import it
before ``mujoco``. Worlds:

* :class:`sim.tabletop.TabletopEnv` - our own gripper + three blocks + pad scene.
* :class:`sim.robotics.FetchEnv`, :class:`sim.robotics.PointMazeEnv` - gymnasium-robotics
  environments with our own cameras, proprio state, goals and goal images
  (gymnasium-robotics is imported only when one is built).

Every world is a :class:`sim.base.RobotEnv`: Gymnasium API, dict observations
``{"images", "state", "achieved_goal", "desired_goal"}``, ``info["is_success"]``, and
``render_goal()`` for goal images. Tasks (what to do in a world) live in the ``tasks`` package.

:mod:`sim.rollout` is the one environment loop (collection, evaluation and finetuning all run it):
``rollout(envs, policy, seeds, max_steps)`` steps B envs with one call of a :class:`sim.rollout.Policy`
per step.
"""

from sim.render import BACKEND, CameraRenderer, FreeCamera, RenderBackendError  # noqa: I001  (first)
from sim.base import RobotEnv, preserved_state
from sim.robotics import FetchEnv, PointMazeEnv
from sim.tabletop import TabletopEnv, TabletopGoal, TabletopObjective

__all__ = [
    "BACKEND",
    "CameraRenderer",
    "FetchEnv",
    "FreeCamera",
    "PointMazeEnv",
    "RenderBackendError",
    "RobotEnv",
    "TabletopEnv",
    "TabletopGoal",
    "TabletopObjective",
    "preserved_state",
]
