"""``tabletop/play``: unlabeled play data, the kind Actionable Models learns goal reaching from.

A scripted "player" chains random sub-tasks in the tabletop scene without any reward:

* ``reach``: hover 5 cm above a random block;
* ``push``: push a random block to a random table point (closed gripper);
* ``pick_place``: carry a random block to a random table point;
* ``lift``: lift a random block 8 cm (the next sub-task may carry it on or drop it);
* ``stack``: put a random block on another one.

Each sub-task ends when done or after :data:`SUBTASK_STEPS` steps, then the next is drawn from
the policy's ``rng``. Blocks with another block on top are never moved from below. Random
points are >= 10 cm from the moved block and >= 8 cm from the others. Noise is added by the usual
:class:`tasks.core.Policy` wrapper, so ``noisy`` play exists too.

The task never succeeds (reward 0): ``achieved_goal`` is the three block centres (9,) (red,
green, blue) for hindsight relabeling; ``desired_goal`` is their reset positions and the goal image
the reset scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.base import RobotEnv
from sim.tabletop import ACTION_SCALE, BLOCK_HALF, BLOCKS, CAMERAS, TabletopEnv, TabletopGoal
from tasks.control import pick_and_place, push
from tasks.core import Task, register
from tasks.tabletop import (
    BLOCK_HEIGHT,
    GRASP,
    LIFT_HEIGHT,
    PUSH,
    REACH_HOVER,
    RESET_DISTRIBUTION,
    env_factory,
    reach_expert_to,
    sample_free_point,
    tabletop,
    width_across_fingers,
    xy_distance,
)

KINDS = ("reach", "push", "pick_place", "lift", "stack")
SUBTASK_STEPS = 80
PLAY_STEPS = 200


@dataclass(frozen=True)
class PlayObjective:
    """No goal: block centres are observed for relabeling, success never happens."""

    goal_dim: ClassVar[int] = 3 * len(BLOCKS)

    def sample_goal(self, env: TabletopEnv, rng: np.random.Generator) -> TabletopGoal:
        return TabletopGoal(self.achieved_goal(env))

    def achieved_goal(self, env: TabletopEnv) -> np.ndarray:
        return np.concatenate([env.block_pos(b) for b in BLOCKS])

    def is_success(self, env: TabletopEnv) -> bool:
        return False


@dataclass
class Subtask:
    kind: str
    block: str
    target: np.ndarray
    other: str | None = None
    steps_left: int = SUBTASK_STEPS


def _covered(env: TabletopEnv, block: str) -> bool:
    """Another block rests on top of ``block``."""
    pos = env.block_pos(block)
    return any(
        xy_distance(env.block_pos(b), pos) < 0.03 and env.block_pos(b)[2] > pos[2] + 0.02 for b in BLOCKS if b != block
    )


class PlayExpert:
    """Chains random sub-tasks; see the module docstring."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.subtask: Subtask | None = None

    def reset(self, env: RobotEnv, rng: np.random.Generator) -> None:
        self.rng = rng
        self.subtask = None

    def _sample(self, env: TabletopEnv) -> Subtask:
        free = [b for b in BLOCKS if not _covered(env, b)]
        kind = str(self.rng.choice(KINDS))
        block = str(self.rng.choice(free))
        if kind == "stack":
            bases = [b for b in free if b != block and env.block_pos(b)[2] < BLOCK_HALF + 0.01]
            if bases:
                other = str(self.rng.choice(bases))
                return Subtask(kind, block, env.block_pos(other), other=other)
            kind = "pick_place"
        if kind == "reach":
            return Subtask(kind, block, env.block_pos(block) + np.array([0.0, 0.0, REACH_HOVER]))
        if kind == "lift":
            lifted = env.block_pos(block)
            lifted[2] = LIFT_HEIGHT
            return Subtask(kind, block, lifted)
        xy = sample_free_point(env, self.rng, moving=block)
        return Subtask(kind, block, np.array([xy[0], xy[1], BLOCK_HALF]))

    def _done(self, env: TabletopEnv, sub: Subtask) -> bool:
        gripper, pos = env.gripper_pos(), env.block_pos(sub.block)
        rested = gripper[2] > pos[2] + 0.05
        if sub.kind == "reach":
            return bool(np.linalg.norm(gripper - sub.target) < 0.015)
        if sub.kind == "lift":
            return bool(pos[2] > sub.target[2] - 0.01)
        if sub.kind == "stack" and sub.other is not None:  # _sample: a stack subtask names its base
            on_top = xy_distance(pos, env.block_pos(sub.other)) < 0.015
            return on_top and pos[2] > env.block_pos(sub.other)[2] + 0.03 and rested
        return xy_distance(pos, sub.target) < 0.02 and rested

    def __call__(self, env: RobotEnv) -> np.ndarray:
        env = tabletop(env)
        sub = self.subtask
        if sub is None or sub.steps_left <= 0 or self._done(env, sub):
            sub = self.subtask = self._sample(env)
        sub.steps_left -= 1
        gripper, pos = env.gripper_pos(), env.block_pos(sub.block)
        if sub.kind == "reach":
            return reach_expert_to(env, sub.target)
        if sub.kind == "push":
            return push(gripper, pos, sub.target, PUSH, ACTION_SCALE)
        target = sub.target
        if sub.kind == "stack" and sub.other is not None:
            target = env.block_pos(sub.other) + np.array([0.0, 0.0, BLOCK_HEIGHT])
        return pick_and_place(
            gripper,
            env.finger_gap(),
            pos,
            target,
            GRASP,
            ACTION_SCALE,
            release=sub.kind != "lift",
            held_gap=width_across_fingers(env.block_quat(sub.block)),
        )


PLAY = register(
    Task(
        name="tabletop/play",
        description="Unlabeled play: a scripted player chains random reach/push/pick/stack.",
        max_episode_steps=PLAY_STEPS,
        reset_distribution=RESET_DISTRIBUTION,
        achieved_goal="red, green, blue block centres (9,); desired = their reset positions",
        success="never (play has no task; reward is always 0)",
        goal_image="the reset scene (play has no commanded goal)",
        cameras=CAMERAS,
        build_env=env_factory(PlayObjective()),
        detector=lambda env: False,
        expert=PlayExpert,
    )
)
