"""`robot-rl ogbench generate DATASET --episodes N --lake PATH`: an OGBench dataset, generated with
OGBench's environments and oracles (tasks/ogbench_data.py), written into the lake in one commit
and optionally also as OGBench's ``.npz`` pair."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from data_lake.lake import DEFAULT_URI, Lake


def add_ogbench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "ogbench",
        help="OGBench datasets: generate them into the lake",
        description="OGBench datasets (Park et al. 2024). Existing .npz files: robot-rl lake ingest --format ogbench.",
    )
    cmds = p.add_subparsers(dest="ogbench_cmd", required=True, metavar="COMMAND")
    g = cmds.add_parser(
        "generate",
        help="generate a dataset with OGBench's environments and oracles into the lake",
        description="Generate an OGBench dataset (train + episodes // 10 val trajectories) with OGBench's "
        "environments and oracles, and write it into the lake in one commit (docs/ingest.md).",
    )
    g.add_argument("dataset", help="e.g. cube-single-play-v0, cube-single-noisy-v0, pointmaze-medium-navigate-v0")
    g.add_argument("--episodes", type=int, required=True, help="training trajectories (OGBench: 1000)")
    g.add_argument("--lake", default=os.environ.get("ROBOT_RL_LAKE", DEFAULT_URI), help="lake URI (created if absent)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-episode-steps", type=int, default=1001, help="steps per trajectory (OGBench: 1001)")
    g.add_argument("--branch", default="main")
    g.add_argument("-m", "--message", default=None)
    g.add_argument("--npz", default=None, help="also write OUT.npz and OUT-val.npz (OGBench's files)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from tasks.ogbench_data import generate, settings, spec_of, write_to_lake

    name, _ = spec_of(args.dataset)  # unknown names fail here, before any work
    meta = settings(name, args.episodes, args.seed, args.max_episode_steps)
    lake = Lake.open_or_create(args.lake)
    t0 = time.perf_counter()
    train, val = generate(name, args.episodes, args.seed, args.max_episode_steps, progress=not args.quiet)
    gen_s = time.perf_counter() - t0
    steps = len(train["terminals"]) + len(val["terminals"])
    if args.npz:
        out = Path(args.npz)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, **train)  # type: ignore[arg-type]
        if len(val["terminals"]):
            np.savez_compressed(out.with_name(out.name.removesuffix(".npz") + "-val.npz"), **val)  # type: ignore[arg-type]
    res = write_to_lake(lake, train, val, meta, branch=args.branch, message=args.message)
    print(
        f"generated {name} (seed {args.seed}): {steps} steps in {args.episodes} train + {args.episodes // 10} val "
        f"trajectories in {gen_s:.1f} s ({steps / gen_s:.0f} steps/s); added {res.added} episodes to "
        f"{args.branch} (snapshot {res.snapshot_id}), {res.skipped_duplicates} already present"
        + (f"; wrote {args.npz}" if args.npz else "")
    )
    return 0
