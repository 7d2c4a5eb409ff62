"""OGBench from states: GC-BC, GC-IQL and Actionable Models next to the published table.

    .venv/bin/python -m benchmarks.ogbench [--quick] [--json PATH] [--out DIR]
        [--datasets a,b] [--learners a,b] [--updates N] [--episodes N] [--workers N]

Data: each dataset regenerated with OGBench's environments and oracles (``robot-rl ogbench
generate``; OGBench's files cannot be downloaded here) at a reduced size (``--episodes``
trajectories of 1,001 steps; OGBench: 1,000), in chunks of 250 trajectories with seeds 0, 1, ...
generated in parallel (the same data for any ``--workers``), committed to a fresh lake and tagged.
Goals are the dataset's own observation vectors, as in OGBench.

Learners (same lake snapshot, updates, batch and MLP sizes; no reward is stored or used):

    gcbc   goal-conditioned BC, goals uniform over the rest of the trajectory (OGBench's GCBC)
    gciql  ``algo=gciql_ogbench task=ogbench``: OGBench's GCIQL (reward success - 1, expectile 0.9,
           DDPG+BC actor with OGBench's per-dataset alpha, LayerNorm critics; value goals 0.2
           current / 0.5 geometric future / 0.3 random, actor goals uniform future)
    gciql_fast ``algo=gciql_fast task=ogbench``: the same with learning rates 1e-3 (OGBench: 3e-4), for CPU
           budgets (ahead of 3e-4 on cube-single-noisy, within overlapping intervals)
    am     Actionable Models (conservative QT-Opt with goal chaining, CEM policy), LayerNorm critics
           and the Monte-Carlo lower bound on targets (robot-rl's goal-reaching recipe)

Evaluation: OGBench's protocol through the task registry (``ogbench/<env>-task1..5``): each of the
five evaluation goals, 50 episodes each (``--quick``: 1), an episode succeeds when the
environment's success fires (cube: 200 steps, maze: 1,000); Wilson 95% intervals over the 250.

The published numbers assume 1M updates at batch 1024 (and 512x3 MLPs) on 1M transitions; our
budget (``budget_*`` in the JSON) is stated next to every figure. JSON keys:
``<dataset>_<learner>_success`` (with ``_ci_low``/``_ci_high``), ``<dataset>_published_<algo>``,
``budget_updates``, ``budget_batch``, ``budget_episodes``, ``seconds``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.goal_reaching import CONFIG_FILE, OTHERS
from benchmarks.report import report, with_ci

# OGBench (Park et al., 2024), Table 2: success (%) at 1M updates, 8 seeds, state-based.
PUBLISHED: dict[str, dict[str, int]] = {
    "pointmaze-medium-navigate": {"gcbc": 9, "gcivl": 63, "gciql": 53, "qrl": 82, "crl": 29, "hiql": 79},
    "cube-single-play": {"gcbc": 6, "gcivl": 53, "gciql": 68, "qrl": 5, "crl": 19, "hiql": 15},
    "cube-single-noisy": {"gcbc": 8, "gcivl": 71, "gciql": 99, "qrl": 25, "crl": 38, "hiql": 41},
}
ENV_OF = {
    "pointmaze-medium-navigate": "pointmaze-medium",
    "cube-single-play": "cube-single",
    "cube-single-noisy": "cube-single",
}
ALPHA = {"pointmaze-medium-navigate": 0.003, "cube-single-play": 1.0, "cube-single-noisy": 0.03}  # hyperparameters.sh
# The rest of the offline family (OTHERS, with the named config files of CONFIG_FILE, as in
# benchmarks/goal_reaching.py), goal-conditioned with OGBench's goal sampling (task=ogbench, as
# GC-IQL) and each algorithm's own config, the budget's MLPs and LayerNorm critics; 0/1 rewards.
LEARNERS = ("gcbc", "gciql", "gciql_fast", "am", *OTHERS)
DEFAULT_LEARNERS = ("gcbc", "gciql", "gciql_fast", "am")
GAMMA = 0.99


@dataclasses.dataclass(frozen=True)
class Budget:
    episodes: int  # trajectories per dataset (OGBench: 1,000 of 1,001 steps)
    steps_per_episode: int
    updates: int
    batch: int
    hidden: tuple[int, ...]
    eval_episodes: int  # per evaluation goal (OGBench: 50)
    eval_max_steps: int | None = None  # None: the task's limit (OGBench's); --quick cuts episodes short
    eval_goals: int = 5  # OGBench's five evaluation goals; --quick: the first only
    eval_at: tuple[int, ...] = ()  # also evaluate after these many updates (the learning curve)


QUICK = Budget(
    episodes=2,
    steps_per_episode=60,
    updates=20,
    batch=32,
    hidden=(32, 32),
    eval_episodes=1,
    eval_max_steps=40,
    eval_goals=1,
)
FULL = Budget(episodes=100, steps_per_episode=1001, updates=15_000, batch=256, hidden=(256, 256, 256), eval_episodes=50)


def learner(key: str, dataset: str, b: Budget) -> tuple[str, dict[str, Any], Any]:
    """(algorithm, its config, relabel config) of one learner on one dataset."""
    from data_lake.sampler import RelabelConfig
    from robot_rl.hydra_utils import algo_settings, compose

    hidden = list(b.hidden)
    if key == "gcbc":
        relabel = RelabelConfig(future=1.0, final=0, negative=0, task=0, future_mode="uniform", gamma=GAMMA)
        return "bc", algo_settings("bc", gamma=GAMMA, hidden=hidden), relabel
    if key in ("gciql", "gciql_fast"):
        task = compose("pretrain", ["task=ogbench"])["task"]["relabel"]
        cfg = algo_settings("gciql_ogbench" if key == "gciql" else key, hidden=hidden, alpha=ALPHA[dataset])
        return "iql", cfg, RelabelConfig(**task)
    if key == "am":
        relabel = RelabelConfig(future=0.5, final=0.2, negative=0.3, task=0, geometric_p=1 - GAMMA, gamma=GAMMA)
        cfg = algo_settings("actionable_models", gamma=GAMMA, hidden=hidden, layer_norm=True, mc_lower_bound=True)
        return "actionable_models", cfg, relabel
    if key in OTHERS:
        task = compose("pretrain", ["task=ogbench"])["task"]["relabel"]
        cfg = algo_settings(CONFIG_FILE.get(key, key), gamma=GAMMA, hidden=hidden, layer_norm=True)
        return key, cfg, RelabelConfig(**task)
    raise KeyError(f"unknown learner {key!r}; known: {LEARNERS}")


GENERATE_CHUNK = 250  # trajectories per generation job: chunk i has seed i, whatever the number of workers


def generate_chunk(dataset: str, episodes: int, seed: int, steps_per_episode: int) -> dict[str, Any]:
    """One chunk's training arrays (``robot-rl ogbench generate``'s generator; its val split is dropped)."""
    from tasks.ogbench_data import generate as og_generate

    train, _ = og_generate(dataset, episodes, seed=seed, max_episode_steps=steps_per_episode, progress=False)
    return train


def submit_generation(dataset: str, b: Budget, pool: cf.Executor) -> list[tuple[int, cf.Future[dict[str, Any]]]]:
    """Start generating ``dataset`` on ``pool``: chunks of GENERATE_CHUNK trajectories with seeds 0, 1, ...
    (the same data for any number of workers; up to 250 trajectories: seed 0 alone)."""
    sizes = [min(GENERATE_CHUNK, b.episodes - i) for i in range(0, b.episodes, GENERATE_CHUNK)]
    return [(n, pool.submit(generate_chunk, dataset, n, seed, b.steps_per_episode)) for seed, n in enumerate(sizes)]


def write_generated(dataset: str, b: Budget, uri: str, chunks: list[tuple[int, cf.Future[dict[str, Any]]]]) -> None:
    """Commit the chunks into a new lake at ``uri`` in seed order (one commit each), tagged v1."""
    from data_lake.lake import Lake
    from tasks.ogbench_data import settings, write_to_lake

    lake = Lake.create(uri)
    for seed, (n, job) in enumerate(chunks):
        train = job.result()
        no_val = {k: v[:0] for k, v in train.items()}  # learners train on the training split only
        write_to_lake(lake, train, no_val, settings(dataset, n, seed, b.steps_per_episode))
    lake.tag("v1")


def train_and_evaluate(dataset: str, key: str, uri: str, b: Budget, run_dir: str) -> dict[str, Any]:
    """One learner on one dataset: pretrain, then OGBench's evaluation (a worker process, one thread)."""
    import torch

    from robot_rl.checkpoint import load_policy
    from robot_rl.evaluate import EvalConfig, evaluate, policy_act
    from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain
    from tasks.ogbench import ogbench_tasks

    torch.set_num_threads(1)
    algo, algo_cfg, relabel = learner(key, dataset, b)
    tasks = tuple(ogbench_tasks(ENV_OF[dataset]))[: b.eval_goals]
    ecfg = EvalConfig(
        tasks=tasks,
        episodes=b.eval_episodes,
        seed=0,
        num_envs=5,
        max_steps=b.eval_max_steps,
        video_episodes=0,
        progress=False,
    )
    stages = sorted({s for s in b.eval_at if s < b.updates} | {b.updates})
    train_s = eval_s = 0.0
    curve: dict[int, dict[str, Any]] = {}
    for i, steps in enumerate(stages):  # train to each stage (resuming the run exactly), then evaluate
        t0 = time.perf_counter()
        run = pretrain(
            PretrainConfig(
                algo=algo,
                algo_cfg=algo_cfg,
                lake=LakeConfig(uri, "tag:v1"),
                obs=ObsConfig(cameras=(), use_state=True, augment_pad=0),
                task=TaskConfig(conditioning="goal", relabel=relabel),
                steps=steps,
                batch_size=b.batch,
                run_dir=run_dir,
                save_every=steps,
                log_every=max(1, b.updates // 20),
                progress=False,
                resume=i > 0,
            )
        )
        train_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        trained, _ = load_policy(run / "checkpoints" / "latest")
        name = "ogbench_eval" if steps == b.updates else f"ogbench_eval_{steps}"
        res = evaluate(policy_act(trained), trained.spec, ecfg, out_dir=run_dir, name=name)
        if steps != b.updates:
            curve[steps] = res.summary
        eval_s += time.perf_counter() - t0
    return {
        "summary": res.summary,
        "per_task": {t: s["success_rate"] for t, s in res.per_task.items()},
        "curve": curve,
        "train_s": train_s,
        "eval_s": eval_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    p.add_argument("--out", help="keep the run folders (checkpoints, TensorBoard, eval JSON) here")
    p.add_argument("--datasets", default=",".join(PUBLISHED), help="comma-separated subset of " + ",".join(PUBLISHED))
    p.add_argument(
        "--learners",
        default=",".join(DEFAULT_LEARNERS),
        help="comma-separated subset of " + ",".join(LEARNERS) + " (default: " + ",".join(DEFAULT_LEARNERS) + ")",
    )
    p.add_argument("--updates", type=int, help="override the budget's updates per learner")
    p.add_argument("--episodes", type=int, help="override the budget's trajectories per dataset")
    p.add_argument("--batch", type=int, help="override the budget's batch size")
    p.add_argument(
        "--eval-at",
        default="",
        help="comma-separated update counts at which to evaluate too (the curve: <dataset>_<learner>_success_at_<N>)",
    )
    p.add_argument("--workers", type=int, default=2, help="learners trained at once (one thread each)")
    a = p.parse_args()
    b = QUICK if a.quick else FULL
    overrides = {"updates": a.updates, "episodes": a.episodes, "batch": a.batch}
    b = dataclasses.replace(b, **{k: v for k, v in overrides.items() if v is not None})
    b = dataclasses.replace(b, eval_at=tuple(int(s) for s in a.eval_at.split(",") if s))
    datasets, keys = a.datasets.split(","), a.learners.split(",")
    unknown = [d for d in datasets if d not in PUBLISHED] + [k for k in keys if k not in LEARNERS]
    if unknown:
        raise SystemExit(f"unknown datasets/learners {unknown}; datasets: {list(PUBLISHED)}, learners: {LEARNERS}")
    t0 = time.perf_counter()
    figs: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = Path(a.out) if a.out else root / "runs"
        out.mkdir(parents=True, exist_ok=True)
        uris = {d: str(root / f"lake-{d}") for d in datasets}
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max(1, a.workers), mp_context=ctx) as pool:
            t_gen = time.perf_counter()
            chunks = {d: submit_generation(d, b, pool) for d in datasets}
            for d in datasets:
                write_generated(d, b, uris[d], chunks[d])
                figs[f"{d}_generate_s"] = time.perf_counter() - t_gen  # since all generation started
            jobs = {
                (d, k): pool.submit(train_and_evaluate, d, k, uris[d], b, str(out / d / k))
                for d in datasets
                for k in keys
            }
            results = {dk: fut.result() for dk, fut in jobs.items()}
        for (d, k), r in results.items():
            with_ci(figs, f"{d}_{k}_success", r["summary"])
            for steps, summary in r["curve"].items():
                with_ci(figs, f"{d}_{k}_success_at_{steps}", summary)
            for task, rate in r["per_task"].items():
                figs[f"{d}_{k}_{task.rsplit('-', 1)[1]}"] = float(rate)
            figs[f"{d}_{k}_train_s"], figs[f"{d}_{k}_eval_s"] = r["train_s"], r["eval_s"]
        (out / "results.json").write_text(json.dumps({f"{d}/{k}": r for (d, k), r in results.items()}, indent=1))
    for d in datasets:
        for algo, pct in PUBLISHED[d].items():
            figs[f"{d}_published_{algo}"] = pct / 100
    figs |= {
        "budget_updates": float(b.updates),
        "budget_batch": float(b.batch),
        "budget_episodes": float(b.episodes),
        "budget_transitions": float(b.episodes * b.steps_per_episode),
        "eval_episodes_per_goal": float(b.eval_episodes),
        "seconds": time.perf_counter() - t0,
    }
    targets = {
        "cube-single-noisy_gciql_success": ">= 0.8, >> gcbc",
        "cube-single-play_gciql_success": ">> gcbc",
        "pointmaze-medium-navigate_gciql_success": ">= 0.4",
        "cube-single-noisy_gciql_fast_success": ">= 0.8 (GC-IQL at lr 1e-3)",
        "pointmaze-medium-navigate_gciql_fast_success": ">= 0.4",
        "cube-single-noisy_am_success": ">= gciql",
        "cube-single-play_am_success": ">= gciql",
    }
    print_table(figs, datasets, keys)
    if a.out:
        (Path(a.out) / "table.md").write_text(markdown_table(figs, datasets, keys, b))
    skip = tuple(k for k in figs if k.endswith(("_ci_low", "_ci_high", "_s")) or "_task" in k or "_published_" in k)
    report(figs, targets, a.json, skip=skip)


def markdown_table(figs: dict[str, float], datasets: list[str], keys: list[str], b: Budget) -> str:
    """The docs table: ours with its 95% CI next to every published column."""
    algos = list(PUBLISHED[datasets[0]])
    head = ["dataset", *(f"{k} (ours)" for k in keys), *(f"{x} (published)" for x in algos)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for d in datasets:
        ours = [
            f"{100 * figs[f'{d}_{k}_success']:.0f} [{100 * figs[f'{d}_{k}_success_ci_low']:.0f}, "
            f"{100 * figs[f'{d}_{k}_success_ci_high']:.0f}]"
            for k in keys
        ]
        lines.append("| " + " | ".join([d, *ours, *(str(PUBLISHED[d][x]) for x in algos)]) + " |")
    lines.append(
        f"\nOurs: {b.updates:,} updates at batch {b.batch}, MLPs {'x'.join(map(str, b.hidden))}, "
        f"{b.episodes} generated trajectories of {b.steps_per_episode} steps, {b.eval_goals} goals x "
        f"{b.eval_episodes} episodes; published: 1M updates at batch 1024, 512x3, 1M transitions, 8 seeds.\n"
    )
    return "\n".join(lines)


def print_table(figs: dict[str, float], datasets: list[str], keys: list[str]) -> None:
    """Ours (success [95% CI]) next to the published column of the same algorithm, one row per dataset."""
    published = {k for k in keys if any(k in PUBLISHED[d] for d in datasets)}  # a (pub.) column only for these
    head = f"{'dataset':28s}" + "".join(
        f"{k + ' (ours)':>22s}" + (f"{k + ' (pub.)':>13s}" if k in published else "") for k in keys
    )
    print(head)
    for d in datasets:
        row = f"{d:28s}"
        for k in keys:
            lo, hi = figs[f"{d}_{k}_success_ci_low"], figs[f"{d}_{k}_success_ci_high"]
            row += f"{figs[f'{d}_{k}_success']:>8.2f} [{lo:.2f}, {hi:.2f}]"
            if k in published:
                pub = PUBLISHED[d].get(k)
                row += f"{'-' if pub is None else f'{pub / 100:.2f}':>13s}"
        print(row)
    print()


if __name__ == "__main__":
    main()
