"""`robot-rl lake view`: look at a lake's episodes (or one sampled, relabeled batch) in Rerun.

    robot-rl lake view --ref main --task tabletop/reach_red --limit 5 --save reach.rrd
    robot-rl lake view 3f2a9c1e0b7d --save one.rrd          (episode ids, or unique prefixes of them)
    robot-rl lake view --batch --batch-size 32 --save batch.rrd

With ``--save`` the recording goes to an ``.rrd`` file (open it with ``rerun FILE``); without it the
Rerun viewer is spawned, which needs a display. What is logged where: robot_rl/viz/rerun_log.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import rerun as rr

    from data_lake.lake import EpisodeRecord, LakeView

DEFAULT_LIMIT = 20  # episodes logged when no ids are given


def has_display() -> bool:
    """Whether a viewer window can open here (macOS and Windows always can)."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def select_episodes(
    view: LakeView, ids: list[str], task: str | None = None, limit: int | None = DEFAULT_LIMIT
) -> list[EpisodeRecord]:
    """The episodes to log: ``ids`` (full ids or unique prefixes, in the order given), else those of
    ``task`` (else all) in lake order, at most ``limit`` of them. Unknown ids, an empty task: ValueError."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    records = view.episodes()
    where = f"{view.ref} (snapshot {view.snapshot_id})"
    if ids:
        if task is not None:
            raise ValueError("give episode ids or --task, not both")
        chosen = []
        for i in ids:
            found = [r for r in records if r.episode_id.startswith(i)]
            if not found:
                some = ", ".join(r.episode_id[:12] for r in records[:3]) or "none"
                raise ValueError(f"episode {i} is not in {where}; it has {len(records)} episodes, e.g. {some}")
            if len(found) > 1:
                raise ValueError(f"episode id prefix {i} matches {len(found)} episodes of {where}; give more of it")
            chosen.append(found[0])
        return chosen
    if task is not None:
        records = [r for r in records if r.task == task]
        if not records:
            tasks = sorted({r.task for r in view.episodes()})
            raise ValueError(f"no episodes of task {task!r} in {where}; its tasks are {tasks}")
    if not records:
        raise ValueError(f"{where} holds no episodes")
    return records if limit is None else records[:limit]


def log_episodes(rec: rr.RecordingStream, view: LakeView, records: list[EpisodeRecord], progress: bool = True) -> int:
    """Log ``records`` of ``view`` with every stored label set of their segments; returns the steps logged."""
    from tqdm import tqdm

    from robot_rl.viz.rerun_log import log_episode

    segments: dict[str, Any] = {}
    steps = 0
    for r in tqdm(records, desc="log episodes", unit="ep", disable=not progress or len(records) < 2, leave=False):
        if r.segment not in segments:  # labels, confidences and provenance only: no step arrays
            segments = {r.segment: view.read_segment(r.segment, fields=[])}
        seg = segments[r.segment]
        episode = view.read_episode(r.episode_id)
        log_episode(
            rec,
            episode,
            seg.episode_labels(r.index),
            seg.episode_label_confidence(r.index),
            seg.label_attrs,
            episode_id=r.episode_id,
        )
        steps += len(episode)
    return steps


def sample_batch(view: LakeView, batch_size: int, seed: int, segments: int = 0) -> tuple[Any, tuple[str, ...]]:
    """One host Batch of the lake's sampler (default relabeling, no augmentation) and its task vocabulary;
    ``segments`` > 0: from that many random segments only (the sampler's streaming mode), not the whole lake."""
    from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig

    cfg = SamplerConfig(
        batch_size=batch_size,
        relabel=RelabelConfig(),
        augment_pad=0,
        prefetch=1,
        seed=seed,
        streaming_segments=segments,
    )
    with Sampler(view, cfg, progress=False) as sampler:
        return sampler.sample_host(), sampler.tasks


def cmd_view(a: argparse.Namespace) -> None:
    from data_lake.lake import Lake
    from robot_rl.viz.rerun_log import log_batch, new_recording

    if a.save is None and not has_display():
        raise ValueError(
            "no display ($DISPLAY and $WAYLAND_DISPLAY are unset), so the Rerun viewer cannot open; "
            "write a file with --save out.rrd and open it where there is a screen (`rerun out.rrd`)"
        )
    if a.batch and (a.episodes or a.task):
        raise ValueError("--batch samples from the whole snapshot: give no episode ids or --task with it")
    view = Lake.open(a.lake).checkout(a.ref)
    records = [] if a.batch else select_episodes(view, a.episodes, a.task, a.limit)
    rec = new_recording(f"lake {a.ref} ({view.snapshot_id[:12]})")
    if a.save is not None:
        from pathlib import Path

        Path(a.save).parent.mkdir(parents=True, exist_ok=True)
        rec.save(a.save)
    else:
        rec.spawn()
    if a.batch:
        batch, tasks = sample_batch(view, a.batch_size, a.seed, a.segments)
        rows = log_batch(rec, batch, tasks=tasks)
        what: dict[str, Any] = {"rows": rows}
        text = f"logged one sampled batch ({rows} rows, default relabeling, seed {a.seed}) of {a.ref}"
    else:
        steps = log_episodes(rec, view, records, progress=not a.json)
        what = {"episodes": [r.episode_id for r in records], "steps": steps}
        total = len(view.episodes(a.task)) if not a.episodes else len(records)
        more = f" (first {len(records)} of {total}; --limit to change)" if total > len(records) else ""
        text = f"logged {len(records)} episode{'s' if len(records) > 1 else ''} ({steps} steps) of {a.ref}{more}"
    rec.flush()
    if a.save is not None:
        rec.disconnect()
    d = {"ref": a.ref, "snapshot_id": view.snapshot_id, "rrd": a.save, **what}
    text += f" to {a.save} (open it with `rerun {a.save}`)" if a.save else " to the Rerun viewer"
    print(json.dumps(d, indent=1) if a.json else text)


def add_view_parser(cmds: argparse._SubParsersAction, lake_arg: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    """Add ``view`` to the ``lake`` subcommands (``lake_arg`` adds --lake, --json, --verbose)."""
    help = "log episodes (cameras, state, action, reward, labels, provenance) or a sampled batch to Rerun"
    p = cmds.add_parser("view", help=help, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    lake_arg(p)
    p.set_defaults(func=cmd_view)
    p.add_argument("episodes", nargs="*", metavar="EPISODE_ID", help="episode ids or unique prefixes (default: all)")
    p.add_argument("--ref", default="main", help="branch, tag or snapshot id (default: main)")
    p.add_argument("--task", default=None, help="only this task's episodes")
    p.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"at most N episodes without ids (default {DEFAULT_LIMIT})"
    )
    p.add_argument("--save", default=None, metavar="OUT.rrd", help="write a Rerun file instead of spawning the viewer")
    p.add_argument("--batch", action="store_true", help="log one sampled, relabeled batch (one row per `row` step)")
    p.add_argument("--batch-size", type=int, default=64, help="rows of --batch (default 64)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed of --batch (default 0)")
    p.add_argument(
        "--segments",
        type=int,
        default=8,
        metavar="K",
        help="--batch reads K random segments, not the whole lake (default 8; 0: the whole lake, as training does)",
    )
