"""Finetuning benchmark: a task with no reward in pretraining, learned online from images with few rewards.

    .venv/bin/python -m benchmarks.finetune [--quick] [--json PATH] [--out DIR] [--task tabletop/reach_red]

Data: one local lake of 32x32 front-camera episodes, no rewards used in pretraining: play (noise
0.3), the task's noisy scripted episodes (noise 1.0: far from expert) and near-expert pushes (0.1).

1. **Does pretraining help, does ξ·L_g help?** Actionable Models is pretrained from images on
   hindsight goals only (γ = 0.97, the Monte-Carlo lower bound, goal-delta features). Then
   ``robot-rl compare``: QT-Opt finetunes online from images for ``online_steps`` environment steps
   with at most ``reward_budget`` revealed reward-labeled lake episodes of the task, on ``seeds``:

       scratch          the same networks and data, no checkpoint
       pretrained       from the AM checkpoint, ξ = 0 (the ξ·L_g ablation)
       pretrained_aux   from the AM checkpoint, L = L_task + ξ·L_g

   Figures: final success of each variant, the evaluations of all seeds pooled (``eval_episodes``
   per seed) with a Wilson 95% interval (``<variant>_success``, ``_ci_low``, ``_ci_high``), and the
   zero-shot success before any update (``pretrained_zero_shot``).
2. **The dip** (Cal-QL's claim) from states (cheap enough for ``dip_eval_episodes`` episodes per
   evaluation): CQL and Cal-QL pretrained offline on the task's reward-labeled episodes (its
   commanded goal, sparse success reward), then finetuned online with the same algorithm.
   ``<algo>_dip`` = success before finetuning − the lowest success measured in the first 20% of
   online steps, averaged over seeds (0: no dip; smaller is better); ``<algo>_dip_per_seed_*``.

``--quick`` runs one seed on tiny budgets (checks the plumbing, not the learning).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.report import report
from robot_rl.hydra_utils import algo_settings

if TYPE_CHECKING:
    from data_lake.sampler import RelabelConfig

GAMMA = 0.97
# CQL and Cal-QL alike: no entropy in the backup (with 0/1 rewards it would dominate Q and lift it far
# above the Monte-Carlo return that Cal-QL's bound compares with), a small initial entropy weight
DIP_ALGO = {"gamma": GAMMA, "backup_entropy": False, "alpha_init": 0.1}


def am_relabel() -> RelabelConfig:
    """The goal relabeling of the Actionable Models pretraining and auxiliary loss."""
    from data_lake.sampler import RelabelConfig

    return RelabelConfig(future=0.3, final=0.4, negative=0.3, commanded=0.0, task=0.0, gamma=GAMMA)


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds: tuple[int, ...]
    episodes: int  # in the lake: play 40%, the task 30%, pushes 30%
    pretrain_steps: int
    online_steps: int  # environment steps per finetuning run
    utd: float
    eval_every: int
    eval_episodes: int  # per evaluation and seed
    batch: int
    reward_budget: int
    xi: float
    dip_pretrain_steps: int
    dip_online_steps: int
    dip_eval_every: int
    dip_eval_episodes: int
    dip_utd: float


QUICK = Budget((0,), 12, 40, 60, 0.25, 60, 4, 32, 2, 0.1, 40, 40, 20, 4, 1.0)
FULL = Budget((0, 1, 2, 3, 4), 240, 2000, 1000, 0.25, 500, 20, 128, 3, 0.1, 1000, 200, 40, 50, 1.0)


def build_lake(root: Path, task: str, b: Budget) -> str:
    from tasks.collect import collect_mix

    uri = str(root / "lake")
    mix = (("tabletop/play", 0.4, 0.3), (task, 0.3, 1.0), ("tabletop/push_red_to_pad", 0.3, 0.1))
    runs = [(t, max(2, round(share * b.episodes)), "noisy", noise) for t, share, noise in mix]
    collect_mix(uri, runs, image_size=32, cameras=("front",), workers=2, progress=False)
    return uri


def pretrain_am(uri: str, root: Path, b: Budget) -> Path:
    from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain

    cfg = PretrainConfig(
        algo="actionable_models",
        algo_cfg=algo_settings("actionable_models", gamma=GAMMA, mc_lower_bound=True, encoder={"goal_delta": True}),
        lake=LakeConfig(uri, "tag:v1"),
        obs=ObsConfig(cameras=("front",), use_state=True, augment_pad=2),
        task=TaskConfig(conditioning="goal", relabel=am_relabel()),
        steps=b.pretrain_steps,
        batch_size=b.batch,
        run_dir=str(root / "pretrain-am"),
        save_every=b.pretrain_steps,
        progress=False,
    )
    return pretrain(cfg)


def pretrain_task(uri: str, root: Path, algo: str, b: Budget) -> Path:
    """CQL / Cal-QL offline on the task's reward-labeled episodes, from states (commanded goal)."""
    from data_lake.sampler import RelabelConfig
    from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain

    relabel = RelabelConfig(future=0, final=0, negative=0, commanded=1.0, task=0, gamma=GAMMA, success_terminal=True)
    cfg = PretrainConfig(
        algo=algo,
        algo_cfg=algo_settings(algo, **DIP_ALGO),
        lake=LakeConfig(uri, "tag:v1"),
        obs=ObsConfig(cameras=(), use_state=True, scene_state=True, augment_pad=0),
        task=TaskConfig(conditioning="goal", relabel=relabel),
        steps=b.dip_pretrain_steps,
        batch_size=256,
        run_dir=str(root / f"pretrain-{algo}"),
        save_every=b.dip_pretrain_steps,
        calibration_episodes=4,  # calibration.png: Cal-QL's Q should sit on or above the return, CQL's below
        progress=False,
    )
    return pretrain(cfg)


