"""The tabletop world: a mocap-driven parallel gripper, three coloured blocks and a target pad.

Scene (``sim/assets/tabletop.xml``): the table top is the plane z = 0, walls enclose
x, y in [-0.25, 0.25] m, blocks are 4 cm cubes (red, green, blue) on free joints, the pad is a
flat yellow disc (radius 4.5 cm, visual only) on a mocap body.

Action (Fetch-style), 4 numbers in [-1, 1]:
    ``dx, dy, dz``: the end-effector mocap moves by ``action * ACTION_SCALE`` metres per step
    (clipped to :data:`MOCAP_LOW`/:data:`MOCAP_HIGH`); the gripper follows it through a
    ``connect`` constraint during ``N_SUBSTEPS`` physics steps of 4 ms (one env step = 40 ms).
    ``gripper``: absolute finger command, -1 = closed, +1 = fully open (8 cm gap).

Proprioceptive ``state`` (8,): gripper position (3), gripper velocity (3), left and right finger
half-gaps (2). The gripper position is its grasp centre: the point between the fingers that
coincides with a block's centre when the block is grasped on the table.

Reset distribution (:meth:`TabletopEnv._reset_world`): the gripper starts open at
x, y ~ U[-0.1, 0.1], z ~ U[0.12, 0.16]; the pad centre is uniform in [-0.15, 0.15]^2; the blocks
rest on the table, uniform in [-0.16, 0.16]^2 with yaw ~ U[-45, 45] deg, at least 10 cm apart
and at least 9 cm from the pad centre. The task's :class:`TabletopObjective` then samples its goal.

What a task asks for is an :class:`TabletopObjective` (defined in ``tasks.tabletop``): it
samples the goal at reset (a :class:`TabletopGoal`), defines ``achieved_goal`` and decides success
from simulator state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mujoco
import numpy as np

from sim.base import RobotEnv
from sim.render import CameraSpec

ASSET = Path(__file__).parent / "assets" / "tabletop.xml"
BLOCKS = ("red", "green", "blue")
BLOCK_HALF = 0.02
"""Half edge length of every block (m); a resting block's centre is at z = BLOCK_HALF."""
FINGER_OPEN = 0.04
"""Finger half-gap when fully open (m)."""
ACTION_SCALE = 0.04
"""Metres the mocap moves per step for a unit action."""
N_SUBSTEPS = 10
MOCAP_LOW = np.array([-0.235, -0.235, BLOCK_HALF])
MOCAP_HIGH = np.array([0.235, 0.235, 0.25])
CAMERAS = ("front", "wrist")
HELPER_SITE_GROUP = 3

BLOCK_RANGE = 0.16
PAD_RANGE = 0.15
MIN_BLOCK_GAP = 0.10
MIN_PAD_GAP = 0.09


@dataclass(frozen=True)
class TabletopGoal:
    """A commanded goal: its vector and the scene configuration that shows it.

    Attributes:
        desired_goal: the goal vector (layout defined by the objective).
        block_positions: goal centre of each block that the goal moves; other blocks stay put.
        gripper_pos: goal grasp-centre position of the gripper.
        finger_half_gap: goal finger half-gap (0 closed .. FINGER_OPEN open).
    """

    desired_goal: np.ndarray
    block_positions: Mapping[str, np.ndarray] = field(default_factory=dict)
    gripper_pos: np.ndarray | None = None
    finger_half_gap: float = FINGER_OPEN


class TabletopObjective(Protocol):
    """What a tabletop task asks for; implementations live in ``tasks.tabletop``."""

    @property
    def goal_dim(self) -> int: ...  # implementations: a ClassVar

    def sample_goal(self, env: TabletopEnv, rng: np.random.Generator) -> TabletopGoal: ...

    def achieved_goal(self, env: TabletopEnv) -> np.ndarray: ...

    def is_success(self, env: TabletopEnv) -> bool: ...


def yaw_quat(yaw: float) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation by ``yaw`` radians about +z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


