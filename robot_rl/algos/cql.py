"""Conservative Q-Learning, SAC-based CQL(H) (Kumar, Zhou, Tucker & Levine, 2020).

Equations (``../shared/ALGORITHMS.md``, "CQL"), ``Q̄`` the Polyak target ensemble::

    y      = r + γ(1 − d)·( min_i Q̄_i(s', a') − α_ent·log π(a'|s') ),   a' ~ π(·|s')          (SAC backup)
    y_max  = r + γ(1 − d)·max_{a'_1..M ~ π(·|s')} min_i Q̄_i(s', a'_m)                     (max-backup)
    L_Q    = Σ_i ½·E_D[(Q_i(s, a) − y)²] + α′·Σ_i (gap_i − τ_gap·1[lagrange])                   (eq. 4)
    gap_i  = E_s[ log Σ_ã exp Q_i(s, ã) ] − E_D[ Q_i(s, a) ]
    L_α′   = −α′·(mean_i gap_i − τ_gap)                            (Lagrange form; α′ = exp(log α′))
    L_π    = E_s[ α_ent·log π(ã|s) − min_i Q_i(s, ã) ],  ã ~ π(·|s)
    L_ent  = −log α_ent·(log π(ã|s) + H_target),   H_target = −dim(A) by default

The CQL(H) log-sum-exp is estimated by importance sampling (appendix F) with M actions each from
Unif[-1, 1]^A (density 0.5^A), π(·|s) and π(·|s'), all evaluated at Q(s, ·)::

    log Σ_ã exp Q(s, ã) ≈ T·logsumexp_k((Q(s, ã_k) − log p_k(ã_k)) / T) − T·log(3M)

Choices and deviations:
- ``− T·log(3M)`` makes the estimate the log of an unbiased importance-sampling estimate of
  ``∫ exp Q``; the reference omits it (a constant: gradients are the same, ``cql/gap`` and the
  Lagrange target gap are offset by ``log 3M``).
- ``½`` on the TD term as in the paper (the reference uses a plain MSE): ``cql_alpha`` here is
  twice as strong relative to the TD term as the reference's ``min_q_weight``.
- Encode once (``base.py``): all 3M sampled actions (and the data action) are scored in one batched
  critic call on the cached embedding of ``s``; π(·|s') samples come from the cached ``s'`` embedding.
  Sampled actions are drawn without gradient (the reference detaches their log-probs too).
- No BC warm-up phase (the reference's ``policy_eval_start``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import AlgoConfig, Algorithm, Encoded, Scalar, encode, make_optimizer, polyak_update
from robot_rl.nets import Critic, TanhGaussianActor


@dataclasses.dataclass(frozen=True)
class CQLConfig(AlgoConfig):
    num_critics: int = 2
    cql_alpha: float = 5.0  # α′ when not using the Lagrange form
    lagrange: bool = False  # tune α′ so the gap stays at target_gap
    target_gap: float = 5.0  # τ_gap of the Lagrange form
    alpha_prime_init: float = 1.0
    alpha_prime_lr: float = 3e-4
    num_samples: int = 10  # M actions per proposal (uniform, π(·|s), π(·|s'))
    temperature: float = 1.0  # T of the log-sum-exp
    max_backup: bool = False
    backup_entropy: bool = True  # −α_ent·log π(a'|s') in the SAC backup
    auto_entropy: bool = True  # tune α_ent towards target_entropy
    alpha_init: float = 1.0
    alpha_lr: float = 3e-4
    target_entropy: float | None = None  # None: −dim(A)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_critics < 1 or self.num_samples < 1:
            raise ValueError(f"num_critics and num_samples must be >= 1, got {self.num_critics}, {self.num_samples}")
        if self.cql_alpha < 0 or self.temperature <= 0:
            raise ValueError(f"cql_alpha must be >= 0 and temperature > 0, got {self.cql_alpha}, {self.temperature}")
        if self.alpha_init <= 0 or self.alpha_prime_init <= 0 or self.alpha_lr <= 0 or self.alpha_prime_lr <= 0:
            raise ValueError("alpha_init, alpha_prime_init, alpha_lr and alpha_prime_lr must be > 0")


def critic_loss(
    enc: Encoded, nets: nn.ModuleDict, cfg: CQLConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q: the TD loss to the SAC (or max-) backup plus α′ times the CQL(H) gap, summed over critics."""
    b = enc.batch
    B, A = b.actions.shape
    M, T = cfg.num_samples, cfg.temperature
    with torch.no_grad():
        alpha = nets.log_alpha().exp()
        next_dist = nets.actor(enc.next_features)
        if cfg.max_backup:
            next_a, _ = next_dist.sample(M, rng)  # (B, M, A)
            next_v = nets.target_critic.q_values(enc.next_features, next_a).min(0).values.max(-1).values  # (B,)
        else:
            next_a, next_log_prob = next_dist.sample(generator=rng)  # (B, A), (B,)
            next_v = nets.target_critic(enc.next_features, next_a).min(0).values  # (B,)
            if cfg.backup_entropy:
                next_v = next_v - alpha * next_log_prob
        td_target = b.rewards + cfg.gamma * (1.0 - b.terminals) * next_v  # (B,)
        # proposals for the log-sum-exp: uniform, π(·|s), π(·|s')
        uniform_a = torch.rand((B, M, A), generator=rng, device=b.actions.device) * 2 - 1  # (B, M, A)
        pi_a, pi_log_prob = nets.actor(enc.features.detach()).sample(M, rng)  # (B, M, A), (B, M)
        next_pi_a, next_pi_log_prob = next_dist.sample(M, rng)  # (B, M, A), (B, M)
        log_density = torch.cat(
            [torch.full_like(pi_log_prob, A * math.log(0.5)), pi_log_prob, next_pi_log_prob], dim=1
        )  # (B, 3M)
    actions = torch.cat([b.actions.unsqueeze(1), uniform_a, pi_a, next_pi_a], dim=1)  # (B, 1 + 3M, A)
    q_all = nets.critic.q_values(enc.features, actions)  # (N, B, 1 + 3M), one call on the cached embedding
    q_data = q_all[..., 0]  # (N, B)
    logsumexp = T * torch.logsumexp((q_all[..., 1:] - log_density) / T, dim=-1) - T * math.log(3 * M)  # (N, B)
    cql_gap = logsumexp.mean(1) - q_data.mean(1)  # (N,)
    td_loss = 0.5 * (q_data - td_target).pow(2).mean(1).sum()
    if cfg.lagrange:
        alpha_prime = nets.log_alpha_prime().exp().clamp(0.0, 1e6).detach()
        cql_loss = alpha_prime * (cql_gap - cfg.target_gap).sum()
    else:
        alpha_prime = q_data.new_tensor(cfg.cql_alpha)
        cql_loss = cfg.cql_alpha * cql_gap.sum()
    metrics = {
        "critic/td_loss": td_loss.detach(),
        "critic/q_data": q_data.mean().detach(),
        "critic/td_target": td_target.mean(),
        "cql/gap": cql_gap.mean().detach(),
        "cql/logsumexp": logsumexp.mean().detach(),
        "cql/q_uniform": q_all[..., 1 : 1 + M].mean().detach(),
        "cql/q_policy": q_all[..., 1 + M :].mean().detach(),
        "cql/alpha_prime": alpha_prime,
    }
    return td_loss + cql_loss, metrics


