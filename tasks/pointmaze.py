"""``pointmaze/umaze``: gymnasium-robotics ``PointMaze_UMaze-v3`` with a waypoint-following expert.

Reset distribution (the env's own): goal and ball start in random free cells of the U-shaped
maze (at least one cell apart), each jittered by U[-0.25, 0.25] m in x and y; the task is
continuing (the goal stays fixed; episodes are truncated at 300 steps).
``achieved_goal`` = ball x, y; ``desired_goal`` = goal x, y; success is the env's
``info["success"]``: distance <= 0.45 m (:func:`detector` recomputes it from MuJoCo state).
The goal image is the maze with the ball at the goal (the red goal marker is never drawn).

Expert: breadth-first search over free cells from the ball's cell to the goal's cell; the ball is
driven by a PD law toward the centre of the next cell on the path (the goal itself in the goal
cell), so it follows the corridor around the U's inner wall.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from sim.base import RobotEnv
from sim.robotics import POINTMAZE_CAMERAS, PointMazeEnv
from tasks.core import StatelessExpert, Task, register

SUCCESS_DISTANCE = 0.45
KP, KD = 10.0, 1.5
"""PD gains of the expert: action = clip(KP * (waypoint - x) - KD * v, -1, 1)."""


def pointmaze(env: RobotEnv) -> PointMazeEnv:
    if not isinstance(env, PointMazeEnv):
        raise TypeError(f"expected a PointMazeEnv, got {type(env).__name__}")
    return env


def detector(env: RobotEnv) -> bool:
    env = pointmaze(env)
    return bool(np.linalg.norm(env.data.qpos[:2] - env.goal) <= SUCCESS_DISTANCE)


def shortest_path(
    maze_map: Sequence[Sequence[object]], start: tuple[int, int], goal: tuple[int, int]
) -> list[tuple[int, int]]:
    """Cells from ``start`` to ``goal`` (both included) through non-wall cells (4-connected)."""
    parents: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        i, j = cell
        for nxt in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            inside = 0 <= nxt[0] < len(maze_map) and 0 <= nxt[1] < len(maze_map[0])
            if inside and maze_map[nxt[0]][nxt[1]] != 1 and nxt not in parents:
                parents[nxt] = cell
                queue.append(nxt)
    if goal not in parents:
        raise ValueError(f"no path from cell {start} to cell {goal}")
    path = [goal]
    while (parent := parents[path[-1]]) is not None:
        path.append(parent)
    return path[::-1]


def waypoint_expert(env: RobotEnv) -> np.ndarray:
    env = pointmaze(env)
    maze, pos, goal = env.maze, env.ball_pos(), env.goal
    (r0, c0), (r1, c1) = maze.cell_xy_to_rowcol(pos), maze.cell_xy_to_rowcol(goal)
    path = shortest_path(maze.maze_map, (int(r0), int(c0)), (int(r1), int(c1)))
    waypoint = goal if len(path) == 1 else maze.cell_rowcol_to_xy(np.array(path[1]))
    return np.clip(KP * (waypoint - pos) - KD * env.ball_vel(), -1.0, 1.0)


def _build(image_size: int, cameras: Sequence[str] | None, seed: int | None, max_steps: int) -> PointMazeEnv:
    return PointMazeEnv(
        "PointMaze_UMaze-v3",
        image_size=image_size,
        cameras=cameras,
        max_episode_steps=max_steps,
        seed=seed,
    )


UMAZE = register(
    Task(
        name="pointmaze/umaze",
        description="Drive the force-actuated ball through the U-maze to the goal.",
        max_episode_steps=300,
        reset_distribution="PointMaze_UMaze-v3's own: random free goal and start cells, +-0.25 m jitter",
        achieved_goal="ball (x, y); desired = goal (x, y)",
        success=f"distance <= {SUCCESS_DISTANCE} m (the env's info['success'])",
        goal_image="the ball at the goal, at rest",
        cameras=tuple(POINTMAZE_CAMERAS["PointMaze_UMaze-v3"]),
        build_env=_build,
        detector=detector,
        expert=lambda: StatelessExpert(waypoint_expert),
    )
)
