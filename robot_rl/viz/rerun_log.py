"""Log lake episodes, sampled batches and evaluation rollouts to a Rerun recording (``robot-rl lake
view``, ``robot-rl eval rrd=...``). The functions only log to the recording stream they are given;
opening the lake, choosing episodes and saving or spawning the viewer belong to the callers.

Entity layout (``<id>``: the first 12 characters of the episode id)::

    episodes/<id>/
        cameras/<cam>                      Image       per step
        goal/<cam>                         Image       static: the commanded goal image, if any
        goal/state                         TextDocument static: the commanded goal state, if any
        state                              Scalars     per step, one series per dimension (state[i])
        action                             Scalars     per step, one series per dimension (action[i])
        reward                             Scalars     per step
        labels/<source>/<task>/success     Scalars     per step, 0/1: one stored label set each
        labels/<source>/<task>/confidence  Scalars     per step, when the label set stores one
        labels/<source>/<task>/provenance  TextDocument static: who labelled, how (JSON)
        info                               TextDocument static: task, language, success, length, ...
        provenance                         TextDocument static: the episode's metadata (JSON)
    batch/                                 one sampled Batch, row r at ``row`` = r
        observations/<cam>, next_observations/<cam>, goals/<cam>   Image
        observations/state, goals/state, action                     Scalars
        reward, mc_return, goal_source, task_id                     Scalars
        info                                                        TextDocument per row
    eval/<task>/episode_<i>/               an evaluation rollout (as episodes/, without labels)

Timelines: ``step`` (sequence) and ``time`` (timestamp, from ``timestamp_ns``) for episodes,
``step`` for rollouts, ``row`` for a batch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import rerun as rr

from data_lake.batch import GOAL_SOURCES
from data_lake.episode import Episode
from data_lake.segment import split_label_key

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import torch

    from data_lake.batch import Batch, Observation
    from robot_rl.evaluate import ActFn, EvalConfig
    from robot_rl.nets import ObservationSpec
    from sim.rollout import Trajectory

__all__ = [
    "episode_path",
    "log_batch",
    "log_episode",
    "log_eval_rollouts",
    "log_trajectory",
    "new_recording",
]

SHORT_ID = 12  # characters of an episode id in its entity path
GOAL_SOURCE_NAMES = {code: name for name, code in GOAL_SOURCES.items()}


def new_recording(name: str) -> rr.RecordingStream:
    """A recording stream of robot-rl (application id ``robot-rl``) named ``name`` in the viewer, on the
    data's own timelines only (no wall-clock ``log_time``)."""
    rec = rr.RecordingStream("robot-rl")
    rec.set_log_time_enabled(False)
    rec.set_log_tick_enabled(False)
    rec.send_recording_name(name)
    return rec


def episode_path(episode_id: str) -> str:
    return f"episodes/{episode_id[:SHORT_ID]}"


def _json(data: Any) -> rr.TextDocument:
    text = "```json\n" + json.dumps(data, indent=1, sort_keys=True, default=str) + "\n```"
    return rr.TextDocument(text, media_type=rr.MediaType.MARKDOWN)


def _scalars(
    rec: rr.RecordingStream, path: str, values: np.ndarray, indexes: list[rr.TimeColumn], name: str | None = None
) -> None:
    """(T,) or (T, D) values as one time series per dimension, named ``name[i]``."""
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        values = values[:, None]
    values = values.reshape(len(values), -1)  # (T, D)
    if name is not None:
        names = [name] if values.shape[1] == 1 else [f"{name}[{i}]" for i in range(values.shape[1])]
        rec.log(path, rr.SeriesLines(names=names), static=True)
    rec.send_columns(path, indexes=indexes, columns=rr.Scalars.columns(scalars=values))


