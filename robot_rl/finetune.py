"""`robot-rl finetune`: learn a task online in MuJoCo from a pretrained model, with few rewards, and
write every new episode back into the lake (the flywheel).

    robot-rl finetune ckpt=runs/pretrain/am task=tabletop/push_red_to_pad algo=calql online_steps=5000 aux.xi=0.1

The loop, one episode at a time (an episode-level schedule, as in QT-Opt's collect/train split)::

    roll out one episode with the current policy (exploration: its stochastic action, from the
        algorithm's RNG) in the one env loop, ``sim.rollout.rollout``; it becomes a lake episode as
        collected ones do (``tasks.collect.to_episode``)
    commit every ``commit_every`` episodes to branch finetune/<run> -> the online replay is rebuilt
    run round(utd · env steps) − updates done gradient updates on mixed batches:
        rows from online replay (online_ratio; None = the data proportion, Cal-QL's default)
      + rows from the lake's reward-labeled episodes of this task (at most reward_budget of them)
      + if aux.xi > 0: L = L_task + ξ·L_g, with L_g the Actionable Models goal-reaching loss on
        hindsight-relabeled lake batches, through the shared encoder (one backward pass)
    evaluate every ``eval_every`` env steps (success rate with a Wilson CI; curve CSV/JSON/PNG)
    checkpoint at every commit (exact resume: networks, optimizers, RNGs, sampler states, counters)

Conditioning: the finetuned policy sees what the pretrained one saw. A goal-conditioned model gets
the task's goal image (and goal state) as its goal — which is why a pretrained goal-reaching model
can act zero-shot; a model without goals gets none. Rewards are the task's sparse success; an episode
ends at success (success is absorbing: ``success_terminal`` rows). ``ckpt=null`` trains from scratch
with the same networks and data, for comparison.

Transfer: every parameter of the pretrained checkpoint whose name and shape match one of the new
algorithm's networks is copied (the encoder always matches: the encoder config comes from the
checkpoint); the pretrained Actionable Models critic becomes the auxiliary goal-reaching head. A
saved policy (``<run>/policy``) holds only the acting networks, so only those transfer from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_lake.batch import Batch, Observation, cat_batches
from data_lake.episode import Episode
from data_lake.lake import LakeView
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from robot_rl.algos import ALGOS, ActionableModelsConfig, Algorithm, encode, polyak_update
from robot_rl.algos.actionable_models import goal_reaching_loss
from robot_rl.algos.base import Nets
from robot_rl.config import LakeConfig, ObsConfig, from_dict
from robot_rl.evaluate import EvalConfig, evaluate
from robot_rl.nets import ObservationSpec
from robot_rl.policy import LearnedPolicy, policy_act
from robot_rl.runs import Logger, autocast, git_commit, prepare_run_dir, resolve_device
from sim.rollout import rollout
from tasks.collect import episode_seeds, to_episode

AUX_ALGO = "actionable_models"


@dataclasses.dataclass(frozen=True)
class AuxConfig:
    """The auxiliary goal-reaching loss ξ·L_g on hindsight-relabeled lake batches."""

    xi: float = 0.0  # ξ; 0 disables L_g
    batch_size: int = 64
    relabel: RelabelConfig = dataclasses.field(default_factory=RelabelConfig)

    def __post_init__(self) -> None:
        if self.xi < 0 or self.batch_size < 1:
            raise ValueError(f"aux.xi must be >= 0 and aux.batch_size >= 1, got {self.xi}, {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    task: str
    algo: str
    algo_cfg: dict[str, Any]
    ckpt: str | None = None  # a pretrain run dir or checkpoint; None: from scratch
    lake: LakeConfig = dataclasses.field(default_factory=lambda: LakeConfig(ref=""))  # ref "": the ckpt's snapshot
    obs: ObsConfig = dataclasses.field(default_factory=ObsConfig)  # used only from scratch
    aux: AuxConfig = dataclasses.field(default_factory=AuxConfig)
    online_steps: int = 2000  # environment steps
    batch_size: int = 256
    online_ratio: float | None = 0.5  # online rows per batch; None: the online share of all task transitions
    reward_budget: int | None = None  # reward-labeled lake episodes of the task revealed; None: all
    utd: float = 1.0  # gradient updates per environment step
    commit_every: int = 2  # episodes per flywheel commit (and checkpoint)
    branch: str | None = None  # None: finetune/<run name>
    eval_every: int = 500  # environment steps; 0: only at the end
    eval_episodes: int = 10
    eval_envs: int = 4
    max_steps: int | None = None  # episode length; None: the task's
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    run_dir: str | None = None
    resume: bool = False
    prefetch: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.online_steps < 1 or self.batch_size < 2 or self.commit_every < 1 or self.utd < 0:
            raise ValueError("online_steps >= 1, batch_size >= 2, commit_every >= 1 and utd >= 0 are required")
        if self.online_ratio is not None and not 0 < self.online_ratio <= 1:
            raise ValueError(f"online_ratio must be in (0, 1] or null (data proportion), got {self.online_ratio}")
        if self.reward_budget is not None and self.reward_budget < 0:
            raise ValueError(f"reward_budget must be >= 0 or null, got {self.reward_budget}")


def config_from_dict(d: dict[str, Any]) -> FinetuneConfig:
    """The composed Hydra dict -> FinetuneConfig (the ``algo`` group's ``name`` picks the algorithm)."""
    d = dict(d)
    algo = dict(d.pop("algo"))
    return from_dict(FinetuneConfig, {**d, "algo": algo.pop("name"), "algo_cfg": algo})


# ---------------------------------------------------------------------------- building blocks
def task_relabel(gamma: float, goals: bool) -> RelabelConfig:
    """Task rows: the episode's commanded goal (or none) and its own sparse reward; success ends it."""
    if goals:
        return RelabelConfig(future=0, final=0, negative=0, commanded=1.0, task=0, gamma=gamma, success_terminal=True)
    return RelabelConfig(future=0, final=0, negative=0, commanded=0, task=1.0, gamma=gamma, success_terminal=True)


def load_pretrained(cfg: FinetuneConfig, device: torch.device) -> tuple[Algorithm | None, dict[str, Any]]:
    """The pretrained networks ``cfg.ckpt`` names (a run, checkpoint or policy) and their metadata;
    (None, {}) from scratch. Task-conditioned models are refused."""
    from robot_rl import checkpoint

    if not cfg.ckpt:
        return None, {}
    path = checkpoint.resolve_checkpoint(cfg.ckpt)
    pretrained, meta = checkpoint.load_pretrained(path, device)
    if meta.get("conditioning") == "task":
        raise ValueError(f"{path} is task-conditioned; finetuning supports goal-conditioned or plain models")
    return pretrained, meta


def lake_ref(cfg: FinetuneConfig, meta: dict[str, Any]) -> str:
    """The lake ref the run reads: ``lake.ref``, else the pretrained model's snapshot, else main."""
    return cfg.lake.ref or (f"snapshot:{meta['lake']['snapshot_id']}" if meta.get("lake") else "main")


def env_settings(schema: dict[str, Any], spec: ObservationSpec) -> tuple[int, tuple[str, ...]]:
    """(image size, cameras) of online episodes: the lake's (its schema's images), so that they can be
    appended to it; without images in the lake, the model's."""
    step = schema.get("step", {})
    lake_images = {k.split("/", 1)[1]: v["shape"] for k, v in step.items() if k.startswith("images/")}
    shapes = list(lake_images.values())
    sizes = spec.image_sizes or ((shapes[0][0], shapes[0][1]) if shapes else (64, 64),)
    cams = tuple(sorted(lake_images)) or tuple(dict.fromkeys([*spec.cameras, *spec.goal_cameras]))
    needed = set(spec.cameras) | set(spec.goal_cameras)
    if not needed <= set(cams):
        raise ValueError(f"the model needs cameras {sorted(needed)}; the lake has {list(cams)}")
    return int(sizes[0][0]), cams


def eval_config(cfg: FinetuneConfig) -> EvalConfig:
    """The evaluation of a finetuning run: held-out resets, different per finetuning seed."""
    return EvalConfig(
        tasks=(cfg.task,),
        episodes=cfg.eval_episodes,
        num_envs=cfg.eval_envs,
        max_steps=cfg.max_steps,
        seed=100_000 + 10_000 * cfg.seed,
        video_episodes=2,
        video_format="gif",  # embeddable in markdown reports
        progress=False,
    )


def run_meta(
    cfg: FinetuneConfig, ref: str, snapshot_id: str, branch: str, goals: bool, transferred: int
) -> dict[str, Any]:
    """What every checkpoint and policy of the run records: the lake snapshot, the task, conditioning."""
    return {
        "lake": {"uri": cfg.lake.uri, "ref": ref, "snapshot_id": snapshot_id},
        "tasks": [cfg.task],
        "conditioning": "goal" if goals else "none",
        "finetune": {"task": cfg.task, "branch": branch, "ckpt": cfg.ckpt, "transferred": transferred},
    }


def transfer(source: Algorithm, target: Algorithm) -> list[str]:
    """Copy every tensor of ``source.nets`` whose name and shape match in ``target.nets``; returns the names."""
    src, dst = source.nets.state_dict(), target.nets.state_dict()
    copied = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    target.nets.load_state_dict({**dst, **copied})
    return sorted(copied)


def revealed_episodes(view: LakeView, task: str, budget: int | None, seed: int) -> list[str]:
    """The reward-labeled lake episodes of ``task`` the run may use: all, or ``budget`` drawn with ``seed``."""
    ids = sorted(r.episode_id for r in view.episodes(task))
    if budget is None or budget >= len(ids):
        return ids
    pick = np.random.default_rng(seed).permutation(len(ids))[:budget]
    return sorted(ids[i] for i in pick)


def batch_split(cfg: FinetuneConfig, online_transitions: int, offline_transitions: int) -> tuple[int, int]:
    """(online rows, offline rows) of each task batch."""
    if offline_transitions == 0:
        return cfg.batch_size, 0
    if online_transitions == 0:
        return 0, cfg.batch_size
    ratio = cfg.online_ratio
    if ratio is None:
        ratio = online_transitions / (online_transitions + offline_transitions)
    n_online = min(cfg.batch_size - 1, max(1, round(cfg.batch_size * ratio)))
    return n_online, cfg.batch_size - n_online


def plot_curve(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [r["env_step"] for r in rows]
    ax.plot(x, [r["success_rate"] for r in rows], marker="o")
    ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.2)
    ax.set(xlabel="environment steps", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- the run
@dataclasses.dataclass
class Counters:
    """Progress of a run (saved in every checkpoint)."""

    episodes: int = 0  # online episodes rolled out
    env_steps: int = 0  # their actions
    updates: int = 0  # gradient updates
    commits: int = 0  # flywheel commits
    successes: int = 0  # online episodes that succeeded


@dataclasses.dataclass
class GoalReachingAux:
    """ξ·L_g: the Actionable Models goal-reaching loss with its heads (``critic``, ``target_critic``) on the
    finetuned algorithm's encoder, on hindsight-relabeled lake batches; ``algo.auxiliary`` calls it."""

    nets: Nets  # encoder (the finetuned algorithm's), critic, target_critic
    cfg: ActionableModelsConfig  # the heads'
    sampler: Sampler
    xi: float
    rng: torch.Generator  # the algorithm's

    def __call__(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        enc = encode(self.nets.encoder, next(self.sampler))
        loss, metrics = goal_reaching_loss(enc, self.nets, self.cfg, self.rng)
        return self.xi * loss, {f"aux/{k.split('/')[-1]}": v for k, v in metrics.items()} | {"aux/L_g": loss.detach()}

    def update_targets(self) -> None:
        """Polyak-update the heads' targets (the algorithm's own update knows only its own)."""
        polyak_update(self.nets.target_critic, self.nets.critic, self.cfg.tau)


class Finetuner:
    """State of one finetuning run; ``run()`` is the loop. Helpers keep ``run`` short and linear."""

    def __init__(self, cfg: FinetuneConfig, resolved: dict[str, Any] | None = None):
        import tasks
        from data_lake import Lake

        self.cfg = cfg
        resolved = json.loads(json.dumps(resolved if resolved is not None else dataclasses.asdict(cfg)))
        self.device = resolve_device(cfg.device)
        self.run_dir = prepare_run_dir(cfg, resolved, kind="finetune")  # type: ignore[arg-type]
        self.name = self.run_dir.name
        self.branch = cfg.branch or f"finetune/{self.name}"
        self.pretrained, meta = load_pretrained(cfg, self.device)
        ref = lake_ref(cfg, meta)
        self.lake = Lake.open(cfg.lake.uri)
        self.view = self.lake.checkout(ref)
        self.goals = self.pretrained.spec.has_goal if self.pretrained else True
        self.revealed = revealed_episodes(self.view, cfg.task, cfg.reward_budget, cfg.seed)
        self.algo = self._build_algorithm()
        self.transferred = transfer(self.pretrained, self.algo) if self.pretrained is not None else []
        self.aux = self._attach_aux() if cfg.aux.xi > 0 else None
        self.online: Sampler | None = None  # rows of the flywheel branch's online episodes
        self.offline: Sampler | None = None  # rows of the revealed lake episodes of the task
        self.split = (0, 0)  # (online, offline) rows per batch
        self.online_ids: list[str] = []
        self.pending: list[Episode] = []  # online episodes not committed yet
        self.counters = Counters()
        self.history: list[dict[str, Any]] = []  # evaluation rows (the curve)
        self.best = -1.0
        self.image_size, self.cameras = env_settings(self.view.schema or {}, self.algo.spec)
        task = tasks.get(cfg.task)
        self.env = task.make_env(self.image_size, self.cameras or task.cameras)
        self.explore = LearnedPolicy(self._explore, self.algo.spec, self.device)
        self.log = Logger(self.run_dir, True)
        self.meta = run_meta(cfg, ref, self.view.snapshot_id, self.branch, self.goals, len(self.transferred))

    # ------------------------------------------------------------ building
    def _build_algorithm(self) -> Algorithm:
        """The finetuned algorithm: its config with the pretrained encoder's, on the pretrained spec (or,
        from scratch, the spec of the lake's task batches)."""
        cfg = self.cfg
        if cfg.algo not in ALGOS:
            raise ValueError(f"unknown algo {cfg.algo!r}; known: {sorted(ALGOS)}")
        cls = ALGOS[cfg.algo]
        values = {**cfg.algo_cfg, "seed": cfg.seed}
        if self.pretrained is not None:
            values["encoder"] = dataclasses.asdict(self.pretrained.cfg.encoder)
        algo_cfg = from_dict(cls.config_class, values)
        if self.pretrained is not None:
            return cls(algo_cfg, self.pretrained.spec, self.device)
        probe = self._sampler(self.view, None, 2, seed=0, relabel=task_relabel(algo_cfg.gamma, True), pad=0)
        spec = ObservationSpec.from_sampler(probe, 0, probe.statistics() if cfg.obs.normalize else None)
        probe.close()
        return cls(algo_cfg, spec, self.device)

    def _attach_aux(self) -> GoalReachingAux:
        """Goal-reaching heads (the pretrained Actionable Models critic, else new ones) on the encoder."""
        if not self.algo.spec.has_goal:
            raise ValueError("aux.xi > 0 needs a goal-conditioned model (the goal-reaching loss conditions on goals)")
        if self.pretrained is not None and self.pretrained.name == AUX_ALGO:
            am = self.pretrained
        else:
            cls = ALGOS[AUX_ALGO]
            values = {"encoder": dataclasses.asdict(self.algo.cfg.encoder), "seed": self.cfg.seed}
            am = cls(from_dict(cls.config_class, values), self.algo.spec, self.device)
        if abs(am.cfg.gamma - self.cfg.aux.relabel.gamma) > 1e-9:
            raise ValueError(
                f"aux.relabel.gamma={self.cfg.aux.relabel.gamma} but the goal-reaching head's gamma is "
                f"{am.cfg.gamma}: L_g's Monte-Carlo returns are discounted with aux.relabel.gamma; set it to "
                f"{am.cfg.gamma}"
            )
        if not isinstance(am.cfg, ActionableModelsConfig):  # ALGOS[AUX_ALGO] checks its config class
            raise TypeError(f"the goal-reaching head needs an ActionableModelsConfig, got {type(am.cfg).__name__}")
        heads = {k: m for k, m in am.nets.items() if k != "encoder"}
        self.algo.attach_auxiliary({f"aux_{k}": m for k, m in heads.items()})
        aux = GoalReachingAux(
            nets=Nets({"encoder": self.algo.nets.encoder, **heads}),
            cfg=am.cfg,
            sampler=self._sampler(self.view, None, self.cfg.aux.batch_size, self.cfg.seed + 1, self.cfg.aux.relabel),
            xi=self.cfg.aux.xi,
            rng=self.algo.rng,
        )
        self.algo.auxiliary = aux
        return aux

    def _sampler(
        self,
        view: LakeView,
        ids: list[str] | None,
        batch_size: int,
        seed: int,
        relabel: RelabelConfig,
        pad: int | None = None,
    ) -> Sampler:
        """A sampler of ``view`` (only episodes ``ids`` when given) with what the model observes."""
        spec = self.pretrained.spec if self.pretrained else None
        cams = tuple(spec.cameras) if spec else tuple(self.cfg.obs.cameras)
        scfg = SamplerConfig(
            batch_size=batch_size,
            cameras=cams,
            goal_cameras=tuple(spec.goal_cameras) if spec else cams,
            use_state=bool(spec.proprio_dim) if spec else self.cfg.obs.use_state,
            scene_state=bool(spec.scene_state_dim) if spec else self.cfg.obs.scene_state,
            relabel=relabel,
            augment_pad=self.cfg.obs.augment_pad if pad is None else pad,
            prefetch=self.cfg.prefetch,
            seed=seed,
            episode_ids=None if ids is None else tuple(ids),
        )
        return Sampler(view, scfg, self.device, progress=False)

    def _rebuild_samplers(self) -> None:
        """After a commit: the online replay from the branch (seeded by the commit count); the offline
        task sampler keeps its sequence unless the batch split changed (data-proportion mode)."""
        cfg, k = self.cfg, self.counters.commits
        view = self.lake.checkout(f"branch:{self.branch}")
        online_n = sum(r.length - 1 for r in view.episodes() if r.episode_id in set(self.online_ids))
        offline_n = sum(r.length - 1 for r in self.view.episodes() if r.episode_id in set(self.revealed))
        n_on, n_off = batch_split(cfg, online_n, offline_n)
        relabel = task_relabel(self.algo.cfg.gamma, self.goals)
        if self.online is not None:
            self.online.close()
        self.online = (
            self._sampler(view, self.online_ids, n_on, seed=cfg.seed * 7919 + k, relabel=relabel) if n_on else None
        )
        if n_off and (self.offline is None or self.offline.cfg.batch_size != n_off):
            if self.offline is not None:
                self.offline.close()
            self.offline = self._sampler(
                self.view, self.revealed, n_off, seed=cfg.seed * 7919 + 10_000 + k, relabel=relabel
            )
        self.split = (n_on, n_off)

    def next_batch(self) -> Batch:
        parts = [s for s in (self.online, self.offline) if s is not None]
        return cat_batches([next(s) for s in parts])

    # ------------------------------------------------------------ phases
    def _explore(self, obs: Observation, goal: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
        """Exploration: the algorithm's stochastic action, from its own RNG (saved in checkpoints)."""
        return self.algo.act(obs, goal, task_ids, deterministic=False)

    def collect_episode(self) -> Episode:
        """Roll out the next online episode with the current policy (ends at success); it waits to be committed."""
        cfg, i = self.cfg, self.counters.episodes
        env_seed, _ = episode_seeds(cfg.seed, i)
        steps = cfg.max_steps or self.env.max_episode_steps
        (traj,) = rollout([self.env], self.explore, [env_seed], steps, stop_on_success=True, record=True)
        metadata = {
            "image_size": self.image_size,
            "cameras": list(self.cameras),
            "index": i,
            "env_seed": env_seed,
            "run": self.name,
            "kind": "finetune",
            "algo": cfg.algo,
            "ckpt": cfg.ckpt,
        }
        ep = to_episode(traj, self.env, cfg.task, f"finetune:{self.name}:i={i}", metadata)
        self.counters.episodes += 1
        self.counters.env_steps += traj.steps
        self.counters.successes += traj.success
        self.pending.append(ep)
        return ep

    def commit(self) -> None:
        """The pending episodes to the flywheel branch (one commit); the online replay then includes them."""
        if not self.pending:
            return
        c = self.counters
        res = self.lake.append(
            self.pending,
            branch=self.branch,
            message=f"finetune {self.name}: {self.cfg.task} episodes {c.episodes - len(self.pending)}-{c.episodes - 1} "
            f"({self.cfg.algo}, ckpt={self.cfg.ckpt}, {c.env_steps} env steps)",
            metadata={"run": self.name, "kind": "finetune", "task": self.cfg.task, "algo": self.cfg.algo},
        )
        self.online_ids += [ep.episode_id for ep in self.pending]
        self.pending = []
        c.commits += 1
        self._rebuild_samplers()
        if res.snapshot_id is None:
            raise RuntimeError(f"flywheel commit to {self.branch} added nothing (duplicate episodes?)")

    def train(self) -> dict[str, float]:
        """The updates due: ``utd`` per environment step so far."""
        due = int(self.cfg.utd * self.counters.env_steps) - self.counters.updates
        metrics: dict[str, float] = {}
        if self.online is None and self.offline is None:
            return metrics
        for _ in range(max(0, due)):
            with autocast(self.cfg, self.device):  # type: ignore[arg-type]
                metrics = self.algo.update(self.next_batch())
            if self.aux is not None:
                self.aux.update_targets()
            self.counters.updates += 1
        return metrics

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the deterministic policy on held-out resets; one row of the curve (CSV, JSON, PNG)."""
        cfg, step = self.cfg, self.counters.env_steps
        name = f"env_{step:07d}"
        res = evaluate(
            policy_act(self.algo), self.algo.spec, eval_config(cfg), (), self.run_dir / "eval", self.device, name
        )
        lo, hi = res.summary["success_ci95"]
        row = {
            "env_step": step,
            "updates": self.counters.updates,
            "success_rate": res.success_rate,
            "ci_low": lo,
            "ci_high": hi,
            "mean_return": res.summary["mean_return"],
            "eval_json": str(self.run_dir / "eval" / f"{name}.json"),
        }
        self.history.append(row)
        self.log.eval_row(row)
        self.log.scalars({"eval/success_rate": res.success_rate}, step)
        (self.run_dir / "curve.json").write_text(json.dumps(self.history, indent=1))
        plot_curve(self.history, self.run_dir / "curve.png", f"{cfg.task} ({cfg.algo}, {self.name})")
        return row

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            **self.meta,
            "counters": dataclasses.asdict(self.counters),
            "online_ids": self.online_ids,
            "history": self.history,
            "best": self.best,
            "offline": None if self.offline is None else self.offline.state_dict(),
            "online": None if self.online is None else self.online.state_dict(),
            "aux": None if self.aux is None else self.aux.sampler.state_dict(),
        }

    def save(self) -> None:
        from robot_rl import checkpoint

        checkpoint.save(self.run_dir / "checkpoints" / "latest", self.algo, extra=self.state())
        checkpoint.save_policy(self.run_dir / "policy", self.algo, self.meta)

    def restore(self) -> None:
        from robot_rl import checkpoint

        extra = checkpoint.load(self.run_dir / "checkpoints" / "latest", self.algo)
        self.counters, self.online_ids = Counters(**extra["counters"]), extra["online_ids"]
        self.history, self.best = extra["history"], extra["best"]
        self._rebuild_samplers()  # as after the last commit; then their RNG states as at the save
        aux_sampler = None if self.aux is None else self.aux.sampler
        for sampler, key in ((self.offline, "offline"), (self.online, "online"), (aux_sampler, "aux")):
            if sampler is not None and extra[key] is not None:
                sampler.load_state_dict(extra[key])

    def start(self) -> None:
        """A new run: the flywheel branch at the pinned snapshot, the task samplers, run.json, the
        starting point's evaluation (zero-shot for a pretrained model)."""
        self.lake.branch(self.branch, f"snapshot:{self.view.snapshot_id}")
        self._rebuild_samplers()  # revealed lake episodes train from the start; online rows join later
        self._write_run_json()
        self.evaluate()

    def close(self) -> None:
        for s in (self.online, self.offline, None if self.aux is None else self.aux.sampler):
            if s is not None:
                s.close()
        self.env.close()
        self.log.close()

    # ------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Episode, commit, updates, log; evaluate every ``eval_every`` env steps; save at every commit."""
        from tqdm import tqdm

        cfg = self.cfg
        if cfg.resume:
            self.restore()
        else:
            self.start()
        done = self.counters.env_steps
        bar = tqdm(
            total=cfg.online_steps, initial=done, desc=f"finetune {cfg.algo}", unit="step", disable=not cfg.progress
        )
        next_eval = (done // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
        try:
            while self.counters.env_steps < cfg.online_steps:
                ep = self.step()
                bar.update(len(ep) - 1)
                bar.set_postfix(upd=self.counters.updates, succ=f"{self.counters.successes}/{self.counters.episodes}")
                if next_eval is not None and self.counters.env_steps >= next_eval:
                    self.evaluate()
                    next_eval += cfg.eval_every
                if not self.pending:  # a commit just landed: a consistent point to resume from
                    self.save()
            self.finish()
        finally:
            bar.close()
            self.close()
        return self.run_dir

    def step(self) -> Episode:
        """One episode, a commit when ``commit_every`` are pending, the updates due; timed and logged."""
        t0 = time.perf_counter()
        ep = self.collect_episode()
        t1 = time.perf_counter()
        if len(self.pending) >= self.cfg.commit_every:
            self.commit()
        t2 = time.perf_counter()
        metrics = self.train()
        t3 = time.perf_counter()
        timings = {"time/collect_s": t1 - t0, "time/commit_s": t2 - t1, "time/update_s": t3 - t2}
        self.log.scalars({**metrics, **timings, "online/success": float(bool(ep.success))}, self.counters.env_steps)
        return ep

    def finish(self) -> None:
        """Commit what is pending, evaluate the end point (unless just done), save."""
        self.commit()
        if not self.history or self.history[-1]["env_step"] != self.counters.env_steps:
            self.evaluate()
        self.save()

    def _write_run_json(self) -> None:
        (self.run_dir / "run.json").write_text(
            json.dumps(
                {
                    **self.meta,
                    "algo": self.cfg.algo,
                    "git": git_commit(),
                    "torch": torch.__version__,
                    "python": sys.version.split()[0],
                    "device": str(self.device),
                    "transferred": self.transferred,
                    "revealed_episodes": self.revealed,
                    "spec": self.algo.spec.to_json(),
                },
                indent=1,
            )
        )


def finetune(cfg: FinetuneConfig, resolved: dict[str, Any] | None = None) -> Path:
    """Run (or resume) one finetuning run; returns its directory."""
    return Finetuner(cfg, resolved).run()


# ---------------------------------------------------------------------------- entry point
def add_finetune_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from robot_rl.hydra_utils import describe

    p = sub.add_parser(
        "finetune",
        help="finetune a task online in MuJoCo from a pretrained model; new episodes go back to the lake",
        description=__doc__ + "\nDefaults (configs/finetune/finetune.yaml):\n\n" + describe("finetune"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. ckpt=runs/pretrain/x task=tabletop/reach_red")
    p.set_defaults(func=lambda a: main(a.overrides))


def main(overrides: list[str]) -> int:
    from robot_rl.hydra_utils import compose

    resolved = compose("finetune", overrides)
    run = finetune(config_from_dict(resolved), resolved)
    hist = json.loads((run / "curve.json").read_text())
    print(f"run directory: {run}  (success {hist[0]['success_rate']:.2f} -> {hist[-1]['success_rate']:.2f})")
    return 0
