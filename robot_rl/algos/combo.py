"""COMBO (Yu et al., 2021): CQL whose Q-values are pushed down on model rollouts and up on the data.

"COMBO: Conservative Offline Model-Based Policy Optimization". The dynamics ensemble, its training,
the rollouts and the mixing of real and model rows are shared with MOPO and MOReL
(``model_based.py``; the ensemble of Janner et al., 2019, MBPO, and Chua et al., 2018, PETS).

Equations, z = [f(s), g] the frozen encoder's features, ρ the model-rollout states (under π),
d_f = f·D + (1 − f)·model data (f = ``model.real_ratio``)::

    L_Q = β·Σ_i ( E_{s~ρ}[ log Σ_ã exp Q_i(s, ã) ] − E_{(s,a)~D}[ Q_i(s, a) ] )        (push down, push up)
        + Σ_i ½·E_{d_f}[(Q_i(s, a) − y)²],   y the SAC backup of ``sac.py`` (or CQL's max-backup)
    L_π, L_α as SAC;   Lagrange form (``lagrange``): β = α′ tuned so the gap stays at target_gap (CQL)

The log-sum-exp over actions is CQL(H)'s importance-sampling estimate (``cql.py``), with M actions
each from Unif[-1, 1]^A, π(·|s) and π(·|s'), at the model states::

    log Σ_ã exp Q(s, ã) ≈ T·logsumexp_k((Q(s, ã_k) − log p_k(ã_k)) / T) − T·log(3M)

Choices and deviations:
- The push-down states are the model rows of each batch (COMBO's ρ(s, a) = d^π_model(s)·π(a|s) with
  CQL's uniform/policy proposals, as the reference implementation); while the model replay is empty
  (``model.warmup``) they are the real rows, which makes the update CQL's.
- The push-up term is on the real rows only, their data actions.
- CQLConfig's fields (``cql_alpha`` = β, ``lagrange``, ``num_samples``, ``temperature``,
  ``max_backup``) and the Lagrange step come from ``cql.py``; the TD part from ``sac.py``.
- Model training, frozen encoder, goals and tasks: as MOPO (``mopo.py``, ``model_based.py``).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from robot_rl.algos.base import Encoded, Nets
from robot_rl.algos.cql import CQL, CQLConfig, conservative_term
from robot_rl.algos.model_based import ModelBased, ModelConfig
from robot_rl.algos.sac import soft_td_target
from robot_rl.models.dynamics import DynamicsConfig


@dataclasses.dataclass(frozen=True)
class COMBOConfig(CQLConfig):
    """CQL's fields (``cql_alpha`` is β) plus the ensemble (``dynamics``) and rollouts and mixing (``model``)."""

    dynamics: DynamicsConfig = dataclasses.field(default_factory=DynamicsConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


def conservative_gap(
    q_push_down: torch.Tensor, log_density: torch.Tensor, q_push_up: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per critic: E_ρ[T·logsumexp((Q − log p)/T) − T·log K] − E_D[Q] -> gap (N,), log-sum-exp (N, B_ρ).

    q_push_down (N, B_ρ, K) at K proposal actions of push-down states with densities log_density
    (B_ρ, K); q_push_up (N, B_D) at the data's actions."""
    K, T = q_push_down.shape[-1], temperature
    logsumexp = T * torch.logsumexp((q_push_down - log_density) / T, dim=-1) - T * math.log(K)  # (N, B_ρ)
    return logsumexp.mean(1) - q_push_up.mean(1), logsumexp


def critic_loss(
    enc: Encoded, real_rows: int, nets: Nets, cfg: COMBOConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q on a mixed batch whose first ``real_rows`` rows are real (push-up) and the rest model rows (push-down)."""
    b = enc.batch
    B, A = b.actions.shape
    M = cfg.num_samples
    down = slice(real_rows, B) if real_rows < B else slice(0, B)  # push-down rows: the model's (all during warmup)
    with torch.no_grad():
        alpha = nets.log_alpha().exp() if cfg.backup_entropy else None
        td_target, _ = soft_td_target(
            enc, nets, cfg.gamma, rng, alpha, max_backup_samples=M if cfg.max_backup else 0
        )  # (B,)
        features, next_features = enc.features[down], enc.require_next()[down]  # (B_ρ, F)
        n = len(features)
        uniform_a = torch.rand((n, M, A), generator=rng, device=b.actions.device) * 2 - 1  # (B_ρ, M, A)
        pi_a, pi_log_prob = nets.actor(features).sample(M, rng)  # (B_ρ, M, A), (B_ρ, M)
        next_pi_a, next_pi_log_prob = nets.actor(next_features).sample(M, rng)  # (B_ρ, M, A), (B_ρ, M)
        log_density = torch.cat(
            [torch.full_like(pi_log_prob, A * math.log(0.5)), pi_log_prob, next_pi_log_prob], dim=1
        )  # (B_ρ, 3M)
    q_data = nets.critic(enc.features, b.actions)  # (N, B)
    q_sampled = nets.critic.q_values(features, torch.cat([uniform_a, pi_a, next_pi_a], 1))  # (N, B_ρ, 3M)
    gap, logsumexp = conservative_gap(q_sampled, log_density, q_data[:, :real_rows], cfg.temperature)  # (N,)
    td_loss = 0.5 * (q_data - td_target).pow(2).mean(1).sum()
    conservative, beta = conservative_term(gap, nets, cfg)
    metrics = {
        "critic/td_loss": td_loss.detach(),
        "critic/q_data": q_data[:, :real_rows].mean().detach(),
        "critic/q_model": q_data[:, real_rows:].mean().detach() if real_rows < B else q_data.new_zeros(()),
        "critic/td_target": td_target.mean(),
        "cql/gap": gap.mean().detach(),
        "cql/logsumexp": logsumexp.mean().detach(),
        "cql/alpha_prime": beta,
    }
    return td_loss + conservative, metrics


class COMBO(ModelBased, CQL):
    """CQL's networks, Lagrange and actor steps; the critic's conservative term splits model and real rows."""

    name = "combo"
    config_class = COMBOConfig
    cfg: COMBOConfig

    def critic_objective(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return critic_loss(enc, self.real_rows, self.nets, self.cfg, self.rng)
