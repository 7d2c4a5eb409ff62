"""OGBench evaluation tasks: ``ogbench/<env>-task<k>``, OGBench's five fixed evaluation goals per env.

=================================  ===================  ==================================  =====
task                               OGBench env          OGBench task (``task_infos``)       steps
=================================  ===================  ==================================  =====
ogbench/cube-single-task1..5       cube-single-v0       task1_horizontal, task2_vertical1,  200
                                                        task3_vertical2, task4_diagonal1,
                                                        task5_diagonal2
ogbench/pointmaze-medium-task1..5  pointmaze-medium-v0  task1 .. task5                      1000
=================================  ===================  ==================================  =====

Each task resets with ``options={"task_id": k}``: OGBench's own start for task ``k`` with its noise
(cube: the arm at a random pose, the cube at the task's start +-1 cm in x, y with a random yaw;
maze: the agent at the start cell's centre +-1 m in x, y) and OGBench's goal observation
(cube: the cube at the task's goal, the arm at a random pose; maze: the goal cell's centre +-1 m).
Observations, goals and images are :class:`sim.ogbench.OGBenchEnv`'s: ``state`` =
``achieved_goal`` = the OGBench observation vector (cube-single 28, pointmaze 2), ``desired_goal``
= ``env.scene_goal()`` = OGBench's ``info["goal"]`` (the layout of the lake's OGBench datasets).
Success is the env's ``info["success"]``: every cube within 4 cm of its goal / the agent within
1 m of the goal; :func:`cube_detector` and :func:`maze_detector` recompute it from MuJoCo state.
Goal image: the simulator state OGBench computes its goal observation in (cube at the goal with the
arm at OGBench's goal pose; the agent at the goal), goal markers never drawn.

Experts: cube: OGBench's own scripted cube oracle (``CubeMarkovOracle``) on the
env's last ``info``, with the task's target added (OGBench only reports it in data-collection
mode) and its random final arm pose drawn from the policy's RNG (OGBench draws it from numpy's global
RNG). Maze: OGBench's BFS subgoal (``get_oracle_subgoal``: the centre of the next cell toward the
goal), then the goal itself once in the goal cell; the action is the unit direction to it (slowed
within 0.2 m, one step). Measured with seeds 0-19 (noise-free): see :data:`EXPERT_SUCCESS`.

Benchmarks pick an env's five tasks with :func:`ogbench_tasks` (``ogbench_tasks("cube-single")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sim.base import RobotEnv
from sim.ogbench import OGBenchEnv
from tasks.core import EnvFactory, StatelessExpert, Task, register

ENVS: dict[str, dict[str, Any]] = {
    "cube-single": {
        "env_id": "cube-single-v0",
        "steps": 200,
        "cameras": ("front",),
        "task_names": ("task1_horizontal", "task2_vertical1", "task3_vertical2", "task4_diagonal1", "task5_diagonal2"),
        "success": "the cube within 4 cm of its goal position (the env's info['success'])",
        "goal_image": "the cube at its goal (upright), the gripper at OGBench's random goal pose",
        "reset": "OGBench's task start: the cube at the task's start +-1 cm in x, y, random yaw; arm at a random pose",
    },
    "pointmaze-medium": {
        "env_id": "pointmaze-medium-v0",
        "steps": 1000,
        "cameras": ("top",),
        "task_names": ("task1", "task2", "task3", "task4", "task5"),
        "success": "the agent within 1 m of the goal (the env's info['success'])",
        "goal_image": "the agent at the goal",
        "reset": "OGBench's task start: start cell centre +-1 m in x, y; goal cell centre +-1 m",
    },
}
"""OGBench env name -> how its five tasks are registered (``task_names``: OGBench's ``task_infos``)."""

CUBE_SUCCESS_DISTANCE = 0.04
MAZE_SUBGOAL_SLOWDOWN = 0.2
"""The maze expert moves ``min(1, distance / 0.2)`` of a full step (0.2 m) toward its (sub)goal."""

EXPERT_SUCCESS = {"cube-single": 1.0, "pointmaze-medium": 1.0}
"""Noise-free expert success over seeds 0-19, every task of the env (measured: ``tests/
test_tasks_registry.py -m slow``). First success after 31-68 steps (cube, limit 200) and 79-168 steps
(pointmaze, limit 1000); both experts then hold the solved state to the end of the episode."""


def ogbench(env: RobotEnv) -> OGBenchEnv:
    if not isinstance(env, OGBenchEnv):
        raise TypeError(f"expected an OGBenchEnv, got {type(env).__name__}")
    return env


def cube_detector(env: RobotEnv) -> bool:
    """Every cube within 4 cm of its target (OGBench's ``_compute_successes``), from MuJoCo state."""
    inner = ogbench(env).inner
    for i, mocap in enumerate(inner._cube_target_mocap_ids):
        cube = env.data.joint(f"object_joint_{i}").qpos[:3]
        if np.linalg.norm(cube - env.data.mocap_pos[mocap]) > CUBE_SUCCESS_DISTANCE:
            return False
    return True


def maze_detector(env: RobotEnv) -> bool:
    """The agent within the env's goal tolerance (1 m for the point) of the goal, from MuJoCo state."""
    inner = ogbench(env).inner
    return bool(np.linalg.norm(inner.get_xy()[:2] - inner.cur_goal_xy) <= inner._goal_tol)


class CubeOracleExpert:
    """OGBench's ``CubeMarkovOracle`` (single cube) behind the :class:`tasks.core.Expert` protocol."""

    def __init__(self) -> None:
        self.oracle: Any = None

    def reset(self, env: RobotEnv, rng: np.random.Generator) -> None:
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

        inner = ogbench(env).inner
        if len(inner._cube_target_mocap_ids) != 1:
            raise ValueError(f"{env.env_id}: the cube expert handles one cube")  # type: ignore[attr-defined]
        self.oracle = CubeMarkovOracle(env=inner, min_norm=0.4)
        self.oracle.reset(None, None)
        self.oracle._final_pos = rng.uniform(*inner._arm_sampling_bounds)
        self.oracle._final_yaw = rng.uniform(-np.pi, np.pi)

    def __call__(self, env: RobotEnv) -> np.ndarray:
        from ogbench.manipspace import lie

        env = ogbench(env)
        mocap = env.inner._cube_target_mocap_ids[0]
        info = {
            **env.ogbench_info,
            "privileged/target_block": 0,
            "privileged/target_block_pos": env.data.mocap_pos[mocap].copy(),
            "privileged/target_block_yaw": np.array([lie.SO3(wxyz=env.data.mocap_quat[mocap]).compute_yaw_radians()]),
        }
        return np.asarray(self.oracle.select_action(env.ogbench_ob, info), np.float64)


def maze_expert(env: RobotEnv) -> np.ndarray:
    """Unit direction to OGBench's BFS subgoal (the goal itself in the goal cell)."""
    inner = ogbench(env).inner
    xy, goal = np.asarray(inner.get_xy()[:2], np.float64), np.asarray(inner.cur_goal_xy, np.float64)
    if inner.xy_to_ij(xy) == inner.xy_to_ij(goal):
        target = goal
    else:
        target, _ = inner.get_oracle_subgoal(xy, goal)
    delta = np.asarray(target, np.float64) - xy
    return delta / max(float(np.linalg.norm(delta)), MAZE_SUBGOAL_SLOWDOWN)


def _factory(env_id: str, task_id: int) -> EnvFactory:
    def build(image_size: int, cameras: Sequence[str] | None, seed: int | None, max_steps: int) -> OGBenchEnv:
        return OGBenchEnv(
            env_id, task_id=task_id, image_size=image_size, cameras=cameras, max_episode_steps=max_steps, seed=seed
        )

    return build


def ogbench_tasks(env: str) -> list[str]:
    """The registered task names of an OGBench env, task 1..5: ``ogbench_tasks("cube-single")``."""
    if env not in ENVS:
        raise KeyError(f"no OGBench tasks for {env!r}; known: {sorted(ENVS)}")
    return [f"ogbench/{env}-task{k}" for k in range(1, len(ENVS[env]["task_names"]) + 1)]


def _register(env: str) -> None:
    spec = ENVS[env]
    cube = env.startswith("cube")
    expert: Any = CubeOracleExpert if cube else (lambda: StatelessExpert(maze_expert))
    for k, (name, task_name) in enumerate(zip(ogbench_tasks(env), spec["task_names"], strict=True), start=1):
        register(
            Task(
                name=name,
                description=f"OGBench {spec['env_id']} evaluation task {k} ({task_name}).",
                max_episode_steps=spec["steps"],
                reset_distribution=spec["reset"],
                achieved_goal="OGBench's observation vector; desired = OGBench's goal observation (info['goal'])",
                success=spec["success"],
                goal_image=spec["goal_image"],
                cameras=spec["cameras"],
                build_env=_factory(spec["env_id"], k),
                detector=cube_detector if cube else maze_detector,
                expert=expert,
            )
        )


for _env in ENVS:
    _register(_env)