def dip(curve: list[dict], online_steps: int) -> float:
    """Success before finetuning − the lowest success in the first 20% of online steps (>= 0); the
    first evaluation after the start always counts (episodes end off the evaluation grid)."""
    early = [r["success_rate"] for r in curve[1:] if r["env_step"] <= 0.2 * online_steps] or [
        r["success_rate"] for r in curve[1:2]
    ]
    return max(0.0, curve[0]["success_rate"] - min(early)) if early else 0.0


def main() -> None:
    from robot_rl.finetune import AuxConfig, FinetuneConfig
    from robot_rl.pretrain import LakeConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    p.add_argument("--out", help="keep the runs here (default: a temp dir)")
    p.add_argument("--task", default="tabletop/reach_red")
    p.add_argument("--skip-dip", action="store_true", help="only the scratch / pretrained / ξ comparison")
    p.add_argument("--skip-compare", action="store_true", help="only the dip (no image pretraining)")
    a = p.parse_args()
    b = QUICK if a.quick else FULL
    t0 = time.perf_counter()
    figs: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.out) if a.out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        uri = build_lake(root, a.task, b)
        figs["collect_s"] = time.perf_counter() - t0
        am = None if a.skip_compare else pretrain_am(uri, root, b)
        figs["pretrain_s"] = time.perf_counter() - t0 - figs["collect_s"]
        base = FinetuneConfig(
            task=a.task,
            algo="qtopt",
            algo_cfg=algo_settings("qtopt", gamma=GAMMA, mc_lower_bound=True),
            ckpt=None if am is None else str(am),
            lake=LakeConfig(uri, "tag:v1"),
            aux=AuxConfig(xi=0.0, batch_size=b.batch // 2, relabel=am_relabel()),
            online_steps=b.online_steps,
            batch_size=b.batch,
            reward_budget=b.reward_budget,
            utd=b.utd,
            eval_every=b.eval_every,
            eval_episodes=b.eval_episodes,
            progress=False,
        )
        if am is not None:
            run_compare(base, b, root, figs)
            figs["compare_s"] = time.perf_counter() - t0 - figs["collect_s"] - figs["pretrain_s"]
        if not a.skip_dip:
            for algo in ("cql", "calql"):
                figs |= run_dip(base, algo, pretrain_task(uri, root, algo, b), b, root)
    figs |= {
        "budget_env_steps": float(b.online_steps),
        "budget_pretrain_updates": float(b.pretrain_steps),
        "reward_episodes": float(b.reward_budget),
        "seeds": float(len(b.seeds)),
        "eval_episodes_per_seed": float(b.eval_episodes),
        "dip_eval_episodes": float(b.dip_eval_episodes),
        "seconds": time.perf_counter() - t0,
    }
    targets = {
        "pretrained_aux_success": ">= 0.8, ci_low > scratch ci_high",
        "aux_effect": "(pretrained_aux - pretrained)",
        "calql_dip": "< cql_dip (smaller dip)",
    }
    report(figs, targets, a.json, skip=tuple(k for k in figs if k.endswith(("_ci_low", "_ci_high"))))


def run_compare(base, b: Budget, root: Path, figs: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    """Scratch / pretrained / pretrained + ξ·L_g over the seeds; figures with pooled Wilson intervals."""
    from robot_rl.compare import compare

    summary = compare(base, list(b.seeds), b.xi, root / "compare")
    for name, v in summary["variants"].items():
        figs[f"{name}_success"] = v["final_successes"] / v["final_episodes"]
        figs[f"{name}_success_ci_low"], figs[f"{name}_success_ci_high"] = v["final_ci95"]
    zs = summary["variants"]["pretrained"]
    figs["pretrained_zero_shot"] = zs["first_successes"] / zs["first_episodes"]
    figs["pretrained_zero_shot_ci_low"], figs["pretrained_zero_shot_ci_high"] = zs["first_ci95"]
    figs["aux_effect"] = figs["pretrained_aux_success"] - figs["pretrained_success"]


def run_dip(base, algo: str, ckpt: Path, b: Budget, root: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Finetune the offline ``algo`` checkpoint online with the same algorithm on every seed; its dips."""
    from robot_rl.finetune import AuxConfig, finetune

    figs, dips = {}, []
    for seed in b.seeds:
        run = root / f"dip-{algo}-{seed}"
        cfg = dataclasses.replace(
            base,
            algo=algo,
            algo_cfg=algo_settings(algo, **DIP_ALGO),
            ckpt=str(ckpt),
            aux=AuxConfig(xi=0.0),
            reward_budget=None,
            online_steps=b.dip_online_steps,
            utd=b.dip_utd,
            batch_size=256,
            eval_every=b.dip_eval_every,
            eval_episodes=b.dip_eval_episodes,
            seed=seed,
            run_dir=str(run),
            branch=f"finetune/dip-{algo}-{seed}",
        )
        finetune(cfg)
        curve = json.loads((run / "curve.json").read_text())
        dips.append(dip(curve, b.dip_online_steps))
        figs[f"{algo}_before_seed{seed}"] = curve[0]["success_rate"]
        figs[f"{algo}_dip_seed{seed}"] = dips[-1]
    figs[f"{algo}_dip"] = float(np.mean(dips))
    return figs


if __name__ == "__main__":
    main()
