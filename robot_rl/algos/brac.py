"""BRAC (Wu, Tucker & Nachum, 2019, "Behavior Regularized Offline Reinforcement Learning"): BRAC-v and BRAC-p.

An actor-critic regularized towards the data's policy by a divergence D, either in the value target
(BRAC-v, ``penalty="value"``) or in the actor's objective only (BRAC-p, ``penalty="policy"``).
Reference code: google-research/behavior_regularized_offline_rl (``brac/brac_primal_agent.py``,
``brac/brac_dual_agent.py``, ``brac/divergences.py``).
Equations (``docs/algorithms.md``, "BRAC"), ``Q̄_j`` the Polyak targets, ``ens_λ(Q) = λ·min_j Q_j + (1 − λ)·max_j Q_j``::

    π_b       fitted by maximum likelihood alongside:   L_b = −E_D[log π_b(clip(a)|s)]     (kl, mmd)
    D(s)      kl:  (1/n)·Σ_k [log π(a_k|s) − log π_b(clip(a_k)|s)],        a_k ~ π(·|s)
              mmd: MMD²({a_k ~ π(·|s)}, {b_k ~ π_b(·|s)})   (Laplacian kernel)
              w:   (1/n)·Σ_k c(s, a_k) − c(s, a),  c the dual critic (at s': the data's next action a'):
                   L_c = −E_D[c(s, a_π) − c(s, a)] + γ_gp·E[max(‖∇_â c(s, â)‖ − 1, 0)²]
    y         = r + γ(1 − d)·( ens_λ(Q̄(s', a')) − α·D(s')·1[BRAC-v] ),   a' ~ π(·|s')
    L_Q       = Σ_j E_D[(Q_j(s, a) − y)²]
    L_π       = E_s[ α·D(s) − q_start·(1/n)·Σ_k ens_λ(Q(s, a_k)) ]                 (q_start = 0 while warming up)

Defaults as the reference's agents: α = 1 (fixed), λ = 1 (the min), n = 4 divergence samples, the
Laplacian kernel of width 20 (σ = 10 in ``divergences.py``'s parametrization), γ_gp = 5, π_b
rate 1e-3, BRAC-v with the KL (the paper's recommended setting). The actor is a tanh-Gaussian.
One update: the π_b (or dual-critic) step, the critic step, the actor step, then the Polyak target.

Choices and deviations:
- π_b is fitted alongside, one step per update on the same batch (the reference pre-trains it,
  ``train_behavior_steps``, and freezes it); ``behavior_distribution="gaussian"`` fits
  ``N(tanh μ, σ²)`` instead of the reference's tanh-Gaussian (finite density at actions of ±1).
- Encode once (``base.py``): the critic trains the encoder; π, π_b and c read detached features;
  s' is encoded once without gradient. All n samples are scored on the cached embedding.
- The actor's value term averages the n samples D(s) already draws (the reference draws one more).
- BRAC-v with the Wasserstein dual reads the data's next action ``c(s', a'_b)`` from ``Batch.next_actions``
  (the sampler repeats ``a_t`` for a transition into an episode's last stored step; a terminal there
  multiplies the penalty by ``1 − d = 0``); a batch without next actions is refused.
- One dual-critic step per update (the reference's ``c_iter = 3`` takes two more on fresh batches).
- No entropy term (the reference's default ``alpha_entropy = 0``), α is not tuned (its default
  ``train_alpha = False``), no weight decay.
- ``warmup_steps`` defaults to 0 (the reference: 20,000); the Q term is multiplied by ``q_start``.
- Acting: π's mode ``tanh(μ(s))`` (the reference's deterministic test policy).
"""

from __future__ import annotations

import dataclasses
from typing import cast

import torch
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import AlgoConfig, BaseAlgorithm, Encoded, Nets, encode, make_optimizer, polyak_update
from robot_rl.algos.bear import ensemble_q
from robot_rl.algos.divergences import (
    behavior_loss,
    check_kernel,
    dual_critic,
    dual_critic_loss,
    kl_divergence,
    mmd,
)
from robot_rl.nets import Critic, ObservationSpec, TanhGaussianActor, make_actor
from robot_rl.nets.heads import check_actor_distribution

PENALTIES = ("value", "policy")
DIVERGENCES = ("kl", "mmd", "w")


