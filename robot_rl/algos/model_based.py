"""Plumbing shared by the model-based offline algorithms (MOPO, MOReL, COMBO): the world model.

Each of ``mopo.py``, ``morel.py`` and ``combo.py`` is a SAC (or CQL) learner that mixes real rows
with synthetic rows of a learned dynamics ensemble (``robot_rl.models.dynamics``: Janner et al.,
2019, MBPO; Chua et al., 2018, PETS). This module holds what they share, used once per update:

1. **Frozen features.** The model works in the feature space of the algorithm's encoder, which is
   frozen (randomly initialized from the seed, or loaded from a checkpoint or saved policy with
   ``model.encoder_checkpoint``): synthetic rows stay in a replay for many updates, and a moving
   encoder would make every stored feature, and the model itself, stale. The critic and the actor
   are trained on top of the frozen features (for state observations with the default encoder the
   features are the normalized state, goal and task embedding, so nothing is lost).
2. **The model's state z = [f, g].** ``f`` = ``encoder.observation_features(s)`` and ``g`` =
   ``encoder.goal_features(goal, task)``. The ensemble models z (its Δg is 0 in every row, which it
   learns exactly, up to the 1e-3 floor of the target scale); after each model step the g part is set
   back to the row's g, so g is carried unchanged along a rollout. Deviation from the shared contract
   (which models f alone and carries g beside it): with g in its input the reward head can depend on
   the goal or the task. Relabeled goal-reaching rewards (0/1: success of s' for goal g) and
   per-task rewards are functions of (f', g) and (f', k); a model of f alone could only predict the
   reward averaged over the goals and tasks the sampler drew, which is no reward of any goal.
   Critics and actors read ``encoder.join(f, g)`` (goal-difference features included).
3. **Streaming model training.** The algorithms see the data only as the sampler's batches, so the
   ensemble trains alongside the agent: every update takes ``model_steps`` gradient steps of the
   ensemble's NLL (``dynamics.dynamics_loss``) on the real batch, each member on its own bootstrap
   resample of the rows (MBPO gives each member its own shuffle). Normalization statistics of the
   inputs [z, a] and targets [Δz, r] are running means and variances over the first
   ``norm_updates`` batches, then frozen. Deviation from MBPO's fit to convergence with a holdout
   (``dynamics.fit_dynamics``): the holdout is progressive validation, each member's MSE on a batch
   before it trains on it (an exponential average with ``elite_decay``); elites, the E members with
   the lowest score, are re-chosen every ``elite_every`` updates (never on the first: one batch is no
   score). Training never stops, so in finetuning the model follows the new data as the agent does.
4. **Branched rollouts** (MBPO): after ``warmup`` updates, every ``every`` updates, ``horizon``-step
   rollouts start from the real batch's z (its first ``starts`` rows; 0: all), the actor sampling
   actions; each step draws one elite per row. The algorithm turns each model step into a reward and
   a done flag (``model_transition``: MOPO's penalty, MOReL's HALT); ``terminal_reward`` ends rows
   whose predicted reward reaches it (the lake's sparse success rewards end an episode: use 0.5).
   Rows that end are not stepped again. Transitions go to a ring buffer (``ModelReplay``).
5. **Mixing.** Each update's batch has the real batch's size B: its first ⌈real_ratio·B⌉ real rows
   and B − ⌈real_ratio·B⌉ rows drawn uniformly from the model replay (all real rows until the replay
   has rows). Deviation from MBPO, which draws a larger batch: the learner's cost does not grow as
   real_ratio shrinks, the sampler's rows beyond the real share are unused.

Of ``DynamicsConfig`` the streaming training uses ``ensemble_size``, ``elites``, ``hidden``, ``lr``,
``weight_decay`` and the log-variance bounds; the fields of ``fit_dynamics`` (holdout, batch size,
epochs, steps) are unused, and ``seed`` is replaced by the algorithm's.

Exact resume: the ensemble (parameters, normalization, elites), the running statistics, the
progressive-validation scores and the replay (packed into one tensor as the module's extra state)
are buffers of ``nets["world"]``, so checkpoints hold them; all sampling draws from the algorithm's
``rng``. The replay makes checkpoints larger: ``replay_size`` rows of (2·dim z + dim A + 6) float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from data_lake.batch import Batch, Observation
from robot_rl.algos.base import Encoded
from robot_rl.models.dynamics import (
    DynamicsConfig,
    DynamicsEnsemble,
    ModelReplay,
    ModelStep,
    Transitions,
    dynamics_loss,
    make_dynamics_optimizer,
)
from robot_rl.nets import ObservationEncoder
from robot_rl.ope.lstd import load_encoder


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """How the world model is trained, rolled out and mixed with the data (``algo.model.*``)."""

    horizon: int = 5  # h, model steps per rollout
    every: int = 1  # k, updates between rollouts
    starts: int = 0  # rollout start rows: the first n rows of the real batch (0: all of them)
    replay_size: int = 100_000  # synthetic transitions kept (the oldest are overwritten)
    real_ratio: float = 0.5  # share of real rows per update (COMBO's f)
    warmup: int = 1000  # updates of model training before the first rollout
    model_steps: int = 1  # gradient steps of the ensemble per update
    norm_updates: int = 1000  # batches whose running statistics normalize the model's inputs and targets
    elite_every: int = 250  # updates between elite selections
    elite_decay: float = 0.99  # exponential average of each member's progressive-validation MSE
    deterministic: bool = False  # model steps take the member's mean instead of a sample
    terminal_reward: float | None = None  # a model row whose predicted reward reaches this is terminal
    encoder_checkpoint: str = ""  # "": the frozen encoder at its seeded init; else a checkpoint/policy dir

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.every < 1 or self.starts < 0 or self.replay_size < 1:
            raise ValueError(
                f"need horizon >= 1, every >= 1, starts >= 0, replay_size >= 1; got {self.horizon}, {self.every}, "
                f"{self.starts}, {self.replay_size}"
            )
        if not 0 < self.real_ratio <= 1:
            raise ValueError(f"real_ratio must be in (0, 1], got {self.real_ratio}")
        if self.warmup < 0 or self.model_steps < 1 or self.norm_updates < 1 or self.elite_every < 1:
            raise ValueError(
                f"need warmup >= 0, model_steps >= 1, norm_updates >= 1, elite_every >= 1; got {self.warmup}, "
                f"{self.model_steps}, {self.norm_updates}, {self.elite_every}"
            )
        if not 0 <= self.elite_decay < 1:
            raise ValueError(f"elite_decay must be in [0, 1), got {self.elite_decay}")


class PackedReplay(nn.Module):
    """A ``ModelReplay`` whose contents travel in the module's state dict as one float64 tensor (extra state)."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: torch.device):
        super().__init__()
        self.buffer = ModelReplay(capacity, obs_dim, action_dim, 0, device)

    def get_extra_state(self) -> torch.Tensor:
        """[[ptr, size, 0...], rows...] as (1 + capacity, columns) float64 (int64 step indices are exact)."""
        cols = [v.double().reshape(len(v), -1) for v in self.buffer.data.values()]
        rows = torch.cat(cols, 1)  # (capacity, C)
        head = rows.new_zeros(1, rows.shape[1])
        head[0, 0], head[0, 1] = self.buffer.ptr, self.buffer.size
        return torch.cat([head, rows])

    def set_extra_state(self, state: Any) -> None:
        data = self.buffer.data
        want = sum(v[0].numel() for v in data.values())
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != (1 + self.buffer.capacity, want):
            got = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"model replay state must be ({1 + self.buffer.capacity}, {want}), got {got}")
        c = 0
        for v in data.values():
            w = v[0].numel()
            v.copy_(state[1:, c : c + w].reshape(v.shape).to(v.dtype))
            c += w
        self.buffer.ptr, self.buffer.size = int(state[0, 0]), int(state[0, 1])


