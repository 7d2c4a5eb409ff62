"""Evaluation in the simulator: success rate and return with confidence intervals, per-task results,
a rollout video, and a JSON summary. ``robot-rl eval ckpt=... task=... episodes=N``.

The agent sees exactly what it was trained on (its ``ObservationSpec``): the spec's cameras at the
spec's image size, the proprioceptive ``state``, and the conditioning of its training batches:

    goal   the task's goal images (``task.goal_images``: the goal configuration rendered from the
           same cameras) and goal state (``env.scene_goal()``, the lake's ``achieved_goal`` layout)
    task   the task's index in the vocabulary the checkpoint was trained with

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data_lake.batch import Observation
from robot_rl.nets import ObservationSpec, SpecError

# (observation, goal, task_ids) on the device -> actions (B, A) in [-1, 1]
ActFn = Callable[[Observation, Observation | None, torch.Tensor | None], torch.Tensor]


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

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("evaluation needs at least one task")
        if self.episodes < 1 or self.num_envs < 1:
            raise ValueError(f"episodes and num_envs must be >= 1, got {self.episodes}, {self.num_envs}")
        if self.video_format not in ("mp4", "gif"):
            raise ValueError(f"video_format must be 'mp4' or 'gif', got {self.video_format!r}")


def policy_act(algo: Any, deterministic: bool = True, seed: int = 0) -> ActFn:
    """``algo``'s policy as an ``ActFn`` with an RNG of its own: evaluating never consumes the training
    RNG (so an evaluation does not change the run around it), and sampling policies (CEM draws
    candidates even when deterministic) act the same way at every evaluation."""
    policy = algo.policy
    generator = torch.Generator(algo.device).manual_seed(seed)

    def act(obs: Observation, goal: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
        return policy(obs, goal, task_ids, deterministic, generator)

    return act


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


def observation_state(obs: dict[str, Any], spec: ObservationSpec) -> np.ndarray:
    """The state vector the networks were trained on, from an env observation: proprioception
    (``obs["state"]``) and, when the spec observes it, the scene vector (``obs["scene"]``)."""
    parts = []
    if spec.proprio_dim:
        parts.append(obs["state"])
    if spec.scene_state_dim:
        if "scene" not in obs:
            raise SpecError("the agent observes the scene vector (scene_state_dim > 0) but the env gives no 'scene'")
        parts.append(obs["scene"])
    state = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    if state.shape[0] != spec.state_dim:
        raise SpecError(
            f"the agent's state has {spec.state_dim} dims ({spec.proprio_dim} proprioception + {spec.scene_state_dim} "
            f"scene); the env gives {state.shape[0]}"
        )
    return state


def goal_distance(obs: dict[str, Any]) -> float:
    """‖achieved_goal − desired_goal‖ of an env observation: the task's own measure of how far it is."""
    return float(np.linalg.norm(np.asarray(obs["achieved_goal"], np.float64) - obs["desired_goal"]))


def to_device_observation(
    frames: list[dict[str, np.ndarray]], states: list[np.ndarray] | None, spec_cams: Sequence[str], device: torch.device
) -> Observation:
    images = {}
    for cam in spec_cams:
        x = torch.from_numpy(np.stack([f[cam] for f in frames])).to(device)  # (B, H, W, 3) uint8
        images[cam] = x.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)
    state = None if states is None else torch.from_numpy(np.stack(states).astype(np.float32)).to(device)  # (B, S)
    return Observation(images, state)


