"""Evaluation in the simulator: success rate and return with confidence intervals, per-task results,
a rollout video, and a JSON summary. ``robot-rl eval ckpt=... task=... episodes=N``.

The agent acts through :class:`robot_rl.policy.LearnedPolicy` in :func:`sim.rollout.rollout` (the one
environment loop; ``num_envs`` envs stepped together, one batched policy call per step) and sees
exactly what it was trained on (its ``ObservationSpec``): the spec's cameras at the spec's image
size, the state vector, and the conditioning of its training batches (the task's goal images and
goal state, or the task's index in the vocabulary the checkpoint was trained with).

An episode succeeds when the task's success detector fires at any step; it ends there (or after
``max_steps``). The return is the sum of sparse rewards (1 on the success step). Intervals:
Wilson 95% for the success rate, normal 95% for the mean return. Episode ``i`` of task ``k`` resets
with seed ``cfg.seed + 1000·k + i`` — held out from collection, which uses seeds derived from
``SeedSequence([seed, index])``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import tasks as registry
from robot_rl.nets import ObservationSpec, SpecError
from robot_rl.policy import ActFn, LearnedPolicy, policy_act
from sim.base import RobotEnv
from sim.rollout import Policy, RandomPolicy, Trajectory, rollout

__all__ = [
    "ActFn",
    "EvalConfig",
    "EvalResult",
    "evaluate",
    "goal_distance",
    "policy_act",
    "wilson_interval",
    "write_video",
]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...]
    episodes: int = 20  # per task
    seed: int = 100_000
    num_envs: int = 4  # environments stepped together (one batched policy call per step)
    max_steps: int | None = None  # None: the task's episode length
    deterministic: bool = True
    video_episodes: int = 4  # 0: no video
    video_format: str = "mp4"  # mp4 | gif
    progress: bool = True
    backend: str = "local"  # local: this process | ray: batches fanned out over Ray actors
    workers: int = 1  # backend=ray: rollout actors
    ray_address: str | None = None  # backend=ray: the cluster to join (None: start a local one)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("evaluation needs at least one task")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.episodes < 1 or self.num_envs < 1:
            raise ValueError(f"episodes and num_envs must be >= 1, got {self.episodes}, {self.num_envs}")
        if self.video_format not in ("mp4", "gif"):
            raise ValueError(f"video_format must be 'mp4' or 'gif', got {self.video_format!r}")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _summary(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(episodes)
    wins = sum(e["success"] for e in episodes)
    returns = np.array([e["return"] for e in episodes], np.float64)
    half = 1.96 * returns.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    lo, hi = wilson_interval(wins, n)
    return {
        "episodes": n,
        "success_rate": wins / n,
        "success_ci95": [lo, hi],
        "mean_return": float(returns.mean()),
        "return_ci95": [float(returns.mean() - half), float(returns.mean() + half)],
        "mean_steps": float(np.mean([e["steps"] for e in episodes])),
        "mean_final_distance": float(np.mean([e.get("final_distance", np.nan) for e in episodes])),
    }


@dataclasses.dataclass
class EvalResult:
    summary: dict[str, Any]  # over all episodes
    per_task: dict[str, dict[str, Any]]
    episodes: list[dict[str, Any]]
    video: str | None = None

    @property
    def success_rate(self) -> float:
        return float(self.summary["success_rate"])

    def to_json(self) -> dict[str, Any]:
        return {**self.summary, "per_task": self.per_task, "video": self.video, "episode_results": self.episodes}


def goal_distance(obs: dict[str, Any]) -> float:
    """‖achieved_goal − desired_goal‖ of an env observation: the task's own measure of how far it is."""
    return float(np.linalg.norm(np.asarray(obs["achieved_goal"], np.float64) - obs["desired_goal"]))


def evaluate(
    act: ActFn | None,
    spec: ObservationSpec,
    cfg: EvalConfig,
    task_vocab: Sequence[str] = (),
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    name: str = "eval",
    checkpoint: str | Path | None = None,
) -> EvalResult:
    """Roll out ``act`` (None: uniform random actions) on every task of ``cfg``; write JSON and video to ``out_dir``.

    ``backend=ray`` sends each batch of ``num_envs`` episodes to one of ``workers`` Ray actors, which
    load the policy from ``checkpoint`` themselves (on the CPU); the batches, seeds and episode
    order are those of the local loop, so a deterministic policy gives the same episodes. A random
    policy (``act`` None) draws from one stream per batch there, not one over the whole run."""
    _, cameras = render_settings(spec)
    for task_name in cfg.tasks:
        check_task(task_name, spec, cameras, task_vocab)
    video_left = cfg.video_episodes
    items = []  # (task, task number, episode indices, which of them are recorded for the video)
    for k, task_name in enumerate(cfg.tasks):
        for idx in batches(cfg.episodes, min(cfg.num_envs, cfg.episodes)):
            video = [j < video_left for j in range(len(idx))]
            video_left -= sum(video)
            items.append((task_name, k, list(idx), video))
    episodes: list[dict[str, Any]] = []
    clips: list[list[np.ndarray]] = []
    bar = tqdm(total=cfg.episodes * len(cfg.tasks), desc=name, unit="ep", disable=not cfg.progress, leave=False)
    runner = None if cfg.backend == "ray" else BatchRunner(act, spec, cfg, task_vocab, device)
    if runner is None:
        results = _ray_batches(items, spec, cfg, task_vocab, checkpoint, act is None)
    else:
        results = (runner.run(*item) for item in items)
    try:
        for rows, batch_clips in results:
            episodes += rows
            clips += batch_clips
            bar.update(len(rows))
    finally:
        if runner is not None:
            runner.close()
    bar.close()
    per_task = {t: _summary([e for e in episodes if e["task"] == t]) for t in cfg.tasks}
    result = EvalResult(_summary(episodes), per_task, episodes)
    if out_dir is not None:
        write_result(result, clips, Path(out_dir), name, cfg.video_format)
    return result


