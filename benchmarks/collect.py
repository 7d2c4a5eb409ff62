"""Collection throughput: the raw env step+render loop against `robot-rl collect` with 1 and 2
workers, on both backends (spawned processes, Ray actors).

    .venv/bin/python -m benchmarks.collect [--quick] [--json PATH]

Raw loop: the same episodes (same seeds, same scripted expert, every camera rendered each step)
with nothing recorded. Collect: ``tasks.collect.collect`` into a fresh local lake (recording,
episode building, hashing, validation, commits, worker processes included). Frames are env
observations (each renders every camera: tabletop front + wrist at 64x64).
Targets: tabletop raw >= 500 frames/s, overhead <= 15 %, 2 workers >= 1.6x one worker, for
``backend=process`` and ``backend=ray``.

What two workers can gain on the machine is measured too: the raw loop run by two processes at
once against one (``machine_two_process_speedup``, the ceiling of ``two_worker_speedup``), and the
CPU the driver process itself uses per second of a 2-worker run (``driver_cores_<backend>_2w``:
building, hashing, compressing and committing episodes, on the same 2 cores as the workers). With
Ray, the local cluster is started once (``ray_start_s``, not counted in the collections: a user's
cluster is up before a collection joins it); creating the actors and their envs is counted, as the
process backend's spawning is.

What the overhead is made of: ``first_episode_s_<backend>_1w`` (until the first episode arrives:
worker start-up, imports, env) and ``overhead_after_first_episode_<backend>_1w`` (the rest of the
run against the raw loop); ``commit_cpu_ms_per_episode`` (CPU of all threads per committed
episode) and ``commit_contention_overhead`` (the raw loop slowed by a writer in another process
committing at one worker's rate: what the writer costs on these cores by itself).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import report
from tasks.collect import CollectConfig, CollectResult, collect


def raw_fps(task_name: str, episodes: int, seed: int = 0) -> float:
    import tasks

    task = tasks.get(task_name)
    env = task.make_env(64, task.cameras)
    env.reset(seed=seed)  # warm-up, untimed: the first render of a process sets up its GL context
    env.step(task.scripted_policy(0.0, np.random.default_rng(0)).act(env))
    frames = 0
    t0 = time.perf_counter()
    for i in range(episodes):
        env_seed, policy_seed = np.random.SeedSequence([seed, i]).generate_state(2)
        policy = task.scripted_policy(0.0, np.random.default_rng(policy_seed))
        env.reset(seed=int(env_seed))
        frames += 1
        for _ in range(task.max_episode_steps):
            env.step(policy.act(env))
            frames += 1
    fps = frames / (time.perf_counter() - t0)
    env.close()
    return fps


# each run's result and the driver process's CPU seconds per wall second, by "<task>_<backend>_<k>w"
RUNS: dict[str, tuple[CollectResult, float]] = {}


def collect_fps(task_name: str, episodes: int, workers: int, workdir: Path, backend: str = "process") -> float:
    lake = workdir / f"lake-{task_name.replace('/', '_')}-{workers}-{backend}"
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = collect(
        CollectConfig(
            task=task_name,
            episodes=episodes,
            workers=workers,
            lake=str(lake),
            batch_episodes=max(1, episodes // 4),
            progress=False,
            backend=backend,
        )
    )
    RUNS[f"{task_name}_{backend}_{workers}w"] = (res, (time.process_time() - cpu0) / (time.perf_counter() - wall0))
    shutil.rmtree(lake)
    return res.frames_per_s


def _committer(task_name: str, period_s: float, ready: Any, stop: Any, out: Any) -> None:
    """A writer that commits what one worker collects, at the rate it collects it: 10 episodes of
    ``task_name`` every ``period_s`` seconds into a scratch lake, until ``stop`` is set. Sends the CPU
    seconds one episode's commit cost (all threads)."""
    from data_lake import Lake
    from tasks.collect import CollectConfig, collect_episode

    cfg = CollectConfig(task=task_name, episodes=10, progress=False)
    episodes = [collect_episode(cfg, i) for i in range(10)]
    workdir = tempfile.mkdtemp(prefix="bench-committer-")
    lake = Lake.create(os.path.join(workdir, "lake"))
    ready.set()
    cpu, n, k = 0.0, 0, 0
    try:
        while not stop.is_set():
            t0, c0 = time.perf_counter(), time.process_time()
            lake.append([e.replace(metadata={**e.metadata, "k": k}) for e in episodes], branch="main", message=f"{k}")
            cpu += time.process_time() - c0
            n += len(episodes)
            k += 1
            stop.wait(max(0.0, period_s - (time.perf_counter() - t0)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out.send(cpu / max(n, 1))


def raw_fps_beside_commits(task_name: str, episodes: int, raw: float) -> tuple[float, float]:
    """The raw loop while another process commits at one worker's collection rate (what one worker's
    writer costs the rollout on these cores, with nothing shared but the machine), and the CPU
    seconds the commits took per episode: (frames/s, commit CPU s per episode)."""
    import multiprocessing as mp

    import tasks

    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    recv, send = ctx.Pipe(duplex=False)
    period_s = 10 * (tasks.get(task_name).max_episode_steps + 1) / raw  # 10 episodes at the raw rate
    proc = ctx.Process(target=_committer, args=(task_name, period_s, ready, stop, send))
    proc.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("the committer process did not start in 120 s")
        fps = raw_fps(task_name, episodes)
    finally:
        stop.set()
    cpu_per_episode = recv.recv()
    proc.join()
    return fps, cpu_per_episode


def _raw_share(args: tuple[str, int, int]) -> tuple[int, float, float]:
    """One process's share of the two-process raw loop: (frames, start, end) on the shared clock."""
    task_name, episodes, seed = args
    t0 = time.time()
    fps = raw_fps(task_name, episodes, seed)
    t1 = time.time()
    return round(fps * (t1 - t0)), t0, t1


def raw_fps_two_processes(task_name: str, episodes: int) -> float:
    """The raw loop in two spawned processes at once (``episodes`` each): frames over the span."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(2) as pool:
        shares = pool.map(_raw_share, [(task_name, episodes, 0), (task_name, episodes, 1)])
    return sum(f for f, _, _ in shares) / (max(e for _, _, e in shares) - min(s for _, s, _ in shares))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = 12 if args.quick else 40
    n_fetch = 2 if args.quick else 6
    workdir = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    t0 = time.perf_counter()
    task = "tabletop/push_red_to_pad"
    try:
        figs = {
            "tabletop_raw_fps": raw_fps(task, n),
            "tabletop_raw_fps_2proc": raw_fps_two_processes(task, n),
        }
        beside, commit_cpu_s = raw_fps_beside_commits(task, n, figs["tabletop_raw_fps"])
        figs["tabletop_raw_fps_beside_commits"] = beside
        figs["commit_cpu_ms_per_episode"] = 1e3 * commit_cpu_s
        figs |= {
            "tabletop_collect_fps_1w": collect_fps(task, n, 1, workdir),
            "tabletop_collect_fps_2w": collect_fps(task, 2 * n, 2, workdir),
            "fetchpush_raw_fps": raw_fps("fetch/push", n_fetch),
            "fetchpush_collect_fps_1w": collect_fps("fetch/push", n_fetch, 1, workdir),
        }
        from tasks import ray_backend

        t_ray = time.perf_counter()
        with ray_backend.session(None, 2):
            figs["ray_start_s"] = time.perf_counter() - t_ray
            figs["tabletop_collect_fps_ray_1w"] = collect_fps(task, n, 1, workdir, "ray")
            figs["tabletop_collect_fps_ray_2w"] = collect_fps(task, 2 * n, 2, workdir, "ray")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figs["collect_overhead"] = 1 - figs["tabletop_collect_fps_1w"] / figs["tabletop_raw_fps"]
    figs["two_worker_speedup"] = figs["tabletop_collect_fps_2w"] / figs["tabletop_collect_fps_1w"]
    figs["ray_collect_overhead"] = 1 - figs["tabletop_collect_fps_ray_1w"] / figs["tabletop_raw_fps"]
    figs["ray_two_worker_speedup"] = figs["tabletop_collect_fps_ray_2w"] / figs["tabletop_collect_fps_ray_1w"]
    figs["machine_two_process_speedup"] = figs["tabletop_raw_fps_2proc"] / figs["tabletop_raw_fps"]
    # what a writer on the same 2 cores costs the rollout by itself: the floor under collect_overhead
    figs["commit_contention_overhead"] = 1 - figs["tabletop_raw_fps_beside_commits"] / figs["tabletop_raw_fps"]
    for run in ("process_1w", "ray_1w"):  # worker start-up, then the overhead of the rest of the run
        res = RUNS[f"{task}_{run}"][0]
        figs[f"first_episode_s_{run}"] = res.first_episode_s
        rest_fps = res.frames * (1 - 1 / n) / (res.seconds - res.first_episode_s)
        figs[f"overhead_after_first_episode_{run}"] = 1 - rest_fps / figs["tabletop_raw_fps"]
    for run in ("process_2w", "ray_2w"):  # cores the driver itself used (building, hashing, committing)
        figs[f"driver_cores_{run}"] = RUNS[f"{task}_{run}"][1]
    figs["wall_s"] = time.perf_counter() - t0
    print(
        f"collect benchmark: tabletop/push_red_to_pad ({n} episodes) and fetch/push ({n_fetch}), "
        f"64x64, every camera, {os.cpu_count()} cores, MUJOCO_GL={os.environ.get('MUJOCO_GL')}"
    )
    targets = {
        "tabletop_raw_fps": ">= 500",
        "collect_overhead": "<= 0.15",
        "two_worker_speedup": ">= 1.6",
        "ray_collect_overhead": "<= 0.15",
        "ray_two_worker_speedup": ">= 1.6",
    }
    report(figs, targets, args.json)


if __name__ == "__main__":
    main()
