"""OGBench worlds (PyPI ``ogbench``) behind the robot-rl observation contract.

:class:`OGBenchEnv` builds ``gymnasium.make(env_id).unwrapped`` for a state-based OGBench env of the
manipspace cube family (``cube-{single,double,triple,quadruple,octuple}-v0``) or the locomaze maze
family (``{point,ant,humanoid}maze-{arena,medium,large,giant,teleport}-v0``), steps it unchanged and
lays out what it observes the way the lake holds OGBench datasets::

    state          float32 (D,)   OGBench's observation vector (cube-single: D = 28, pointmaze: 2 = x, y)
    achieved_goal  float32 (D,)   the same vector (= scene = scene_state())
    desired_goal   float32 (D,)   OGBench's goal observation, ``info["goal"]`` of the reset
    scene          float32 (D,)   the same vector as state
    images         {camera: uint8 (H, W, 3)}   our CameraRenderer, goal markers hidden (below)

so ``env.scene_goal()`` (the goal state evaluation conditions on) is exactly OGBench's goal vector.
``state`` is not proprioception only here: OGBench's vector holds the objects too (cube-single:
arm joints 6 + joint velocities 6 + effector xyz 3 + yaw cos, sin 2 + gripper opening 1 + contact 1,
then the cube: xyz 3, quaternion 4, yaw cos, sin 2; positions centred on (0.425, 0, 0), x10).

Evaluation goals: ``reset(options={"task_id": k})`` (k = 1..5, default: the ``task_id`` given to the
constructor) resets to OGBench's evaluation task k (``env.inner.task_infos[k - 1]``) with OGBench's
own start noise; ``info["is_success"]`` after each step is OGBench's ``info["success"]`` (cube: every
cube within 4 cm of its target; pointmaze: within 1 m of the goal). Episodes are continuing, as for
every robot-rl world (OGBench ends them at success; evaluation stops at the first success).

Reproducibility. OGBench draws part of a reset outside its seeded generator: locomaze's start and
goal noise come from numpy's global RNG, and both families settle the goal scene with uniformly
random actions from an unseeded action space (cube: 2 steps, which move the arm in the goal vector).
``reset(seed=s)`` therefore also seeds, for the duration of OGBench's reset only, numpy's global RNG
and that action sampler with ``s`` (a seed drawn from the env's generator when ``s`` is None); the
global RNG's state is restored afterwards. Same seed, same episode, goal included; the distribution
is OGBench's.

Goal configuration (:meth:`RobotEnv.render_goal`): the exact simulator state OGBench computes its
goal observation in (reset is run with ``render_goal=True`` and OGBench's render call at that
moment is intercepted to copy ``MjData``): cube: the arm at OGBench's random goal pose, each cube at
its goal; maze: the agent at the goal.

Images (``image_size`` square, one camera): rendered through :class:`sim.render.CameraRenderer`
from the env's model, without shadows or multisampling (cheap on a software renderer). Goal markers
are moved to a hidden geom group (OGBench's translucent target cubes, the maze's red target disc),
and cube envs are built with ``visualize_info=False`` (a cube no longer changes colour on success).
Cube ``front``: OGBench's own pixel camera ``front_pixels`` (the visual-cube datasets' viewpoint:
the table, the cubes and, when it is low enough to be in view, the gripper); the gripper's fingers
and pads are drawn opaque purple, while the UR5e links and the gripper housing are not drawn at all
(OGBench's visual-* renders them at 10% opacity; their 190k triangles would cost ~50 ms a frame).
So frames resemble OGBench's visual-cube observations but are not the same pixels. Maze ``top``:
OGBench's top-down default view of the whole maze (the visual-*maze datasets use a camera that
follows the agent instead). Cost per env step: :data:`STEP_COST_NOTE`.

Not supported: ``visual-*`` envs (observations are images; OGBench renders them itself),
``*-singletask-*`` envs (success is reported before the action), puzzle/scene envs and soccer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from sim.base import RobotEnv
from sim.render import CameraSpec, FreeCamera

HIDDEN_GEOM_GROUP = 5
"""Geom group of what observations never show (goal markers, the arm); MuJoCo draws groups 0-2."""

CUBE_ENV = re.compile(r"^cube-(single|double|triple|quadruple|octuple)-v0$")
MAZE_ENV = re.compile(r"^(point|ant|humanoid)maze-(arena|medium|large|giant|teleport)-v0$")

STEP_COST_NOTE = "cube-single: 1.8 ms step, 6.6 ms step + 64x64 render; pointmaze-medium: 0.1 ms, 3.0 ms"
"""Measured wrapper cost per env step (random actions, one camera), 2 shared CPU cores, MUJOCO_GL=egl
(llvmpipe). With the full arm, shadows and 4x multisampling, as OGBench draws it, our renderer took
~60 ms a frame (OGBench's own pixel renderer: ~0.3 s a frame on this machine, as reported)."""

GRIPPER_RGBA = (0.61, 0.28, 0.82, 1.0)
"""Colour of the drawn gripper parts (OGBench's visual-* gripper purple, opaque)."""
_HIDDEN_GRIPPER_BODIES = ("ur5e/robotiq/base", "ur5e/robotiq/base_mount")


def family(env_id: str) -> str:
    """``"cube"`` or ``"maze"``; a ValueError names what is supported otherwise."""
    if CUBE_ENV.match(env_id):
        return "cube"
    if MAZE_ENV.match(env_id):
        return "maze"
    raise ValueError(
        f"unsupported OGBench env {env_id!r}: OGBenchEnv wraps state-based cube envs "
        f"({CUBE_ENV.pattern}) and maze envs ({MAZE_ENV.pattern}); visual-*, singletask, puzzle, "
        "scene and soccer envs are not wrapped"
    )


def _settling_space(self: Any) -> gym.spaces.Box:
    """``action_space`` of a cube env after :func:`make_inner`: one Box per env, which
    :func:`seeded_draws` seeds (OGBench builds a fresh, unseeded Box on every access and samples it
    for the goal-settling steps)."""
    space = self.__dict__.get("_settle_space")
    if space is None:
        space = self.__dict__["_settle_space"] = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
    return space


_SEEDED_CLASSES: dict[type, type] = {}


def make_inner(env_id: str, **kwargs: Any) -> Any:
    """``gymnasium.make(env_id, **kwargs).unwrapped`` for a supported OGBench env (env checker off:
    it would reset the env, consuming numpy's global RNG). Cube envs get a seedable settling sampler
    (their class is swapped for a subclass whose ``action_space`` is one Box; seed it with
    :func:`seeded_draws`) and a first reset (their MuJoCo model is compiled then); the global RNG is
    left as it was."""
    import ogbench  # lazy: importing registers the envs (and pulls in dm_control)

    kind = family(env_id)
    if env_id not in gym.registry:
        raise KeyError(f"{env_id!r} is not registered by ogbench {getattr(ogbench, '__version__', '')}")
    inner = gym.make(env_id, disable_env_checker=True, **kwargs).unwrapped
    if kind == "cube":
        cls = type(inner)
        if cls not in _SEEDED_CLASSES:
            _SEEDED_CLASSES[cls] = type(cls.__name__, (cls,), {"action_space": property(_settling_space)})
        inner.__class__ = _SEEDED_CLASSES[cls]
        with seeded_draws(inner, 0):
            inner.reset(seed=0, options={"task_id": 1})
    return inner


@contextmanager
def seeded_draws(inner: Any, seed: int) -> Iterator[None]:
    """Seed what OGBench draws outside its own generator (numpy's global RNG, restored on exit, and the
    goal-settling action sampler) with ``seed`` for the duration of the block."""
    state = np.random.get_state()  # noqa: NPY002  (OGBench draws from the legacy global RNG)
    np.random.seed(seed)  # noqa: NPY002
    inner.action_space.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _hide_goal_markers(model: mujoco.MjModel) -> list[int]:
    """Move every geom named ``target*`` (OGBench's goal markers) to the hidden geom group."""
    hidden = [i for i in range(model.ngeom) if (model.geom(i).name or "").startswith("target")]
    if not hidden:
        raise KeyError("no goal-marker geom ('target*') found in the OGBench model")
    model.geom_group[hidden] = HIDDEN_GEOM_GROUP
    return hidden


def _cube_look(model: mujoco.MjModel) -> None:
    """Draw the gripper's fingers and pads in opaque purple; hide the UR5e links and the gripper
    housing (190k triangles: about 50 ms a frame on a software renderer)."""
    fingers, hidden = [], []
    for i in np.flatnonzero(model.geom_group == 2):  # visual geoms (group 3: collision, not drawn)
        body = model.body(model.geom_bodyid[i]).name
        if body.startswith("ur5e/robotiq/") and body not in _HIDDEN_GRIPPER_BODIES:
            fingers.append(i)
        elif body.startswith("ur5e/"):
            hidden.append(i)
    if not fingers or not hidden:
        raise KeyError("no UR5e / Robotiq visual geoms found in the OGBench manipspace model")
    model.geom_group[hidden] = HIDDEN_GEOM_GROUP
    model.geom_matid[fingers] = -1
    model.geom_rgba[fingers] = GRIPPER_RGBA


def cameras_for(env_id: str, inner: Any) -> dict[str, CameraSpec]:
    """The cameras an env offers: cube ``front`` (OGBench's ``front_pixels``), maze ``top``."""
    if family(env_id) == "cube":
        return {"front": "front_pixels"}
    rows, cols = inner.maze_map.shape
    return {"top": FreeCamera((2.0 * (cols - 3), 2.0 * (rows - 3), 0.0), 5.0 * (cols - 2), 90.0, -90.0)}


class OGBenchEnv(RobotEnv):
    """One OGBench env (state-based cube or maze) with robot-rl observations; see the module docstring.

    Args:
        env_id: OGBench gymnasium id, e.g. ``"cube-single-v0"``, ``"pointmaze-medium-v0"``.
        task_id: evaluation task (1..5) a reset without ``options["task_id"]`` uses; None: OGBench
            picks one at random (from the seeded global RNG).
        image_size, cameras, max_episode_steps, seed: as :class:`RobotEnv`.

    The action is OGBench's own, in [-1, 1]: cube (5,) relative effector x, y, z, yaw and gripper;
    pointmaze (2,) x, y displacement (x 0.2 m per step).
    """

    def __init__(
        self,
        env_id: str,
        task_id: int | None = 1,
        image_size: int = 64,
        cameras: Sequence[str] | None = None,
        max_episode_steps: int = 200,
        seed: int | None = None,
    ) -> None:
        self.env_id = env_id
        self.family = family(env_id)
        kwargs = {"visualize_info": False} if self.family == "cube" else {}
        self.inner = make_inner(env_id, **kwargs)
        self.task_infos: list[dict[str, Any]] = list(self.inner.task_infos)
        if task_id is not None and not 1 <= task_id <= len(self.task_infos):
            raise ValueError(f"{env_id} has tasks 1..{len(self.task_infos)}, got task_id={task_id}")
        self.task_id = task_id
        model, data = self.inner.model, self.inner.data
        _hide_goal_markers(model)
        model.light_castshadow[:] = 0  # shadows and 4x multisampling cost most of a software-rendered frame
        model.vis.quality.offsamples = 0
        if self.family == "cube":
            _cube_look(model)
        space = self.inner.action_space
        if not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
            raise ValueError(f"{env_id}: expected actions in [-1, 1], got {space}")
        dim = int(np.prod(self.inner.observation_space.shape))
        available = cameras_for(env_id, self.inner)
        names = list(available) if cameras is None else list(cameras)
        if not names or any(c not in available for c in names):
            raise ValueError(f"cameras must be a non-empty subset of {list(available)}, got {cameras}")
        self.control_dt = float(self.inner._control_timestep if self.family == "cube" else self.inner.dt)
        self._goal_data = mujoco.MjData(model)
        self._ob = np.zeros(dim)
        self._goal_ob = np.zeros(dim)
        self._info: dict[str, Any] = {}
        self._last_success = False
        super().__init__(
            model=model,
            data=data,
            cameras={name: available[name] for name in names},
            image_size=image_size,
            action_dim=int(space.shape[0]),
            state_dim=dim,
            goal_dim=dim,
            max_episode_steps=max_episode_steps,
            seed=seed,
        )

    # ---------------------------------------------------------------------- what OGBench said
    @property
    def ogbench_ob(self) -> np.ndarray:
        """OGBench's last observation vector (a copy)."""
        return self._ob.copy()

    @property
    def ogbench_info(self) -> dict[str, Any]:
        """OGBench's ``info`` of the last reset or step (the dict itself; do not modify)."""
        return self._info

    @property
    def cur_task_id(self) -> int | None:
        """The evaluation task of the current episode (None if reset with a ``task_info``)."""
        return self.inner.cur_task_id

    # ---------------------------------------------------------------------------- world hooks
    def _reset_world(self, seed: int | None, options: dict[str, Any] | None) -> None:
        opts = {} if self.task_id is None else {"task_id": self.task_id}
        opts.update(options or {})
        opts["render_goal"] = True  # OGBench then calls render() in the goal state: capture it there
        draws_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))

        def capture(*args: Any, **kwargs: Any) -> None:
            mujoco.mj_copyData(self._goal_data, self.model, self.data)

        self.inner.render = capture
        try:
            with seeded_draws(self.inner, draws_seed):
                ob, info = self.inner.reset(seed=seed, options=opts)
        finally:
            del self.inner.render
        info.pop("goal_rendered", None)
        self._ob = np.asarray(ob, np.float64)
        self._goal_ob = np.asarray(info["goal"], np.float64)
        self._info = info
        self._last_success = bool(self.inner._success if self.family == "cube" else self.inner.compute_success())

    def _apply_action(self, action: np.ndarray) -> None:
        ob, _, _, _, info = self.inner.step(action.astype(np.float32))
        self._ob = np.asarray(ob, np.float64)
        self._info = info
        self._last_success = bool(info["success"])

    def proprio(self) -> np.ndarray:
        return self._ob.copy()

    def achieved_goal(self) -> np.ndarray:
        return self._ob.copy()

    def desired_goal(self) -> np.ndarray:
        return self._goal_ob.copy()

    def scene_goal(self) -> np.ndarray:
        """OGBench's goal observation vector (``info["goal"]`` of the reset), float64."""
        return self._goal_ob.copy()

    def _success(self) -> bool:
        return self._last_success

    def _pose_goal(self) -> None:
        mujoco.mj_copyData(self.data, self.model, self._goal_data)
