"""BCQ (Fujimoto, Meger & Precup, 2019, "Off-Policy Deep Reinforcement Learning without Exploration").

Batch-Constrained deep Q-learning: act only with actions the data's generative model finds likely,
nudged by a small learned perturbation. Reference code: sfujim/BCQ (``continuous_BCQ/BCQ.py``).
Equations (``docs/algorithms.md``, "BCQ"), ``Q̄_j`` and ``ξ̄`` the Polyak targets, ``e`` the embedding::

    G_ω(s)   conditional VAE of the data's actions (``nets/vae.py``):
             L_VAE = ‖a − â‖² + ½·KL(N(μ, σ) ‖ N(0, I)),   sampling z ~ N(0, I) clipped to [−0.5, 0.5]
    ξ_φ(s, a, Φ) = Φ·tanh(f_φ(s, a)) ∈ [−Φ, Φ]^A,   perturbed action  clip(a + ξ_φ(s, a, Φ), −1, 1)
    L_ξ      = −E_s[ Q_1(s, a + ξ_φ(s, a, Φ)) ],   a ~ G_ω(s)
    a'_i     = clip(ã_i + ξ̄(s', ã_i, Φ), −1, 1),   ã_i ~ G_ω(s'),  i = 1..n
    y        = r + γ(1 − d)·max_i [ λ·min_j Q̄_j(s', a'_i) + (1 − λ)·max_j Q̄_j(s', a'_i) ]   (soft clipped double-Q)
    L_Q      = Σ_j E_D[ (Q_j(s, a) − y)² ]
    π(s)     = argmax_{a_i} Q_1(s, a_i),   a_i = clip(ã_i + ξ_φ(s, ã_i, Φ), −1, 1),  ã_i ~ G_ω(s)

Defaults as the reference: Φ = 0.05, λ = 0.75, n = 10 target samples, 100 acting samples, learning
rates 1e-3, Polyak τ = 0.005, VAE (750, 750) with a latent of 2·dim(A). One update: the VAE step,
the critic step, the perturbation step, then both Polyak targets (the reference's order).

Choices and deviations:
- Encode once (``base.py``): ``s`` and ``s'`` are encoded once per update; every sampled action (the
  n target samples, the acting samples) is decoded, perturbed and scored on the cached embedding
  (the first layer of the VAE decoder, of ξ and of the critic is split, so the embedding is never
  copied n times: ``nets.vae.PairMLP``, ``Critic.q_values``). The critic trains the encoder; the VAE
  and ξ read detached features; targets read the online encoder's detached ``s'`` embedding.
- The soft clipped target takes the min and max over an ensemble of ``num_critics`` (2 in the paper).
- Critics and ξ use the repo's ``hidden`` (256, 256) instead of the reference's (400, 300).
- ``act(deterministic=False)`` (exploration, e.g. online finetuning) returns one perturbed VAE
  sample instead of the argmax over ``act_samples``: it stays in the data's support (the point of
  BCQ) without being greedy. ``deterministic=True`` is the paper's policy; its candidates are drawn
  from the caller's generator, as CEM policies draw theirs.
- The actor loss decodes its VAE samples without gradient (the reference lets gradients reach the
  VAE's parameters there but never steps the VAE on them: the same update).
"""

from __future__ import annotations

import dataclasses
from typing import cast

import torch
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
from robot_rl.nets import (
    ConditionalVAE,
    Critic,
    ObservationEncoder,
    ObservationSpec,
    PairMLP,
    check_vae_settings,
    vae_loss,
)


@dataclasses.dataclass(frozen=True)
class BCQConfig(AlgoConfig):
    """AlgoConfig's fields (``hidden``: critics and ξ) with the reference's learning rates, plus:"""

    actor_lr: float = 1e-3  # ξ_φ (the reference's rate)
    critic_lr: float = 1e-3
    num_critics: int = 2
    phi: float = 0.05  # Φ: the perturbation's bound
    lmbda: float = 0.75  # λ of the soft clipped double-Q target
    num_samples: int = 10  # n VAE samples of s' in the target
    act_samples: int = 100  # candidates π(s) chooses from (the reference's select_action)
    vae_hidden: tuple[int, ...] = (750, 750)
    latent_dim: int | None = None  # None: 2·dim(A)
    vae_lr: float = 1e-3
    kl_weight: float = 0.5  # of KL in L_VAE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_critics < 1 or self.num_samples < 1 or self.act_samples < 1:
            raise ValueError(
                f"num_critics, num_samples and act_samples must be >= 1, got "
                f"{self.num_critics}, {self.num_samples}, {self.act_samples}"
            )
        if not 0 <= self.lmbda <= 1:
            raise ValueError(f"lmbda must be in [0, 1], got {self.lmbda}")
        if not 0 <= self.phi <= 2:
            raise ValueError(f"phi must be in [0, 2] (actions live in [-1, 1]), got {self.phi}")
        check_vae_settings(self.vae_hidden, self.latent_dim, self.vae_lr, self.kl_weight)


