"""REM, Random Ensemble Mixture (Agarwal, Schuurmans & Norouzi, 2020), with a CEM policy for continuous actions.

"An Optimistic Perspective on Offline Reinforcement Learning" (reference: google-research/batch_rl,
``multi_head_dqn_agent.py`` with ``transform_strategy='STOCHASTIC'``). K Q-heads; each update draws
one random convex combination of them and asks *that mixture* to satisfy the Bellman equation, so
every mixture of the heads is trained to be a Q-function. Equations, ``Q̄_k`` the Polyak targets::

    α_k    = u_k / Σ_l u_l,   u_1..K ~ Uniform(0, 1), one draw per batch      (α on the simplex)
    Q_α    = Σ_k α_k Q_k(s, a)
    y      = r + γ(1 − d)·max_{a'} Σ_k α_k Q̄_k(s', a')                         (the same α)
    L      = E_D[ ℓ_δ(Q_α(s, a) − y) ],   ℓ_δ the Huber loss (δ = 1, as DQN)
    π(s)   = argmax_a (1/K)·Σ_k Q_k(s, a)                                       (acting: the mean head)

Choices and deviations:
- Continuous actions (the paper is discrete, Atari): both maxima are the cross-entropy method of
  ``qtopt.py`` (``cem``), scored on the cached embedding (``Critic.q_values``: features never
  repeated). The target's max is CEM on the α-mixture of the target heads (``target_cem``; its best
  sampled mixture value is the max; 32 samples, one iteration by default); acting is CEM on the mean of
  the online heads (``cem``: 64 samples, two iterations). CEM finds an approximate maximizer, so the
  target is a lower estimate of the paper's exact max.
- Heads: K independent MLP critics on the shared encoder (one batched ``heads.Critic``), like the
  paper's multi-network REM; its Atari REM instead puts 200 linear heads on one shared torso. K = 4
  by default: CEM scores every head for every sample, so the target costs K times QT-Opt's.
- α as the paper and its code: normalized Uniform(0, 1) draws (not the flat Dirichlet: the mixture
  weights concentrate nearer the centre of the simplex), one per batch, shared by the online loss and
  the target.
- Polyak targets (τ) instead of the paper's hard target copy every 8000 steps; Adam at ``critic_lr``.
- Encode once (``base.py``): the critic loss trains the encoder; the target heads read the online
  encoder's detached ``s'`` embedding (no target encoder).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from data_lake.batch import Batch
from robot_rl.algos.base import AlgoConfig, Encoded, Nets, encode
from robot_rl.algos.qtopt import CEMConfig, CEMPolicy, QTOpt, cem
from robot_rl.nets import Critic


@dataclasses.dataclass(frozen=True)
class REMConfig(AlgoConfig):
    """AlgoConfig's fields (``actor_lr`` unused: the policy is CEM over the critic) plus:"""

    num_heads: int = 4  # K
    huber_delta: float = 1.0  # δ of the Huber loss; 0: the squared error ½·(Q_α − y)²
    cem: CEMConfig = dataclasses.field(default_factory=CEMConfig)  # acting
    # the target's max: 32 samples, 1 iteration (as Actionable Models' target), a quarter of the acting CEM's
    # 64 x 2 scorings, each of which runs all K heads; None: the same as ``cem``
    target_cem: CEMConfig | None = dataclasses.field(
        default_factory=lambda: CEMConfig(samples=32, elites=4, iterations=1)
    )

    @property
    def cem_for_targets(self) -> CEMConfig:
        return self.cem if self.target_cem is None else self.target_cem

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")
        if self.huber_delta < 0:
            raise ValueError(f"huber_delta must be >= 0 (0: squared error), got {self.huber_delta}")


def mixture_weights(num_heads: int, rng: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """α (K,) on the simplex: K Uniform(0, 1) draws divided by their sum (the paper's per-batch draw)."""
    u = torch.rand(num_heads, generator=rng, device=device)  # (K,)
    return u / u.sum()


def mixed_q(critic: Critic, features: torch.Tensor, actions: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Σ_k α_k Q_k(s, a) for M actions per state: features (B, F), actions (B, M, A) -> (B, M)."""
    return torch.einsum("k,kbm->bm", alpha, critic.q_values(features, actions))  # (B, M)


@torch.no_grad()
def td_target(enc: Encoded, nets: Nets, cfg: REMConfig, alpha: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """y = r + γ(1 − d)·max_{a'} Σ_k α_k Q̄_k(s', a') (CEM's best mixture value) -> (B,)."""
    b, f = enc.batch, enc.require_next()
    best = cem(
        lambda a: mixed_q(nets.target_critic, f, a, alpha),
        len(f),
        b.actions.shape[1],
        cfg.cem_for_targets,
        rng,
        f.device,
    )
    return b.rewards + cfg.gamma * (1.0 - b.terminals) * best.score  # (B,)


def critic_loss(
    enc: Encoded, nets: Nets, cfg: REMConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = E[ℓ_δ(Σ_k α_k Q_k(s, a) − y)], one α per batch shared with the target."""
    alpha = mixture_weights(cfg.num_heads, rng, enc.features.device)  # (K,)
    y = td_target(enc, nets, cfg, alpha, rng)  # (B,)
    q = nets.critic(enc.features, enc.batch.actions)  # (K, B)
    q_alpha = alpha @ q  # (B,)
    if cfg.huber_delta > 0:
        loss = F.huber_loss(q_alpha, y, delta=cfg.huber_delta)
    else:
        loss = 0.5 * (q_alpha - y).pow(2).mean()
    return loss, {
        "critic/td_loss": loss.detach(),
        "critic/q_data": q_alpha.mean().detach(),
        "critic/q_std": q.detach().std(0).mean() if cfg.num_heads > 1 else q.new_zeros(()),
        "critic/td_target": y.mean(),
        "rem/alpha_max": alpha.max(),
    }


class REMPolicy(CEMPolicy):
    """CEM over the mean of the K heads, (1/K)·Σ_k Q_k(s, ·), on features encoded once."""

    def act_on(self, features: torch.Tensor, deterministic: bool, generator: torch.Generator | None) -> torch.Tensor:
        def mean_q(actions: torch.Tensor) -> torch.Tensor:
            return self.critic.q_values(features, actions).mean(0)  # (B, M)

        result = cem(mean_q, len(features), self.encoder.spec.action_dim, self.cfg, generator, features.device)
        return result.action if deterministic else result.sample(self.cfg, generator)  # (B, A)


class REM(QTOpt):
    """Critic-only: an encoder, K heads (one batched ensemble) and their Polyak targets; acts with CEM
    (QT-Opt's networks and update step with REM's loss and policy)."""

    name = "rem"
    config_class = REMConfig  # type: ignore[assignment]
    cfg: REMConfig  # type: ignore[assignment]
    policy_class = REMPolicy

    @staticmethod
    def ensemble_size(cfg: Any) -> int:
        return int(cfg.num_heads)

    def loss(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return critic_loss(enc, self.nets, self.cfg, self.rng)

    def q_scale(self, out: torch.Tensor) -> torch.Tensor:
        return out  # linear heads

    @torch.no_grad()
    def q_estimate(self, batch: Batch) -> torch.Tensor:
        """Q(s, a) of the batch's own actions (B,): the mean of the heads, the Q that REM acts on."""
        enc = encode(self.nets.encoder, batch, next_observations=False)
        return self.nets.critic(enc.features, batch.actions).mean(0)  # (B,)

    @property
    def policy(self) -> REMPolicy:
        return REMPolicy(self.nets.encoder, self.nets.critic, self.cfg.cem)
