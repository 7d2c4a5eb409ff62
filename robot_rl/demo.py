"""`robot-rl demo`: what the platform does today, end to end and for real.

Today that is the versioned episode lake: create a lake, commit image episodes of two tasks,
show that re-appending is a no-op, tag a release, branch and delete on the branch, compact,
verify every hash, diff two refs, export, and print the log. Later stages (simulation collection,
pretraining, finetuning) join this script as they land.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_lake import Lake
from data_lake.cli import _human_bytes
from data_lake.synthetic import synthetic_episode


def add_demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the end-to-end demo (today: a tour of the episode lake)", description=__doc__)
    p.add_argument("--out", default="runs/demo", help="output directory (recreated)")
    p.add_argument("--episodes", type=int, default=40, help="episodes per task")
    p.set_defaults(func=run_demo)


def _stage(name: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    timings[name] = time.perf_counter() - t0
    return out


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t: dict[str, float] = {}
    n = args.episodes
    lake = _stage("create", t, lambda: Lake.create(out / "lake"))
    print(f"1. created lake {out / 'lake'}")

    def gen(task: str, seeds: range) -> list:
        return [synthetic_episode(s, length=50, cameras=("front", "wrist"), task=task) for s in seeds]

    pushes = _stage("generate", t, lambda: gen("synthetic/push", range(n)) + gen("synthetic/reach", range(n, 2 * n)))
    r1 = _stage("append", t, lambda: lake.append(pushes[:n], message="push episodes"))
    r2 = lake.append(pushes[n:], message="reach episodes")
    r3 = lake.append(pushes[: n // 4], message="re-append some push episodes")
    print(
        f"2. appended {r1.added} + {r2.added} episodes in two commits; re-appending {n // 4} "
        f"added {r3.added}, skipped {r3.skipped_duplicates} duplicates (no commit: {r3.snapshot_id is None})"
    )
    v1 = lake.tag("v1")
    print(f"3. tagged v1 -> {v1}")
    lake.branch("push-only")
    rd = lake.delete(task="synthetic/reach", branch="push-only", message="keep push episodes only")
    print(f"4. branch push-only: deleted {rd.removed} reach episodes; main still has {len(lake.checkout('main'))}")
    rc = _stage("compact", t, lambda: lake.compact(target_steps=10**6))
    print(f"5. compacted main: {rc.segments_before} segments -> {rc.segments_after}")
    rep = _stage("verify", t, lambda: lake.verify("v1"))
    print(f"6. verify v1: {rep.episodes_checked} episode hashes recomputed, {'OK' if rep.ok else rep.problems}")
    d = lake.diff("v1", "push-only")
    print(f"7. diff v1 -> push-only: +{len(d['added'])} -{len(d['removed'])} episodes")
    files = lake.export(out / "export", ref="v1", task="synthetic/push")
    print(f"8. exported {len(files)} push episodes from v1 to {out / 'export'}")
    info = _stage("load", t, lambda: lake.info("main"))
    print(
        f"\nlake info (main): {info['episodes']} episodes, {info['steps']} steps, raw "
        f"{_human_bytes(info['raw_bytes'])}, stored {_human_bytes(info['stored_bytes'])}, tasks {info['tasks']}"
    )
    print("\nlake log (main):")
    for c in lake.log("main"):
        print(
            f"  {c.snapshot_id}  {c.operation or '-':8s} +{c.episodes_added} -{c.episodes_removed} "
            f"= {c.episodes_total:3d}  {c.message}"
        )
    print("\nstage timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    print(
        f"\nexplore it: robot-rl lake info --lake {out / 'lake'} ; "
        f"robot-rl lake log --lake {out / 'lake'} --ref push-only"
    )
    return 0 if rep.ok else 1