def evaluate(
    act: ActFn | None,
    spec: ObservationSpec,
    cfg: EvalConfig,
    task_vocab: Sequence[str] = (),
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    name: str = "eval",
) -> EvalResult:
    """Roll out ``act`` (None: uniform random actions) on every task of ``cfg``; write JSON and video to ``out_dir``."""
    import tasks as registry

    device = torch.device(device)
    sizes = {*spec.image_sizes, *spec.goal_image_sizes}
    if len(sizes) > 1 or any(h != w for h, w in sizes):
        raise SpecError(f"evaluation renders square images of one size; the spec has sizes {sorted(sizes)}")
    image_size = next(iter(sizes))[0] if sizes else 64
    cams = tuple(dict.fromkeys([*spec.cameras, *spec.goal_cameras]))
    rng = np.random.default_rng(cfg.seed)
    episodes: list[dict[str, Any]] = []
    videos: list[list[np.ndarray]] = []
    total = cfg.episodes * len(cfg.tasks)
    bar = tqdm(total=total, desc=f"{name}", unit="ep", disable=not cfg.progress, leave=False)
    for k, task_name in enumerate(cfg.tasks):
        task = registry.get(task_name)
        unknown = [c for c in cams if c not in task.cameras]
        if unknown:
            raise SpecError(f"the agent needs cameras {list(cams)}; task {task_name} has {list(task.cameras)}")
        if spec.num_tasks and task_name not in task_vocab:
            raise SpecError(f"the agent was trained on tasks {list(task_vocab)}; it cannot be told {task_name!r}")
        steps = cfg.max_steps or task.max_episode_steps
        envs = [task.make_env(image_size, cams or task.cameras[:1]) for _ in range(min(cfg.num_envs, cfg.episodes))]
        for env in envs:  # a state-only agent without a video needs no rendered observation
            env.render_images = bool(cams) or len(videos) < cfg.video_episodes
        try:
            for start in range(0, cfg.episodes, len(envs)):
                idx = list(range(start, min(start + len(envs), cfg.episodes)))
                active = envs[: len(idx)]
                obs = [env.reset(seed=cfg.seed + 1000 * k + i)[0] for env, i in zip(active, idx, strict=True)]
                start_distance = [goal_distance(o) for o in obs]
                goal = None
                if spec.has_goal:
                    goal_frames = [task.goal_images(env) for env in active]
                    goal_states = [env.scene_goal() for env in active] if spec.goal_state_dim else None
                    if goal_states is not None and goal_states[0].shape[0] != spec.goal_state_dim:
                        raise SpecError(
                            f"the agent's goal state has {spec.goal_state_dim} dims; {task_name}'s scene goal has "
                            f"{goal_states[0].shape[0]}"
                        )
                    goal = to_device_observation(goal_frames, goal_states, spec.goal_cameras, device)
                else:
                    goal_frames = [{} for _ in active]
                task_ids = None
                if spec.num_tasks:
                    task_ids = torch.full((len(active),), list(task_vocab).index(task_name), device=device)
                done = np.zeros(len(active), bool)
                success = np.zeros(len(active), bool)
                ret = np.zeros(len(active))
                length = np.zeros(len(active), int)
                record = [len(videos) + j < cfg.video_episodes for j in range(len(active))]
                clips: list[list[np.ndarray]] = [[] for _ in active]
                for _ in range(steps):
                    for j, o in enumerate(obs):
                        if record[j] and not done[j]:
                            clips[j].append(_video_frame(o["images"], goal_frames[j], task_name, None))
                    if act is None:
                        a = rng.uniform(-1, 1, (len(active), active[0].action_space.shape[0])).astype(np.float32)
                    else:
                        states = [observation_state(o, spec) for o in obs] if spec.state_dim else None
                        o_t = to_device_observation([o["images"] for o in obs], states, spec.cameras, device)
                        a = act(o_t, goal, task_ids).float().cpu().numpy()  # (B, A)
                    for j, env in enumerate(active):
                        if done[j]:
                            continue
                        obs[j], r, _, _, info = env.step(a[j])
                        ret[j] += r
                        length[j] += 1
                        if info["is_success"]:
                            success[j] = done[j] = True
                            if record[j]:
                                clips[j].append(_video_frame(obs[j]["images"], goal_frames[j], task_name, True))
                    if done.all():
                        break
                for j, i in enumerate(idx):
                    if record[j]:
                        if not success[j]:
                            clips[j].append(_video_frame(obs[j]["images"], goal_frames[j], task_name, False))
                        videos.append(clips[j])
                    goal_vec = active[j].scene_goal() if hasattr(active[j], "scene_goal") else None
                    episodes.append(
                        {
                            "task": task_name,
                            "episode": i,
                            "seed": cfg.seed + 1000 * k + i,
                            "success": bool(success[j]),
                            "return": float(ret[j]),
                            "steps": int(length[j]),
                            "goal": None if goal_vec is None else [round(float(x), 4) for x in goal_vec],
                            "start_distance": round(start_distance[j], 4),
                            "final_distance": round(goal_distance(obs[j]), 4),
                        }
                    )
                bar.update(len(idx))
        finally:
            for env in envs:
                env.close()
    bar.close()
    per_task = {t: _summary([e for e in episodes if e["task"] == t]) for t in cfg.tasks}
    result = EvalResult(_summary(episodes), per_task, episodes)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if videos:
            result.video = str(write_video(videos, out / f"{name}.{cfg.video_format}"))
        (out / f"{name}.json").write_text(json.dumps(result.to_json(), indent=1))
    return result


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
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w * scale, h * scale))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (mp4v); use video_format=gif")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