class Perturbation(nn.Module):
    """ξ_φ: (features (B, F), actions (B, [M,] A)) -> clip(a + Φ·tanh(f_φ(s, a)), −1, 1), same shape as a."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: tuple[int, ...], phi: float):
        super().__init__()
        self.net = PairMLP(feature_dim, action_dim, hidden, action_dim)
        self.phi = phi

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        xi = self.phi * torch.tanh(self.net(features, actions))  # (B, [M,] A) in [−Φ, Φ]
        return (actions + xi).clamp(-1.0, 1.0)


def candidates(
    features: torch.Tensor, vae: ConditionalVAE, perturb: nn.Module, n: int, generator: torch.Generator | None
) -> torch.Tensor:
    """n perturbed VAE samples per state on cached features (B, F) -> (B, n, A)."""
    sampled = vae.decode(features, generator=generator, num=n)  # (B, n, A), z clipped to [−0.5, 0.5]
    return perturb(features, sampled)  # (B, n, A)


def vae_of(nets: Nets) -> ConditionalVAE:
    """``nets["vae"]``, the ConditionalVAE ``BCQ.build_networks`` puts there (unchecked: loss tests pass stubs
    with its ``decode``)."""
    return cast(ConditionalVAE, nets["vae"])


def soft_clipped_value(q: torch.Tensor, lmbda: float) -> torch.Tensor:
    """max_i [λ·min_j Q_j + (1 − λ)·max_j Q_j] for Q (N, B, n) over N critics and n samples -> (B,)."""
    soft = lmbda * q.min(0).values + (1.0 - lmbda) * q.max(0).values  # (B, n)
    return soft.max(1).values  # (B,)


def bcq_vae_loss(
    enc: Encoded, nets: Nets, cfg: BCQConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_VAE = ‖a − â‖² + ½·KL on the detached embedding of s (``nets/vae.py``)."""
    return vae_loss(vae_of(nets), enc.features.detach(), enc.batch.actions, cfg.kl_weight, rng)


