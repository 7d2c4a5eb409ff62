"""QT-Opt (Kalashnikov et al., 2018): critic-only Q-learning whose policy is the cross-entropy method.

Equations (``docs/algorithms.md``, "QT-Opt"), ``Q̄_i`` the Polyak targets of two critics::

    π(s)   = argmax_a Q(s, a) ≈ CEM(Q_1(s, ·)):  a_1..N ~ N(μ, σ²) clipped to [-1, 1]^A (the first
             iteration: uniform on the box), keep the best M, refit μ, σ to them, repeat I times
             (paper: N = 64, M = 6, I = 2)
    y      = r + γ(1 − d)·min_i Q̄_i(s', π̄(s')),    π̄ = CEM(Q̄_1(s', ·))            (clipped double-Q)
    L_Q    = Σ_i E_D[ H(y, Q_i(s, a)) ],   Q_i = sigmoid(f_i) ∈ [0, 1], H the binary cross-entropy
           | Σ_i E_D[ ½·(f_i(s, a) − y)² ]  (``q_output="linear"``: unbounded Q = f, MSE)

This file holds what Actionable Models (``actionable_models.py``) and MT-Opt (``mt_opt.py``) share:
``cem``, the ``CEMPolicy`` acting module, ``cem_value`` (V(s) = min_i Q_i(s, CEM(Q_1))), ``td_target``,
``q_loss`` (cross-entropy or squared error per element), and the ``QTOpt`` algorithm they subclass.

Choices and deviations:
- Encode once (``base.py``): the image embedding of ``s'`` (with its goal / task part) is computed once
  per update and every CEM sample of every iteration is scored on it (``Critic.q_values`` repeats the
  cached features); acting encodes the observation once per call. No target encoder.
- The two target networks are the Polyak targets of a two-member critic ensemble (one batched module,
  ``heads.Critic``; as TD3/SAC's clipped double-Q), not two lagged copies of one Q-function.
- CEM ranks by the raw output ``f_1`` (the logit; monotone in Q, so the same argmax) and returns the best
  sample it scored in any iteration (not the final mean, which was never scored). The first iteration
  samples uniformly on the box: a Gaussian around 0 rarely reaches the faces and corners, where
  saturated actions are often best (``test_qtopt.py``: a quadratic maximized at a corner). A discrete
  gripper (``discrete_gripper``: the last action dimension in {−1, +1}) is a Bernoulli whose
  probability is refit to the elites' share of +1.
- Stochastic acting (``deterministic=False``, this repo's exploration option) samples one action from
  the final CEM distribution (std floored at ``min_std``).
- One synchronous update step with Polyak targets instead of the paper's distributed, asynchronous
  Bellman updaters and replay buffers.
- ``mc_lower_bound`` (not in the paper, off by default): the target is ``max(y, G)`` with G the
  behaviour's discounted return from the sampler (``Batch.mc_returns``). The simulator is
  deterministic, so replaying the data's own actions reaches what the data reached: G ≤ Q*(s, a, g).
  For a hindsight goal j − t steps ahead G = γ^(j − t − 1), so a goal 60 steps away has a target of
  γ^59 from the first update instead of after 60 rounds of bootstrapping (Cal-QL uses the same
  return to calibrate its regularizer). The sampler's ``relabel.gamma`` must equal ``gamma``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import (
    AlgoConfig,
    BaseAlgorithm,
    Encoded,
    Nets,
    Policy,
    encode,
    make_optimizer,
    polyak_update,
    seeded,
)
from robot_rl.nets import Critic, ObservationEncoder, ObservationSpec

Q_OUTPUTS = ("sigmoid", "linear")


@dataclasses.dataclass(frozen=True)
class CEMConfig:
    """The cross-entropy method over actions in [-1, 1]^A."""

    samples: int = 64  # N actions scored per iteration
    elites: int = 6  # M best kept to refit the distribution
    iterations: int = 2  # I
    min_std: float = 0.05  # floor of the refit σ (keeps stochastic acting stochastic)
    discrete_gripper: bool = False  # the last action dimension is a {−1, +1} choice

    def __post_init__(self) -> None:
        if not 1 <= self.elites <= self.samples:
            raise ValueError(f"cem needs 1 <= elites <= samples, got elites={self.elites}, samples={self.samples}")
        if self.iterations < 1:
            raise ValueError(f"cem iterations must be >= 1, got {self.iterations}")
        if self.min_std <= 0:
            raise ValueError(f"cem min_std must be > 0, got {self.min_std}")


@dataclasses.dataclass(frozen=True)
class CEMResult:
    """The best action found per state and the final fitted distribution (for exploration)."""

    action: torch.Tensor  # (B, A) best sample scored
    score: torch.Tensor  # (B,) its score
    mean: torch.Tensor  # (B, A)
    std: torch.Tensor  # (B, A)
    gripper_p: torch.Tensor | None  # (B,) P(last dim = +1) when the gripper is discrete

    def sample(self, cfg: CEMConfig, generator: torch.Generator | None = None) -> torch.Tensor:
        """One action per state from the final distribution -> (B, A)."""
        return sample_actions(self.mean, self.std, self.gripper_p, 1, cfg, generator)[:, 0]


def sample_actions(
    mean: torch.Tensor,
    std: torch.Tensor,
    gripper_p: torch.Tensor | None,
    n: int,
    cfg: CEMConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """n actions per state from N(mean, std²) clipped to [-1, 1] (gripper ~ Bernoulli) -> (B, n, A)."""
    B, A = mean.shape
    eps = torch.randn((B, n, A), generator=generator, device=mean.device, dtype=mean.dtype)
    actions = (mean.unsqueeze(1) + std.unsqueeze(1) * eps).clamp(-1.0, 1.0)  # (B, n, A)
    if gripper_p is not None:
        u = torch.rand((B, n), generator=generator, device=mean.device, dtype=mean.dtype)
        actions[..., -1] = torch.where(u < gripper_p.unsqueeze(1), 1.0, -1.0)  # (B, n)
    return actions


@torch.no_grad()
def cem(
    score: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    action_dim: int,
    cfg: CEMConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> CEMResult:
    """Maximize ``score(actions (B, N, A)) -> (B, N)`` over [-1, 1]^A for B states at once."""
    B, A, N, M = batch_size, action_dim, cfg.samples, cfg.elites
    gripper_p = torch.full((B,), 0.5, device=device) if cfg.discrete_gripper else None
    best_score = torch.full((B,), -torch.inf, device=device)
    best_action = torch.zeros(B, A, device=device)
    actions = torch.rand((B, N, A), generator=generator, device=device) * 2 - 1  # (B, N, A) uniform on the box
    if gripper_p is not None:
        actions[..., -1] = torch.where(actions[..., -1] > 0, 1.0, -1.0)
    for i in range(cfg.iterations):
        scores = score(actions)  # (B, N)
        if scores.shape != (B, N):
            raise ValueError(f"cem score returned shape {tuple(scores.shape)}, expected {(B, N)}")
        top, idx = scores.topk(M, dim=1)  # (B, M), sorted
        elites = actions.gather(1, idx.unsqueeze(-1).expand(B, M, A))  # (B, M, A)
        better = top[:, 0] > best_score  # (B,)
        best_score = torch.where(better, top[:, 0], best_score)
        best_action = torch.where(better.unsqueeze(1), elites[:, 0], best_action)
        mean = elites.mean(1)  # (B, A)
        std = elites.std(1, correction=0).clamp_min(cfg.min_std)  # (B, A)
        if gripper_p is not None:
            gripper_p = (elites[..., -1] > 0).float().mean(1)  # (B,)
        if i + 1 < cfg.iterations:
            actions = sample_actions(mean, std, gripper_p, N, cfg, generator)  # (B, N, A) from the refit
    return CEMResult(best_action, best_score, mean, std, gripper_p)


def cem_on_critic(
    features: torch.Tensor, critic: Critic, action_dim: int, cfg: CEMConfig, generator: torch.Generator | None
) -> CEMResult:
    """CEM over the first critic's raw output f_1(s, ·) on cached features (B, F); nothing is re-encoded."""
    return cem(
        lambda a: critic.q_values(features, a, members=1)[0], len(features), action_dim, cfg, generator, features.device
    )


