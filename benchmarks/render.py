"""Step + render throughput of the worlds, against their physics alone.

    .venv/bin/python -m benchmarks.render [--quick] [--json PATH] [--size 64]

Each world takes uniform random actions; one measured step is ``env.step`` including rendering
every observation camera (MUJOCO_GL, default egl). The baseline in the same run is the same
world's physics step without rendering, so ``render_share`` says how much of a step is drawing.
Pin it to one core (``taskset -c 0``) to compare with the figures in the docs: tabletop
step + render >= 500/s on one core at 64x64.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from benchmarks.report import report
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


def steps_per_second(make: Callable[[], RobotEnv], steps: int, render: bool = True) -> float:
    env = make()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, *env.action_space.shape))
    if not render:  # physics only: the same step without drawing the cameras
        env.observe = lambda: {}  # type: ignore[method-assign]
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps (< 60 s)")
    parser.add_argument("--json", default=None, help="write the figures as flat JSON here")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    steps = 300 if args.quick else 1500
    worlds: dict[str, tuple[Callable[[], RobotEnv], int]] = {
        "tabletop_front": (lambda: TabletopEnv(_NoGoal(), args.size, ("front",), 10**9), steps),
        "tabletop_front_wrist": (lambda: TabletopEnv(_NoGoal(), args.size, ("front", "wrist"), 10**9), steps),
        "fetchpush": (lambda: FetchEnv("FetchPush-v4", args.size, max_episode_steps=10**9), steps // 5),
        "pointmaze": (lambda: PointMazeEnv(image_size=args.size, max_episode_steps=10**9), steps),
    }
    figs: dict[str, float] = {}
    for name, (make, n) in worlds.items():
        figs[f"{name}_steps_per_s"] = steps_per_second(make, n)
        figs[f"{name}_physics_steps_per_s"] = steps_per_second(make, n, render=False)
        figs[f"{name}_render_share"] = 1 - figs[f"{name}_steps_per_s"] / figs[f"{name}_physics_steps_per_s"]
    print(
        f"step + render at {args.size}x{args.size}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}, "
        f"{os.cpu_count()} cores (pin with taskset -c 0 for per-core figures)"
    )
    report(figs, {"tabletop_front_steps_per_s": ">= 500 (one core)"}, args.json)


if __name__ == "__main__":
    main()