def lagrange_loss(cql_gap: torch.Tensor, nets: nn.ModuleDict, cfg: CQLConfig) -> torch.Tensor:
    """L_α′ = −α′·(gap − τ_gap): α′ grows while the gap exceeds its target, shrinks below it."""
    alpha_prime = nets.log_alpha_prime().exp().clamp(0.0, 1e6)
    return -alpha_prime * (cql_gap.detach() - cfg.target_gap)


def actor_loss(
    enc: Encoded, nets: nn.ModuleDict, cfg: CQLConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π = E[α_ent·log π(ã|s) − min_i Q_i(s, ã)], ã ~ π(·|s) reparameterized, on detached features."""
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


def temperature_loss(entropy: torch.Tensor, nets: nn.ModuleDict, target_entropy: float) -> torch.Tensor:
    """L_ent = −log α_ent·(log π + H_target) = log α_ent·(H − H_target), with H = −E[log π] detached."""
    return nets.log_alpha() * (entropy.detach() - target_entropy)


class CQL(Algorithm):
    name = "cql"
    config_class = CQLConfig
    cfg: CQLConfig

    @property
    def target_entropy(self) -> float:
        return -float(self.spec.action_dim) if self.cfg.target_entropy is None else self.cfg.target_entropy

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, spec = self.cfg, self.spec
        encoder = self.encoder()
        critic = Critic(encoder.out_dim, spec.action_dim, cfg.hidden, cfg.num_critics)
        nets = {
            "encoder": encoder,
            "critic": critic,
            "target_critic": self.target(critic),
            "actor": TanhGaussianActor(encoder.out_dim, spec.action_dim, cfg.hidden),
            "log_alpha": Scalar(math.log(cfg.alpha_init)),
        }
        if cfg.lagrange:
            nets["log_alpha_prime"] = Scalar(math.log(cfg.alpha_prime_init))
        return nets

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        n, cfg = self.nets, self.cfg
        opts = {
            "critic": make_optimizer([n.encoder, n.critic], cfg.critic_lr),
            "actor": make_optimizer([n.actor], cfg.actor_lr),
        }
        if cfg.auto_entropy:
            opts["alpha"] = make_optimizer([n.log_alpha], cfg.alpha_lr)
        if cfg.lagrange:
            opts["alpha_prime"] = make_optimizer([n.log_alpha_prime], cfg.alpha_prime_lr)
        return opts

    def _step(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def update(self, batch: Batch) -> dict[str, float]:
        cfg, nets = self.cfg, self.nets
        enc = encode(nets.encoder, batch)
        q_loss, metrics = critic_loss(enc, nets, cfg, self.rng)
        self._step("critic", q_loss)
        if cfg.lagrange:
            self._step("alpha_prime", lagrange_loss(metrics["cql/gap"], nets, cfg))

        pi_loss, pi_metrics = actor_loss(enc, nets, cfg, self.rng)
        self._step("actor", pi_loss)
        if cfg.auto_entropy:
            self._step("alpha", temperature_loss(pi_metrics["actor/entropy"], nets, self.target_entropy))

        polyak_update(nets.target_critic, nets.critic, cfg.tau)
        self.step += 1
        return self.metrics({**metrics, **pi_metrics})
