"""`robot-rl eval ckpt=... task=... episodes=N`: success rate with a confidence interval, per-task
results, a rollout video and a JSON summary (robot_rl/evaluate.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robot_rl.config import from_dict
from robot_rl.hydra_utils import compose, describe

ACT = ("policy", "cem")  # the checkpoint's own policy | CEM over its critic (load_greedy_policy)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or policy in the simulator (success rate, CI, video, JSON)",
        description=__doc__ + "\nDefaults (configs/eval.yaml):\n\n" + describe("eval"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. ckpt=runs/pretrain/x task=tabletop/reach_red")
    p.add_argument("--rrd", default=None, metavar="PATH", help="also save rollouts to a Rerun file (same as rrd=PATH)")
    p.set_defaults(func=lambda a: run_eval([*a.overrides, *([f"rrd={a.rrd}"] if a.rrd else [])]))


def run_eval(overrides: list[str]) -> int:
    from robot_rl.algos.qtopt import CEMConfig
    from robot_rl.checkpoint import load_greedy_policy, load_policy, resolve_checkpoint
    from robot_rl.evaluate import EvalConfig, evaluate, policy_act

    c: dict[str, Any] = compose("eval", overrides)
    own = ("ckpt", "device", "out", "task", "rrd", "rrd_episodes", "act", "cem")
    cmd = {k: c.pop(k) for k in own}  # the command's own settings
    ckpt = resolve_checkpoint(cmd["ckpt"])
    if cmd["act"] not in ACT:
        raise ValueError(f"act must be one of {ACT}, got {cmd['act']!r}")
    if cmd["act"] == "cem":
        if c["backend"] != "local":
            raise ValueError("act=cem evaluates with backend=local (Ray workers load the checkpoint's own policy)")
        algo, meta = load_greedy_policy(ckpt, from_dict(CEMConfig, cmd["cem"]), cmd["device"])
    else:
        algo, meta = load_policy(ckpt, cmd["device"])
    tasks = (cmd["task"],) if isinstance(cmd["task"], str) else tuple(cmd["task"])
    ecfg = from_dict(EvalConfig, {**c, "tasks": tasks})  # the rest of configs/eval.yaml is EvalConfig
    run_dir = next((p for p in (ckpt, *ckpt.parents) if (p / "run.json").exists()), None)
    out = Path(cmd["out"]) if cmd["out"] else (run_dir / "eval" if run_dir else Path("runs/eval"))

    act = policy_act(algo, ecfg.deterministic, ecfg.seed)
    name = f"eval_{algo.step:07d}" + ("_cem" if cmd["act"] == "cem" else "")
    res = evaluate(act, algo.spec, ecfg, meta.get("tasks", ()), out, algo.device, name=name, checkpoint=ckpt)
    lo, hi = res.summary["success_ci95"]
    print(f"{ckpt} ({algo.name}, {algo.step} updates, snapshot {meta.get('lake', {}).get('snapshot_id', '?')[:12]})")
    for t, s in res.per_task.items():
        print(
            f"  {t:32s} success {s['success_rate']:.2f} [{s['success_ci95'][0]:.2f}, {s['success_ci95'][1]:.2f}]"
            f"  return {s['mean_return']:.2f}  ({s['episodes']} episodes)"
        )
    print(f"  overall success {res.success_rate:.2f} (95% CI {lo:.2f}-{hi:.2f})")
    print(f"summary: {out / f'{name}.json'}" + (f"  video: {res.video}" if res.video else ""))
    if cmd["rrd"]:  # the first rrd_episodes episodes of each task again, every frame, to a Rerun file
        from robot_rl.viz import log_eval_rollouts

        act = policy_act(algo, ecfg.deterministic, ecfg.seed)  # a fresh RNG: the evaluated episodes again
        rrd = log_eval_rollouts(
            cmd["rrd"], act, algo.spec, ecfg, meta.get("tasks", ()), algo.device, cmd["rrd_episodes"]
        )
        print(f"rollouts: {rrd} (open it with `rerun {rrd}`)")
    return 0
