"""`robot-rl compare`: scratch vs pretrained vs pretrained + auxiliary loss, same seeds, one chart.

    robot-rl compare ckpt=runs/pretrain/am task=tabletop/reach_red algo=calql online_steps=2000 \\
        compare.seeds=[0,1,2] compare.xi=0.1 compare.out=runs/compare/reach

Takes every ``robot-rl finetune`` setting plus ``compare.*``. Each variant runs the same finetuning
(algorithm, budget, seeds, lake data, evaluation episodes)::

    scratch          ckpt=null, the pretrained model's observation spec and encoder architecture, ξ = 0
    pretrained       the checkpoint as the starting point, ξ = 0
    pretrained_aux   the checkpoint, ξ = compare.xi (L = L_task + ξ·L_g)

Writes ``<out>/<variant>/seed<k>/`` (full finetune runs, each with its flywheel branch),
``<out>/compare.json`` (every curve, and per variant the mean first and final success with the
evaluations of all seeds pooled into a Wilson 95% interval), and
``<out>/compare.png`` (mean success over seeds with the min-max band, per variant).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from robot_rl.finetune import FinetuneConfig, config_from_dict, finetune
from robot_rl.pretrain import ObsConfig

VARIANTS = ("scratch", "pretrained", "pretrained_aux")


def variant_configs(base: FinetuneConfig, xi: float) -> dict[str, FinetuneConfig]:
    """The three variants of one finetuning setup (``base.ckpt`` must be set)."""
    from robot_rl.checkpoint import load_policy, resolve_checkpoint

    if not base.ckpt:
        raise ValueError("compare needs ckpt=<a pretrained run or checkpoint>")
    if xi <= 0:
        raise ValueError(f"compare.xi must be > 0 (the pretrained_aux variant), got {xi}")
    pretrained, meta = load_policy(resolve_checkpoint(base.ckpt))
    spec = pretrained.spec
    obs = ObsConfig(cameras=tuple(spec.cameras), use_state=spec.state_dim > 0, augment_pad=base.obs.augment_pad)
    encoder = dataclasses.asdict(pretrained.cfg.encoder)
    # scratch must read the very snapshot the pretrained model was trained on
    ref = base.lake.ref or f"snapshot:{meta['lake']['snapshot_id']}"
    lake = dataclasses.replace(base.lake, ref=ref)
    return {
        "scratch": dataclasses.replace(
            base,
            ckpt=None,
            obs=obs,
            lake=lake,
            algo_cfg={**base.algo_cfg, "encoder": encoder},
            aux=dataclasses.replace(base.aux, xi=0.0),
        ),
        "pretrained": dataclasses.replace(base, lake=lake, aux=dataclasses.replace(base.aux, xi=0.0)),
        "pretrained_aux": dataclasses.replace(base, lake=lake, aux=dataclasses.replace(base.aux, xi=xi)),
    }


def compare(
    base: FinetuneConfig, seeds: list[int], xi: float, out: Path, variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    """Run every variant on every seed; write compare.json and compare.png; return the summary."""
    configs = variant_configs(base, xi)
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for name in variants:
        curves[name] = []
        for seed in seeds:
            run = out / name / f"seed{seed}"
            branch = f"finetune/{out.name}-{name}-seed{seed}"
            cfg = dataclasses.replace(configs[name], seed=seed, run_dir=str(run), branch=branch)
            finetune(cfg)
            curves[name].append(json.loads((run / "curve.json").read_text()))
    summary = {
        "task": base.task,
        "algo": base.algo,
        "seeds": seeds,
        "xi": xi,
        "online_steps": base.online_steps,
        "variants": {
            name: {
                "first_success": float(np.mean([c[0]["success_rate"] for c in runs])),
                "final_success": float(np.mean([c[-1]["success_rate"] for c in runs])),
                "final_per_seed": [c[-1]["success_rate"] for c in runs],
                **pooled("first", [c[0] for c in runs], base.eval_episodes),
                **pooled("final", [c[-1] for c in runs], base.eval_episodes),
                "curves": runs,
            }
            for name, runs in curves.items()
        },
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=1))
    plot_comparison(curves, out / "compare.png", f"{base.task}: {base.algo}, seeds {seeds}")
    return summary


def pooled(prefix: str, rows: list[dict[str, Any]], episodes: int) -> dict[str, Any]:
    """One evaluation row per seed pooled: successes, episodes and the Wilson 95% interval."""
    from robot_rl.evaluate import wilson_interval

    wins = int(sum(round(r["success_rate"] * episodes) for r in rows))
    n = episodes * len(rows)
    return {f"{prefix}_successes": wins, f"{prefix}_episodes": n, f"{prefix}_ci95": list(wilson_interval(wins, n))}


def plot_comparison(curves: dict[str, list[list[dict[str, Any]]]], path: Path, title: str) -> Path:
    """Mean success rate over seeds per variant, with the min-max band across seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, runs in curves.items():
        steps = sorted({r["env_step"] for c in runs for r in c})
        grid = np.array(
            [[np.interp(s, [r["env_step"] for r in c], [r["success_rate"] for r in c]) for s in steps] for c in runs]
        )  # (seeds, points)
        ax.plot(steps, grid.mean(0), marker="o", label=name)
        ax.fill_between(steps, grid.min(0), grid.max(0), alpha=0.15)
    ax.set(xlabel="environment steps", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def add_compare_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "compare",
        help="finetune scratch vs pretrained vs pretrained+aux on the same seeds; one chart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="finetune settings plus compare.seeds=[..] compare.xi= compare.out=")
    p.set_defaults(func=lambda a: main(a.overrides))


def main(overrides: list[str]) -> int:
    from robot_rl.hydra_utils import compose

    own: dict[str, Any] = {"seeds": [0, 1, 2], "xi": 0.1, "out": "runs/compare"}  # values parsed from JSON
    rest = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.startswith("compare."):
            name = key[len("compare.") :]
            if name not in own:
                raise ValueError(f"unknown setting {key}; known: {['compare.' + k for k in own]}")
            own[name] = json.loads(value) if name != "out" else value
        else:
            rest.append(o)
    resolved = compose("finetune", rest)
    summary = compare(config_from_dict(resolved), list(own["seeds"]), float(own["xi"]), Path(own["out"]))
    for name, v in summary["variants"].items():
        print(
            f"{name:16s} success {v['first_success']:.2f} -> {v['final_success']:.2f}  (per seed {v['final_per_seed']})"
        )
    print(f"chart: {Path(own['out']) / 'compare.png'}")
    return 0