class BatchRunner:
    """Runs evaluation batches: its envs per task (built once, ``num_envs`` of them) and the policy.
    The local loop holds one; with ``backend=ray`` each actor holds one (:class:`EvalWorker`)."""

    def __init__(
        self,
        act: ActFn | None,
        spec: ObservationSpec,
        cfg: EvalConfig,
        task_vocab: Sequence[str],
        device: str | torch.device,
        random_per_batch: bool = False,
    ):
        self.act, self.spec, self.cfg, self.task_vocab, self.device = act, spec, cfg, task_vocab, device
        self.image_size, self.cameras = render_settings(spec)
        self.random = RandomPolicy(np.random.default_rng(cfg.seed))  # one stream over every task
        self.random_per_batch = random_per_batch
        self.envs: dict[str, list[RobotEnv]] = {}

    def run(self, task_name: str, k: int, idx: list[int], video: list[bool]) -> tuple[list[dict[str, Any]], list[Any]]:
        """Episodes ``idx`` of task number ``k``: their result rows and the clips of those in ``video``."""
        task = registry.get(task_name)
        if task_name not in self.envs:
            self.close()  # batches come task by task: the previous task's envs are done
            n = min(self.cfg.num_envs, self.cfg.episodes)
            self.envs[task_name] = [task.make_env(self.image_size, self.cameras or task.cameras[:1]) for _ in range(n)]
        active = self.envs[task_name][: len(idx)]
        for env, v in zip(active, video, strict=True):  # a state-only agent needs no render, except for video
            env.render_images = bool(self.cameras) or v
        policy: Policy
        if self.act is None:
            rng = np.random.default_rng([self.cfg.seed, k, idx[0]]) if self.random_per_batch else None
            policy = RandomPolicy(rng) if rng is not None else self.random
        else:
            policy = LearnedPolicy(self.act, self.spec, self.device, task_index(self.spec, self.task_vocab, task_name))
        seeds = [self.cfg.seed + 1000 * k + i for i in idx]
        trajectories = rollout(active, policy, seeds, self.cfg.max_steps or task.max_episode_steps, record=video)
        rows = [episode_result(task_name, i, t, e) for i, t, e in zip(idx, trajectories, active, strict=True)]
        clips = [video_clip(t, task_name, self.spec.has_goal) for t, v in zip(trajectories, video, strict=True) if v]
        return rows, clips

    def close(self) -> None:
        for envs in self.envs.values():
            for env in envs:
                env.close()
        self.envs.clear()


class EvalWorker:
    """A Ray actor of an evaluation: the policy loaded from the checkpoint, and a :class:`BatchRunner`."""

    def __init__(
        self, checkpoint: str | None, spec: ObservationSpec, cfg: EvalConfig, task_vocab: Sequence[str], random: bool
    ):
        torch.set_num_threads(1)
        act = None
        if not random:
            from robot_rl.checkpoint import load_policy

            assert checkpoint is not None
            algo, _ = load_policy(checkpoint, "cpu")
            act = policy_act(algo, cfg.deterministic, cfg.seed)
        self.runner = BatchRunner(act, spec, cfg, task_vocab, "cpu", random_per_batch=True)

    def run(self, item: tuple[str, int, list[int], list[bool]]) -> tuple[list[dict[str, Any]], list[Any]]:
        return self.runner.run(*item)


def _ray_batches(
    items: list[tuple[str, int, list[int], list[bool]]],
    spec: ObservationSpec,
    cfg: EvalConfig,
    task_vocab: Sequence[str],
    checkpoint: str | Path | None,
    random: bool,
) -> Iterator[tuple[list[dict[str, Any]], list[Any]]]:
    from tasks import ray_backend

    if not random and checkpoint is None:
        raise ValueError("backend=ray evaluates a checkpoint: its workers load it (pass checkpoint=)")
    with ray_backend.session(cfg.ray_address, cfg.workers):
        ckpt = None if checkpoint is None else str(checkpoint)
        workers = ray_backend.actors(EvalWorker, cfg.workers, ckpt, spec, cfg, list(task_vocab), random)
        yield from ray_backend.ordered_map(workers, lambda w, item: w.run.remote(item), items)