@dataclasses.dataclass(frozen=True)
class BRACConfig(AlgoConfig):
    num_critics: int = 2
    penalty: str = "value"  # "value": BRAC-v (D in the target and the actor) | "policy": BRAC-p (actor only)
    divergence: str = "kl"  # "kl" (through π_b) | "mmd" (π_b samples) | "w" (Wasserstein dual critic)
    alpha: float = 1.0  # α: the divergence's weight
    lmbda: float = 1.0  # λ of ens_λ (the reference's ensemble_q_lambda)
    num_div_samples: int = 4  # n samples of π(s) (and π_b(s)) per divergence estimate
    kernel: str = "laplacian"  # MMD kernel
    mmd_sigma: float = 10.0  # σ of the MMD kernel (divergences.py's parametrization)
    behavior_distribution: str = "tanh_gaussian"  # π_b's head: "tanh_gaussian" | "gaussian"
    behavior_lr: float = 1e-3  # π_b's, or the dual critic's, Adam rate
    gp_weight: float = 5.0  # γ_gp of the dual critic's gradient penalty
    warmup_steps: int = 0  # updates whose actor loss is α·D alone

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        check_kernel(self.kernel)
        check_actor_distribution(self.behavior_distribution)
        if self.num_critics < 1 or self.num_div_samples < 1:
            raise ValueError(
                f"num_critics and num_div_samples must be >= 1, got {self.num_critics}, {self.num_div_samples}"
            )
        if self.alpha < 0 or not 0 <= self.lmbda <= 1:
            raise ValueError(f"alpha must be >= 0 and lmbda in [0, 1], got {self.alpha}, {self.lmbda}")
        if self.mmd_sigma <= 0 or self.behavior_lr <= 0 or self.gp_weight < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"mmd_sigma and behavior_lr must be > 0, gp_weight and warmup_steps >= 0, got {self.mmd_sigma}, "
                f"{self.behavior_lr}, {self.gp_weight}, {self.warmup_steps}"
            )


def dual_of(nets: Nets) -> Critic:
    """``nets["dual"]``, the discriminator c(s, a) of the Wasserstein dual (unchecked: loss tests pass stubs)."""
    return cast(Critic, nets["dual"])