class WorldModel(nn.Module):
    """The ensemble on z = [f, g], its running normalization, elite scores and the replay of model rows."""

    stats: torch.Tensor
    elite_score: torch.Tensor

    def __init__(
        self, obs_dim: int, cond_dim: int, action_dim: int, dyn: DynamicsConfig, cfg: ModelConfig, device: torch.device
    ):
        super().__init__()
        self.obs_dim, self.cond_dim, self.dyn, self.cfg = obs_dim, cond_dim, dyn, cfg
        z = obs_dim + cond_dim
        self.model = DynamicsEnsemble(z, action_dim, dyn)
        self.replay = PackedReplay(cfg.replay_size, z, action_dim, device)
        # running sums over the first norm_updates batches: count, Σ, Σ² of [z, a] and of [Δz, r]
        width = (z + action_dim) + (z + 1)
        self.register_buffer("stats", torch.zeros(3, width, dtype=torch.float64))
        self.register_buffer("elite_score", torch.zeros(dyn.ensemble_size))

    # ------------------------------------------------------------ features
    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return z[:, : self.obs_dim], (z[:, self.obs_dim :] if self.cond_dim else None)

    def features(self, encoder: ObservationEncoder, z: torch.Tensor) -> torch.Tensor:
        """The critic's and actor's input ``encoder.join(f, g)`` (B, F) of model states z (B, D_o + D_g)."""
        return encoder.join(*self.split(z))

    # ------------------------------------------------------------ training
    @torch.no_grad()
    def update_normalization(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        both = torch.cat([inputs, targets], 1).double()  # (B, W)
        self.stats[0] += len(both)
        self.stats[1] += both.sum(0)
        self.stats[2] += both.pow(2).sum(0)
        n = self.stats[0]
        mean = self.stats[1] / n
        std = (self.stats[2] / n - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-3)
        m, k = self.model, inputs.shape[1]
        m.in_mean.copy_(mean[:k]), m.in_std.copy_(std[:k]), m.out_mean.copy_(mean[k:]), m.out_std.copy_(std[k:])
        m.fitted.fill_(True)

    def train_step(
        self,
        z: torch.Tensor,
        a: torch.Tensor,
        r: torch.Tensor,
        z_next: torch.Tensor,
        step: int,
        optimizer: torch.optim.Optimizer,
        rng: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """Progressive validation on the batch, ``model_steps`` bootstrap NLL steps, elites every ``elite_every``."""
        cfg, m = self.cfg, self.model
        y = torch.cat([z_next - z, r[:, None]], 1)  # (B, D + 1)
        if step < cfg.norm_updates:
            self.update_normalization(torch.cat([z, a], 1), y)
        yn = m.normalize_targets(y)  # (B, D + 1)
        with torch.no_grad():
            mean, _ = m.forward_normalized(z, a)  # (K, B, D + 1)
            mse = (mean - yn).pow(2).mean((1, 2))  # (K,) on rows the members have not trained on yet
            decay = cfg.elite_decay if step > 0 else 0.0
            self.elite_score.mul_(decay).add_((1 - decay) * mse)
        K, B = self.dyn.ensemble_size, len(z)
        metrics: dict[str, torch.Tensor] = {}
        for _ in range(cfg.model_steps):
            idx = torch.randint(B, (K, B), generator=rng, device=z.device)  # (K, B) a bootstrap per member
            loss, metrics = dynamics_loss(m, z[idx], a[idx], yn[idx], self.dyn)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if step > 0 and step % cfg.elite_every == 0:
            m.elite_idx.copy_(torch.argsort(self.elite_score)[: self.dyn.elites])
        metrics["dynamics/validation_mse"] = mse.mean()
        metrics["dynamics/elite_score"] = self.elite_score[m.elite_idx].mean()
        return metrics

    # ------------------------------------------------------------ rollouts
    @torch.no_grad()
    def rollout(
        self,
        z0: torch.Tensor,
        policy: Callable[[torch.Tensor], torch.Tensor],
        transition: Callable[[torch.Tensor, ModelStep], tuple[torch.Tensor, torch.Tensor]],
        rng: torch.Generator,
    ) -> Transitions:
        """``horizon`` model steps from z0 (B, D); ``policy(z) -> a``; ``transition(z, step) -> (reward, done)``.

        Ends rows that are done (or reach ``terminal_reward``); g is reset to its start value after each step."""
        cfg, g0 = self.cfg, z0[:, self.obs_dim :]
        parts: list[Transitions] = []
        z, g = z0, g0
        for h in range(cfg.horizon):
            a = policy(z)  # (b, A)
            s = self.model.step(z, a, rng, deterministic=cfg.deterministic)
            z_next = torch.cat([s.next_x[:, : self.obs_dim], g], 1)  # (b, D): g carried unchanged
            reward, done = transition(z, s)  # (b,), (b,) bool
            if cfg.terminal_reward is not None:
                done = done | (s.reward >= cfg.terminal_reward)
            step = torch.full_like(s.member, h)
            parts.append(Transitions(z, None, a, reward, z_next, done.float(), s.max_std_norm, s.disagreement, step))
            alive = ~done
            if not alive.any():
                break
            z, g = z_next[alive], g[alive]
        fields = dataclasses.fields(Transitions)
        return Transitions(**{f.name: _cat([getattr(p, f.name) for p in parts]) for f in fields})


def _cat(values: list[Any]) -> Any:
    return None if values[0] is None else torch.cat(values)


def feature_batch(z: torch.Tensor, a: torch.Tensor, r: torch.Tensor, d: torch.Tensor, z_next: torch.Tensor) -> Batch:
    """A Batch in the model's space (``observations.state`` holds z; nothing re-encodes it): what the losses read."""
    zeros = torch.zeros(len(z), dtype=torch.int64, device=z.device)
    return Batch(
        observations=Observation({}, z),
        actions=a,
        rewards=r,
        terminals=d,
        next_observations=Observation({}, z_next),
        goals=None,
        task_ids=zeros,
        mc_returns=torch.zeros_like(r),
        goal_source=zeros,
    )


class ModelBased:
    """Mixin for a SAC-family learner (``update_on(enc)``): frozen encoder, world model, rollouts, mixing.

    Subclasses list it before their learner (``class MOPO(ModelBased, SAC)``) and may override
    ``model_transition`` (the reward and done flag of a model step) and ``world_metrics``.
    """

    frozen_state: ClassVar[tuple[str, ...]] = ("encoder.", "world.model.elite_idx")  # elites: every elite_every
    real_rows: int = 0  # real rows at the front of the last mixed batch (COMBO's push-up rows)

    # attributes of the learner this mixes into
    cfg: Any
    spec: Any
    nets: Any
    rng: torch.Generator
    step: int
    device: torch.device
    optimizers: dict[str, torch.optim.Optimizer]

    def build_networks(self) -> dict[str, nn.Module]:
        nets = super().build_networks()  # type: ignore[misc]
        encoder = nets["encoder"]
        if self.cfg.model.encoder_checkpoint:
            loaded = load_encoder(self.cfg.model.encoder_checkpoint)
            try:
                encoder.load_state_dict(loaded.state_dict())
            except RuntimeError as e:
                raise ValueError(
                    f"the encoder of {self.cfg.model.encoder_checkpoint} does not fit this observation spec and "
                    f"encoder config (set algo.encoder like the checkpoint's, and the same obs): {e}"
                ) from e
        encoder.requires_grad_(False)
        obs_dim, cond_dim = split_dims(encoder)
        cfg = self.cfg
        dyn = dataclasses.replace(cfg.dynamics, seed=cfg.seed)  # the members' init follows the algorithm's seed
        nets["world"] = WorldModel(obs_dim, cond_dim, self.spec.action_dim, dyn, cfg.model, self.device)
        return nets

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = super().build_optimizers()  # type: ignore[misc]
        opts["model"] = make_dynamics_optimizer(self.world.model, self.cfg.dynamics)
        return opts

    @property
    def world(self) -> WorldModel:
        return self.nets["world"]

    def attach_auxiliary(self, modules: dict[str, nn.Module]) -> None:
        raise ValueError(
            f"{type(self).__name__}'s encoder is frozen (its model rollouts live in its feature space): auxiliary "
            "losses (aux.xi > 0) cannot apply"
        )

    # ------------------------------------------------------------ what the algorithms supply
    def model_transition(self, z: torch.Tensor, s: ModelStep) -> tuple[torch.Tensor, torch.Tensor]:
        """The reward and done flag (B,), (B,) bool stored for a model step (plain: the model's reward)."""
        return s.reward, torch.zeros_like(s.reward, dtype=torch.bool)

    def world_metrics(self, z: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra metrics (and statistics, MOReL's threshold) from the real rows, after the model step."""
        return {}

    # ------------------------------------------------------------ the update
    def update(self, batch: Batch) -> dict[str, float]:
        cfg, world, encoder = self.cfg.model, self.world, self.nets.encoder
        with torch.no_grad():
            g = encoder.goal_features(batch.goals, batch.task_ids)  # (B, D_g) or None
            f, nf = encoder.observation_features([batch.observations, batch.next_observations], batch.goals)
            z = f if g is None else torch.cat([f, g], 1)  # (B, D)
            z_next = nf if g is None else torch.cat([nf, g], 1)  # (B, D)
        a, r = batch.actions, batch.rewards
        metrics = world.train_step(z, a, r, z_next, self.step, self.optimizers["model"], self.rng)
        metrics.update(self.world_metrics(z, a))
        replay = world.replay.buffer
        if self.step >= cfg.warmup and self.step % cfg.every == 0:
            starts = z[: cfg.starts] if cfg.starts else z
            model_rows = world.rollout(starts, self.rollout_policy, self.model_transition, self.rng)
            replay.add(model_rows)
            metrics["model/rollout_length"] = model_rows.step.float().max() + 1
            metrics["model/reward"] = model_rows.rewards.mean()
            metrics["model/max_std_norm"] = model_rows.max_std_norm.mean()
            metrics["model/disagreement"] = model_rows.disagreement.mean()
            metrics["model/terminal"] = model_rows.terminals.mean()
        B = len(z)
        n_real = B if len(replay) == 0 else min(B, math.ceil(self.cfg.model.real_ratio * B))
        parts = [(z[:n_real], a[:n_real], r[:n_real], batch.terminals[:n_real], z_next[:n_real])]
        if n_real < B:
            m = replay.sample(B - n_real, self.rng)
            parts.append((m.x, m.actions, m.rewards, m.terminals, m.next_x))
        zz, aa, rr, dd, zn = (torch.cat(c) for c in zip(*parts, strict=True))
        self.real_rows = n_real
        with torch.no_grad():
            enc = Encoded(feature_batch(zz, aa, rr, dd, zn), world.features(encoder, zz), world.features(encoder, zn))
        metrics["model/real_rows"] = torch.tensor(float(n_real) / B)
        metrics["model/replay_size"] = torch.tensor(float(len(replay)))
        out = self.update_on(enc)  # type: ignore[attr-defined]  # the learner's (SAC) step
        return {**out, **{k: float(v) for k, v in metrics.items()}}

    @torch.no_grad()
    def rollout_policy(self, z: torch.Tensor) -> torch.Tensor:
        """Actions sampled from the actor on the model state's features (MBPO rolls out the current policy)."""
        return self.nets.actor(self.world.features(self.nets.encoder, z)).sample(generator=self.rng)[0]


def split_dims(encoder: ObservationEncoder) -> tuple[int, int]:
    """(D_o, D_g): widths of this encoder's ``observation_features`` and ``goal_features``."""
    spec, cfg = encoder.spec, encoder.cfg
    state = (cfg.state_hidden if encoder.state_net is not None else spec.state_dim) if spec.state_dim else 0
    obs_dim = cfg.feature_dim * len(spec.cameras) + state
    goal_dim = cfg.feature_dim * len(encoder.late_cameras) + (spec.goal_state_dim if spec.has_goal else 0)
    if encoder.task_embedding is not None:
        goal_dim += encoder.task_embedding.embedding_dim
    return obs_dim, goal_dim
