"""Advantage-Weighted Actor-Critic (AWAC; Nair, Gupta, Dalal & Levine, 2020).

"AWAC: Accelerating Online Reinforcement Learning with Offline Datasets".

Equations (``docs/algorithms.md``, "AWAC"), ``Q̄`` the Polyak target ensemble::

    y      = r + γ(1 − d)·min_i Q̄_i(s', a'),   a' ~ π(·|s')                          (policy evaluation)
    L_Q    = Σ_i ½·E_D[(Q_i(s, a) − y)²]
    A(s, a) = min_i Q_i(s, a) − V^π(s),   V^π(s) = E_{ã~π(·|s)}[min_i Q_i(s, ã)] ≈ (1/K)·Σ_k min_i Q_i(s, ã_k)
    L_π    = −E_D[ min(exp(A(s, a)/λ), w_max)·log π(a|s) ]

The actor is a weighted maximum likelihood on the data's own actions (no action outside the data
is scored by the actor loss); the critic evaluates the current policy with actions it samples.

Choices and deviations:
- No entropy term by default (the paper's policy evaluation has none; ``entropy_alpha > 0`` adds a
  fixed ``−α·log π(a'|s')`` to the backup, SAC-style, via ``sac.soft_bellman_loss``).
- ``V^π(s)`` from ``num_v_samples`` policy samples on the cached (detached) features of ``s``,
  scored in one batched critic call (the reference, rlkit / CORL, uses one sample).
- Weights ``exp(A/λ)`` clipped at ``max_weight`` (CORL's ``exp_adv_max``) instead of rlkit's
  batch-softmax normalization: the same fixed point, no dependence on the batch composition.
- The policy is ``N(tanh μ(s), σ(s)²)`` (``heads.GaussianActor``; the paper: a Gaussian with a learned
  std), whose log-density is finite at dataset actions of ±1; ``actor_distribution="tanh_gaussian"``
  gives the squashed head instead.
- ``½`` on the TD term (the reference uses a plain MSE: a factor 2 in the critic's step size).
- Encode once (``base.py``): the critic trains the encoder; the actor and ``V^π`` read detached
  features, computed after this update's critic step.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import AlgoConfig, BaseAlgorithm, Encoded, Nets, encode, make_optimizer, polyak_update
from robot_rl.algos.iql import weighted_log_likelihood
from robot_rl.algos.sac import soft_bellman_loss
from robot_rl.nets import ObservationSpec, make_actor
from robot_rl.nets.heads import check_actor_distribution


@dataclasses.dataclass(frozen=True)
class AWACConfig(AlgoConfig):
    num_critics: int = 2
    awac_lambda: float = 1.0  # λ: temperature of the advantage weights (CORL's awac_lambda)
    max_weight: float = 100.0  # w_max: exp(A/λ) is clipped here
    num_v_samples: int = 1  # K actions from π(·|s) to estimate V^π(s)
    entropy_alpha: float = 0.0  # fixed α of an optional −α·log π(a'|s') in the backup; 0: none
    actor_distribution: str = "gaussian"  # "gaussian": N(tanh μ, σ²) | "tanh_gaussian": tanh(N(μ, σ²))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_actor_distribution(self.actor_distribution)
        if self.num_critics < 1 or self.num_v_samples < 1:
            raise ValueError(
                f"num_critics and num_v_samples must be >= 1, got {self.num_critics}, {self.num_v_samples}"
            )
        if self.awac_lambda <= 0 or self.max_weight <= 0:
            raise ValueError(f"awac_lambda and max_weight must be > 0, got {self.awac_lambda}, {self.max_weight}")
        if self.entropy_alpha < 0:
            raise ValueError(f"entropy_alpha must be >= 0, got {self.entropy_alpha}")


def critic_loss(
    enc: Encoded, nets: Nets, cfg: AWACConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_i ½·E[(Q_i(s, a) − y)²], y with a' ~ π(·|s') (SAC's loss, with a fixed or no entropy term)."""
    alpha = enc.features.new_tensor(cfg.entropy_alpha) if cfg.entropy_alpha > 0 else None
    return soft_bellman_loss(enc, nets, cfg.gamma, rng, alpha)


def advantage_weights(advantage: torch.Tensor, cfg: AWACConfig) -> torch.Tensor:
    """w = min(exp(A/λ), w_max), elementwise."""
    return torch.exp(advantage / cfg.awac_lambda).clamp(max=cfg.max_weight)


def actor_loss(
    enc: Encoded, nets: Nets, cfg: AWACConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π = −E[min(exp(A(s, a)/λ), w_max)·log π(a|s)] , A from the online critic, on detached features."""
    features, actions = enc.features.detach(), enc.batch.actions  # (B, F), (B, A)
    dist = nets.actor(features)
    with torch.no_grad():
        pi_a, _ = dist.sample(cfg.num_v_samples, rng)  # (B, K, A)
        q_all = nets.critic.q_values(features, torch.cat([actions.unsqueeze(1), pi_a], dim=1)).min(0).values
        q_data, v_pi = q_all[:, 0], q_all[:, 1:].mean(1)  # (B,), (B,)  q_all: (B, 1 + K)
        advantage = q_data - v_pi  # (B,)
        weight = advantage_weights(advantage, cfg)  # (B,)
    loss, metrics = weighted_log_likelihood(dist, actions, weight, advantage, cfg.max_weight)
    return loss, {**metrics, "actor/v_pi": v_pi.mean()}


class AWAC(BaseAlgorithm):
    name = "awac"
    config_class = AWACConfig
    cfg: AWACConfig

    @classmethod
    def build_actor(cls, cfg: AWACConfig, spec: ObservationSpec, feature_dim: int) -> nn.Module:
        return make_actor(cfg.actor_distribution, feature_dim, spec.action_dim, cfg.hidden)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, spec = self.cfg, self.spec
        nets = self.encoder_and_critic(cfg.num_critics)
        return {**nets, "actor": self.build_actor(cfg, spec, self.feature_dim(nets))}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        n = self.nets
        return {
            "critic": make_optimizer([n.encoder, n.critic], self.cfg.critic_lr),
            "actor": make_optimizer([n.actor], self.cfg.actor_lr),
        }

    def update(self, batch: Batch) -> dict[str, float]:
        enc = encode(self.nets.encoder, batch)
        q_loss, metrics = critic_loss(enc, self.nets, self.cfg, self.rng)
        self.optimize("critic", self.with_auxiliary(q_loss, metrics))

        pi_loss, pi_metrics = actor_loss(enc, self.nets, self.cfg, self.rng)
        self.optimize("actor", pi_loss)

        polyak_update(self.nets.target_critic, self.nets.critic, self.cfg.tau)
        self.step += 1
        return self.metrics({**metrics, **pi_metrics})
