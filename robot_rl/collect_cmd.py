"""`robot-rl collect key=value ...`: scripted rollouts of a task into the lake (tasks/collect.py)."""

from __future__ import annotations

import argparse

from robot_rl.config import from_dict
from robot_rl.hydra_utils import compose, describe


def add_collect_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "collect",
        help="roll out a task's scripted or random policy in MuJoCo into the lake",
        description="Roll out a task with K worker processes; every batch of episodes is one lake commit.\n"
        "Settings are Hydra overrides (key=value); defaults from configs/collect.yaml:\n\n" + describe("collect"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. task=tabletop/reach_red episodes=50")
    p.add_argument("--list-tasks", action="store_true", help="print the known task names and exit")
    p.set_defaults(func=run_collect)


def run_collect(args: argparse.Namespace) -> int:
    import tasks
    from tasks.collect import CollectConfig, collect

    if args.list_tasks:
        for name in tasks.names():
            print(f"{name:34s} {tasks.get(name).description}")
        return 0
    cfg = from_dict(CollectConfig, compose("collect", args.overrides))
    res = collect(cfg)
    print(
        f"collected {cfg.task}: {res.added} episodes added, {res.skipped} already in the lake, "
        f"{len(res.commits)} commits, {res.frames} frames at {res.frames_per_s:.0f} frames/s, "
        f"success {res.successes}/{res.added or 1}"
    )
    return 0
