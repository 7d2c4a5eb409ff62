"""Write ``configs/algo/<name>.yaml`` for every algorithm in ALGOS: every config field with its default
(so each can be overridden as ``algo.<field>=...``), and the named variants (``VARIANTS``: an algorithm
with a paper's or benchmark's settings, e.g. ``algo=gciql_ogbench``). Run after adding an algorithm or a
config field:

    .venv/bin/python -m robot_rl.algo_configs [NAME ...]

``tests/test_pretrain.py`` checks every file lists exactly its dataclass fields.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from robot_rl.algos import ALGOS
from robot_rl.hydra_utils import CONFIG_DIR, dataclass_defaults

OVERRIDES = {
    "cql": {"backup_entropy": False, "alpha_init": 0.1},
    "sac_n": {"backup_entropy": False, "alpha_init": 0.1},
    "edac": {"backup_entropy": False, "alpha_init": 0.1, "eta": 0.001},
}
NOTES = {
    "cql": "backup_entropy false, alpha_init 0.1: with sparse 0/1 rewards an entropy bonus in the backup dominates Q",
    "sac_n": "backup_entropy false, alpha_init 0.1, as cql: with sparse 0/1 rewards an entropy bonus dominates Q",
    "edac": "backup_entropy false, alpha_init 0.1, as cql; eta 0.001: the similarity term is scale-free while the "
    "TD loss scales with Q^2, and the paper's eta 1 is for D4RL returns in the hundreds; with 0/1 rewards (Q <= 1) "
    "eta 1 or 0.1 drives the critics' action gradients apart at the cost of the TD fit (point-mass learning test: "
    "success 0.06 / 0.15 vs 0.97 at 0.001, random 0.03)",
}
GCIQL_OGBENCH: dict[str, Any] = {  # OGBench's GCIQL (impls/agents/gciql.py), as IQLConfig overrides
    "hidden": [512, 512, 512],
    "layer_norm": True,
    "gamma": 0.99,
    "expectile": 0.9,
    "actor_loss": "ddpgbc",
    "alpha": 0.3,
    "reward_offset": -1.0,
}
# config-group file -> (algorithm, overrides of its defaults, note): an algorithm with named settings
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "gciql_ogbench": (
        "iql",
        GCIQL_OGBENCH,
        "OGBench's GCIQL (impls/agents/gciql.py): reward success - 1, expectile 0.9, DDPG+BC actor "
        "(alpha: 0.3 default; OGBench uses 1.0 on cube-single-play, 0.03 on cube-single-noisy, 0.003 on "
        "pointmaze-medium-navigate), LayerNorm critics, 512x3 MLPs; pair it with task=ogbench (value goals "
        "0.2 current / 0.5 geometric future / 0.3 random, actor goals uniform future)",
    ),
    "gciql_fast": (
        "iql",
        {**GCIQL_OGBENCH, "actor_lr": 0.001, "critic_lr": 0.001},
        "gciql_ogbench with learning rates 1e-3 instead of OGBench's 3e-4, for CPU budgets: on OGBench "
        "cube-single-noisy (batch 256, 256x3 MLPs, one seed) it was ahead of 3e-4 at every point measured, "
        "within overlapping intervals (500 trajectories, 60k updates: 0.74 against 0.63), and reached 0.81 and "
        "0.87 (two seeds) at 90k updates (docs/benchmarks.md); pair it with task=ogbench as gciql_ogbench",
    ),
    "tt_cpu": (
        "tt",
        {
            "sequence_length": 1,
            "bins": 32,
            "embed_dim": 64,
            "layers": 2,
            "heads": 2,
            "actor_lr": 0.001,
            "beam_width": 4,
            "horizon": 1,
            "expansion": 4,
            "top_k": 8,
        },
        "a Trajectory Transformer small enough to plan on a CPU core (a few ms per action): context K = 1, "
        "a 64-wide 2-layer model, and a one-step beam (H = 1) that samples E = 4 first actions among the 8 "
        "likeliest bins and keeps the one with the highest predicted r + gamma R. On the point-mass test "
        "(tests/test_tt.py) this plans to 0.60-0.70 success, against 0.53 for the likeliest tokens and 0.31 "
        "with H = 2: at this size sampled next-observation tokens add more noise than depth adds",
    ),
}


def main(names: list[str]) -> None:
    only = set(names)
    for name, cls in ALGOS.items():
        if only and name not in only:
            continue
        d = {k: v for k, v in dataclass_defaults(cls.config_class).items() if k != "seed"}
        d.update(OVERRIDES.get(name, {}))
        doc = ((cls.__module__ and sys.modules[cls.__module__].__doc__) or "").strip().splitlines()[0]
        source = cls.__module__.replace(".", "/") + ".py"
        head = f"# @package algo\n# {doc}\n# Every field of {cls.config_class.__name__} ({source}); seed: top level\n"
        if name in NOTES:
            head += f"# Differs from the dataclass defaults: {NOTES[name]}.\n"
        (CONFIG_DIR / "algo" / f"{name}.yaml").write_text(head + yaml.safe_dump({"name": name, **d}, sort_keys=False))
        print("wrote", name)
    for variant, (name, overrides, note) in VARIANTS.items():
        if only and variant not in only:
            continue
        cls = ALGOS[name]
        d = {k: v for k, v in dataclass_defaults(cls.config_class).items() if k != "seed"} | overrides
        head = (
            f"# @package algo\n# {variant}: {name} with named settings. Every field of "
            f"{cls.config_class.__name__}; seed: top level\n# {note}.\n"
        )
        body = yaml.safe_dump({"name": name, **d}, sort_keys=False)
        (CONFIG_DIR / "algo" / f"{variant}.yaml").write_text(head + body)
        print("wrote", variant)


if __name__ == "__main__":
    main(sys.argv[1:])
