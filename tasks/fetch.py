"""Fetch tasks (gymnasium-robotics ``Fetch*-v4``) with hand-written experts.

=====================  =======================  ===========================================
task                   env id                   expert
=====================  =======================  ===========================================
fetch/reach            FetchReach-v4            servo the grip site to the goal
fetch/push             FetchPush-v4             closed-loop push from behind the block
fetch/pick_and_place   FetchPickAndPlace-v4     above, descend, grasp, carry, hold at goal
fetch/slide            FetchSlide-v4            line up behind the puck, push it and let go
                                                when a look-ahead says it stops at the goal
=====================  =======================  ===========================================

Reset distribution, goals and success are the env's own: the object starts within
+-0.15 m (Slide: +-0.1 m) of the gripper in x, y, at least 0.1 m from it; the goal is the gripper
start + U[-0.15, 0.15]^3 (Reach), on the table + U[-0.15, 0.15]^2 (Push), half the time up to
0.45 m in the air (PickAndPlace), or on the long table up to 0.7 m from the puck (Slide).
``achieved_goal`` is the object position (Reach: the grip site), ``desired_goal`` the goal, and
success is ``|achieved - desired| < 0.05``. :func:`detector` recomputes it from MuJoCo state (the
tests check it against the env's own ``info["is_success"]``).

Goal images (see :mod:`sim.robotics`): the object moved to the goal (gripper where it is), or for
Reach the arm driven to the goal.

FetchSlide: the arm only reaches about x = 1.39 m at table height while goals lie up to 0.8 m
from the puck, so the puck must slide the last part on its own, and where it stops is hard to
predict by hand: the gripper's finger box deflects it by up to ~15 degrees depending on the contact
point, one step of strike may or may not catch it again, and MuJoCo's pyramidal friction cone bends
its path toward the diagonals and now and then brakes it. The expert is therefore model-predictive:
it reads the full MuJoCo state and asks :class:`SlideLookahead` (a scratch copy of the world, stepped
exactly like the env) "where is the puck at the end of the episode if I apply this action now and
then keep still?". It lines up 5.5 cm behind the puck (at rest), pushes at full speed while even a
full push would leave the puck short, then picks the last push (speed by bisection, direction by
secant) that stops the puck on the goal, and keeps still. Before the first push it also rotates
the line-up around the puck when the predicted miss is sideways (re-aim). Seeds 0-19 and held-out
seeds 20-59 are solved at 100% and 97.5%; the misses are goals ~0.8 m away, out of the range of a
strike at the arm's top speed (about 1 m/s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mujoco
import numpy as np

from sim.base import RobotEnv
from sim.robotics import FETCH_CAMERAS, FetchEnv
from tasks.control import (
    OPEN,
    GraspSpec,
    PushSpec,
    pick_and_place,
    push,
    servo,
    travel,
    with_gripper,
)
from tasks.core import EnvFactory, Expert, StatelessExpert, Task, register

ACTION_SCALE = 0.05
"""Fetch moves the gripper by ``action * 0.05`` m per step."""
DISTANCE_THRESHOLD = 0.05
TABLE_Z = 0.4
OBJECT_Z = 0.425  # resting object centre

GRASP = GraspSpec(held_gap=0.048, hover=0.05, clear_z=OBJECT_Z + 0.06, place_tol=0.02)
PUSH = PushSpec(contact=0.045, push_z=OBJECT_Z - 0.005, clear_z=OBJECT_Z + 0.06)
SLIDE_Z = OBJECT_Z - 0.005
SLIDE_CLEAR_Z = OBJECT_Z + 0.05
SLIDE_BACKOFF = 0.055
"""Grip-site distance behind the puck centre where a push starts (about 1.5 cm before contact)."""
SLIDE_XY_TOL = 0.012
"""Horizontal distance from the line-up point within which the gripper descends to it."""
SLIDE_LINEUP_TOL = 0.0015
"""The gripper is lined up when within this distance of the line-up point, moving less per step."""
SLIDE_NEAR, SLIDE_NEAR_STEPS = 0.025, 4
"""After this many steps within ``SLIDE_NEAR`` of the line-up point, push anyway (noisy policies)."""
SLIDE_AIM_TOL = 0.015
"""A predicted sideways miss beyond this (m) before the first push makes the expert re-aim."""
SLIDE_MAX_REAIMS = 3
SLIDE_ALONG_TOL = 0.005
"""Pushing continues while a full push would leave the puck more than this short of the goal."""
SLIDE_BISECTIONS = 7
SLIDE_ANGLE_TRIES = 4
QUAT_DELTA = np.array([1.0, 0.0, 1.0, 0.0])
"""Fetch adds this fixed quaternion to the mocap orientation every step (gymnasium-robotics)."""
FINGER_JOINTS = ("robot0:l_gripper_finger_joint", "robot0:r_gripper_finger_joint")


def fetch(env: RobotEnv) -> FetchEnv:
    if not isinstance(env, FetchEnv):
        raise TypeError(f"expected a FetchEnv, got {type(env).__name__}")
    return env


def detector(env: RobotEnv) -> bool:
    """Success from MuJoCo state: object (Reach: grip) site within 5 cm of the goal."""
    env = fetch(env)
    site = "object0" if env.has_object else "robot0:grip"
    achieved = env.data.site(site).xpos
    return bool(np.linalg.norm(achieved - env.goal) < DISTANCE_THRESHOLD)


def reach_expert(env: RobotEnv) -> np.ndarray:
    env = fetch(env)
    return with_gripper(servo(env.grip_pos(), env.goal, ACTION_SCALE), OPEN)


def push_expert(env: RobotEnv) -> np.ndarray:
    env = fetch(env)
    return push(env.grip_pos(), env.object_pos(), env.goal, PUSH, ACTION_SCALE)


def pick_and_place_expert(env: RobotEnv) -> np.ndarray:
    env = fetch(env)
    return pick_and_place(
        env.grip_pos(),
        env.finger_gap(),
        env.object_pos(),
        env.goal,
        GRASP,
        ACTION_SCALE,
        release=False,  # goals may be in the air: hold the object there
    )


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


class SlideLookahead:
    """Predicts the puck's final position by simulating a scratch copy of a FetchSlide world.

    :meth:`step` reproduces one env step of gymnasium-robotics' Fetch bit for bit (the action is
    cast to float32 and clipped; the mocap is re-centred on the gripper body, moved by
    ``0.05 * action`` and given the fixed orientation offset; 20 substeps; the blocked fingers are
    reset to 0). The puck's path is chaotic at the 1e-4 level (a tiny change of action can decide
    whether a friction hiccup happens 0.4 m later), so the expert must then execute exactly the
    action it evaluated, and keep still with exact zeros, for predictions to come true.
    """

    def __init__(self, env: FetchEnv) -> None:
        model = env.model
        if model.nu != 0 or model.neq != 1 or model.eq_type[0] != mujoco.mjtEq.mjEQ_WELD:
            raise ValueError(
                f"{env.env_id}: expected the Fetch mocap weld and no actuators (nu={model.nu}, "
                f"neq={model.neq}); SlideLookahead only reproduces that step"
            )
        obj1, obj2 = int(model.eq_obj1id[0]), int(model.eq_obj2id[0])
        if model.body_mocapid[obj1] == -1:
            raise ValueError(f"{env.env_id}: the weld's first body is not the mocap")
        self.model = model
        self.body = obj2  # the gripper body welded to the mocap
        self.n_substeps = int(env.inner.n_substeps)
        self.finger_adr = [int(model.jnt_qposadr[model.joint(name).id]) for name in FINGER_JOINTS]
        joint = model.joint("object0:joint").id
        self.puck_qpos, self.puck_qvel = int(model.jnt_qposadr[joint]), int(model.jnt_dofadr[joint])
        self.scratch = mujoco.MjData(model)
        self.rollouts = 0

    def step(self, data: mujoco.MjData, action: np.ndarray) -> None:
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        data.mocap_pos[0] = data.xpos[self.body] + (action[:3] * np.float32(ACTION_SCALE)).astype(np.float64)
        data.mocap_quat[0] = data.xquat[self.body] + QUAT_DELTA
        mujoco.mj_step(self.model, data, nstep=self.n_substeps)
        data.qpos[self.finger_adr] = 0.0
        mujoco.mj_forward(self.model, data)

    def final_puck(self, data: mujoco.MjData, action: np.ndarray, steps: int) -> np.ndarray:
        """Puck x, y after ``action`` and then ``steps - 1`` zero actions (or once it stops)."""
        self.rollouts += 1
        sim = self.scratch
        mujoco.mj_copyData(sim, self.model, data)
        self.step(sim, action)
        still = np.zeros(4)
        for _ in range(steps - 1):
            velocity = sim.qvel[self.puck_qvel : self.puck_qvel + 2]
            if velocity @ velocity < 1e-6:
                break
            self.step(sim, still)
        return sim.qpos[self.puck_qpos : self.puck_qpos + 2].copy()


class SlideExpert:
    """Line up behind the puck, push, and let go when a look-ahead says it stops at the goal.

    Modes: ``line_up`` (travel to ``SLIDE_BACKOFF`` behind the puck on the aim line and settle),
    ``push`` (one decision per step, below) and ``release`` (exact zero actions while the puck
    slides; if it stops more than 4.5 cm from the goal, line up again). A push decision compares
    predicted final positions (:class:`SlideLookahead`, errors split along / across the puck-goal
    line):

    * a full-speed push this step, then stillness, still leaves the puck short: push at full speed
      (before the first push, a sideways miss first rotates the aim line, see :meth:`_reaim`);
    * keeping still now already gets the puck there: release;
    * otherwise pick this step's push speed by bisection and its direction by a secant on the
      sideways miss, push once and release.

    Deterministic (no randomness); stateful over an episode.
    """

    def __init__(self) -> None:
        self.lookahead: SlideLookahead | None = None
        self.reset(None, None)

    def reset(self, env: RobotEnv | None, rng: np.random.Generator | None) -> None:
        self.mode = "line_up"
        self.aim = 0.0  # rotation (rad) of the line-up direction away from puck -> goal
        self.aims: list[tuple[float, float]] = []  # (aim, predicted sideways miss) tried
        self.aim_final = False
        self.pushed = False
        self.near_steps = 0
        self.last_grip = np.zeros(3)

    def __call__(self, env: RobotEnv) -> np.ndarray:
        env = fetch(env)
        if self.lookahead is None or self.lookahead.model is not env.model:
            self.lookahead = SlideLookahead(env)
        puck, goal = env.object_pos(), env.goal
        distance = float(np.linalg.norm(goal[:2] - puck[:2]))
        puck_speed = float(np.linalg.norm(env.data.joint("object0:joint").qvel[:2]))
        if self.mode == "release":
            if puck_speed > 0.01 or distance < 0.045:
                return np.zeros(4)  # exact zeros: what the look-ahead assumed
            self.mode = "line_up"
        if self.mode == "line_up":
            if puck_speed > 0.01:
                return np.zeros(4)
            action = self._line_up(env)
            if action is not None:
                return action
            self.mode = "push"
        return self._push(env)

    def _frames(self, env: FetchEnv) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """(u0, n0): puck -> goal and its left normal; (u, n): the same rotated by the aim."""
        to_goal = env.goal[:2] - env.object_pos()[:2]
        distance = float(np.linalg.norm(to_goal))
        u0 = to_goal / max(distance, 1e-9)
        u = _rotate(u0, self.aim)
        return u0, np.array([-u0[1], u0[0]]), u, np.array([-u[1], u[0]]), distance

    def _line_up(self, env: FetchEnv) -> np.ndarray | None:
        """The action that lines up behind the puck, or None once lined up."""
        grip, puck = env.grip_pos(), env.object_pos()
        _, _, u, _, _ = self._frames(env)
        start = np.array([*(puck[:2] - u * SLIDE_BACKOFF), SLIDE_Z])
        grip_speed = float(np.linalg.norm(grip - self.last_grip))
        self.last_grip = grip
        error = float(np.linalg.norm(grip - start))
        self.near_steps += int(error < SLIDE_NEAR)
        if (error > SLIDE_LINEUP_TOL or grip_speed > SLIDE_LINEUP_TOL) and self.near_steps < SLIDE_NEAR_STEPS:
            return with_gripper(travel(grip, start, SLIDE_CLEAR_Z, ACTION_SCALE, SLIDE_XY_TOL), 0.0)
        self.near_steps = 0
        return None

    def _push(self, env: FetchEnv) -> np.ndarray:
        assert self.lookahead is not None
        lookahead = self.lookahead
        grip, puck, goal = env.grip_pos(), env.object_pos(), env.goal
        u0, n0, u, n, distance = self._frames(env)
        steps_left = env.max_episode_steps - env.elapsed_steps
        z = (SLIDE_Z - grip[2]) / ACTION_SCALE

        def push(speed: float, angle: float) -> np.ndarray:
            """Push at ``speed`` (1 = the largest action) at ``angle`` from the aim line."""
            direction = np.cos(angle) * u + np.sin(angle) * n
            return np.array([*(speed * direction / np.abs(direction).max()), z, 0.0])

        def miss(action: np.ndarray) -> tuple[float, float]:
            """Predicted final puck - goal, (along, across) the puck -> goal line."""
            error = lookahead.final_puck(env.data, action, steps_left) - goal[:2]
            return float(error @ u0), float(error @ n0)

        def solve_speed(angle: float) -> tuple[float, float, float]:
            """(speed, along, across) of the bisected push at ``angle`` that lands closest along."""
            lo, hi, best = 0.0, 1.0, (0.0, -np.inf, 0.0)
            for _ in range(SLIDE_BISECTIONS):
                speed = 0.5 * (lo + hi)
                along, across = miss(push(speed, angle))
                if abs(along) < abs(best[1]):
                    best = (speed, along, across)
                lo, hi = (speed, hi) if along < 0 else (lo, speed)
            return best

        # Steer back onto the aim line if the gripper sits beside it.
        angle0 = -float(np.clip(((grip[:2] - puck[:2]) @ n) / ACTION_SCALE, -0.3, 0.3))
        along, across = miss(push(1.0, angle0))
        if along < -SLIDE_ALONG_TOL:
            if self._reaim(across, distance + along):
                return np.zeros(4)
            self.pushed = True
            return push(1.0, angle0)
        if miss(np.zeros(4))[0] >= -SLIDE_ALONG_TOL:
            self.mode = "release"
            return np.zeros(4)
        # The last push: speed by bisection, direction by a secant on the sideways miss.
        tried: list[tuple[float, float, float, float]] = []  # (angle, speed, along, across)
        angle = angle0
        for _ in range(SLIDE_ANGLE_TRIES):
            tried.append((angle, *solve_speed(angle)))
            if abs(tried[-1][3]) < 0.008:
                break
            if len(tried) == 1:
                angle -= float(np.arctan2(tried[-1][3], max(distance, 0.05)))
                continue
            (a1, *_, m1), (a2, *_, m2) = tried[-2], tried[-1]
            slope = (m2 - m1) / (a2 - a1) if abs(a2 - a1) > 1e-6 else 0.0
            if abs(slope) < 1e-3:
                break
            angle = float(np.clip(a2 - m2 / slope, angle0 - 0.6, angle0 + 0.6))
        angle, speed, along, across = min(tried, key=lambda t: np.hypot(t[2], t[3]))
        if self._reaim(across, distance + along):
            return np.zeros(4)
        self.mode = "release"
        return push(speed, angle)

    def _reaim(self, across: float, travel_distance: float) -> bool:
        """Before the first push, rotate the line-up around the puck to cancel a sideways miss.

        The miss comes mostly from where the finger box meets the puck, so it is a jumpy function
        of the aim: a secant step (a first guess of 0.8 x the miss angle), limited to 0.1 rad;
        after ``SLIDE_MAX_REAIMS`` tries the best aim seen is used. True: line up again.
        """
        if self.pushed or self.aim_final or abs(across) < SLIDE_AIM_TOL:
            return False
        self.aims.append((self.aim, across))
        if len(self.aims) > SLIDE_MAX_REAIMS:
            self.aim_final = True
            best = min(self.aims, key=lambda a: abs(a[1]))[0]
            if best == self.aim:
                return False
            self.aim = best
        else:
            step = -0.8 * float(np.arctan2(across, max(travel_distance, 0.05)))
            if len(self.aims) >= 2:
                (a1, m1), (a2, m2) = self.aims[-2:]
                slope = (m2 - m1) / (a2 - a1) if abs(a2 - a1) > 1e-6 else 0.0
                if slope > 0.1:  # more aim moves the puck left, as it should
                    step = -m2 / slope
            self.aim += float(np.clip(step, -0.1, 0.1))
        self.mode = "line_up"
        return True


def _factory(env_id: str) -> EnvFactory:
    def build(image_size: int, cameras: Sequence[str] | None, seed: int | None, max_steps: int) -> FetchEnv:
        return FetchEnv(env_id, image_size=image_size, cameras=cameras, max_episode_steps=max_steps, seed=seed)

    return build


def _register(name: str, env_id: str, description: str, expert: Callable[[], Expert], goal_image: str) -> None:
    obj = "grip site" if env_id == "FetchReach-v4" else "object (object0 site)"
    register(
        Task(
            name=f"fetch/{name}",
            description=description,
            max_episode_steps=50,
            reset_distribution=f"{env_id}'s own (see the tasks.fetch docstring)",
            achieved_goal=f"{obj} position (3,); desired = the env's goal",
            success=f"|achieved - desired| < {DISTANCE_THRESHOLD} m (the env's own rule)",
            goal_image=goal_image,
            cameras=tuple(FETCH_CAMERAS[env_id]),
            build_env=_factory(env_id),
            detector=detector,
            expert=expert,
        )
    )


_register(
    "reach",
    "FetchReach-v4",
    "Move the Fetch gripper to a 3-D goal.",
    lambda: StatelessExpert(reach_expert),
    "the arm driven so the grip site is at the goal",
)
_register(
    "push",
    "FetchPush-v4",
    "Push the block to a goal on the table (fingers blocked).",
    lambda: StatelessExpert(push_expert),
    "the block at the goal, arm unchanged",
)
_register(
    "pick_and_place",
    "FetchPickAndPlace-v4",
    "Pick the block and bring it to a goal on the table or in the air.",
    lambda: StatelessExpert(pick_and_place_expert),
    "the block at the goal (possibly floating), arm unchanged",
)
_register(
    "slide",
    "FetchSlide-v4",
    "Strike the puck so it slides to a goal on the long table (fingers blocked).",
    SlideExpert,
    "the puck at the goal, arm unchanged",
)