@dataclasses.dataclass(frozen=True)
class QTOptConfig(AlgoConfig):
    """AlgoConfig's fields (``actor_lr`` unused: there is no actor) plus:"""

    num_critics: int = 2  # clipped double-Q: min over this many target critics
    q_output: str = "sigmoid"  # "sigmoid": Q ∈ [0, 1], cross-entropy | "linear": unbounded, squared error
    mc_lower_bound: bool = False  # y = max(y, the data's Monte-Carlo return), a lower bound of Q*
    cem: CEMConfig = dataclasses.field(default_factory=CEMConfig)  # acting
    target_cem: CEMConfig | None = None  # π̄ of the TD target; None: the same as ``cem``

    @property
    def cem_for_targets(self) -> CEMConfig:
        return self.cem if self.target_cem is None else self.target_cem

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_critics < 1:
            raise ValueError(f"num_critics must be >= 1, got {self.num_critics}")
        if self.q_output not in Q_OUTPUTS:
            raise ValueError(f"q_output must be one of {Q_OUTPUTS}, got {self.q_output!r}")


def q_from_output(out: torch.Tensor, cfg: QTOptConfig) -> torch.Tensor:
    """Q from the critic's raw output f: sigmoid(f) or f."""
    return torch.sigmoid(out) if cfg.q_output == "sigmoid" else out


