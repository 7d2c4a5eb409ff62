"""Goal-reaching learning benchmark: Actionable Models vs goal-conditioned BC vs random, from images.

    .venv/bin/python -m benchmarks.goal_reaching [--quick] [--json PATH]

Data: tabletop play and noisy scripted episodes of several tasks, rendered at ``image_size`` (32x32
here; the issue allows 48x48 or smaller) from the front camera, into a fresh local lake. Both
learners train on the same pinned snapshot for the same number of updates and batch size, reading
the image (+ proprioceptive state) and a hindsight goal image (+ the goal's scene state):

    am     Actionable Models: goals future/final (positives), other episodes (chaining/negatives),
           artificial negative actions; the CEM policy over Q(s, ·, g)
    gcbc   goal-conditioned BC on future/final goals only (a negative goal has no demonstration)
    random uniform actions (the floor)

Evaluation: the tasks' goal images on held-out reset seeds (never used for collection), success =
the task's detector at any step. JSON: ``am_success``, ``gcbc_success``, ``random_success``,
``budget_updates`` (and per-task rates, seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from benchmarks.report import report

EVAL_TASKS = ("tabletop/reach_red", "tabletop/push_red_to_pad")
DATA_TASKS = ("tabletop/play", "tabletop/reach_red", "tabletop/push_red_to_pad", "tabletop/pick_and_lift_red")


@dataclasses.dataclass(frozen=True)
class Budget:
    episodes: int  # per data task
    updates: int
    batch: int
    eval_episodes: int  # per evaluation task
    image_size: int = 32


QUICK = Budget(episodes=3, updates=60, batch=32, eval_episodes=4)
FULL = Budget(episodes=30, updates=3000, batch=128, eval_episodes=30)


def main() -> None:
    from data_lake import Lake
    from data_lake.sampler import RelabelConfig
    from robot_rl.checkpoint import load_policy
    from robot_rl.evaluate import EvalConfig, evaluate, policy_act
    from robot_rl.hydra_utils import compose
    from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain
    from sim.collect import CollectConfig, collect

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    b = QUICK if a.quick else FULL
    t0 = time.perf_counter()
    figs: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        uri = str(root / "lake")
        for k, task in enumerate(DATA_TASKS):
            collect(
                CollectConfig(
                    task=task,
                    episodes=b.episodes,
                    lake=uri,
                    policy="noisy",
                    seed=k,
                    image_size=b.image_size,
                    cameras=("front",),
                    workers=2,
                    progress=False,
                )
            )
        Lake.open(uri).tag("v1")
        figs["collect_s"] = time.perf_counter() - t0
        relabels = {
            "actionable_models": RelabelConfig(future=0.6, final=0.1, negative=0.3, commanded=0, task=0, gamma=0.9),
            "bc": RelabelConfig(future=0.7, final=0.3, negative=0, commanded=0, task=0, gamma=0.9),
        }
        ecfg = EvalConfig(
            tasks=EVAL_TASKS, episodes=b.eval_episodes, seed=900_000, num_envs=4, video_episodes=0, progress=False
        )
        for algo, key in (("actionable_models", "am"), ("bc", "gcbc")):
            t1 = time.perf_counter()
            algo_cfg = {k: v for k, v in compose("pretrain", [f"algo={algo}"])["algo"].items() if k != "name"}
            algo_cfg |= {"gamma": 0.9} if algo != "bc" else {}
            run = pretrain(
                PretrainConfig(
                    algo=algo,
                    algo_cfg=algo_cfg,
                    lake=LakeConfig(uri, "tag:v1"),
                    obs=ObsConfig(cameras=("front",), use_state=True, augment_pad=2),
                    task=TaskConfig(conditioning="goal", relabel=relabels[algo]),
                    steps=b.updates,
                    batch_size=b.batch,
                    run_dir=str(root / algo),
                    save_every=b.updates,
                    progress=False,
                )
            )
            trained, _ = load_policy(run / "checkpoints" / "latest")
            res = evaluate(policy_act(trained), trained.spec, ecfg)
            figs[f"{key}_success"] = res.success_rate
            figs |= {f"{key}_{t.split('/')[1]}": s["success_rate"] for t, s in res.per_task.items()}
            figs[f"{key}_train_eval_s"] = time.perf_counter() - t1
        res = evaluate(None, trained.spec, ecfg)
        figs["random_success"] = res.success_rate
        figs |= {f"random_{t.split('/')[1]}": s["success_rate"] for t, s in res.per_task.items()}
    figs |= {
        "budget_updates": float(b.updates),
        "batch_size": float(b.batch),
        "image_size": float(b.image_size),
        "eval_episodes_per_task": float(b.eval_episodes),
        "seconds": time.perf_counter() - t0,
    }
    report(figs, {"am_success": "> gcbc_success and > random_success"}, a.json)


if __name__ == "__main__":
    main()
