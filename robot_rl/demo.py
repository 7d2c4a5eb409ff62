"""`robot-rl demo`: what the platform does today, end to end and for real, in about a minute.

1. collect unlabeled play and a scripted task in the MuJoCo tabletop world (2 worker processes)
   into a fresh lake, one commit per batch; tag the snapshot;
2. label a task's success on every stored step (MT-Opt data sharing);
3. draw goal-relabeled batches from the pinned tag and save a picture of one;
4. branch, delete, compact, verify every hash, diff and export — the lake's version control;
5. print the lake log and the stage timings.

Pretraining and finetuning join this script as they land.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data_lake import Lake
from data_lake.batch import GOAL_SOURCES, Batch
from data_lake.cli import _human_bytes

PLAY, PUSH = "tabletop/play", "tabletop/push_red_to_pad"


def add_demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo (today: collect -> lake -> sampler)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="output directory (recreated)")
    p.add_argument("--play-episodes", type=int, default=16)
    p.add_argument("--task-episodes", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=run_demo)


def _stage(name: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    timings[name] = time.perf_counter() - t0
    return out


def save_batch_picture(batch: Batch, path: Path, rows: int = 8) -> Path:
    """A grid: observation | next observation | goal, one row per transition, titled by goal source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cam = next(iter(batch.observations.images))
    names = {v: k for k, v in GOAL_SOURCES.items()}
    order = np.argsort(batch.goal_source.numpy(), kind="stable")[:: max(1, len(batch) // rows)][:rows]
    fig, axes = plt.subplots(len(order), 3, figsize=(5.4, 1.9 * len(order)))
    for r, i in enumerate(order):
        panels = [
            batch.observations.images[cam][i],
            batch.next_observations.images[cam][i],
            batch.goals.images[cam][i] if batch.goals is not None else None,
        ]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.axis("off")
            if img is not None:
                ax.imshow(img.numpy())
        src = names[int(batch.goal_source[i])]
        axes[r, 0].set_title(
            f"{src}  r={float(batch.rewards[i]):.0f}  G={float(batch.mc_returns[i]):.2f}", fontsize=7, loc="left"
        )
    for c, title in enumerate(("s_t", "s_t+1", "goal g")):
        axes[0, c].text(0.5, 1.25, title, transform=axes[0, c].transAxes, ha="center", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(args: argparse.Namespace) -> int:
    from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
    from sim.collect import CollectConfig, collect
    from tasks.label import detector_over_states

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    uri = str(out / "lake")
    t: dict[str, float] = {}

    def run(task: str, n: int, policy: str, seed: int) -> Any:
        return collect(
            CollectConfig(
                task=task,
                episodes=n,
                lake=uri,
                policy=policy,
                workers=args.workers,
                seed=seed,
                batch_episodes=8,
                cameras=("front",),
            )
        )

    print(f"1. collecting into {uri} with {args.workers} workers")
    r1 = _stage("collect play", t, lambda: run(PLAY, args.play_episodes, "expert", 0))
    r2 = _stage("collect task", t, lambda: run(PUSH, args.task_episodes, "noisy", 1))
    lake = Lake.open(uri)
    again = run(PUSH, args.task_episodes, "noisy", 1)
    print(
        f"   play: {r1.added} episodes at {r1.frames_per_s:.0f} frames/s; {PUSH} (noisy expert): {r2.added} "
        f"episodes, success {r2.successes}/{r2.added}; re-running it added {again.added} (resumed, no duplicates)"
    )
    v1 = lake.tag("v1")
    print(f"   tagged v1 -> {v1}")
    print(f"2. labelling {PUSH} success on every stored step (its detector over stored simulator states)")
    _stage("label", t, lambda: lake.label(PUSH, detector_over_states(PUSH)))
    lake.tag("v1-labelled")

    print("3. sampling goal-relabeled batches from the pinned tag v1-labelled")
    rc = RelabelConfig(future=0.5, final=0.1, negative=0.2, commanded=0.1, task=0.1, p_task=0.2)
    sampler = _stage(
        "sampler load",
        t,
        lambda: Sampler(lake.checkout("v1-labelled"), SamplerConfig(batch_size=256, relabel=rc), progress=False),
    )
    batches = _stage("sample 50 batches", t, lambda: [sampler.sample_host() for _ in range(50)])
    b = batches[0]
    counts = np.bincount(np.concatenate([x.goal_source.numpy() for x in batches]), minlength=5)
    share = ", ".join(f"{k} {c / counts.sum():.0%}" for k, c in zip(GOAL_SOURCES, counts, strict=True))
    print(
        f"   50 batches of 256 in {t['sample 50 batches']:.2f}s; goal sources: {share}; "
        f"reward rate {np.mean([x.rewards.mean().item() for x in batches]):.1%}"
    )
    pic = save_batch_picture(b, out / "batch.png")
    print(f"   picture of a batch (s_t, s_t+1, goal per row): {pic}")

    print("4. version control")
    lake.branch("no-play")
    rd = lake.delete(task=PLAY, branch="no-play", message="drop play episodes")
    rc2 = _stage("compact", t, lambda: lake.compact(target_steps=10**6))
    rep = _stage("verify", t, lambda: lake.verify("v1"))
    d = lake.diff("v1", "no-play")
    files = lake.export(out / "export", ref="v1", task=PUSH)
    print(f"   branch no-play: deleted {rd.removed} play episodes (main keeps {len(lake.checkout('main'))})")
    print(f"   compacted main: {rc2.segments_before} segments -> {rc2.segments_after}")
    print(f"   verify v1: {rep.episodes_checked} episode hashes recomputed: {'OK' if rep.ok else rep.problems}")
    print(
        f"   diff v1 -> no-play: +{len(d['added'])} -{len(d['removed'])} episodes; "
        f"exported {len(files)} {PUSH} episodes to {out / 'export'}"
    )

    info = lake.info("main")
    print(
        f"\nlake (main): {info['episodes']} episodes, {info['steps']} steps, raw {_human_bytes(info['raw_bytes'])}, "
        f"stored {_human_bytes(info['stored_bytes'])} for all history; tasks {info['tasks']}"
    )
    print("lake log (main):")
    for c in lake.log("main"):
        print(
            f"  {c.snapshot_id}  {c.operation or '-':8s} +{c.episodes_added:<3d} -{c.episodes_removed:<3d} "
            f"= {c.episodes_total:3d}  {c.message[:90]}"
        )
    print("\nstage timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    print(f"explore: robot-rl lake info --lake {uri}; robot-rl lake log --lake {uri} --ref no-play")
    return 0 if rep.ok else 1
