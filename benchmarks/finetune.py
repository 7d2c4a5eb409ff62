"""Finetuning benchmark on one tabletop task: does pretraining help, does ξ·L_g help, is there a dip?

    .venv/bin/python -m benchmarks.finetune [--quick] [--json PATH] [--task tabletop/reach_red]

Data: a local lake of the task's noisy scripted episodes and unlabeled play (32x32 renders; the
learners read proprioceptive state and the goal's scene state, so the full run fits on a CPU).

1. **Pretraining helps?** Actionable Models is pretrained on the lake with hindsight goals only (no
   task reward). Then ``robot-rl compare``: QT-Opt finetuning online for ``budget_env_steps`` from
   scratch, from the pretrained critic, and from it with ξ·L_g, on the same seeds; the reward budget
   reveals only ``reward_budget`` labeled lake episodes. Figures: mean final success per variant
   (the baseline: from scratch, same budget and seeds).
2. **The dip** (Cal-QL's claim): CQL and Cal-QL are pretrained offline on the task's labeled episodes,
   then finetuned online with the same algorithm; ``<algo>_dip`` = success at the first evaluation
   after finetuning starts − success before it (negative: a dip), averaged over seeds.

The full run uses 3 seeds and states its budget in the JSON; ``--quick`` one seed and tiny budgets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import report


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds: tuple[int, ...]
    task_episodes: int
    play_episodes: int
    pretrain_steps: int
    online_steps: int
    utd: float
    eval_every: int
    eval_episodes: int
    batch: int
    reward_budget: int


QUICK = Budget((0,), 6, 2, 150, 120, 0.5, 60, 5, 64, 2)
FULL = Budget((0, 1, 2), 20, 6, 1500, 800, 0.5, 200, 10, 128, 4)


def build_lake(root: Path, task: str, b: Budget) -> str:
    from data_lake import Lake
    from sim.collect import CollectConfig, collect

    uri = str(root / "lake")
    for k, (t, n) in enumerate(((task, b.task_episodes), ("tabletop/play", b.play_episodes))):
        collect(
            CollectConfig(
                task=t,
                episodes=n,
                lake=uri,
                policy="noisy",
                seed=k,
                image_size=32,
                cameras=("front",),
                workers=2,
                progress=False,
            )
        )
    Lake.open(uri).tag("v1")
    return uri


def pretrain_run(uri: str, root: Path, algo: str, b: Budget, conditioning_task: bool) -> Path:
    from data_lake.sampler import RelabelConfig
    from robot_rl.hydra_utils import compose
    from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain

    algo_cfg = {k: v for k, v in compose("pretrain", [f"algo={algo}"])["algo"].items() if k != "name"}
    algo_cfg |= {"gamma": 0.9, "hidden": [128, 128]}
    if conditioning_task:  # the task's own goal and sparse reward (CQL / Cal-QL offline pretraining)
        relabel = RelabelConfig(future=0, final=0, negative=0, commanded=1.0, task=0, gamma=0.9, success_terminal=True)
    else:  # hindsight goals only, no task reward (Actionable Models)
        relabel = RelabelConfig(future=0.6, final=0.1, negative=0.3, commanded=0, task=0, gamma=0.9)
    cfg = PretrainConfig(
        algo=algo,
        algo_cfg=algo_cfg,
        lake=LakeConfig(uri, "tag:v1"),
        obs=ObsConfig(cameras=(), use_state=True, augment_pad=0),
        task=TaskConfig(conditioning="goal", relabel=relabel),
        steps=b.pretrain_steps,
        batch_size=b.batch,
        run_dir=str(root / f"pretrain-{algo}"),
        save_every=b.pretrain_steps,
        progress=False,
    )
    return pretrain(cfg)


def finetune_base(uri: str, task: str, algo: str, ckpt: Path, b: Budget, algo_cfg: dict | None = None):  # type: ignore[no-untyped-def]
    from robot_rl.finetune import AuxConfig, FinetuneConfig
    from robot_rl.hydra_utils import compose
    from robot_rl.pretrain import LakeConfig

    cfg = {k: v for k, v in compose("pretrain", [f"algo={algo}"])["algo"].items() if k != "name"}
    cfg |= {"gamma": 0.9, "hidden": [128, 128]} | (algo_cfg or {})
    return FinetuneConfig(
        task=task,
        algo=algo,
        algo_cfg=cfg,
        ckpt=str(ckpt),
        lake=LakeConfig(uri, "tag:v1"),
        aux=AuxConfig(xi=0.0, batch_size=b.batch // 2),
        online_steps=b.online_steps,
        batch_size=b.batch,
        reward_budget=b.reward_budget,
        utd=b.utd,
        eval_every=b.eval_every,
        eval_episodes=b.eval_episodes,
        progress=False,
    )


def main() -> None:
    from robot_rl.compare import compare

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    p.add_argument("--task", default="tabletop/reach_red")
    a = p.parse_args()
    b = QUICK if a.quick else FULL
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        uri = build_lake(root, a.task, b)
        am = pretrain_run(uri, root, "actionable_models", b, conditioning_task=False)
        base = finetune_base(uri, a.task, "qtopt", am, b)
        summary = compare(base, list(b.seeds), 0.1, root / "compare")
        v = summary["variants"]
        figs: dict[str, float] = {
            "scratch_success": v["scratch"]["final_success"],
            "pretrained_success": v["pretrained"]["final_success"],
            "pretrained_aux_success": v["pretrained_aux"]["final_success"],
            "pretrained_zero_shot": v["pretrained"]["first_success"],
        }
        from robot_rl.finetune import finetune

        for algo in ("cql", "calql"):
            extra = {"backup_entropy": False, "alpha_init": 0.1, "cql_alpha": 1.0}
            ckpt = pretrain_run(uri, root, algo, b, conditioning_task=True)
            dips = []
            for seed in b.seeds:
                run = root / f"dip-{algo}-{seed}"
                cfg = dataclasses.replace(
                    finetune_base(uri, a.task, algo, ckpt, b, extra), seed=seed, run_dir=str(run), online_ratio=0.5
                )
                finetune(cfg)
                curve = json.loads((run / "curve.json").read_text())
                dips.append(curve[1]["success_rate"] - curve[0]["success_rate"] if len(curve) > 1 else 0.0)
            figs[f"{algo}_dip"] = float(np.mean(dips))
    figs |= {
        "budget_env_steps": float(b.online_steps),
        "budget_pretrain_updates": float(b.pretrain_steps),
        "seeds": float(len(b.seeds)),
        "eval_episodes": float(b.eval_episodes),
        "seconds": time.perf_counter() - t0,
    }
    targets = {
        "pretrained_success": "> scratch_success (baseline)",
        "pretrained_aux_success": ">= pretrained_success",
        "calql_dip": "> cql_dip (smaller dip)",
    }
    report(figs, targets, a.json)


if __name__ == "__main__":
    main()