def divergence_estimate(
    features: torch.Tensor,
    nets: Nets,
    cfg: BRACConfig,
    rng: torch.Generator,
    data_actions: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """D(s) (B,) from n reparameterized samples of π(·|s), and the samples (B, n, A); features (B, F), the
    data's actions at s (B, A) for the Wasserstein dual (the KL and the MMD ignore them).

    π gets D's gradient through its samples (and, for the KL, through log π); π_b is read without
    gradient, and c's stray gradients are never stepped (its optimizer zeroes them before its own step).
    """
    actions, log_prob = nets.actor(features).sample(cfg.num_div_samples, rng)  # (B, n, A), (B, n)
    if cfg.divergence == "w":
        if data_actions is None:
            raise ValueError(
                "BRAC's Wasserstein dual needs the data's actions at every state it penalizes; BRAC-v needs "
                "Batch.next_actions, which this batch lacks: use penalty='policy', or divergence 'kl' or 'mmd'"
            )
        c = dual_of(nets)
        div = c.q_values(features, actions)[0].mean(1) - c(features, data_actions)[0]  # (B,)
        return div, actions
    with torch.no_grad():
        behavior = nets["behavior"](features)  # π_b(·|s), batch shape (B,)
    if cfg.divergence == "kl":
        return kl_divergence(log_prob, behavior, actions), actions  # (B,)
    with torch.no_grad():
        behavior_actions, _ = behavior.sample(cfg.num_div_samples, rng)  # (B, n, A)
    return mmd(actions, behavior_actions, cfg.kernel, cfg.mmd_sigma), actions  # (B,)


def behavior_model_loss(
    enc: Encoded, nets: Nets, cfg: BRACConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model D reads: L_b = −E[log π_b(clip(a)|s)] (kl, mmd) or the dual critic's L_c (w), detached features."""
    features, actions = enc.features.detach(), enc.batch.actions  # (B, F), (B, A)
    if cfg.divergence != "w":
        return behavior_loss(nets["behavior"], features, actions)
    with torch.no_grad():
        policy_actions, _ = nets.actor(features).sample(generator=rng)  # (B, A)
    return dual_critic_loss(dual_of(nets), features, policy_actions, actions, cfg.gp_weight, rng)


def critic_loss(
    enc: Encoded, nets: Nets, cfg: BRACConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_j E[(Q_j(s, a) − y)²], y = r + γ(1 − d)·(ens_λ(Q̄(s', a')) − α·D(s')·1[BRAC-v])."""
    b, next_features = enc.batch, enc.require_next()
    metrics: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if cfg.penalty == "value":
            next_div, next_a = divergence_estimate(next_features, nets, cfg, rng, b.next_actions)  # (B,), (B, n, A)
            next_a = next_a[:, :1]  # (B, 1, A): a' is the first of them
            metrics["brac/next_divergence"] = next_div.mean()
        else:
            next_a, _ = nets.actor(next_features).sample(1, rng)  # (B, 1, A)
            next_div = torch.zeros_like(b.rewards)  # (B,)
        next_v = ensemble_q(nets.target_critic.q_values(next_features, next_a), cfg.lmbda)[:, 0]  # (B,)
        td_target = b.rewards + cfg.gamma * (1.0 - b.terminals) * (next_v - cfg.alpha * next_div)  # (B,)
    q = nets.critic(enc.features, b.actions)  # (N, B)
    td_loss = (q - td_target).pow(2).mean(1).sum()
    metrics |= {
        "critic/td_loss": td_loss.detach(),
        "critic/q_data": q.mean().detach(),
        "critic/td_target": td_target.mean(),
    }
    return td_loss, metrics


def actor_loss(
    enc: Encoded, nets: Nets, cfg: BRACConfig, rng: torch.Generator, q_start: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π = E_s[α·D(s) − q_start·mean_k ens_λ(Q(s, a_k))], a_k the n samples of D, on detached features."""
    features = enc.features.detach()  # (B, F)
    div, actions = divergence_estimate(features, nets, cfg, rng, enc.batch.actions)  # (B,), (B, n, A)
    q = ensemble_q(nets.critic.q_values(features, actions), cfg.lmbda).mean(1)  # (B,)
    loss = (cfg.alpha * div - q_start * q).mean()
    metrics = {"actor/loss": loss.detach(), "actor/q": q.mean().detach(), "brac/divergence": div.mean().detach()}
    return loss, metrics


class BRAC(BaseAlgorithm):
    name = "brac"
    config_class = BRACConfig
    cfg: BRACConfig

    @classmethod
    def build_actor(cls, cfg: BRACConfig, spec: ObservationSpec, feature_dim: int) -> nn.Module:
        return TanhGaussianActor(feature_dim, spec.action_dim, cfg.hidden)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, spec = self.cfg, self.spec
        nets = self.encoder_and_critic(cfg.num_critics)
        f = self.feature_dim(nets)
        nets["actor"] = self.build_actor(cfg, spec, f)
        if cfg.divergence == "w":
            nets["dual"] = dual_critic(f, spec.action_dim, cfg.hidden)  # c(s, a)
        else:
            nets["behavior"] = make_actor(cfg.behavior_distribution, f, spec.action_dim, cfg.hidden)  # π_b
        return nets

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        n, cfg = self.nets, self.cfg
        return {
            "behavior": make_optimizer([n["dual"] if cfg.divergence == "w" else n["behavior"]], cfg.behavior_lr),
            "critic": make_optimizer([n.encoder, n.critic], cfg.critic_lr),
            "actor": make_optimizer([n.actor], cfg.actor_lr),
        }

    def update(self, batch: Batch) -> dict[str, float]:
        cfg, nets = self.cfg, self.nets
        enc = encode(nets.encoder, batch)
        b_loss, metrics = behavior_model_loss(enc, nets, cfg, self.rng)
        self.optimize("behavior", b_loss)

        q_loss, q_metrics = critic_loss(enc, nets, cfg, self.rng)
        self.optimize("critic", self.with_auxiliary(q_loss, q_metrics))

        pi_loss, pi_metrics = actor_loss(enc, nets, cfg, self.rng, float(self.step >= cfg.warmup_steps))
        self.optimize("actor", pi_loss)

        polyak_update(nets.target_critic, nets.critic, cfg.tau)
        self.step += 1
        return self.metrics({**metrics, **q_metrics, **pi_metrics})
