"""Step + render throughput of the worlds: ``python -m sim.bench [--steps N] [--size 64]``.

Each world takes uniform random actions; one measured step is ``env.step`` including rendering
every observation camera. Run it pinned to one core (``taskset -c 0``) to compare with the
numbers in the docs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from sim.base import RobotEnv
from sim.robotics import FetchEnv, PointMazeEnv
from sim.tabletop import TabletopEnv, TabletopGoal


class _NoGoal:
    goal_dim = 3

    def sample_goal(self, env: TabletopEnv, rng: np.random.Generator) -> TabletopGoal:
        return TabletopGoal(env.block_pos("red"))

    def achieved_goal(self, env: TabletopEnv) -> np.ndarray:
        return env.block_pos("red")

    def is_success(self, env: TabletopEnv) -> bool:
        return False


def steps_per_second(make: Callable[[], RobotEnv], steps: int) -> float:
    env = make()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, *env.action_space.shape))
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    worlds: dict[str, tuple[Callable[[], RobotEnv], int]] = {
        "tabletop (front)": (lambda: TabletopEnv(_NoGoal(), args.size, ("front",), 10**9), args.steps),
        "tabletop (front+wrist)": (
            lambda: TabletopEnv(_NoGoal(), args.size, ("front", "wrist"), 10**9),
            args.steps,
        ),
        "FetchPush-v4": (lambda: FetchEnv("FetchPush-v4", args.size, max_episode_steps=10**9), args.steps // 5),
        "PointMaze_UMaze-v3": (lambda: PointMazeEnv(image_size=args.size, max_episode_steps=10**9), args.steps),
    }
    for name, (make, steps) in worlds.items():
        print(f"{name:24s} {steps_per_second(make, steps):8.0f} steps/s ({args.size}x{args.size})")


if __name__ == "__main__":
    main()
