"""Tabletop tasks: eight goal-reaching tasks sharing the one scene of :mod:`sim.tabletop`.

Every task uses the scene's reset distribution (gripper start, pad and block placement, see
:mod:`sim.tabletop`) and adds only its goal. Distances are in metres; "on the table" means the
block centre is below ``BLOCK_HALF + 0.01`` (resting, not lifted).

=========================  =================================  ==================================
task                       achieved_goal / desired_goal (3,)   success (from simulator state)
=========================  =================================  ==================================
reach_red                  gripper grasp centre / 5 cm above   distance < 3 cm
                           the red block's reset position
push_{red,green,blue}      block centre / pad centre at        x-y distance < 3 cm, on the table
_to_pad                    block-rest height
pick_place_red_on_pad      as push_red_to_pad (the expert      as push_red_to_pad
                           carries the block instead)
pick_and_lift_red          red centre / reset x-y, z = 0.10    red centre z > 0.08 (lifted 6 cm)
stack_red_on_blue          red centre / blue reset position    red over blue (x-y < 2 cm, height
                           + one block height                  difference 3-5 cm), fingers open
move_green_to_goal         green centre / random table point   x-y distance < 3 cm, on the table
=========================  =================================  ==================================

Goal images show the whole scene in the goal configuration, gripper included: the moved block at
``desired_goal`` (keeping its reset orientation), every other block where it is, and the gripper
where the scripted expert leaves it when done: 7 cm above the moved block (fingers open after a
placement, closed after a push), at the reach target (open), or holding the lifted block.
So a solved episode's last frame matches its goal image up to how precisely the block landed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.base import RobotEnv
from sim.tabletop import (
    ACTION_SCALE,
    BLOCK_HALF,
    BLOCKS,
    CAMERAS,
    FINGER_OPEN,
    TabletopEnv,
    TabletopGoal,
    TabletopObjective,
)
from tasks.control import (
    OPEN,
    GraspSpec,
    PushSpec,
    pick_and_place,
    push,
    servo,
    with_gripper,
)
from tasks.core import EnvFactory, StatelessExpert, Task, register

SUCCESS_RADIUS = 0.03
STACK_RADIUS = 0.02
REACH_HOVER = 0.05
LIFT_HEIGHT = 0.10
REST_HEIGHT = 0.07
BLOCK_HEIGHT = 2 * BLOCK_HALF

GRASP = GraspSpec(held_gap=BLOCK_HEIGHT, hover=0.06, clear_z=0.09, rest_height=REST_HEIGHT)
PUSH = PushSpec(contact=BLOCK_HALF + 0.012, push_z=BLOCK_HALF, clear_z=0.08, rest_height=REST_HEIGHT)

RESET_DISTRIBUTION = (
    "gripper open at x, y ~ U[-0.1, 0.1], z ~ U[0.12, 0.16]; pad centre ~ U[-0.15, 0.15]^2; "
    "blocks on the table ~ U[-0.16, 0.16]^2, yaw ~ U[-45, 45] deg, >= 10 cm apart, >= 9 cm "
    "from the pad"
)


def on_table(pos: np.ndarray) -> bool:
    return bool(pos[2] < BLOCK_HALF + 0.01)


def xy_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a[:2] - b[:2]))


def tabletop(env: RobotEnv) -> TabletopEnv:
    if not isinstance(env, TabletopEnv):
        raise TypeError(f"expected a TabletopEnv, got {type(env).__name__}")
    return env


def _goal(env: TabletopEnv) -> np.ndarray:
    if env.goal is None:
        raise RuntimeError("call reset() first")
    return env.goal.desired_goal


# ------------------------------------------------------------------------------- objectives
@dataclass(frozen=True)
class ReachBlock:
    """Bring the grasp centre 5 cm above ``block`` (its reset position)."""

    block: str
    goal_dim: ClassVar[int] = 3

    def sample_goal(self, env: TabletopEnv, rng: np.random.Generator) -> TabletopGoal:
        target = env.block_pos(self.block) + np.array([0.0, 0.0, REACH_HOVER])
        return TabletopGoal(target, {}, target, FINGER_OPEN)

    def achieved_goal(self, env: TabletopEnv) -> np.ndarray:
        return env.gripper_pos()

    def is_success(self, env: TabletopEnv) -> bool:
        return bool(np.linalg.norm(env.gripper_pos() - _goal(env)) < SUCCESS_RADIUS)


@dataclass(frozen=True)
class BlockToPoint:
    """Get ``block`` onto a table point: the pad centre, or a random point (``random_goal``)."""

    block: str
    random_goal: bool = False
    finger_half_gap: float = FINGER_OPEN  # in the goal image: closed after a push
    goal_dim: ClassVar[int] = 3

    def sample_goal(self, env: TabletopEnv, rng: np.random.Generator) -> TabletopGoal:
        if self.random_goal:
            xy = sample_free_point(env, rng, moving=self.block)
        else:
            xy = env.pad_pos()[:2]
        target = np.array([xy[0], xy[1], BLOCK_HALF])
        rest = target + np.array([0.0, 0.0, REST_HEIGHT])
        return TabletopGoal(target, {self.block: target}, rest, self.finger_half_gap)

    def achieved_goal(self, env: TabletopEnv) -> np.ndarray:
        return env.block_pos(self.block)

    def is_success(self, env: TabletopEnv) -> bool:
        pos = env.block_pos(self.block)
        return xy_distance(pos, _goal(env)) < SUCCESS_RADIUS and on_table(pos)


@dataclass(frozen=True)
class LiftBlock:
    """Lift ``block`` to 10 cm (centre) above where it started; success above 8 cm."""

    block: str
    goal_dim: ClassVar[int] = 3

    def sample_goal(self, env: TabletopEnv, rng: np.random.Generator) -> TabletopGoal:
        target = env.block_pos(self.block)
        target[2] = LIFT_HEIGHT
        return TabletopGoal(target, {self.block: target}, target, BLOCK_HALF)

    def achieved_goal(self, env: TabletopEnv) -> np.ndarray:
        return env.block_pos(self.block)

    def is_success(self, env: TabletopEnv) -> bool:
        return bool(env.block_pos(self.block)[2] > LIFT_HEIGHT - 0.02)


@dataclass(frozen=True)
class StackBlock:
    """Put ``top`` on ``bottom`` and let go."""

    top: str
    bottom: str
    goal_dim: ClassVar[int] = 3

    def sample_goal(self, env: TabletopEnv, rng: np.random.Generator) -> TabletopGoal:
        target = env.block_pos(self.bottom) + np.array([0.0, 0.0, BLOCK_HEIGHT])
        rest = target + np.array([0.0, 0.0, REST_HEIGHT])
        return TabletopGoal(target, {self.top: target}, rest, FINGER_OPEN)

    def achieved_goal(self, env: TabletopEnv) -> np.ndarray:
        return env.block_pos(self.top)

    def is_success(self, env: TabletopEnv) -> bool:
        top, bottom = env.block_pos(self.top), env.block_pos(self.bottom)
        dz = top[2] - bottom[2]
        released = env.finger_gap() > BLOCK_HEIGHT + 0.01
        return bool(xy_distance(top, bottom) < STACK_RADIUS and 0.03 < dz < 0.05 and released)


def sample_free_point(env: TabletopEnv, rng: np.random.Generator, moving: str, half_range: float = 0.15) -> np.ndarray:
    """A table point (x, y) >= 10 cm from ``moving`` and >= 8 cm from the other blocks."""
    while True:
        xy = rng.uniform(-half_range, half_range, size=2)
        if xy_distance(env.block_pos(moving), xy) < 0.10:
            continue
        if all(xy_distance(env.block_pos(b), xy) >= 0.08 for b in BLOCKS if b != moving):
            return xy


# ---------------------------------------------------------------------------------- experts
def width_across_fingers(quat: np.ndarray) -> float:
    """Extent (m) along world y (the finger axis) of a block with orientation ``quat``.

    Parallel fingers close on a yawed cube at its corners; this is the gap they stop at.
    """
    w, x, y, z = quat
    # First column of the rotation matrix is the block's x axis; its y component is sin(yaw).
    c, s = 1 - 2 * (y * y + z * z), 2 * (x * y + w * z)
    return 2 * BLOCK_HALF * (abs(c) + abs(s)) / max(np.hypot(c, s), 1e-9)


def reach_expert_to(env: TabletopEnv, target: np.ndarray) -> np.ndarray:
    return with_gripper(servo(env.gripper_pos(), target, ACTION_SCALE), OPEN)


def reach_expert(env: RobotEnv) -> np.ndarray:
    env = tabletop(env)
    return reach_expert_to(env, _goal(env))


@dataclass(frozen=True)
class PushExpert:
    block: str

    def __call__(self, env: RobotEnv) -> np.ndarray:
        env = tabletop(env)
        return push(env.gripper_pos(), env.block_pos(self.block), _goal(env), PUSH, ACTION_SCALE)


@dataclass(frozen=True)
class CarryExpert:
    """Pick ``block`` and carry it to ``desired_goal``, or onto the live ``onto`` block if set."""

    block: str
    release: bool = True
    onto: str | None = None

    def __call__(self, env: RobotEnv) -> np.ndarray:
        env = tabletop(env)
        target = _goal(env)
        if self.onto is not None:
            target = env.block_pos(self.onto) + np.array([0.0, 0.0, BLOCK_HEIGHT])
        return pick_and_place(
            env.gripper_pos(),
            env.finger_gap(),
            env.block_pos(self.block),
            target,
            GRASP,
            ACTION_SCALE,
            release=self.release,
            held_gap=width_across_fingers(env.block_quat(self.block)),
        )


# ----------------------------------------------------------------------------- registration
def env_factory(objective: TabletopObjective) -> EnvFactory:
    def build(image_size: int, cameras: Sequence[str] | None, seed: int | None, max_steps: int) -> TabletopEnv:
        return TabletopEnv(
            objective,
            image_size=image_size,
            cameras=cameras or ("front",),
            max_episode_steps=max_steps,
            seed=seed,
        )

    return build


def _register(
    name: str,
    description: str,
    objective: TabletopObjective,
    expert: Callable[[RobotEnv], np.ndarray],
    max_steps: int,
    achieved: str,
    success: str,
    goal_image: str,
) -> None:
    register(
        Task(
            name=f"tabletop/{name}",
            description=description,
            max_episode_steps=max_steps,
            reset_distribution=RESET_DISTRIBUTION,
            achieved_goal=achieved,
            success=success,
            goal_image=goal_image,
            cameras=CAMERAS,
            build_env=env_factory(objective),
            detector=lambda env: objective.is_success(tabletop(env)),
            expert=lambda: StatelessExpert(expert),
        )
    )


_register(
    "reach_red",
    "Move the open gripper to hover 5 cm above the red block.",
    ReachBlock("red"),
    reach_expert,
    40,
    "gripper grasp centre (x, y, z); desired = red block reset centre + (0, 0, 0.05)",
    f"gripper within {SUCCESS_RADIUS} m of desired_goal",
    "gripper (open) at desired_goal; blocks as they are",
)
for _block in BLOCKS:
    _register(
        f"push_{_block}_to_pad",
        f"Push the {_block} block onto the yellow pad with the closed gripper.",
        BlockToPoint(_block, finger_half_gap=0.0),
        PushExpert(_block),
        100,
        f"{_block} block centre; desired = pad centre at block-rest height",
        f"{_block} block centre within {SUCCESS_RADIUS} m (x-y) of the pad centre, on the table",
        f"{_block} block on the pad centre, closed gripper 7 cm above it",
    )
_register(
    "pick_place_red_on_pad",
    "Pick up the red block and put it down on the yellow pad.",
    BlockToPoint("red"),
    CarryExpert("red"),
    80,
    "red block centre; desired = pad centre at block-rest height",
    f"red block centre within {SUCCESS_RADIUS} m (x-y) of the pad centre, on the table",
    "red block on the pad centre, open gripper 7 cm above it",
)
_register(
    "pick_and_lift_red",
    "Grasp the red block and lift it 6-8 cm off the table.",
    LiftBlock("red"),
    CarryExpert("red", release=False),
    50,
    f"red block centre; desired = its reset x-y at z = {LIFT_HEIGHT}",
    f"red block centre higher than {LIFT_HEIGHT - 0.02} m (6 cm above resting)",
    "red block at desired_goal held by the gripper",
)
_register(
    "stack_red_on_blue",
    "Pick up the red block, put it on the blue block and let go.",
    StackBlock("red", "blue"),
    CarryExpert("red", onto="blue"),
    80,
    "red block centre; desired = blue block reset centre + (0, 0, 0.04)",
    f"red within {STACK_RADIUS} m (x-y) of blue, 3-5 cm above it, fingers open",
    "red block on the blue block, open gripper 7 cm above it",
)
_register(
    "move_green_to_goal",
    "Carry the green block to a random point on the table.",
    BlockToPoint("green", random_goal=True),
    CarryExpert("green"),
    80,
    "green block centre; desired = random table point (>= 10 cm from green's start, >= 8 cm "
    "from the other blocks) at block-rest height",
    f"green block centre within {SUCCESS_RADIUS} m (x-y) of the goal point, on the table",
    "green block at the goal point, open gripper 7 cm above it",
)
