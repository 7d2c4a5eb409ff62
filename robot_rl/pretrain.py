"""`robot-rl pretrain`: offline training from a pinned lake snapshot, one short linear loop.

    robot-rl pretrain algo=cql lake.uri=./lake lake.ref=tag:v1 obs=image task=goal_reaching steps=20000
    torchrun --nproc_per_node=2 -m robot_rl.pretrain algo=iql ...      # data-parallel, one process per rank

The run directory (``run_dir``, default ``runs/pretrain/<algo>-<time>``) holds::

    config.yaml             the resolved config (what ``resume=true`` checks against)
    run.json                lake URI, ref and snapshot id, git commit, world size, versions, task vocabulary
    tb/                     TensorBoard: losses, Q statistics, the CQL gap, timings per phase, evaluation
    checkpoints/latest/     algorithm + optimizers + RNGs + sampler states (exact resume)
    checkpoints/best/       the best evaluation so far
    policy/                 what deployment loads (checkpoint.save_policy): acting networks + metadata
    eval/step_<N>.json      evaluations (and a rollout video); eval.csv the curve

Multi-process: each rank samples its own share of the episodes (``SamplerConfig.rank``); gradients
are averaged across ranks before every optimizer step (``DataParallel`` below: DDP's semantics,
gloo on CPU, NCCL on GPU), so every rank holds the same parameters; rank 0 writes everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from data_lake.lake import LakeView
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig, label_provenance
from data_lake.sequences import SequenceSampler
from robot_rl.config import LakeConfig, ObsConfig, from_dict
from robot_rl.runs import Logger, Throughput, autocast, git_commit, prepare_run_dir, resolve_device

if TYPE_CHECKING:
    from robot_rl.algos import Algorithm

CONDITIONING = ("goal", "task", "none")


# ---------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What the model is conditioned on and where it is evaluated."""

    conditioning: str = "goal"  # goal: hindsight-relabeled goal images/states; task: task id; none
    relabel: RelabelConfig = dataclasses.field(default_factory=RelabelConfig)
    task_balanced: bool = False
    eval_tasks: tuple[str, ...] = ()  # registry names; () disables evaluation
    # a goal-reached classifier (robot-rl detector train-goal): the rewards of relabeled goals (future, final,
    # negative) become reached(o', g) on its camera; None: the sampler's reward rule
    reward_classifier: str | None = None

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONING:
            raise ValueError(f"task.conditioning must be one of {CONDITIONING}, got {self.conditioning!r}")
        if self.conditioning != "goal" and self.relabel.uses_goals:
            raise ValueError(
                f"task.conditioning={self.conditioning} draws no goals: set the relabel probabilities "
                f"future/final/negative/commanded to 0 and task to 1 (got {self.relabel.probabilities})"
            )


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    algo: str
    algo_cfg: dict[str, Any]  # the algorithm's own config fields (built into ALGOS[algo].config_class)
    lake: LakeConfig = dataclasses.field(default_factory=LakeConfig)
    obs: ObsConfig = dataclasses.field(default_factory=ObsConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    steps: int = 1000
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    amp: bool = False  # bf16 autocast (CUDA)
    compile: bool = False  # torch.compile the encoder
    run_dir: str | None = None
    resume: bool = False
    log_every: int = 50
    save_every: int = 500
    eval_every: int = 0  # 0: evaluate only at the end (when eval_tasks are given)
    eval_episodes: int = 10
    eval_envs: int = 4
    prefetch: int = 4
    progress: bool = True
    calibration_episodes: int = 0  # held out of training; Q vs the data's return on them (calibration/*)
    ope_every: int = (
        0  # off-policy evaluation of the current policy every N updates (ope/*, robot_rl/ope/run.py); 0: off
    )
    ope_sigma: float = 0.2  # the evaluated policy: its deterministic action + N(0, ope_sigma²), clipped
    ope_estimators: tuple[str, ...] = ("is", "pdis", "wis", "cwpdis")  # fqe, dr, wdr fit FQE each time (costly)
    ope_episodes: int = 50  # episodes evaluated on: the held-out ones (calibration_episodes), else in-sample
    ope_fqe_steps: int = 500  # FQE updates per evaluation, when ope_estimators asks for fqe, dr or wdr

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1 or self.save_every < 1:
            raise ValueError("steps, batch_size, log_every and save_every must be >= 1")
        if self.calibration_episodes < 0:
            raise ValueError(f"calibration_episodes must be >= 0, got {self.calibration_episodes}")
        if self.ope_every < 0 or self.ope_episodes < 1 or self.ope_fqe_steps < 1:
            raise ValueError(
                f"ope_every must be >= 0 (0: off), ope_episodes and ope_fqe_steps >= 1; got {self.ope_every}, "
                f"{self.ope_episodes}, {self.ope_fqe_steps}"
            )
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")

    def algo_config(self) -> Any:
        from robot_rl.algos import ALGOS

        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; known: {sorted(ALGOS)}")
        values = {**self.algo_cfg, "seed": self.seed}
        return from_dict(ALGOS[self.algo].config_class, values)

    def sampler_config(
        self, rank: int = 0, world_size: int = 1, episode_ids: tuple[str, ...] | None = None
    ) -> SamplerConfig:
        return SamplerConfig(
            batch_size=self.batch_size,
            cameras=tuple(self.obs.cameras),
            use_state=self.obs.use_state,
            scene_state=self.obs.scene_state,
            relabel=self.task.relabel,
            task_balanced=self.task.task_balanced,
            augment_pad=self.obs.augment_pad,
            prefetch=self.prefetch,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            episode_ids=episode_ids,
        )


def config_from_dict(d: dict[str, Any]) -> PretrainConfig:
    """The composed Hydra dict -> PretrainConfig (the ``algo`` group's ``name`` picks the algorithm)."""
    d = dict(d)
    algo = dict(d.pop("algo"))
    return from_dict(PretrainConfig, {**d, "algo": algo.pop("name"), "algo_cfg": algo})


# ---------------------------------------------------------------------------- helpers
@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the group (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class DataParallel:
    """Average gradients across ranks before every optimizer step (DDP's synchronous semantics).

    An update runs several losses through shared modules with one optimizer each, so instead of
    wrapping modules in ``DistributedDataParallel`` a step pre-hook on every optimizer all-reduces
    its gradients in one flat bucket. Parameters start equal (broadcast from rank 0) and every rank
    applies the same averaged gradient, so they stay equal.
    """

    def __init__(self, algo: Algorithm):
        import torch.distributed as dist

        self.world = dist.get_world_size()
        with torch.no_grad():
            for t in algo.nets.state_dict().values():
                dist.broadcast(t, src=0)
        for opt in algo.optimizers.values():
            opt.register_step_pre_hook(self._all_reduce)

    def _all_reduce(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(self.world)
        for g, f in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            g.copy_(f)


def shared_statistics(sampler: Sampler, dist: Dist) -> dict[str, Any]:
    """The input-normalization statistics of rank 0's data, given to every rank (one spec everywhere)."""
    stats = sampler.statistics()
    if dist.world_size > 1:
        import torch.distributed as tdist

        box = [stats]
        tdist.broadcast_object_list(box, src=0)
        stats = box[0]
    return stats


def held_out_episodes(view: Any, n: int) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(training episode ids or None for all, held-out ids): the ``n`` episodes whose content hashes sort
    first (a fixed, data-independent choice) are held out for calibration."""
    if n == 0:
        return None, ()
    ids = sorted(r.episode_id for r in view.episodes())
    if n >= len(ids):
        raise ValueError(f"calibration_episodes={n} would hold out all {len(ids)} episodes of the snapshot")
    return tuple(ids[n:]), tuple(ids[:n])


class Calibration:
    """Q against the data's return on fixed batches of held-out episodes (``robot_rl.diagnostics``)."""

    def __init__(self, view: Any, cfg: PretrainConfig, held_out: tuple[str, ...], device: torch.device):
        scfg = dataclasses.replace(cfg.sampler_config(episode_ids=held_out), augment_pad=0, seed=12345)
        with Sampler(view, scfg, device, progress=False) as sampler:
            self.batches = [next(sampler) for _ in range(4)]

    def measure(self, algo: Algorithm) -> tuple[dict[str, float], dict[str, Any] | None]:
        from robot_rl.diagnostics import calibration, calibration_metrics

        cal = calibration(algo, self.batches)
        if cal is None:
            return {}, None
        return {f"calibration/{k}": v for k, v in calibration_metrics(cal).items()}, cal


def parameter_digest(algo: Algorithm) -> str:
    """sha256 over every network tensor's bytes (targets included), in state-dict order."""
    import hashlib

    h = hashlib.sha256()
    for k, v in algo.nets.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_ranks_in_sync(algo: Algorithm, run: Path, dist: Dist) -> None:
    """Gather every rank's parameter digest; rank 0 writes ``ranks.json`` and fails loudly on a mismatch."""
    import torch.distributed as tdist

    digests: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(digests, {"digest": parameter_digest(algo), "step": algo.step})
    if dist.main:
        (run / "ranks.json").write_text(json.dumps({"world_size": dist.world_size, "ranks": digests}, indent=1))
        if len({d["digest"] for d in digests}) != 1:
            raise RuntimeError(f"ranks diverged: parameter digests {digests}")


def accelerate(algo: Algorithm, cfg: PretrainConfig) -> None:
    """GPU paths: channels_last parameters and an optional in-place ``torch.compile`` of the encoder."""
    if algo.device.type == "cuda":
        algo.nets.to(memory_format=torch.channels_last)
    if cfg.compile:
        algo.nets.encoder.compile()


def run_evaluation(
    algo: Algorithm, cfg: PretrainConfig, vocab: tuple[str, ...], run: Path, step: int
) -> dict[str, Any]:
    from robot_rl.evaluate import EvalConfig, evaluate, policy_act

    ecfg = EvalConfig(
        tasks=tuple(cfg.task.eval_tasks),
        episodes=cfg.eval_episodes,
        num_envs=cfg.eval_envs,
        video_episodes=2,
        progress=cfg.progress,
    )

    res = evaluate(policy_act(algo), algo.spec, ecfg, vocab, run / "eval", algo.device, name=f"step_{step:07d}")
    return {"step": step, **{k: res.summary[k] for k in ("success_rate", "mean_return")}} | {
        f"success/{t}": s["success_rate"] for t, s in res.per_task.items()
    }


# ---------------------------------------------------------------------------- the loop
def check_goal_is_observable(cfg: PretrainConfig, schema: dict[str, Any]) -> None:
    """Refuse a model that can see neither the scene nor the goal of goal-bearing episodes.

    Without goal conditioning, cameras or the scene vector, the networks see proprioception only;
    in a lake whose episodes carry a scene (``achieved_goal``: where the block is) the policy then
    cannot know where to go, and learns the average motion of the data.
    """
    if cfg.task.conditioning == "goal" or cfg.obs.cameras or cfg.obs.scene_state:
        return
    if "achieved_goal" not in schema.get("step", {}):
        return
    raise ValueError(
        f"task.conditioning={cfg.task.conditioning} with no camera and obs.scene_state=false: the model sees "
        "only the robot's proprioception, not the scene (the lake's 'achieved_goal') nor the goal, so on this "
        "lake's tasks it cannot know where the object or the goal is. Set one of: "
        "task.conditioning=goal task.relabel.commanded=1.0 task.relabel.task=0.0 (the task's goal state as "
        "input), obs.scene_state=true (the scene vector as input; enough when the goal is fixed by the scene), "
        "or obs=image (a camera)"
    )


@dataclasses.dataclass
class PretrainRun:
    """Everything one pretraining run holds (built by :func:`start_run`)."""

    cfg: PretrainConfig
    dist: Dist
    device: torch.device
    dir: Path
    view: LakeView
    sampler: Sampler
    algo: Algorithm
    vocab: tuple[str, ...]
    meta: dict[str, Any]  # the lake snapshot, task vocabulary and conditioning (in every checkpoint)
    log: Logger
    held_out: tuple[str, ...]
    calib: Calibration | None
    best: float = -1.0  # the best evaluation success so far
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ope: Any = None  # robot_rl.ope.run.PretrainOPE when ope_every > 0 (rank 0)
    reward: Any = None  # Batch -> Batch: task.reward_classifier's rewards of relabeled goals


def pretrain(cfg: PretrainConfig, resolved: dict[str, Any] | None = None) -> Path:
    """Train ``cfg.steps`` updates (continuing ``run_dir`` when ``resume``); returns the run directory."""
    resolved = json.loads(json.dumps(resolved if resolved is not None else dataclasses.asdict(cfg)))  # plain lists
    run = start_run(cfg, resolved)
    meter = Throughput(cfg.steps, run.algo.step, f"pretrain {cfg.algo}", cfg.progress)
    try:
        while run.algo.step < cfg.steps:
            with meter.phase("time/sample_s"):
                batch = next(run.sampler)
                if run.reward is not None:
                    batch = run.reward(batch)
            with meter.phase("time/update_s"), autocast(cfg, run.device):
                metrics = run.algo.update(batch)
            meter.tick()
            step, last = run.algo.step, run.algo.step == cfg.steps
            if step % cfg.log_every == 0 or last:
                run.log.scalars({**metrics, **meter.window(metrics)}, step)
            if (cfg.eval_every and step % cfg.eval_every == 0) or last:
                evaluate_and_keep_best(run, step)
                meter.restart()
            if cfg.ope_every and step % cfg.ope_every == 0:
                off_policy_evaluation(run, step)
                meter.restart()
            if step % cfg.save_every == 0 or last:
                save_checkpoint(run, "latest")
                calibrate(run, step, final=last)
    finally:
        meter.close()
        run.sampler.close()
        run.log.close()
    if run.dist.world_size > 1:
        check_ranks_in_sync(run.algo, run.dir, run.dist)
    if run.dist.main:
        print(f"run directory: {run.dir}  (snapshot {run.view.snapshot_id[:12]}, {run.algo.step} updates)")
    return run.dir


def start_run(cfg: PretrainConfig, resolved: dict[str, Any]) -> PretrainRun:
    """Join the process group, pin the lake snapshot, build the sampler and the algorithm, resume
    if asked, and write ``run.json``."""
    from data_lake import Lake

    dist = init_distributed(cfg.device)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    run_dir = prepare_run_dir(cfg, resolved) if dist.main else Path(cfg.run_dir or "")
    algo_cfg = cfg.algo_config()
    if cfg.task.relabel.gamma != algo_cfg.gamma:
        raise ValueError(
            f"task.relabel.gamma={cfg.task.relabel.gamma} but algo.gamma={algo_cfg.gamma}: the sampler's Monte-Carlo "
            "returns (Cal-QL, mc_lower_bound) are discounted with relabel.gamma; set both to the same value"
        )
    view = Lake.open(cfg.lake.uri).checkout(cfg.lake.ref)
    check_goal_is_observable(cfg, view.schema or {"step": {}})
    train_ids, held_out = held_out_episodes(view, cfg.calibration_episodes)
    scfg, progress = cfg.sampler_config(dist.rank, dist.world_size, train_ids), cfg.progress and dist.main
    window = getattr(algo_cfg, "sequence_length", 0)  # sequence models (dt, tt) learn from windows of K steps
    discount = algo_cfg.gamma if getattr(algo_cfg, "discounted_returns", False) else 1.0  # tt: R̂ discounted by γ
    sampler = (
        SequenceSampler(view, scfg, window, device, progress, discount)
        if window
        else Sampler(view, scfg, device, progress)
    )
    algo = build_algorithm(cfg, algo_cfg, sampler, dist, device)
    meta = {
        "lake": {"uri": cfg.lake.uri, "ref": cfg.lake.ref, "snapshot_id": view.snapshot_id},
        "tasks": list(sampler.tasks),
        "conditioning": cfg.task.conditioning,
        "labels": label_provenance(view, cfg.task.relabel),  # MT-Opt's label source (None without p_task)
    }
    calib = Calibration(view, cfg, held_out, device) if held_out and dist.main else None
    log = Logger(run_dir, dist.main)
    run = PretrainRun(cfg, dist, device, run_dir, view, sampler, algo, sampler.tasks, meta, log, held_out, calib)
    run.ope = start_ope(run)
    run.reward = reward_classifier(cfg, device, meta)
    if cfg.resume:
        resume(run)
    if dist.world_size > 1:
        DataParallel(algo)
    if dist.main:
        write_run_json(run)
    return run


def reward_classifier(cfg: PretrainConfig, device: torch.device, meta: dict[str, Any]) -> Any:
    """``task.reward_classifier``'s batch relabeling (Batch -> Batch), recorded in ``meta``; None without one."""
    path = cfg.task.reward_classifier
    if path is None:
        return None
    from robot_rl.detectors.goal_reached import GoalReachedClassifier, classifier_rewards

    if cfg.task.conditioning != "goal":
        raise ValueError("task.reward_classifier judges relabeled goals: it needs task.conditioning=goal")
    clf = GoalReachedClassifier.load(path, device=str(device))
    if clf.camera not in cfg.obs.cameras:
        raise ValueError(
            f"task.reward_classifier={path} judges camera {clf.camera!r}, not among obs.cameras {cfg.obs.cameras}"
        )
    meta["reward_classifier"] = {"path": str(path), "classifier_id": clf.classifier_id, "threshold": clf.threshold}
    return lambda batch: classifier_rewards(batch, clf)


def build_algorithm(
    cfg: PretrainConfig, algo_cfg: Any, sampler: Sampler, dist: Dist, device: torch.device
) -> Algorithm:
    """The algorithm for the sampler's observations (its spec: cameras, state, goal, task vocabulary,
    normalization statistics of rank 0's data), seeded, on ``device``."""
    from robot_rl.algos import ALGOS
    from robot_rl.nets import ObservationSpec

    num_tasks = len(sampler.tasks) if cfg.task.conditioning == "task" else 0
    stats = shared_statistics(sampler, dist) if cfg.obs.normalize else None
    spec = ObservationSpec.from_sampler(sampler, num_tasks, stats)
    torch.manual_seed(cfg.seed)
    algo = ALGOS[cfg.algo](algo_cfg, spec, device)
    accelerate(algo, cfg)
    return algo


def resume(run: PretrainRun) -> None:
    """Load ``checkpoints/latest`` of the run directory: networks, optimizers, RNGs, sampler state."""
    from robot_rl import checkpoint

    extra = checkpoint.load(Path(run.cfg.run_dir or "") / "checkpoints" / "latest", run.algo)
    if extra["lake"]["snapshot_id"] != run.view.snapshot_id:
        raise ValueError(
            f"resume: the run trained on snapshot {extra['lake']['snapshot_id']}, "
            f"{run.cfg.lake.ref} is now {run.view.snapshot_id}; pin lake.ref=snapshot:{extra['lake']['snapshot_id']}"
        )
    run.sampler.load_state_dict(extra["samplers"][run.dist.rank])
    run.best, run.history = extra["best"], extra["history"]


def write_run_json(run: PretrainRun) -> None:
    info = {
        **run.meta,
        "algo": run.cfg.algo,
        "git": git_commit(),
        "world_size": run.dist.world_size,
        "device": str(run.device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "spec": run.algo.spec.to_json(),
    }
    (run.dir / "run.json").write_text(json.dumps(info, indent=1))


def save_checkpoint(run: PretrainRun, name: str) -> None:
    """``checkpoints/<name>`` with every rank's sampler state; ``latest`` also refreshes ``policy/``."""
    from robot_rl import checkpoint

    states = [run.sampler.state_dict()]
    if run.dist.world_size > 1:
        import torch.distributed as tdist

        states = [{} for _ in range(run.dist.world_size)]  # all_gather_object fills each
        tdist.all_gather_object(states, run.sampler.state_dict())
    if run.dist.main:
        extra = {**run.meta, "samplers": states, "best": run.best, "history": run.history}
        checkpoint.save(run.dir / "checkpoints" / name, run.algo, extra=extra)
        if name == "latest":
            checkpoint.save_policy(run.dir / "policy", run.algo, run.meta)


def evaluate_and_keep_best(run: PretrainRun, step: int) -> None:
    """Evaluate on ``task.eval_tasks`` (rank 0); log it; keep ``checkpoints/best``."""
    from robot_rl import checkpoint

    if not run.cfg.task.eval_tasks or not run.dist.main:
        return
    t0 = time.perf_counter()
    row = run_evaluation(run.algo, run.cfg, run.vocab, run.dir, step)
    run.history.append(row)
    run.log.eval_row(row)
    run.log.scalars({f"eval/{k}": v for k, v in row.items() if k != "step"}, step)
    if row["success_rate"] > run.best:
        run.best = row["success_rate"]
        extra = {**run.meta, "best": run.best, "history": run.history}
        checkpoint.save(run.dir / "checkpoints" / "best", run.algo, extra=extra)
    run.log.scalars({"time/eval_s": time.perf_counter() - t0}, step)


def start_ope(run: PretrainRun) -> Any:
    """The off-policy evaluator of ``ope_every`` (rank 0): its episodes loaded and checked before training."""
    if not run.cfg.ope_every or not run.dist.main:
        return None
    from robot_rl.ope.fqe import FQEConfig
    from robot_rl.ope.run import OPEConfig, PretrainOPE

    cfg = run.cfg
    ope_cfg = OPEConfig(
        lake=cfg.lake,
        estimators=cfg.ope_estimators,
        gamma=cfg.task.relabel.gamma,
        sigma=cfg.ope_sigma,
        success_terminal=cfg.task.relabel.success_terminal,
        max_episodes=cfg.ope_episodes,
        n_boot=0,
        seed=cfg.seed,
        progress=False,
        fqe=FQEConfig(steps=cfg.ope_fqe_steps, batch_size=cfg.batch_size),
    )
    return PretrainOPE(cfg.lake.uri, run.view.snapshot_id, run.held_out, run.algo.spec, run.vocab, ope_cfg)


def off_policy_evaluation(run: PretrainRun, step: int) -> None:
    """``ope/<estimator>`` scalars of the current policy (``ope_every``; rank 0)."""
    if run.ope is not None:
        run.log.scalars(run.ope.measure(run.algo), step)


def calibrate(run: PretrainRun, step: int, final: bool) -> None:
    """Q against the held-out episodes' returns (when ``calibration_episodes``); the plot at the end."""
    from robot_rl.diagnostics import plot_calibration

    if run.calib is None:
        return
    values, cal = run.calib.measure(run.algo)
    run.log.scalars(values, step)
    if final and cal is not None:
        (run.dir / "calibration.json").write_text(json.dumps({"step": step, **values}, indent=1))
        title = f"{run.cfg.algo}: Q vs the data's return ({len(run.held_out)} held-out episodes)"
        plot_calibration(cal, run.dir / "calibration.png", title)


# ---------------------------------------------------------------------------- entry point
def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from robot_rl.hydra_utils import describe

    p = sub.add_parser(
        "pretrain",
        help="train an offline algorithm on a pinned lake snapshot (Hydra overrides key=value)",
        description=__doc__
        + "\nDefaults (configs/pretrain.yaml; groups algo/, obs/, task/, lake/):\n\n"
        + describe("pretrain"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. algo=iql obs=state steps=2000")
    p.set_defaults(func=lambda a: main(a.overrides))


def main(overrides: list[str] | None = None) -> int:
    from robot_rl.hydra_utils import compose

    overrides = sys.argv[1:] if overrides is None else overrides
    resolved = compose("pretrain", overrides)
    try:
        pretrain(config_from_dict(resolved), resolved)
    finally:
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
