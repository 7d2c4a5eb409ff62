"""Soft Actor-Critic with automatic entropy tuning (SAC; Haarnoja et al., 2018): the online baseline.

"Soft Actor-Critic Algorithms and Applications"; also the SAC pieces CQL, Cal-QL and AWAC import.

Equations, ``Q̄`` the Polyak target ensemble, ``α`` = ``α_ent`` the entropy temperature::

    y      = r + γ(1 − d)·( min_i Q̄_i(s', a') − α·log π(a'|s') ),   a' ~ π(·|s')      (soft backup)
    L_Q    = Σ_i ½·E_D[(Q_i(s, a) − y)²]
    L_π    = E_s[ α·log π(ã|s) − min_i Q_i(s, ã) ],  ã ~ π(·|s) reparameterized
    L_α    = −log α·(log π(ã|s) + H_target),  H_target = −dim(A) by default

Shared with the algorithms built on SAC: ``soft_td_target`` (CQL and Cal-QL add a conservative
term to the same TD loss), ``soft_bellman_loss`` (AWAC: the same loss, no entropy term by default),
``actor_loss`` and ``temperature_loss`` (CQL and Cal-QL).

Choices and deviations:
- ``min_i`` over an ensemble of ``num_critics`` (2 as the paper's clipped double-Q) evaluated as one
  batched module (``heads.Critic``).
- ``L_α`` is written on the temperature's log (``log α``), as the reference implementations: the
  same fixed point, better-conditioned steps.
- Encode once (``base.py``): the critic loss trains the encoder; the actor reads detached features;
  the target critic reads the online encoder's detached ``s'`` embedding (no target encoder).
- Offline use: nothing here collects data; online finetuning feeds the same ``update`` with
  batches that mix offline and online samples.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import AlgoConfig, BaseAlgorithm, Encoded, Nets, Scalar, encode, make_optimizer, polyak_update
from robot_rl.nets import ObservationSpec, TanhGaussian, TanhGaussianActor


@dataclasses.dataclass(frozen=True)
class SACConfig(AlgoConfig):
    num_critics: int = 2
    backup_entropy: bool = True  # −α·log π(a'|s') in the soft backup
    auto_entropy: bool = True  # tune α towards target_entropy
    alpha_init: float = 1.0
    alpha_lr: float = 3e-4
    target_entropy: float | None = None  # None: −dim(A)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_critics < 1:
            raise ValueError(f"num_critics must be >= 1, got {self.num_critics}")
        if self.alpha_init <= 0 or self.alpha_lr <= 0:
            raise ValueError(f"alpha_init and alpha_lr must be > 0, got {self.alpha_init}, {self.alpha_lr}")


@torch.no_grad()
def soft_td_target(
    enc: Encoded,
    nets: Nets,
    gamma: float,
    rng: torch.Generator,
    alpha: torch.Tensor | None = None,
    max_backup_samples: int = 0,
) -> tuple[torch.Tensor, TanhGaussian]:
    """The backup ``y`` (B,) and π(·|s') (callers reuse it to sample more actions from the cached ``s'``).

    ``y = r + γ(1 − d)·(min_i Q̄_i(s', a') − α·log π(a'|s'))``, ``a' ~ π(·|s')``; no entropy term when
    ``alpha`` is None. ``max_backup_samples = M > 0``: CQL's max-backup ``max_{a'_1..M} min_i Q̄_i(s', a'_m)``
    (no entropy term).
    """
    b, next_features = enc.batch, enc.require_next()
    next_dist = nets.actor(next_features)
    if max_backup_samples > 0:
        next_a, _ = next_dist.sample(max_backup_samples, rng)  # (B, M, A)
        next_v = nets.target_critic.q_values(next_features, next_a).min(0).values.max(-1).values  # (B,)
    else:
        next_a, next_log_prob = next_dist.sample(generator=rng)  # (B, A), (B,)
        next_v = nets.target_critic(next_features, next_a).min(0).values  # (B,)
        if alpha is not None:
            next_v = next_v - alpha * next_log_prob
    td_target = b.rewards + gamma * (1.0 - b.terminals) * next_v  # (B,)
    return td_target, next_dist


def soft_bellman_loss(
    enc: Encoded, nets: Nets, gamma: float, rng: torch.Generator, alpha: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ_i ½·E[(Q_i(s, a) − y)²] to ``soft_td_target`` (no entropy term when ``alpha`` is None)."""
    td_target, _ = soft_td_target(enc, nets, gamma, rng, alpha)  # (B,)
    q = nets.critic(enc.features, enc.batch.actions)  # (N, B)
    td_loss = 0.5 * (q - td_target).pow(2).mean(1).sum()
    metrics = {
        "critic/td_loss": td_loss.detach(),
        "critic/q_data": q.mean().detach(),
        "critic/td_target": td_target.mean(),
    }
    return td_loss, metrics