def q_loss(out: torch.Tensor, target: torch.Tensor, cfg: QTOptConfig) -> torch.Tensor:
    """Elementwise H(y, sigmoid(f)) (binary cross-entropy on the logit) or ½·(f − y)²; target broadcasts.

    With the sigmoid, Q is a probability of success and y is clipped to [0, 1]: a reward of 1 on a row
    that does not end the episode (stored rewards that stay 1 while the task stays solved) would give
    y = 1 + γ·Q' > 1, and the cross-entropy with a target above 1 has no minimum (it falls without
    bound as sigmoid(f) → 1). Clipped, such a row is worth 1, as if success ended the episode; the
    losses report the share of clipped rows as ``critic/target_above_1``."""
    target = target.expand_as(out)
    if cfg.q_output == "sigmoid":
        return F.binary_cross_entropy_with_logits(out, target.clamp(0.0, 1.0), reduction="none")
    return 0.5 * (out - target).pow(2)


@torch.no_grad()
def cem_value(
    features: torch.Tensor, critic: Critic, action_dim: int, cfg: QTOptConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """V(s) = min_i Q_i(s, π(s)), π = CEM on Q_1 (``target_cem``) -> (V (B,), π(s) (B, A)); clipped double-Q."""
    action = cem_on_critic(features, critic, action_dim, cfg.cem_for_targets, generator).action  # (B, A)
    value = q_from_output(critic(features, action), cfg).min(0).values  # (B,)
    return value, action


@torch.no_grad()
def td_target(enc: Encoded, nets: Nets, cfg: QTOptConfig, generator: torch.Generator) -> torch.Tensor:
    """y = r + γ(1 − d)·min_i Q̄_i(s', π̄(s')) with π̄ = CEM on Q̄_1, on the cached s' embedding -> (B,).

    With ``mc_lower_bound``: ``y = max(y, G)``, G the batch's Monte-Carlo return (``Batch.mc_returns``).
    """
    b = enc.batch
    next_v, _ = cem_value(enc.require_next(), nets.target_critic, b.actions.shape[1], cfg, generator)  # (B,)
    y = b.rewards + cfg.gamma * (1.0 - b.terminals) * next_v  # (B,)
    return torch.maximum(y, b.mc_returns) if cfg.mc_lower_bound else y


def critic_loss(
    enc: Encoded, nets: Nets, cfg: QTOptConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_i E_D[H(y, Q_i(s, a))] (or ½ squared error), y the clipped double-Q CEM target."""
    y = td_target(enc, nets, cfg, rng)  # (B,)
    out = nets.critic(enc.features, enc.batch.actions)  # (N, B)
    loss = q_loss(out, y, cfg).mean(1).sum()
    return loss, {
        "critic/td_loss": loss.detach(),
        "critic/q_data": q_from_output(out, cfg).mean().detach(),
        "critic/td_target": y.mean(),
        "critic/target_above_1": (y > 1.0).float().mean(),
    }


class CEMPolicy(Policy):
    """A Policy whose actor is CEM over the critic: encoder + critic, the same call as ``Policy``.

    Deterministic: the best CEM sample; otherwise one sample from the final CEM distribution.
    """

    def __init__(self, encoder: ObservationEncoder, critic: Critic, cfg: CEMConfig):
        nn.Module.__init__(self)
        self.encoder, self.critic, self.cfg = encoder, critic, cfg

    def act_on(self, features: torch.Tensor, deterministic: bool, generator: torch.Generator | None) -> torch.Tensor:
        """CEM over Q(s, ·) on the features encoded once for every sample."""
        result = cem_on_critic(features, self.critic, self.encoder.spec.action_dim, self.cfg, generator)
        return result.action if deterministic else result.sample(self.cfg, generator)  # (B, A)


class QTOpt(BaseAlgorithm):
    """Critic-only: an encoder, a critic ensemble and its Polyak target; acts with CEM.

    Subclasses change the loss only (``loss``); the update step, networks and policy are shared.
    """

    name = "qtopt"
    config_class = QTOptConfig
    cfg: QTOptConfig
    policy_class: ClassVar[type[CEMPolicy]] = CEMPolicy

    @staticmethod
    def ensemble_size(cfg: Any) -> int:
        """How many critics the one batched ensemble holds (REM: its heads)."""
        return int(cfg.num_critics)

    @classmethod
    def build_policy(cls, cfg: AlgoConfig, spec: ObservationSpec) -> CEMPolicy:
        """The acting networks alone: the encoder and the critic CEM maximizes (no target critic)."""
        cls.check_config(cfg)
        with seeded(cfg.seed):
            encoder = ObservationEncoder(spec, cfg.encoder)
            critic = Critic(encoder.out_dim, spec.action_dim, cfg.hidden, cls.ensemble_size(cfg), cfg.layer_norm)
        return cls.policy_class(encoder, critic, cfg.cem)  # type: ignore[attr-defined]

    def build_networks(self) -> dict[str, nn.Module]:
        return self.encoder_and_critic(self.ensemble_size(self.cfg))

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": make_optimizer([self.nets.encoder, self.nets.critic], self.cfg.critic_lr)}

    def loss(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return critic_loss(enc, self.nets, self.cfg, self.rng)

    def update(self, batch: Batch) -> dict[str, float]:
        enc = encode(self.nets.encoder, batch)
        loss, metrics = self.loss(enc)
        loss = self.with_auxiliary(loss, metrics)
        self.optimize("critic", loss)
        polyak_update(self.nets.target_critic, self.nets.critic, self.cfg.tau)
        self.step += 1
        return self.metrics(metrics)

    def q_scale(self, out: torch.Tensor) -> torch.Tensor:
        return q_from_output(out, self.cfg)

    @property
    def policy(self) -> CEMPolicy:
        return self.policy_class(self.nets.encoder, self.nets.critic, self.cfg.cem)