class TabletopEnv(RobotEnv):
    """The tabletop scene driven by one :class:`TabletopObjective`.

    Args:
        objective: the task (goal sampling, achieved goal, success).
        image_size: square image size in pixels (default 64).
        cameras: any of ``("front", "wrist")``; default ``("front",)``.
        max_episode_steps: truncation horizon.
        seed: seed used by the first ``reset()`` called without one.
    """

    def __init__(
        self,
        objective: TabletopObjective,
        image_size: int = 64,
        cameras: Sequence[str] = ("front",),
        max_episode_steps: int = 80,
        seed: int | None = None,
    ) -> None:
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or not cameras:
            raise ValueError(f"tabletop cameras must be a non-empty subset of {CAMERAS}, got {cameras}")
        model = mujoco.MjModel.from_xml_path(str(ASSET))
        data = mujoco.MjData(model)
        self.objective = objective
        self.goal: TabletopGoal | None = None
        self._gripper_qpos = model.joint("gripper_x").qposadr[0]  # x, y, z are consecutive
        self._gripper_qvel = model.joint("gripper_x").dofadr[0]
        self._finger_qpos = [model.joint(f"finger_{s}").qposadr[0] for s in ("left", "right")]
        self._block_qpos = {b: model.joint(f"block_{b}").qposadr[0] for b in BLOCKS}
        self._block_qvel = {b: model.joint(f"block_{b}").dofadr[0] for b in BLOCKS}
        self._ee_mocap = model.body("ee_mocap").mocapid[0]
        self._pad_mocap = model.body("pad").mocapid[0]
        specs: dict[str, CameraSpec] = {name: name for name in cameras}
        super().__init__(
            model=model,
            data=data,
            cameras=specs,
            image_size=image_size,
            action_dim=4,
            state_dim=8,
            goal_dim=objective.goal_dim,
            scene_dim=3 + 3 * len(BLOCKS),
            max_episode_steps=max_episode_steps,
            seed=seed,
            hidden_site_groups=(HELPER_SITE_GROUP,),
        )

    # ------------------------------------------------------------------------ state accessors
    def gripper_pos(self) -> np.ndarray:
        """Grasp-centre position (3,) (a copy)."""
        i = self._gripper_qpos
        return self.data.qpos[i : i + 3].copy()

    def finger_gap(self) -> float:
        """Distance between the fingers' inner faces (m): 0 closed, 0.08 fully open."""
        return float(self.data.qpos[self._finger_qpos[0]] + self.data.qpos[self._finger_qpos[1]])

    def block_pos(self, block: str) -> np.ndarray:
        """Centre of ``block`` (3,) (a copy)."""
        i = self._block_qpos[block]
        return self.data.qpos[i : i + 3].copy()

    def block_quat(self, block: str) -> np.ndarray:
        i = self._block_qpos[block]
        return self.data.qpos[i + 3 : i + 7].copy()

    def pad_pos(self) -> np.ndarray:
        """Pad centre on the table (z = 0) (3,) (a copy)."""
        return self.data.mocap_pos[self._pad_mocap].copy()

    # ------------------------------------------------------------------------ state setters
    def set_block_pose(self, block: str, pos: np.ndarray, quat: np.ndarray | None = None) -> None:
        """Place ``block`` at ``pos`` (and ``quat``) at rest. Call ``mj_forward`` afterwards."""
        i, v = self._block_qpos[block], self._block_qvel[block]
        self.data.qpos[i : i + 3] = pos
        if quat is not None:
            self.data.qpos[i + 3 : i + 7] = quat
        self.data.qvel[v : v + 6] = 0.0

    def set_gripper(self, pos: np.ndarray, finger_half_gap: float) -> None:
        """Place the gripper (and its mocap target) at rest. Call ``mj_forward`` afterwards."""
        i, v = self._gripper_qpos, self._gripper_qvel
        self.data.qpos[i : i + 3] = pos
        self.data.qvel[v : v + 3] = 0.0
        self.data.mocap_pos[self._ee_mocap] = pos
        for q in self._finger_qpos:
            self.data.qpos[q] = finger_half_gap
        self.data.ctrl[:] = finger_half_gap

    # ------------------------------------------------------------------------ RobotEnv hooks
    def _reset_world(self, seed: int | None, options: dict[str, Any] | None) -> None:
        rng = self.np_random
        mujoco.mj_resetData(self.model, self.data)
        gripper = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), rng.uniform(0.12, 0.16)])
        self.set_gripper(gripper, FINGER_OPEN)
        pad = rng.uniform(-PAD_RANGE, PAD_RANGE, size=2)
        self.data.mocap_pos[self._pad_mocap] = [pad[0], pad[1], 0.0]
        placed: list[np.ndarray] = []
        for block in BLOCKS:
            while True:
                xy = rng.uniform(-BLOCK_RANGE, BLOCK_RANGE, size=2)
                far_from_blocks = all(np.linalg.norm(xy - p) >= MIN_BLOCK_GAP for p in placed)
                if far_from_blocks and np.linalg.norm(xy - pad) >= MIN_PAD_GAP:
                    break
            placed.append(xy)
            yaw = rng.uniform(-np.pi / 4, np.pi / 4)
            self.set_block_pose(block, np.array([xy[0], xy[1], BLOCK_HALF]), yaw_quat(yaw))
        mujoco.mj_forward(self.model, self.data)
        self.goal = self.objective.sample_goal(self, rng)
        if self.goal.desired_goal.shape != (self.objective.goal_dim,):
            raise ValueError(
                f"{type(self.objective).__name__} returned a goal of shape "
                f"{self.goal.desired_goal.shape}, expected ({self.objective.goal_dim},)"
            )

    def _apply_action(self, action: np.ndarray) -> None:
        mocap = self.data.mocap_pos[self._ee_mocap]
        mocap[:] = np.clip(mocap + action[:3] * ACTION_SCALE, MOCAP_LOW, MOCAP_HIGH)
        self.data.ctrl[:] = (action[3] + 1.0) / 2.0 * FINGER_OPEN
        mujoco.mj_step(self.model, self.data, nstep=N_SUBSTEPS)

    def proprio(self) -> np.ndarray:
        v = self._gripper_qvel
        fingers = [self.data.qpos[q] for q in self._finger_qpos]
        return np.concatenate([self.gripper_pos(), self.data.qvel[v : v + 3], fingers])

    def achieved_goal(self) -> np.ndarray:
        return np.asarray(self.objective.achieved_goal(self), dtype=np.float64)

    def scene_state(self) -> np.ndarray:
        """Gripper grasp centre then the red, green and blue block centres: float64 (12,)."""
        return np.concatenate([self.gripper_pos(), *(self.block_pos(b) for b in BLOCKS)])

    def desired_goal(self) -> np.ndarray:
        if self.goal is None:
            raise RuntimeError("call reset() before reading the goal")
        return self.goal.desired_goal

    def _success(self) -> bool:
        return bool(self.objective.is_success(self))

    def _pose_goal(self) -> None:
        if self.goal is None:
            raise RuntimeError("call reset() before rendering the goal")
        for block, pos in self.goal.block_positions.items():
            self.set_block_pose(block, pos)
        if self.goal.gripper_pos is not None:
            self.set_gripper(self.goal.gripper_pos, self.goal.finger_half_gap)
