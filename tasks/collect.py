"""Parallel collection: K workers step and render a task, episodes go to the lake in batches.

Workers are spawned processes (``backend=process``) or Ray actors (``backend=ray``, on a local or
an existing cluster, ``tasks/ray_backend.py``); both give the same episodes in the same order.

Each episode ``i`` of a run is a pure function of ``(task, seed, i, policy, noise, image_size,
cameras)``: the env reset seed and the policy's noise come from ``SeedSequence([seed, i])``, so a
re-run produces the same bytes. Episodes reach the lake in index order, ``batch_episodes`` per
commit (the commit message names the task, policy, noise, seeds and code version). An interrupted
run re-run with the same seed skips the indices already on the branch (their records carry the
run's parameters) and the lake's content hash catches anything else: no duplicates.

Episodes are rolled out by the one environment loop, :func:`sim.rollout.rollout` (recording every
observation); :func:`to_episode` turns a recorded :class:`sim.rollout.Trajectory` into a lake
:class:`~data_lake.episode.Episode` (finetuning's online episodes use it too).

Episode content: one lake step per env observation (``T = steps + 1``). Step ``t`` holds the
observation before action ``t``, the action and the sparse reward that followed; the final
observation closes the episode with a zero action. Plus ``achieved_goal`` = the world's scene
vector (``env.scene_state()``: one layout for every task of a world, so play and all tabletop
tasks share one lake schema), the simulator state (``sim_state``, for relabeling with any task's
detector later), the commanded goal (images from every camera, and ``goal/state`` = the scene
vector of the goal configuration), ``success`` (the env's ``is_success`` at the end). Stochastic
policies (noisy experts, random) also store ``action_logp``, the log probability log μ(a_t | s_t) of
each action under the policy that took it (``tasks.core.censored_gaussian_logp``; 0 on the last
step, which has no action), for off-policy evaluation; the noiseless expert has no density and
stores none.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import tasks
from data_lake.episode import Episode
from data_lake.version import __version__
from sim.base import RobotEnv
from sim.rollout import Trajectory, rollout
from tasks.core import NOISE_LEVELS, ScriptedPolicy

BACKENDS = ("process", "ray")


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    task: str
    episodes: int
    lake: str = "./lake"
    branch: str = "main"
    policy: str = "expert"  # expert | noisy | random
    noise: float | None = None  # overrides the level's noise (expert/noisy only)
    workers: int = 1
    seed: int = 0
    image_size: int = 64
    cameras: tuple[str, ...] | None = None  # None: every camera of the task's world
    batch_episodes: int = 20
    max_steps: int | None = None  # None: the task's episode length
    progress: bool = True
    backend: str = "process"  # process: spawned worker processes | ray: Ray actors (tasks/ray_backend.py)
    ray_address: str | None = None  # backend=ray: the cluster to join (None: start a local one)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.episodes < 1 or self.workers < 1 or self.batch_episodes < 1:
            raise ValueError(
                f"episodes, workers and batch_episodes must be >= 1, got {self.episodes}, "
                f"{self.workers}, {self.batch_episodes}"
            )
        if self.policy not in ("expert", "noisy", "random"):
            raise ValueError(f"policy must be expert, noisy or random, got {self.policy!r}")
        if self.noise is not None and self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")

    @property
    def noise_std(self) -> float | None:
        """Gaussian noise on the expert's action; None means uniform random actions."""
        if self.policy == "random":
            return None
        return self.noise if self.noise is not None else NOISE_LEVELS[self.policy]

    def run_params(self) -> dict[str, Any]:
        """What identifies an episode of this run (stored in every episode's metadata)."""
        return {
            "collect_seed": self.seed,
            "policy": self.policy,
            "noise": self.noise_std,
            "image_size": self.image_size,
            "cameras": list(self.cameras or []),
        }


