"""TD3+BC (Fujimoto & Gu, 2021, "A Minimalist Approach to Offline Reinforcement Learning").

TD3 (Fujimoto, van Hoof & Meger, 2018) with a behaviour-cloning term in the actor loss.
Equations (``docs/algorithms.md``, "TD3+BC"), ``Q̄``, ``π̄`` the Polyak targets::

    ã'     = clip(π̄(s') + clip(ε, −c, c), −1, 1),   ε ~ N(0, σ²)                    (target policy smoothing)
    y      = r + γ(1 − d)·min_i Q̄_i(s', ã')                                          (clipped double-Q)
    L_Q    = Σ_i E_D[(Q_i(s, a) − y)²]
    L_π    = −λ·E_D[Q_1(s, π(s))] + E_D[(π(s) − a)²],   λ = α / E_D[|Q_1(s, π(s))|]  (λ detached)

Delayed policy updates: the actor and both targets are updated every ``policy_freq`` critic steps,
on steps ``t`` with ``t mod policy_freq = 0`` (the first update included).

Choices and deviations:
- States are normalized with dataset statistics as in the paper, but by the shared encoder
  (``obs.normalize``, the spec's statistics), so the actor and the critic read encoder features
  (LayerNorm-ed, tanh-bounded image embeddings; normalized state columns).
- ``(π(s) − a)²`` is the mean over the batch *and* the action dimensions (as the reference's
  ``F.mse_loss``); ``λ``'s ``mean|Q|`` is over the batch, detached, and floored at 1e-6.
- ``act(deterministic=False)`` adds TD3's exploration noise ``N(0, exploration_noise²)`` clipped to
  the action box (``heads.Deterministic``); ``deterministic=True`` is ``π(s)``.
- Encode once (``base.py``): the critic trains the encoder; the actor reads detached features; the
  target actor and target critic read the online encoder's detached ``s'`` embedding.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import AlgoConfig, BaseAlgorithm, Encoded, Nets, encode, make_optimizer, polyak_update
from robot_rl.nets import NoisyDeterministicActor, ObservationSpec


@dataclasses.dataclass(frozen=True)
class TD3BCConfig(AlgoConfig):
    num_critics: int = 2
    alpha: float = 2.5  # α of λ = α / mean|Q|
    policy_noise: float = 0.2  # σ of the target policy smoothing noise
    noise_clip: float = 0.5  # c: the smoothing noise is clipped to [−c, c]
    policy_freq: int = 2  # actor and target updates every policy_freq critic steps
    exploration_noise: float = 0.1  # σ of act(deterministic=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_critics < 1 or self.policy_freq < 1:
            raise ValueError(f"num_critics and policy_freq must be >= 1, got {self.num_critics}, {self.policy_freq}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.policy_noise < 0 or self.noise_clip < 0 or self.exploration_noise < 0:
            raise ValueError(
                f"policy_noise, noise_clip and exploration_noise must be >= 0, got "
                f"{self.policy_noise}, {self.noise_clip}, {self.exploration_noise}"
            )


def critic_loss(
    enc: Encoded, nets: Nets, cfg: TD3BCConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_i E[(Q_i(s, a) − y)²], y with the smoothed target action and the clipped double-Q."""
    b = enc.batch
    with torch.no_grad():
        next_a = nets.target_actor(enc.next_features).mode()  # (B, A)
        eps = torch.randn(next_a.shape, generator=rng, device=next_a.device, dtype=next_a.dtype)  # (B, A)
        noise = (cfg.policy_noise * eps).clamp(-cfg.noise_clip, cfg.noise_clip)  # (B, A)
        next_a = (next_a + noise).clamp(-1.0, 1.0)  # (B, A)
        next_q = nets.target_critic(enc.next_features, next_a).min(0).values  # (B,)
        td_target = b.rewards + cfg.gamma * (1.0 - b.terminals) * next_q  # (B,)
    q = nets.critic(enc.features, b.actions)  # (N, B)
    td_loss = (q - td_target).pow(2).mean(1).sum()
    metrics = {
        "critic/td_loss": td_loss.detach(),
        "critic/q_data": q.mean().detach(),
        "critic/td_target": td_target.mean(),
    }
    return td_loss, metrics


def actor_loss(enc: Encoded, nets: Nets, cfg: TD3BCConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π = −λ·E[Q_1(s, π(s))] + E[(π(s) − a)²], λ = α / mean|Q_1| (detached), on detached features."""
    features, actions = enc.features.detach(), enc.batch.actions  # (B, F), (B, A)
    pi = nets.actor(features).mode()  # (B, A)
    q = nets.critic(features, pi)[0]  # (B,) Q_1, as the reference
    lmbda = cfg.alpha / q.abs().mean().detach().clamp(min=1e-6)
    bc_loss = (pi - actions).pow(2).mean()
    loss = -lmbda * q.mean() + bc_loss
    metrics = {
        "actor/loss": loss.detach(),
        "actor/q": q.mean().detach(),
        "actor/lambda": lmbda,
        "actor/bc_loss": bc_loss.detach(),
    }
    return loss, metrics


class TD3BC(BaseAlgorithm):
    name = "td3bc"
    config_class = TD3BCConfig
    cfg: TD3BCConfig
    # the two losses of the delayed update; variants (ReBRAC) keep the update and swap these
    critic_loss = staticmethod(critic_loss)
    actor_loss = staticmethod(actor_loss)

    @classmethod
    def build_actor(cls, cfg: TD3BCConfig, spec: ObservationSpec, feature_dim: int) -> nn.Module:
        return NoisyDeterministicActor(feature_dim, spec.action_dim, cfg.hidden, cfg.exploration_noise)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, spec = self.cfg, self.spec
        nets = self.encoder_and_critic(cfg.num_critics)
        actor = self.build_actor(cfg, spec, self.feature_dim(nets))
        return {**nets, "actor": actor, "target_actor": self.target(actor)}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        n = self.nets
        return {
            "critic": make_optimizer([n.encoder, n.critic], self.cfg.critic_lr),
            "actor": make_optimizer([n.actor], self.cfg.actor_lr),
        }

    def update(self, batch: Batch) -> dict[str, float]:
        cfg, nets = self.cfg, self.nets
        enc = encode(nets.encoder, batch)
        q_loss, metrics = self.critic_loss(enc, nets, cfg, self.rng)
        self.optimize("critic", self.with_auxiliary(q_loss, metrics))

        if self.step % cfg.policy_freq == 0:  # delayed policy update (step 0 included)
            pi_loss, pi_metrics = self.actor_loss(enc, nets, cfg)
            self.optimize("actor", pi_loss)
            metrics.update(pi_metrics)
            polyak_update(nets.target_critic, nets.critic, cfg.tau)
            polyak_update(nets.target_actor, nets.actor, cfg.tau)
        self.step += 1
        return self.metrics(metrics)
