"""Fitted Q Evaluation (FQE; Le, Voloshin & Yue, 2019, "Batch Policy Learning under Constraints").

FQE estimates the value of a fixed target policy π from logged transitions (s, a, r, d, s') by
iterated regression onto its own bootstrapped targets::

    Q_{k+1} = argmin_Q E_D[(Q(s, a) − r − γ(1 − d)·E_{a'~π(·|s')} Q_k(s', a'))²]
    V̂(π)    = E_{s0} E_{a~π(·|s0)} Q(s0, a)

The fitted Q is also the model that the doubly robust estimators (Jiang & Li, 2016; Thomas &
Brunskill, 2016) and the direct method read: ``q_and_v`` gives Q̂(s_t, a_t) and V̂(s_t) =
E_{a~π} Q̂(s_t, a) of a trajectory's steps from one encoder pass. Voloshin et al. (2019, "Empirical
Study of Off-Policy Policy Evaluation") found FQE among the most reliable estimators at long horizons.

The target policy is stochastic and is the same one the importance-sampling estimators and the
simulator's ground truth use: ``a = clip(m(s) + σ·ε, −1, 1)``, ε ~ N(0, I), where ``m`` is the
policy's deterministic action (``pi``, a callable) and σ a fixed noise std; this is how
``tasks.core.Policy`` makes collect's noisy experts. ``E_{a'~π}`` is a Monte-Carlo mean over
``n_action_samples`` such actions, all scored on one cached embedding of s' (``Critic.q_values``,
which never repeats the features). ``pi`` is called once per update, on s'.

Choices and deviations:
- The iteration, the standard practical way: one Adam step per batch on the squared TD error,
  with a target critic standing for Q_k. By default the target follows the online critic by Polyak
  averaging (τ = 0.005; the primitive every learner here uses): it is the minibatch form of
  "fit, then copy" with a copy every ≈ 1/τ steps but without the jump at each copy, which makes
  the loss curve readable. ``target_every = K > 0`` copies the critic into the target every K
  steps instead: the literal FQE iteration, with K gradient steps as its approximate argmin.
- Observations go through the shared ``ObservationEncoder`` (images, state, goal, task id,
  goal_delta) and are encoded once per update: s with gradients, s' without (``algos.base.encode``).
  As in the learners (``algos/base.py``) there is no target *encoder*: the target critic reads the
  online encoder's detached s' embedding, so each image costs one encoder pass per update.
- Batches are the sampler's ``Batch``: goal relabeling, task rewards and terminals come from the
  same place as in training (``fqe_sampler_config`` builds the sampler's config).
- ``num_critics`` > 1 fits an ensemble of independent FQE heads (each bootstraps from its own
  target) on the shared encoder; Q̂ is their mean. The default is a single head, as the paper.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from data_lake.batch import Batch, Observation
from data_lake.sampler import SamplerConfig
from robot_rl.algos.base import Encoded, encode, make_optimizer, polyak_update, seeded
from robot_rl.config import from_dict
from robot_rl.nets import Critic, EncoderConfig, ObservationEncoder, ObservationSpec

if TYPE_CHECKING:
    from robot_rl.algos.base import TrainedPolicy
    from robot_rl.config import ObsConfig
    from robot_rl.pretrain import TaskConfig

PolicyFn = Callable[[Observation, Observation | None, torch.Tensor | None], torch.Tensor]
"""``pi(observations, goals, task_ids) -> (B, A)``: the target policy's deterministic action m(s)."""

FORMAT = "robot-rl/fqe/v1"
TENSORS, META = "fqe.safetensors", "fqe.json"


@dataclasses.dataclass(frozen=True)
class FQEConfig:
    """FQE's networks, optimization and target updates (validated here); the policy's σ is fit_fqe's."""

    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    hidden: tuple[int, ...] = (256, 256)  # critic MLP sizes
    layer_norm: bool = False  # LayerNorm in the critic's hidden layers
    num_critics: int = 1  # independent FQE heads on the shared encoder; Q̂ is their mean
    lr: float = 3e-4
    gamma: float = 0.99
    steps: int = 10_000
    tau: float = 0.005  # Polyak rate of the target critic (when target_every == 0)
    target_every: int = 0  # > 0: copy the critic into the target every K steps instead of Polyak
    n_action_samples: int = 10  # Monte-Carlo actions a' ~ π(·|s') per row in E_{a'~π} Q(s', a')
    batch_size: int = 256  # rows per batch; every batch given to fit_fqe must have this many
    grad_clip: float = 10.0  # max global gradient norm; 0 disables
    log_every: int = 100  # a history row (loss curve, mean Q) every this many steps
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of sizes >= 1, got {self.hidden}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.target_every < 0:
            raise ValueError(f"target_every must be >= 0 (0: Polyak with tau), got {self.target_every}")
        for name in ("num_critics", "steps", "n_action_samples", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}")