def critic_loss(
    enc: Encoded, nets: Nets, cfg: SACConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_i ½·E[(Q_i(s, a) − y)²] to the soft backup with the current temperature."""
    alpha = nets.log_alpha().exp().detach() if cfg.backup_entropy else None
    return soft_bellman_loss(enc, nets, cfg.gamma, rng, alpha)


def actor_loss(
    enc: Encoded, nets: Nets, cfg: SACConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π = E[α·log π(ã|s) − min_i Q_i(s, ã)], ã ~ π(·|s) reparameterized, on detached features."""
    features = enc.features.detach()  # (B, F)
    actions, log_prob = nets.actor(features).sample(generator=rng)  # (B, A), (B,)
    q = nets.critic(features, actions).min(0).values  # (B,)
    alpha = nets.log_alpha().exp().detach()
    loss = (alpha * log_prob - q).mean()
    metrics = {
        "actor/loss": loss.detach(),
        "actor/q": q.mean().detach(),
        "actor/entropy": -log_prob.mean().detach(),
        "actor/alpha": alpha,
    }
    return loss, metrics


def temperature_loss(entropy: torch.Tensor, nets: Nets, target_entropy: float) -> torch.Tensor:
    """L_α = −log α·(log π + H_target) = log α·(H − H_target), with H = −E[log π] detached."""
    return nets.log_alpha() * (entropy.detach() - target_entropy)


class SAC(BaseAlgorithm):
    name = "sac"
    config_class = SACConfig
    cfg: SACConfig

    @property
    def target_entropy(self) -> float:
        return -float(self.spec.action_dim) if self.cfg.target_entropy is None else self.cfg.target_entropy

    @classmethod
    def build_actor(cls, cfg: SACConfig, spec: ObservationSpec, feature_dim: int) -> nn.Module:
        return TanhGaussianActor(feature_dim, spec.action_dim, cfg.hidden)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, spec = self.cfg, self.spec
        nets = self.encoder_and_critic(cfg.num_critics)
        return {
            **nets,
            "actor": self.build_actor(cfg, spec, self.feature_dim(nets)),
            "log_alpha": Scalar(math.log(cfg.alpha_init)),
        }

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        n, cfg = self.nets, self.cfg
        opts = {
            "critic": make_optimizer([n.encoder, n.critic], cfg.critic_lr),
            "actor": make_optimizer([n.actor], cfg.actor_lr),
        }
        if cfg.auto_entropy:
            opts["alpha"] = make_optimizer([n.log_alpha], cfg.alpha_lr)
        return opts

    def critic_objective(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critic's loss (CQL adds its conservative term here)."""
        return critic_loss(enc, self.nets, self.cfg, self.rng)

    def after_critic_step(self, metrics: dict[str, torch.Tensor]) -> None:
        """Steps that follow the critic's (CQL: the Lagrange multiplier)."""

    def update(self, batch: Batch) -> dict[str, float]:
        return self.update_on(encode(self.nets.encoder, batch))

    def update_on(self, enc: Encoded) -> dict[str, float]:
        """One SAC step on an encoded batch (the model-based algorithms pass real and model rows mixed)."""
        cfg, nets = self.cfg, self.nets
        q_loss, metrics = self.critic_objective(enc)
        self.optimize("critic", self.with_auxiliary(q_loss, metrics))
        self.after_critic_step(metrics)

        pi_loss, pi_metrics = actor_loss(enc, nets, cfg, self.rng)
        self.optimize("actor", pi_loss)
        if cfg.auto_entropy:
            self.optimize("alpha", temperature_loss(pi_metrics["actor/entropy"], nets, self.target_entropy))

        polyak_update(nets.target_critic, nets.critic, cfg.tau)
        self.step += 1
        return self.metrics({**metrics, **pi_metrics})