def code_version() -> str:
    """``robot-rl <version> (<git sha>)``: what wrote a commit."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"robot-rl {__version__}" + (f" ({sha})" if sha else "")


def episode_seeds(seed: int, index: int) -> tuple[int, int]:
    """(env reset seed, policy seed) of episode ``index`` of a run seeded ``seed``."""
    env_seed, policy_seed = np.random.SeedSequence([seed, index]).generate_state(2)
    return int(env_seed), int(policy_seed)


# ---------------------------------------------------------------------------- one episode
def to_episode(
    traj: Trajectory,
    env: RobotEnv,
    task: str,
    source: str,
    metadata: dict[str, Any],
    action_logp: Sequence[float] | None = None,
) -> Episode:
    """A recorded trajectory (``rollout(..., record=True)``) of ``env`` as a lake episode.

    ``action_logp``: log μ(a_t | s_t) of the ``traj.steps`` actions under the (stochastic) policy that
    took them, stored as the ``action_logp`` step field (None: not stored)."""
    if not traj.observations:
        raise ValueError("to_episode needs a recorded trajectory: rollout(..., record=True)")
    assert traj.goal_state is not None
    T = len(traj.observations)
    action = np.zeros((T, env.action_space.shape[0]), np.float32)  # the last observation: a zero action
    action[: traj.steps] = traj.actions
    reward = np.zeros(T, np.float32)
    reward[: traj.steps] = traj.rewards
    control_dt = getattr(env, "control_dt", None) or 0.04
    episode = Episode.make(
        images={c: np.stack([o["images"][c] for o in traj.observations]) for c in traj.first["images"]},
        state=np.stack([o["state"] for o in traj.observations]).astype(np.float32),
        action=action,
        reward=reward,
        timestamp_ns=(np.arange(T) * round(control_dt * 1e9)).astype(np.int64),
        is_terminal=traj.ended,
        achieved_goal=np.stack(traj.scene).astype(np.float32),
        goal_images=traj.goal_images,
        goal_state=traj.goal_state.astype(np.float32),
        task=task,
        success=traj.success,
        source=source,
        robot=task.split("/")[0],
        metadata=metadata,
    )
    extra = {"sim_state": np.stack(traj.sim_states)}
    if action_logp is not None:
        if len(action_logp) != traj.steps:
            raise ValueError(f"action_logp has {len(action_logp)} values for {traj.steps} actions")
        extra["action_logp"] = np.zeros(T, np.float32)  # the last step has no action: 0
        extra["action_logp"][: traj.steps] = action_logp
    return episode.replace(steps={**episode.steps, **extra})


_ENV_CACHE: dict[tuple[Any, ...], RobotEnv] = {}


def _env(cfg: CollectConfig) -> RobotEnv:
    """This process's env for the run's task, image size and cameras (built once)."""
    key = (cfg.task, cfg.image_size, cfg.cameras)
    if key not in _ENV_CACHE:
        task = tasks.get(cfg.task)
        _ENV_CACHE[key] = task.make_env(cfg.image_size, cfg.cameras or task.cameras)
    return _ENV_CACHE[key]


def collect_episode(cfg: CollectConfig, index: int) -> Episode:
    """Episode ``index`` of the run ``cfg`` (deterministic): its scripted (noisy) or random policy."""
    task = tasks.get(cfg.task)
    env = _env(cfg)
    env_seed, policy_seed = episode_seeds(cfg.seed, index)
    rng = np.random.default_rng(policy_seed)
    noise = cfg.noise_std
    acting = task.random_policy(rng) if noise is None else task.scripted_policy(noise, rng)
    steps = cfg.max_steps or task.max_episode_steps
    (traj,) = rollout([env], ScriptedPolicy([acting]), [env_seed], steps, stop_on_success=False, record=True)
    source = f"collect:{cfg.task}:{cfg.policy}:seed={cfg.seed}:i={index}"
    logp = acting.logps[: traj.steps] if acting.stochastic else None  # its log μ(a_t | s_t)
    return to_episode(traj, env, cfg.task, source, {**cfg.run_params(), "index": index, "env_seed": env_seed}, logp)


# ---------------------------------------------------------------------------- the run
def _worker_episode(args: tuple[CollectConfig, int]) -> Episode:
    return collect_episode(*args)


def _already_collected(lake: Any, cfg: CollectConfig) -> set[int]:
    """Indices of this run (same task and run parameters) already on the branch."""
    params = cfg.run_params()
    done = set()
    for rec in lake.checkout(cfg.branch).episodes(task=cfg.task):
        m = rec.metadata
        if all(m.get(k) == v for k, v in params.items()) and "index" in m:
            done.add(int(m["index"]))
    return done


class CollectWorker:
    """A Ray actor of one collection run: its env is built on the first episode and kept."""

    def __init__(self, cfg: CollectConfig):
        self.cfg = cfg

    def episode(self, index: int) -> Episode:
        return collect_episode(self.cfg, index)

    def pid(self) -> int:
        return os.getpid()


def ray_worker_prefix(driver_pid: int | None = None) -> str:
    """The name prefix of a collection's Ray actors (``<prefix><k>``), per driver process."""
    return f"robot-rl-collect-{driver_pid or os.getpid()}-"


