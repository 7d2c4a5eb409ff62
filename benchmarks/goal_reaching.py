"""Goal-reaching learning benchmark from images: Actionable Models vs GC-IQL vs GC-BC vs random.

    .venv/bin/python -m benchmarks.goal_reaching [--quick] [--json PATH] [--out DIR]

Data (one fresh local lake, 32x32 front camera, proprioceptive state; no rewards are used): scripted
tabletop episodes of mixed quality, so that the learners differ in how they use sub-optimal data

    tabletop/play               exploratory play, action noise 0.3
    tabletop/reach_red          noise 1.0: mostly random motion, the data furthest from expert
    tabletop/push_red_to_pad    noise 0.1: near-expert pushes (a push from noisy data is rarely seen)
    tabletop/pick_and_lift_red  noise 0.3

Learners (same snapshot, updates, batch, encoder and normalization; hindsight goals only):

    am     Actionable Models: goals future/final (positives) and other episodes (chaining,
           negatives), artificial negative actions, the Monte-Carlo lower bound on targets; CEM policy
    gciql  goal-conditioned IQL: the same goals; expectile value, advantage-weighted Gaussian actor
           (the actor ignores other-episode goals, which have no demonstration)
    gcbc   goal-conditioned BC on the same own-episode goals (future/final)
    random uniform actions (the floor)

All use γ = 0.97, goal features φ(g) − φ(s) (``encoder.goal_delta``) and normalized states.

Evaluation: each task's goal image on held-out reset seeds (never used for collection), success = the
task's detector at any step, ``eval_episodes`` per task (100 in the full run) with Wilson 95%
intervals. JSON: ``<learner>_success`` over all tasks and ``<learner>_<task>`` per task, each with
``_ci_low``/``_ci_high``; ``budget_updates``, ``seconds``. ``--out`` keeps the runs (TensorBoard,
learning curves ``eval.csv``, Q calibration on held-out episodes, ``<learner>_eval.json``) and
writes ``curves.png`` and ``success_by_distance_<task>.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from benchmarks.report import report, with_ci

EVAL_TASKS = ("tabletop/reach_red", "tabletop/push_red_to_pad", "tabletop/pick_and_lift_red")
DATA = (  # (task, share of the episodes, action noise)
    ("tabletop/play", 0.2, 0.3),
    ("tabletop/reach_red", 0.2, 1.0),
    ("tabletop/push_red_to_pad", 0.4, 0.1),
    ("tabletop/pick_and_lift_red", 0.2, 0.3),
)
GAMMA = 0.97
LEARNERS = {  # key -> (algorithm, algorithm config overrides, relabel probabilities (future, final, negative))
    "am": (
        "actionable_models",
        {"gamma": GAMMA, "mc_lower_bound": True, "encoder": {"goal_delta": True}},
        (0.3, 0.4, 0.3),
    ),
    "gciql": (
        "iql",
        {"gamma": GAMMA, "mc_lower_bound": True, "encoder": {"goal_delta": True}},
        (0.3, 0.4, 0.3),
    ),
    "gcbc": ("bc", {"gamma": GAMMA, "encoder": {"goal_delta": True}}, (0.3, 0.7, 0.0)),
}
# The rest of the offline family, goal-conditioned the same way: each algorithm's own defaults (its
# configs/algo file), γ, goal features φ(g) − φ(s), and GC-IQL's goals and rewards (0/1 on reaching).
OTHERS = ("cql", "bcq", "bear", "brac", "uwac", "rem", "sac_n", "edac", "rebrac", "mopo", "morel", "combo", "dt", "tt")
LEARNERS.update({k: (k, {"gamma": GAMMA, "encoder": {"goal_delta": True}}, (0.3, 0.4, 0.3)) for k in OTHERS})
# Learners whose settings come from a named config file (configs/algo/<file>.yaml) instead of the
# algorithm's own: the Trajectory Transformer plans at a few ms per action with tt_cpu, at seconds with tt.
CONFIG_FILE = {"tt": "tt_cpu"}
DEFAULT_LEARNERS = ("am", "gciql", "gcbc")
DISTANCE_EDGES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 1.0)


@dataclasses.dataclass(frozen=True)
class Budget:
    episodes: int  # in the lake, split by DATA's shares
    updates: int
    batch: int
    eval_episodes: int  # per evaluation task, final
    curve_points: int  # evaluations during training (eval_episodes // 5 per task each)
    image_size: int = 32


QUICK = Budget(episodes=10, updates=40, batch=32, eval_episodes=4, curve_points=1)
FULL = Budget(episodes=400, updates=2500, batch=128, eval_episodes=100, curve_points=2)


def build_lake(uri: str, b: Budget, workers: int = 2) -> None:
    from tasks.collect import collect_mix

    mix = [(task, max(2, round(share * b.episodes)), "noisy", noise) for task, share, noise in DATA]
    collect_mix(uri, mix, image_size=b.image_size, cameras=("front",), workers=workers, progress=False)


def record(figs: dict[str, float], key: str, res) -> None:
    with_ci(figs, f"{key}_success", res.summary)
    for task, s in res.per_task.items():
        with_ci(figs, f"{key}_{task.split('/')[1]}", s)


def write_success_by_distance(episodes: dict[str, list[dict]], out: Path) -> None:
    """Per evaluation task: ``success_by_distance_<task>.png`` (one line per learner) and one JSON of all."""
    from robot_rl.diagnostics import plot_success_by_distance, success_by_distance

    table = {}
    for task in EVAL_TASKS:
        name = task.split("/")[1]
        table[name] = {
            key: success_by_distance([e for e in eps if e["task"] == task], DISTANCE_EDGES)
            for key, eps in episodes.items()
        }
        plot_success_by_distance(table[name], out / f"success_by_distance_{name}.png", f"{name}: success by distance")
    (out / "success_by_distance.json").write_text(json.dumps(table, indent=1))


def plot_curves(curves: dict[str, list[tuple[int, dict[str, float]]]], path: Path) -> None:
    """Success against updates, one panel per evaluation task, one line per learner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robot_rl.diagnostics import save_figure

    fig, axes = plt.subplots(1, len(EVAL_TASKS), figsize=(4 * len(EVAL_TASKS), 3.4), sharey=True)
    for ax, task in zip(axes, EVAL_TASKS, strict=True):
        for name, pts in curves.items():
            ax.plot([p[0] for p in pts], [p[1][task] for p in pts], marker="o", label=name)
        ax.set(xlabel="updates", title=task.split("/")[1], ylim=(-0.02, 1.02))
    axes[0].set_ylabel("success")
    axes[0].legend(fontsize=8)
    save_figure(fig, axes, path)


