"""Conservative Q-Learning, SAC-based CQL(H) (Kumar, Zhou, Tucker & Levine, 2020).

Equations (``docs/algorithms.md``, "CQL"), ``Q̄`` the Polyak target ensemble::

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
- The SAC parts (config fields, networks, soft backup, ``actor_loss``, ``temperature_loss``) come from
  ``sac.py``; ``critic_loss`` takes Cal-QL's optional lower bound on the policy-sampled Q-values
  (``calql.py``), so Cal-QL is this file plus one ``max``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import Encoded, Nets, Scalar, make_optimizer
from robot_rl.algos.sac import SAC, SACConfig, soft_td_target


@dataclasses.dataclass(frozen=True)
class CQLConfig(SACConfig):
    """SAC's fields (``num_critics``, ``backup_entropy``, ``auto_entropy``, ``alpha_*``, ``target_entropy``) plus:"""

    cql_alpha: float = 5.0  # α′ when not using the Lagrange form
    lagrange: bool = False  # tune α′ so the gap stays at target_gap
    target_gap: float = 5.0  # τ_gap of the Lagrange form
    alpha_prime_init: float = 1.0
    alpha_prime_lr: float = 3e-4
    num_samples: int = 10  # M actions per proposal (uniform, π(·|s), π(·|s'))
    temperature: float = 1.0  # T of the log-sum-exp
    max_backup: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.cql_alpha < 0 or self.temperature <= 0:
            raise ValueError(f"cql_alpha must be >= 0 and temperature > 0, got {self.cql_alpha}, {self.temperature}")
        if self.alpha_prime_init <= 0 or self.alpha_prime_lr <= 0:
            raise ValueError(
                f"alpha_prime_init and alpha_prime_lr must be > 0, got {self.alpha_prime_init}, {self.alpha_prime_lr}"
            )


def critic_loss(
    enc: Encoded,
    nets: Nets,
    cfg: CQLConfig,
    rng: torch.Generator,
    q_lower_bound: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q: the TD loss to the SAC (or max-) backup plus α′ times the CQL(H) gap, summed over critics.

    ``q_lower_bound`` (B,): Cal-QL's calibration, the Q-values of the policy-sampled actions (π(·|s) and
    π(·|s') proposals) enter the log-sum-exp as ``max(Q(s, ã), bound(s))``; uniform actions are not bounded.
    """
    b = enc.batch
    B, A = b.actions.shape
    M, T = cfg.num_samples, cfg.temperature
    with torch.no_grad():
        alpha = nets.log_alpha().exp() if cfg.backup_entropy else None
        td_target, next_dist = soft_td_target(
            enc, nets, cfg.gamma, rng, alpha, max_backup_samples=M if cfg.max_backup else 0
        )  # (B,)
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
    q_sampled = q_all[..., 1:]  # (N, B, 3M)
    metrics: dict[str, torch.Tensor] = {}
    if q_lower_bound is not None:
        bound = q_lower_bound.view(1, B, 1)  # (1, B, 1)
        q_policy = q_sampled[..., M:]  # (N, B, 2M)
        metrics["calql/bound_rate"] = (q_policy < bound).float().mean().detach()
        metrics["calql/mc_return"] = q_lower_bound.float().mean().detach()
        q_sampled = torch.cat([q_sampled[..., :M], torch.maximum(q_policy, bound)], dim=-1)  # (N, B, 3M)
    logsumexp = T * torch.logsumexp((q_sampled - log_density) / T, dim=-1) - T * math.log(3 * M)  # (N, B)
    cql_gap = logsumexp.mean(1) - q_data.mean(1)  # (N,)
    td_loss = 0.5 * (q_data - td_target).pow(2).mean(1).sum()
    cql_loss, alpha_prime = conservative_term(cql_gap, nets, cfg)
    metrics = {
        "critic/td_loss": td_loss.detach(),
        "critic/q_data": q_data.mean().detach(),
        "critic/td_target": td_target.mean(),
        "cql/gap": cql_gap.mean().detach(),
        "cql/logsumexp": logsumexp.mean().detach(),
        "cql/q_uniform": q_all[..., 1 : 1 + M].mean().detach(),
        "cql/q_policy": q_all[..., 1 + M :].mean().detach(),
        "cql/alpha_prime": alpha_prime,
        **metrics,
    }
    return td_loss + cql_loss, metrics


def conservative_term(cql_gap: torch.Tensor, nets: Nets, cfg: CQLConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's conservative term of eq. 4 and the weight used: α′·Σ_i (gap_i − τ_gap) with the tuned
    α′ (``lagrange``, held fixed here), else α·Σ_i gap_i (``cql_alpha``). ``cql_gap``: (N,) per critic."""
    if cfg.lagrange:
        alpha_prime = nets.log_alpha_prime().exp().clamp(0.0, 1e6).detach()
        return alpha_prime * (cql_gap - cfg.target_gap).sum(), alpha_prime
    return cfg.cql_alpha * cql_gap.sum(), cql_gap.new_tensor(cfg.cql_alpha)


def lagrange_loss(cql_gap: torch.Tensor, nets: Nets, cfg: CQLConfig) -> torch.Tensor:
    """L_α′ = −α′·(gap − τ_gap): α′ grows while the gap exceeds its target, shrinks below it."""
    alpha_prime = nets.log_alpha_prime().exp().clamp(0.0, 1e6)
    return -alpha_prime * (cql_gap.detach() - cfg.target_gap)


class CQL(SAC):
    """SAC's networks, actor and temperature steps; the critic loss adds the conservative gap."""

    name = "cql"
    config_class = CQLConfig
    cfg: CQLConfig

    def build_networks(self) -> dict[str, nn.Module]:
        nets = super().build_networks()
        if self.cfg.lagrange:
            nets["log_alpha_prime"] = Scalar(math.log(self.cfg.alpha_prime_init))
        return nets

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = super().build_optimizers()
        if self.cfg.lagrange:
            opts["alpha_prime"] = make_optimizer([self.nets.log_alpha_prime], self.cfg.alpha_prime_lr)
        return opts

    def q_lower_bound(self, batch: Batch) -> torch.Tensor | None:
        """The bound on policy-sampled Q-values in the log-sum-exp: none for CQL (Cal-QL overrides it)."""
        return None

    def critic_objective(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return critic_loss(enc, self.nets, self.cfg, self.rng, self.q_lower_bound(enc.batch))

    def after_critic_step(self, metrics: dict[str, torch.Tensor]) -> None:
        if self.cfg.lagrange:
            self.optimize("alpha_prime", lagrange_loss(metrics["cql/gap"], self.nets, self.cfg))