def batches(episodes: int, size: int) -> list[range]:
    """Episode indices ``0..episodes-1`` in consecutive batches of ``size`` (the last may be smaller)."""
    return [range(start, min(start + size, episodes)) for start in range(0, episodes, size)]


def render_settings(spec: ObservationSpec) -> tuple[int, tuple[str, ...]]:
    """(image size, cameras) the envs must render for the agent: its observation and goal cameras."""
    sizes = {*spec.image_sizes, *spec.goal_image_sizes}
    if len(sizes) > 1 or any(h != w for h, w in sizes):
        raise SpecError(f"evaluation renders square images of one size; the spec has sizes {sorted(sizes)}")
    image_size = next(iter(sizes))[0] if sizes else 64
    return image_size, tuple(dict.fromkeys([*spec.cameras, *spec.goal_cameras]))


def check_task(name: str, spec: ObservationSpec, cameras: Sequence[str], task_vocab: Sequence[str]) -> registry.Task:
    """The task ``name``, refused when it lacks the agent's cameras or the agent was not told about it."""
    task = registry.get(name)
    if any(c not in task.cameras for c in cameras):
        raise SpecError(f"the agent needs cameras {list(cameras)}; task {name} has {list(task.cameras)}")
    if spec.num_tasks and name not in task_vocab:
        raise SpecError(f"the agent was trained on tasks {list(task_vocab)}; it cannot be told {name!r}")
    return task


def task_index(spec: ObservationSpec, task_vocab: Sequence[str], name: str) -> int | None:
    """The task id a task-conditioned agent is told (None for other agents)."""
    return list(task_vocab).index(name) if spec.num_tasks else None


def episode_result(task: str, index: int, traj: Trajectory, env: RobotEnv) -> dict[str, Any]:
    """One row of ``episode_results`` (``env``: where ``traj`` ran, still in its last state)."""
    goal = env.scene_goal()
    return {
        "task": task,
        "episode": index,
        "seed": traj.seed,
        "success": traj.success,
        "return": traj.episode_return,
        "steps": traj.steps,
        "goal": [round(float(x), 4) for x in goal],
        "start_distance": round(goal_distance(traj.first), 4),
        "final_distance": round(goal_distance(traj.last), 4),
    }


def video_clip(traj: Trajectory, task: str, show_goal: bool) -> list[np.ndarray]:
    """The frames of a recorded trajectory; the last one framed green (success) or red."""
    goal = traj.goal_images if show_goal else {}
    frames = [_video_frame(o["images"], goal, task, None) for o in traj.observations[:-1]]
    return [*frames, _video_frame(traj.observations[-1]["images"], goal, task, traj.success)]


def write_result(result: EvalResult, clips: list[list[np.ndarray]], out: Path, name: str, video_format: str) -> None:
    """``<out>/<name>.json`` and, with clips, ``<out>/<name>.<video_format>``."""
    out.mkdir(parents=True, exist_ok=True)
    if clips:
        result.video = str(write_video(clips, out / f"{name}.{video_format}"))
    (out / f"{name}.json").write_text(json.dumps(result.to_json(), indent=1))


def _video_frame(
    images: dict[str, np.ndarray], goal: dict[str, np.ndarray], task: str, success: bool | None
) -> np.ndarray:
    """One frame: every camera side by side, then the goal images; a green/red border at the end."""
    tiles = [images[c] for c in sorted(images)] + [goal[c] for c in sorted(goal)]
    frame = np.concatenate(tiles, axis=1)  # (H, W·n, 3)
    if success is not None:
        frame = frame.copy()
        colour = (0, 200, 0) if success else (220, 0, 0)
        frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = colour, colour, colour, colour
    return frame


def write_video(clips: list[list[np.ndarray]], path: Path, fps: int = 10) -> Path:
    """Episodes one below the other, each held on its last frame until the longest ends (mp4 or gif)."""
    import cv2

    width = max(c[0].shape[1] for c in clips)
    length = max(len(c) for c in clips)
    frames = []
    for t in range(length):
        rows = []
        for c in clips:
            f = c[min(t, len(c) - 1)]
            rows.append(np.pad(f, ((0, 0), (0, width - f.shape[1]), (0, 0))))
        frames.append(np.concatenate(rows, axis=0))  # (H·n, W, 3)
    h, w = frames[0].shape[:2]
    scale = max(1, 256 // h)
    frames = [cv2.resize(f, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST) for f in frames]
    if path.suffix == ".gif":
        from PIL import Image

        pil = [Image.fromarray(f) for f in frames]
        pil[0].save(path, save_all=True, append_images=pil[1:], duration=1000 // fps, loop=0)
        return path
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w * scale, h * scale))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (mp4v); use video_format=gif")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