def log_episode(
    rec: rr.RecordingStream,
    episode: Episode,
    labels: Mapping[str, np.ndarray] | None = None,
    confidence: Mapping[str, np.ndarray] | None = None,
    label_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    episode_id: str | None = None,
) -> str:
    """Log one episode under ``episodes/<id>`` (see the module docstring); returns that path.

    ``labels``: label key (``task`` or ``task@source``) -> (T,) success labels of this episode,
    ``confidence`` the same keys -> (T,) confidences, ``label_attrs`` key -> the label set's provenance
    (``SegmentData.episode_labels``, ``episode_label_confidence``, ``label_attrs``).
    """
    eid = episode_id or episode.episode_id
    root = episode_path(eid)
    T = len(episode)
    steps = np.arange(T, dtype=np.int64)
    indexes = [rr.TimeColumn("step", sequence=steps)]
    if "timestamp_ns" in episode.steps:
        stamps = np.asarray(episode.steps["timestamp_ns"], np.int64).astype("datetime64[ns]")
        indexes.append(rr.TimeColumn("time", timestamp=stamps))
    for cam in episode.cameras:
        frames = np.asarray(episode.steps[f"images/{cam}"])  # (T, H, W, 3) uint8
        for t in range(T):
            rec.set_time("step", sequence=t)
            if len(indexes) > 1:
                rec.set_time("time", timestamp=np.datetime64(int(episode.steps["timestamp_ns"][t]), "ns"))
            rec.log(f"{root}/cameras/{cam}", rr.Image(frames[t]))
    rec.reset_time()
    for key, goal in episode.goal.items():
        if key.startswith("images/"):
            rec.log(f"{root}/goal/{key.split('/', 1)[1]}", rr.Image(np.asarray(goal)), static=True)
    if "state" in episode.goal:
        rec.log(f"{root}/goal/state", _json(np.asarray(episode.goal["state"]).tolist()), static=True)
    for key in ("state", "action", "reward"):
        if key in episode.steps:
            _scalars(rec, f"{root}/{key}", episode.steps[key], indexes, key)
    for key, values in (labels or {}).items():
        task, source = split_label_key(key)
        where = f"{root}/labels/{source}/{task}"
        _scalars(rec, f"{where}/success", np.asarray(values, np.float64), indexes, f"{key} success")
        if confidence and key in confidence:
            _scalars(rec, f"{where}/confidence", confidence[key], indexes, f"{key} confidence")
        attrs = {"task": task, "source": source, **dict((label_attrs or {}).get(key, {}))}
        rec.log(f"{where}/provenance", _json(attrs), static=True)
    info = {
        "episode_id": eid,
        "task": episode.task,
        "language": episode.language,
        "success": episode.success,
        "source": episode.source,
        "robot": episode.robot,
        "created_at": episode.created_at,
        "steps": T,
        "cameras": episode.cameras,
        "goal": sorted(episode.goal),
    }
    rec.log(f"{root}/info", _json(info), static=True)
    rec.log(f"{root}/provenance", _json(dict(episode.metadata)), static=True)
    return root


def _images(obs: Observation | None) -> dict[str, np.ndarray]:
    """Camera -> uint8 (B, H, W, 3) of a host (uint8, channels-last) or device (float, channels-first) batch."""
    import torch

    out: dict[str, np.ndarray] = {}
    for cam, img in (obs.images if obs is not None else {}).items():
        x = img.detach().cpu()
        if x.is_floating_point():  # (B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        out[cam] = x.numpy()
    return out


def log_batch(rec: rr.RecordingStream, batch: Batch, *, prefix: str = "batch", tasks: tuple[str, ...] = ()) -> int:
    """Log a Batch as rows (``row`` timeline, one step per row; see the module docstring); returns
    the number of rows. ``tasks``: the sampler's task vocabulary, to name ``task_ids``."""
    B = batch.rewards.shape[0]
    rows = [rr.TimeColumn("row", sequence=np.arange(B, dtype=np.int64))]
    parts = {"observations": batch.observations, "next_observations": batch.next_observations, "goals": batch.goals}
    for part, obs in parts.items():
        for cam, frames in _images(obs).items():
            for r in range(B):
                rec.set_time("row", sequence=r)
                rec.log(f"{prefix}/{part}/{cam}", rr.Image(frames[r]))
        if obs is not None and obs.state is not None:
            _scalars(rec, f"{prefix}/{part}/state", obs.state.detach().cpu().numpy(), rows, "state")
    rec.reset_time()
    columns = {
        "action": batch.actions,
        "reward": batch.rewards,
        "terminal": batch.terminals,
        "mc_return": batch.mc_returns,
        "goal_source": batch.goal_source,
        "task_id": batch.task_ids,
    }
    for key, values in columns.items():
        _scalars(rec, f"{prefix}/{key}", values.detach().cpu().numpy(), rows, key)
    source = batch.goal_source.cpu().numpy()
    task_ids = batch.task_ids.cpu().numpy()
    for r in range(B):
        rec.set_time("row", sequence=r)
        task = tasks[int(task_ids[r])] if 0 <= int(task_ids[r]) < len(tasks) else int(task_ids[r])
        info = {
            "row": r,
            "goal_source": GOAL_SOURCE_NAMES.get(int(source[r]), int(source[r])),
            "reward": float(batch.rewards[r]),
            "terminal": float(batch.terminals[r]),
            "mc_return": float(batch.mc_returns[r]),
            "task": task,
        }
        rec.log(f"{prefix}/info", _json(info))
    rec.reset_time()
    return int(B)