def check_sigma(sigma: float) -> float:
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma (the target policy's noise std) must be finite and >= 0, got {sigma}")
    return float(sigma)


def sample_target_actions(mean: torch.Tensor, sigma: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n actions per row of π: ``clip(m + σ·ε, −1, 1)`` for m (B, A) -> (B, n, A)."""
    eps = torch.randn((mean.shape[0], n, mean.shape[1]), generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean.unsqueeze(1) + sigma * eps).clamp(-1.0, 1.0)  # (B, n, A)


def policy_actions(
    pi: PolicyFn,
    obs: Observation,
    goals: Observation | None,
    task_ids: torch.Tensor | None,
    action_dim: int,
    check_finite: bool = True,
) -> torch.Tensor:
    """``pi``'s deterministic actions (B, A), checked for shape and (``check_finite``: a device sync) finiteness."""
    with torch.no_grad():
        mean = pi(obs, goals, task_ids)
    B = obs.batch_size
    if not isinstance(mean, torch.Tensor) or tuple(mean.shape) != (B, action_dim):
        got = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
        raise ValueError(f"pi must return actions of shape (B, A) = ({B}, {action_dim}), got {got}")
    if check_finite and not torch.isfinite(mean).all():
        raise ValueError("pi returned non-finite actions")
    return mean.float()


class FQENets(nn.ModuleDict):
    """FQE's networks by name (the annotations type ``nn.ModuleDict``'s attribute access, as ``algos.base.Nets``)."""

    encoder: ObservationEncoder
    critic: Critic


def build_networks(cfg: FQEConfig, spec: ObservationSpec) -> FQENets:
    """``encoder`` and ``critic`` (an ensemble of ``num_critics`` Q heads), initialized from ``cfg.seed``."""
    with seeded(cfg.seed):
        encoder = ObservationEncoder(spec, cfg.encoder)
        critic = Critic(encoder.out_dim, spec.action_dim, cfg.hidden, cfg.num_critics, cfg.layer_norm)
    return FQENets({"encoder": encoder, "critic": critic})


def fqe_loss(
    enc: Encoded, next_actions: torch.Tensor, critic: Critic, target_critic: Critic, gamma: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """E[Σ_i (Q_i(s, a) − r − γ(1 − d)·mean_m Q̄_i(s', a'_m))²], a'_m ~ π(·|s') given as (B, M, A)."""
    b = enc.batch
    with torch.no_grad():
        next_v = target_critic.q_values(enc.require_next(), next_actions).mean(-1)  # (N, B)
        td_target = b.rewards + gamma * (1.0 - b.terminals) * next_v  # (N, B)
    q = critic(enc.features, b.actions)  # (N, B)
    td_loss = (q - td_target).pow(2).mean(1).sum()
    metrics = {
        "fqe/td_loss": td_loss.detach(),
        "fqe/q": q.mean().detach(),
        "fqe/td_target": td_target.mean(),
        "fqe/next_v": next_v.mean(),
    }
    return td_loss, metrics


class FQE:
    """The learner: encoder, critic, target critic, optimizer and the action-noise RNG."""

    def __init__(self, cfg: FQEConfig, spec: ObservationSpec, pi: PolicyFn, sigma: float, device: torch.device):
        self.cfg, self.spec, self.pi, self.sigma, self.device = cfg, spec, pi, check_sigma(sigma), device
        self.nets = build_networks(cfg, spec).to(device)
        self.target_critic = Critic(
            self.nets.encoder.out_dim, spec.action_dim, cfg.hidden, cfg.num_critics, cfg.layer_norm
        ).to(device)
        self.target_critic.load_state_dict(self.nets.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.optimizer = make_optimizer([self.nets.encoder, self.nets.critic], cfg.lr)
        self.rng = torch.Generator(device).manual_seed(cfg.seed)
        self.step = 0

    def check(self, batch: Batch) -> None:
        if len(batch) != self.cfg.batch_size:
            raise ValueError(
                f"a batch has {len(batch)} rows but FQEConfig.batch_size is {self.cfg.batch_size}: "
                "build the sampler with fqe_sampler_config(cfg, ...) or set batch_size"
            )
        if batch.actions.shape[1] != self.spec.action_dim:
            raise ValueError(f"batch actions have {batch.actions.shape[1]} dims, the spec {self.spec.action_dim}")

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on a device Batch; returns detached metrics (tensors: no device sync)."""
        self.check(batch)
        next_mean = policy_actions(  # (B, A); checked for finiteness (a device sync) on the first batch only
            self.pi, batch.next_observations, batch.goals, batch.task_ids, self.spec.action_dim, self.step == 0
        )
        next_actions = sample_target_actions(next_mean, self.sigma, self.cfg.n_action_samples, self.rng)  # (B, M, A)
        enc = encode(self.nets.encoder, batch)  # s with gradients, s' without: the only encoder passes
        loss, metrics = fqe_loss(enc, next_actions, self.nets.critic, self.target_critic, self.cfg.gamma)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            params = [p for p in self.nets.parameters() if p.grad is not None]
            metrics["fqe/grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip).detach()
        self.optimizer.step()
        self.step += 1
        if self.cfg.target_every:
            if self.step % self.cfg.target_every == 0:
                self.target_critic.load_state_dict(self.nets.critic.state_dict())
        else:
            polyak_update(self.target_critic, self.nets.critic, self.cfg.tau)
        return metrics


def fit_fqe(
    batches: Iterator[Batch],
    spec: ObservationSpec,
    pi: PolicyFn,
    sigma: float,
    cfg: FQEConfig,
    progress: bool = False,
    log: Callable[[dict[str, float], int], None] | None = None,
    device: str | torch.device = "cpu",
) -> FQEModel:
    """Fit Q^π of ``clip(pi(s) + sigma·N(0, I), −1, 1)`` on ``cfg.steps`` batches (device Batches, e.g.
    a ``Sampler``). Every ``cfg.log_every`` steps (and at the last) a row of metrics goes to the model's
    ``history`` and to ``log(values, step)`` (``runs.Logger.scalars`` fits). Deterministic for a seed on
    the CPU, given the same batches and a deterministic ``pi``."""
    learner = FQE(cfg, spec, pi, sigma, torch.device(device))
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="fqe", unit="step", leave=False)
    for _ in range(cfg.steps):
        try:
            batch = next(batches)
        except StopIteration:
            raise ValueError(f"the batches ran out after {learner.step} of {cfg.steps} FQE steps") from None
        metrics = learner.update(batch)
        if learner.step % cfg.log_every == 0 or learner.step == cfg.steps:
            values = dict(zip(metrics, torch.stack([v.float() for v in metrics.values()]).tolist(), strict=True))
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"FQE diverged at step {learner.step}: {values}")
            history.append({"step": learner.step, **values})
            if log is not None:
                log(values, learner.step)
            if bar is not None:
                bar.set_postfix(td_loss=f"{values['fqe/td_loss']:.4g}", q=f"{values['fqe/q']:.4g}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return FQEModel(cfg, spec, sigma, learner.nets, pi, learner.step, tuple(history))


class FQEModel:
    """A fitted Q^π: ``q`` of given actions, ``v`` = E_{a~π} Q (seeded Monte-Carlo), save / load.

    ``pi`` (the target policy's deterministic action) is needed by ``v`` unless its actions are
    passed as ``mean_actions``; a loaded model has it only when ``load`` is given one.
    """

    def __init__(
        self,
        cfg: FQEConfig,
        spec: ObservationSpec,
        sigma: float,
        nets: FQENets,
        pi: PolicyFn | None = None,
        step: int = 0,
        history: tuple[dict[str, float], ...] = (),
    ):
        self.cfg, self.spec, self.sigma, self.pi = cfg, spec, check_sigma(sigma), pi
        self.nets, self.step, self.history = nets.eval(), step, history
        self.device = next(nets.critic.parameters()).device

    @torch.no_grad()
    def features(self, obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
        """Encoder features (B, F) of device observations (float images (B, 3, H, W))."""
        (f,) = self.nets.encoder([obs], goals, task_ids)  # (B, F)
        return f

    @torch.no_grad()
    def q(
        self, obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None, actions: torch.Tensor
    ) -> torch.Tensor:
        """Q̂(s, a) (B,) of actions (B, A): the mean over the heads."""
        return self.nets.critic(self.features(obs, goals, task_ids), actions).mean(0)  # (B,)

    @torch.no_grad()
    def v(
        self,
        obs: Observation,
        goals: Observation | None,
        task_ids: torch.Tensor | None,
        mean_actions: torch.Tensor | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """V̂(s) = E_{a~π} Q̂(s, a) (B,): the mean over ``n_samples`` (default ``cfg.n_action_samples``)
        actions drawn from a generator seeded with ``seed`` (default ``cfg.seed``), so it is a function
        of its inputs. ``mean_actions`` (B, A): π's deterministic actions, when already computed."""
        return self.q_and_v(obs, goals, task_ids, None, mean_actions, n_samples, seed)[1]

    @torch.no_grad()
    def q_and_v(
        self,
        obs: Observation,
        goals: Observation | None,
        task_ids: torch.Tensor | None,
        actions: torch.Tensor | None,
        mean_actions: torch.Tensor | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Q̂(s, a) (B,) of ``actions`` (None: not computed) and V̂(s) (B,) from ONE encoder pass
        (what DR / WDR need per step)."""
        f = self.features(obs, goals, task_ids)  # (B, F)
        if mean_actions is None:
            if self.pi is None:
                raise ValueError("V̂ needs the target policy: pass mean_actions, or pi= to fit_fqe / FQEModel.load")
            mean_actions = policy_actions(self.pi, obs, goals, task_ids, self.spec.action_dim)
        if tuple(mean_actions.shape) != (f.shape[0], self.spec.action_dim):
            raise ValueError(
                f"mean_actions must be ({f.shape[0]}, {self.spec.action_dim}), got {tuple(mean_actions.shape)}"
            )
        rng = torch.Generator(self.device).manual_seed(self.cfg.seed if seed is None else seed)
        sampled = sample_target_actions(
            mean_actions.float(), self.sigma, n_samples or self.cfg.n_action_samples, rng
        )  # (B, M, A)
        v = self.nets.critic.q_values(f, sampled).mean(-1).mean(0)  # (B,)
        q = None if actions is None else self.nets.critic(f, actions).mean(0)  # (B,)
        return q, v

    # ------------------------------------------------------------ safetensors + JSON, no pickle
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``fqe.safetensors`` (the encoder's and critic's tensors) and ``fqe.json`` (format, config,
        spec, sigma, step, history), each via a temporary name; the JSON last, so it marks completeness."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.nets.state_dict().items()}
        meta = {
            "format": FORMAT,
            "config": dataclasses.asdict(self.cfg),
            "spec": self.spec.to_json(),
            "sigma": self.sigma,
            "step": self.step,
            "history": list(self.history),
        }
        _write(out / TENSORS, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
        _write(out / META, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
        return out

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], pi: PolicyFn | None = None, device: str | torch.device = "cpu"
    ) -> FQEModel:
        d = Path(path)
        if not (d / META).exists() or not (d / TENSORS).exists():
            raise FileNotFoundError(f"{d} is not a saved FQE model: it needs {META} and {TENSORS}")
        meta = json.loads((d / META).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d / META} has format {meta.get('format')!r}, expected {FORMAT!r}")
        cfg = from_dict(FQEConfig, meta["config"])
        spec = ObservationSpec.from_json(meta["spec"])
        nets = build_networks(cfg, spec)
        nets.load_state_dict(load_file(str(d / TENSORS)))
        history = tuple(dict(h) for h in meta["history"])
        return cls(cfg, spec, meta["sigma"], nets.to(torch.device(device)), pi, int(meta["step"]), history)


def _write(path: Path, write: Callable[[str], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(str(tmp))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- wiring helpers
def fqe_sampler_config(
    cfg: FQEConfig, obs: ObsConfig, task: TaskConfig, episode_ids: tuple[str, ...] | None = None, prefetch: int = 4
) -> SamplerConfig:
    """The sampler config of FQE's batches: the same observations, relabeling and task rewards as a
    training run with ``obs`` and ``task`` (``PretrainConfig.sampler_config``), FQE's batch size and seed."""
    if task.relabel.gamma != cfg.gamma:
        raise ValueError(f"task.relabel.gamma={task.relabel.gamma} but FQE gamma={cfg.gamma}: set both alike")
    return SamplerConfig(
        batch_size=cfg.batch_size,
        cameras=tuple(obs.cameras),
        use_state=obs.use_state,
        scene_state=obs.scene_state,
        relabel=task.relabel,
        task_balanced=task.task_balanced,
        augment_pad=obs.augment_pad,
        prefetch=prefetch,
        seed=cfg.seed,
        episode_ids=episode_ids,
    )


def deterministic_actions(trained: TrainedPolicy) -> PolicyFn:
    """A trained policy's deterministic action as ``pi``: the goal and task ids are passed only when its
    networks are conditioned on them (FQE's batches may carry goals a task-conditioned policy ignores)."""

    def pi(obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
        goal = goals if trained.spec.has_goal else None
        tasks = task_ids if trained.spec.num_tasks else None
        return trained.act(obs, goal, tasks, deterministic=True)  # (B, A)

    return pi


__all__ = [
    "FQE",
    "FQEConfig",
    "FQEModel",
    "FQENets",
    "PolicyFn",
    "build_networks",
    "deterministic_actions",
    "fit_fqe",
    "fqe_loss",
    "fqe_sampler_config",
    "sample_target_actions",
]