def critic_loss(
    enc: Encoded, nets: Nets, cfg: BCQConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_j E[(Q_j(s, a) − y)²], y the soft clipped double-Q target over n perturbed samples of G(s')."""
    b = enc.batch
    with torch.no_grad():
        next_features = enc.require_next()  # (B, F)
        next_a = candidates(next_features, vae_of(nets), nets.target_actor, cfg.num_samples, rng)  # (B, n, A)
        next_q = nets.target_critic.q_values(next_features, next_a)  # (N, B, n), cached s' embedding
        next_v = soft_clipped_value(next_q, cfg.lmbda)  # (B,)
        td_target = b.rewards + cfg.gamma * (1.0 - b.terminals) * next_v  # (B,)
    q = nets.critic(enc.features, b.actions)  # (N, B)
    td_loss = (q - td_target).pow(2).mean(1).sum()
    metrics = {
        "critic/td_loss": td_loss.detach(),
        "critic/q_data": q.mean().detach(),
        "critic/td_target": td_target.mean(),
        "critic/q_spread": (next_q.max(0).values - next_q.min(0).values).mean(),
    }
    return td_loss, metrics


def actor_loss(
    enc: Encoded, nets: Nets, cfg: BCQConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_ξ = −E[Q_1(s, a + ξ_φ(s, a, Φ))], a ~ G_ω(s), on detached features."""
    features = enc.features.detach()  # (B, F)
    with torch.no_grad():
        sampled = vae_of(nets).decode(features, generator=rng)  # (B, A)
    perturbed = nets.actor(features, sampled)  # (B, A)
    q1 = nets.critic(features, perturbed, members=1)[0]  # (B,)
    loss = -q1.mean()
    metrics = {
        "actor/loss": loss.detach(),
        "actor/q": q1.mean().detach(),
        "actor/perturbation": (perturbed - sampled).abs().mean().detach(),
    }
    return loss, metrics


class BCQPolicy(Policy):
    """π(s): the best of ``n`` perturbed VAE samples by Q_1 (encoder, VAE, ξ and the critic it maximizes)."""

    def __init__(self, encoder: ObservationEncoder, vae: ConditionalVAE, actor: Perturbation, critic: Critic, n: int):
        super().__init__(encoder, actor)
        self.vae, self.critic, self.n = vae, critic, n

    def act_on(self, features: torch.Tensor, deterministic: bool, generator: torch.Generator | None) -> torch.Tensor:
        """Deterministic: argmax_i Q_1(s, a_i) over n candidates; else one candidate (see the module docstring)."""
        if not deterministic:
            return candidates(features, self.vae, self.actor, 1, generator)[:, 0]  # (B, A)
        actions = candidates(features, self.vae, self.actor, self.n, generator)  # (B, n, A)
        q1 = self.critic.q_values(features, actions, members=1)[0]  # (B, n), embedding not repeated
        best = q1.argmax(1)  # (B,)
        return actions[torch.arange(len(actions), device=actions.device), best]  # (B, A)


class BCQ(BaseAlgorithm):
    name = "bcq"
    config_class = BCQConfig
    cfg: BCQConfig

    @classmethod
    def build_actor(cls, cfg: BCQConfig, spec: ObservationSpec, feature_dim: int) -> Perturbation:
        return Perturbation(feature_dim, spec.action_dim, cfg.hidden, cfg.phi)

    @classmethod
    def build_vae(cls, cfg: BCQConfig, spec: ObservationSpec, feature_dim: int) -> ConditionalVAE:
        return ConditionalVAE(feature_dim, spec.action_dim, cfg.latent_dim, cfg.vae_hidden)

    @classmethod
    def build_policy(cls, cfg: AlgoConfig, spec: ObservationSpec) -> BCQPolicy:
        """The acting networks alone: encoder, VAE, ξ and the critic (no targets, no optimizers)."""
        cls.check_config(cfg)
        assert isinstance(cfg, BCQConfig)
        with seeded(cfg.seed):
            encoder = ObservationEncoder(spec, cfg.encoder)
            critic = Critic(encoder.out_dim, spec.action_dim, cfg.hidden, cfg.num_critics, cfg.layer_norm)
            vae = cls.build_vae(cfg, spec, encoder.out_dim)
            actor = cls.build_actor(cfg, spec, encoder.out_dim)
        return BCQPolicy(encoder, vae, actor, critic, cfg.act_samples)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, spec = self.cfg, self.spec
        nets = self.encoder_and_critic(cfg.num_critics)
        f = self.feature_dim(nets)
        vae = self.build_vae(cfg, spec, f)
        actor = self.build_actor(cfg, spec, f)
        return {**nets, "vae": vae, "actor": actor, "target_actor": self.target(actor)}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        n, cfg = self.nets, self.cfg
        return {
            "vae": make_optimizer([vae_of(n)], cfg.vae_lr),
            "critic": make_optimizer([n.encoder, n.critic], cfg.critic_lr),
            "actor": make_optimizer([n.actor], cfg.actor_lr),
        }

    @property
    def policy(self) -> BCQPolicy:
        n = self.nets
        vae, actor = n["vae"], n.actor
        assert isinstance(vae, ConditionalVAE) and isinstance(actor, Perturbation)
        return BCQPolicy(n.encoder, vae, actor, n.critic, self.cfg.act_samples)

    def update(self, batch: Batch) -> dict[str, float]:
        cfg, nets = self.cfg, self.nets
        enc = encode(nets.encoder, batch)
        v_loss, metrics = bcq_vae_loss(enc, nets, cfg, self.rng)
        self.optimize("vae", v_loss)

        q_loss, q_metrics = critic_loss(enc, nets, cfg, self.rng)
        self.optimize("critic", self.with_auxiliary(q_loss, q_metrics))

        pi_loss, pi_metrics = actor_loss(enc, nets, cfg, self.rng)
        self.optimize("actor", pi_loss)

        polyak_update(nets.target_critic, nets.critic, cfg.tau)
        polyak_update(nets.target_actor, nets.actor, cfg.tau)
        self.step += 1
        return self.metrics({**metrics, **q_metrics, **pi_metrics})