def main() -> None:
    from data_lake.sampler import RelabelConfig
    from robot_rl.checkpoint import load_policy
    from robot_rl.evaluate import EvalConfig, evaluate, policy_act
    from robot_rl.hydra_utils import algo_settings
    from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    p.add_argument("--out", help="keep the lake-free run folders and plots here (default: a temp dir)")
    p.add_argument(
        "--learners",
        default=",".join(DEFAULT_LEARNERS),
        help="comma-separated subset of " + ",".join(LEARNERS) + " (default: " + ",".join(DEFAULT_LEARNERS) + ")",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda (bf16 autocast) or auto")
    p.add_argument("--image-size", type=int, help="override the budget's image size (e.g. 64 on a GPU)")
    p.add_argument("--updates", type=int, help="override the budget's updates per learner")
    p.add_argument("--batch", type=int, help="override the budget's batch size")
    p.add_argument("--episodes", type=int, help="override the budget's lake size")
    p.add_argument("--workers", type=int, default=2, help="collection processes")
    p.add_argument(
        "--obs", choices=("images", "states"), default="images", help="states: proprioception + scene vector, no image"
    )
    a = p.parse_args()
    unknown = [k for k in a.learners.split(",") if k not in LEARNERS]
    if unknown:
        raise SystemExit(f"unknown learners {unknown}; known: {', '.join(LEARNERS)}")
    b = QUICK if a.quick else FULL
    overrides = {"image_size": a.image_size, "updates": a.updates, "batch": a.batch, "episodes": a.episodes}
    b = dataclasses.replace(b, **{k: v for k, v in overrides.items() if v is not None})
    t0 = time.perf_counter()
    figs: dict[str, float] = {}
    by_distance: dict[str, list[dict]] = {}
    curves: dict[str, list[tuple[int, dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = Path(a.out) if a.out else root / "runs"
        out.mkdir(parents=True, exist_ok=True)
        uri = str(root / "lake")
        build_lake(uri, b, a.workers)
        figs["collect_s"] = time.perf_counter() - t0
        ecfg = EvalConfig(
            tasks=EVAL_TASKS, episodes=b.eval_episodes, seed=900_000, num_envs=4, video_episodes=0, progress=False
        )
        spec = None
        obs = ObsConfig(cameras=("front",), use_state=True, augment_pad=2)
        if a.obs == "states":
            obs = ObsConfig(cameras=(), use_state=True, scene_state=True, augment_pad=0)
        for key in a.learners.split(","):
            algo, overrides, (future, final, negative) = LEARNERS[key]
            t1 = time.perf_counter()
            algo_cfg = algo_settings(CONFIG_FILE.get(key, algo), **overrides)
            run = pretrain(
                PretrainConfig(
                    algo=algo,
                    algo_cfg=algo_cfg,
                    lake=LakeConfig(uri, "tag:v1"),
                    obs=obs,
                    task=TaskConfig(
                        conditioning="goal",
                        relabel=RelabelConfig(
                            future=future, final=final, negative=negative, commanded=0, task=0, gamma=GAMMA
                        ),
                        eval_tasks=EVAL_TASKS,
                    ),
                    steps=b.updates,
                    batch_size=b.batch,
                    device=a.device,
                    amp=a.device.startswith("cuda"),
                    run_dir=str(out / key),
                    save_every=b.updates,
                    eval_every=max(1, b.updates // (b.curve_points + 1)),  # the curve's points
                    eval_episodes=max(2, b.eval_episodes // 5),
                    calibration_episodes=0 if key == "gcbc" else 4,
                    progress=False,
                )
            )
            figs[f"{key}_train_s"] = time.perf_counter() - t1
            every = max(1, b.updates // (b.curve_points + 1))
            curves[key] = []
            for f in sorted((run / "eval").glob("step_*.json")):  # during training (the last is the final's)
                step = int(f.stem.split("_")[1])
                if step + every <= b.updates:
                    per_task = json.loads(f.read_text())["per_task"]
                    curves[key].append((step, {t: per_task[t]["success_rate"] for t in EVAL_TASKS}))
            trained, _ = load_policy(run / "checkpoints" / "latest")
            spec = trained.spec
            res = evaluate(policy_act(trained), spec, ecfg)
            (out / f"{key}_eval.json").write_text(json.dumps(res.to_json(), indent=1))
            record(figs, key, res)
            curves[key].append((b.updates, {t: res.per_task[t]["success_rate"] for t in EVAL_TASKS}))
            by_distance[key] = res.episodes
            figs[f"{key}_train_eval_s"] = time.perf_counter() - t1
        if spec is None:
            raise ValueError(f"no learner in {a.learners!r}")
        res = evaluate(None, spec, ecfg)
        record(figs, "random", res)
        by_distance["random"] = res.episodes
        write_success_by_distance(by_distance, out)
        plot_curves(curves, out / "curves.png")
    figs |= {
        "budget_updates": float(b.updates),
        "batch_size": float(b.batch),
        "image_size": float(b.image_size) if a.obs == "images" else 0.0,
        "lake_episodes": float(b.episodes),
        "eval_episodes_per_task": float(b.eval_episodes),
        "seconds": time.perf_counter() - t0,
    }
    targets = {
        "am_reach_red": ">= 0.9",
        "am_push_red_to_pad": ">= 0.5",
        "am_success": ">= gcbc_success",
    }
    report(figs, targets, a.json, skip=tuple(k for k in figs if k.endswith(("_ci_low", "_ci_high"))))


if __name__ == "__main__":
    main()