def log_trajectory(rec: rr.RecordingStream, traj: Trajectory, path: str, info: Mapping[str, Any]) -> str:
    """Log a recorded simulator rollout (``sim.rollout.Trajectory`` with ``record=True``) under ``path``:
    camera frames and state of its T + 1 observations, its T actions and rewards on ``step``, its goal
    images (static) and ``info`` (a text document)."""
    if not traj.observations:
        raise ValueError(f"{path}: the trajectory was not recorded (rollout(..., record=True)); nothing to log")
    for t, obs in enumerate(traj.observations):  # T + 1 observations
        rec.set_time("step", sequence=t)
        for cam, img in sorted(obs.get("images", {}).items()):
            rec.log(f"{path}/cameras/{cam}", rr.Image(np.asarray(img)))
    rec.reset_time()
    steps = [rr.TimeColumn("step", sequence=np.arange(len(traj.observations), dtype=np.int64))]
    if all("state" in o for o in traj.observations):
        _scalars(rec, f"{path}/state", np.stack([o["state"] for o in traj.observations]), steps, "state")
    if traj.actions:
        acted = [rr.TimeColumn("step", sequence=np.arange(traj.steps, dtype=np.int64))]
        _scalars(rec, f"{path}/action", np.stack(traj.actions), acted, "action")
        _scalars(rec, f"{path}/reward", np.asarray(traj.rewards), acted, "reward")
    for cam, img in traj.goal_images.items():
        rec.log(f"{path}/goal/{cam}", rr.Image(np.asarray(img)), static=True)
    record = {**info, "seed": traj.seed, "steps": traj.steps, "success": traj.success, "return": traj.episode_return}
    rec.log(f"{path}/info", _json(record), static=True)
    return path


def log_eval_rollouts(
    path: str | Path,
    act: ActFn,
    spec: ObservationSpec,
    cfg: EvalConfig,
    task_vocab: Sequence[str] = (),
    device: str | torch.device = "cpu",
    episodes: int = 4,
) -> Path:
    """Roll ``act`` out again for the first ``episodes`` evaluation episodes of each task of ``cfg``
    (the same reset seeds, ``cfg.seed + 1000·k + i``, and the same batching as ``robot_rl.evaluate``,
    so a deterministic policy replays the evaluated episodes), recording every frame, and save them to
    the Rerun file ``path`` under ``eval/<task>/episode_<i>``. State-only agents are rendered with the
    task's first camera."""
    from pathlib import Path

    from robot_rl.evaluate import batches, check_task, render_settings, task_index
    from robot_rl.policy import LearnedPolicy
    from sim.rollout import rollout

    if episodes < 1:
        raise ValueError(f"rrd_episodes must be >= 1 (episodes logged per task), got {episodes}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = new_recording(f"eval {', '.join(cfg.tasks)}")
    rec.save(str(out))
    image_size, cameras = render_settings(spec)
    n = min(episodes, cfg.episodes)
    for k, task_name in enumerate(cfg.tasks):
        task = check_task(task_name, spec, cameras, task_vocab)
        policy = LearnedPolicy(act, spec, device, task_index(spec, task_vocab, task_name))
        envs = [task.make_env(image_size, cameras or task.cameras[:1]) for _ in range(min(cfg.num_envs, n))]
        try:
            for env in envs:
                env.render_images = True
            for idx in batches(n, len(envs)):
                seeds = [cfg.seed + 1000 * k + i for i in idx]
                trajs = rollout(envs[: len(idx)], policy, seeds, cfg.max_steps or task.max_episode_steps, record=True)
                for i, traj in zip(idx, trajs, strict=True):
                    log_trajectory(rec, traj, f"eval/{task_name}/episode_{i}", {"task": task_name, "episode": i})
        finally:
            for env in envs:
                env.close()
    rec.flush()
    rec.disconnect()
    return out