def _ordered(cfg: CollectConfig, todo: Sequence[int]) -> Iterator[Episode]:
    if cfg.backend == "ray":
        from tasks import ray_backend

        with ray_backend.session(cfg.ray_address, cfg.workers):
            actors = ray_backend.actors(CollectWorker, cfg.workers, cfg, name_prefix=ray_worker_prefix())
            yield from ray_backend.ordered_map(actors, lambda w, i: w.episode.remote(i), todo)
        return
    if cfg.workers == 1:
        for i in todo:
            yield collect_episode(cfg, i)
        return
    # spawn: workers must not inherit an open lake or GL context (Icechunk and EGL dislike fork)
    with mp.get_context("spawn").Pool(cfg.workers) as pool:
        yield from pool.imap(_worker_episode, [(cfg, i) for i in todo], chunksize=1)


@dataclasses.dataclass(frozen=True)
class CollectResult:
    added: int
    skipped: int
    commits: list[str]
    frames: int
    successes: int
    seconds: float
    first_episode_s: float = 0.0  # until the first episode arrived: workers starting, envs built

    @property
    def frames_per_s(self) -> float:
        return self.frames / max(self.seconds, 1e-9)


def collect(cfg: CollectConfig) -> CollectResult:
    """Run the collection ``cfg`` into its lake (created if missing). Returns what landed."""
    from tqdm.auto import tqdm

    from data_lake import Lake

    tasks.get(cfg.task)  # unknown task: an error listing the known ones, before any work
    lake = Lake.open_or_create(cfg.lake)  # also finishes a lake whose creation was interrupted
    done = _already_collected(lake, cfg) if cfg.branch in lake.branches() else set()
    if cfg.branch not in lake.branches():
        lake.branch(cfg.branch)
    todo = [i for i in range(cfg.episodes) if i not in done]
    version = code_version()
    commits: list[str] = []
    batch: list[Episode] = []
    added = frames = successes = 0
    skipped = len(done)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.episodes, initial=len(done), desc=f"collect {cfg.task}", unit="ep", disable=not cfg.progress)

    writer = cf.ThreadPoolExecutor(1, thread_name_prefix="lake-writer")
    pending: cf.Future[Any] | None = None

    def land(future: cf.Future[Any] | None) -> None:
        nonlocal added, skipped
        if future is None:
            return
        res = future.result()
        added += res.added
        skipped += res.skipped_duplicates
        if res.snapshot_id:
            commits.append(res.snapshot_id)

    def flush() -> None:
        """Commit the batch in the background (one commit in flight) while rollouts go on."""
        nonlocal pending
        if not batch:
            return
        idx = [int(e.metadata["index"]) for e in batch]
        msg = (
            f"collect {cfg.task}: {len(batch)} episodes, policy={cfg.policy} noise={cfg.noise_std} "
            f"seed={cfg.seed} indices {min(idx)}-{max(idx)} [{version}]"
        )
        meta = {
            "task": cfg.task,
            "policy": cfg.policy,
            "noise": cfg.noise_std,
            "seed": cfg.seed,
            "indices": [min(idx), max(idx)],
            "code": version,
        }
        land(pending)  # commits land in index order
        pending = writer.submit(lake.append, list(batch), branch=cfg.branch, message=msg, metadata=meta)
        batch.clear()

    first_episode_s = 0.0
    try:
        for ep in _ordered(cfg, todo):
            if not first_episode_s:
                first_episode_s = time.perf_counter() - t0
            batch.append(ep)
            frames += len(ep)
            successes += bool(ep.success)
            n = bar.n + 1 - len(done)
            bar.update(1)
            bar.set_postfix(fps=f"{frames / (time.perf_counter() - t0):.0f}", success=f"{successes / n:.0%}")
            if len(batch) >= cfg.batch_episodes:
                flush()
        flush()
        land(pending)
    finally:
        writer.shutdown(wait=True)
        bar.close()
    return CollectResult(added, skipped, commits, frames, successes, time.perf_counter() - t0, first_episode_s)


def collect_mix(
    lake: str,
    mix: Sequence[tuple[str, int, str, float | None]],
    tag: str | None = "v1",
    **common: Any,
) -> list[CollectResult]:
    """Collect several ``(task, episodes, policy, noise)`` runs into one lake, run k with seed k, then
    tag the result (``tag=None``: no tag). ``common``: the other ``CollectConfig`` fields, the same
    for every run (e.g. ``image_size=32, cameras=("front",), workers=2, progress=False``)."""
    from data_lake import Lake

    results = [
        collect(CollectConfig(task=task, episodes=n, lake=lake, policy=policy, noise=noise, seed=k, **common))
        for k, (task, n, policy, noise) in enumerate(mix)
    ]
    if tag is not None:
        Lake.open(lake).tag(tag)
    return results
