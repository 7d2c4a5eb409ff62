"""MOPO (Yu et al., 2020): SAC on data ∪ model rollouts whose rewards are penalized by the model's uncertainty.

"MOPO: Model-based Offline Policy Optimization". The dynamics ensemble, its training, the branched
rollouts and the mixing of real and model rows are shared with MOReL and COMBO (``model_based.py``;
the ensemble of Janner et al., 2019, MBPO, and Chua et al., 2018, PETS, in ``robot_rl/models``).

Equations, z = [f(s), g] the frozen encoder's features, p̂_i the ensemble's Gaussians::

    (Δẑ, r̂) ~ p̂_i(· | z, a),  i drawn uniformly among the elites;   ẑ' = z + Δẑ (g part kept)
    u(z, a) = max_i ‖σ_i(z, a)‖₂                       (Frobenius norm of the diagonal Σ_i^½, data units)
    r̃(z, a) = r̂ − λ·u(z, a)                           (λ = penalty_coef)
    model data: h-step rollouts of π from states of the data, every k updates
    SAC (``sac.py``) on batches of real_ratio·B real rows and (1 − real_ratio)·B model rows:
    y = r + γ(1 − d)·(min_i Q̄_i(s', a') − α·log π(a'|s')),  L_Q = Σ_i ½·E[(Q_i − y)²],
    L_π = E[α·log π(ã|s) − min_i Q_i(s, ã)]

Choices and deviations:
- u is the largest over the elites of the norm of the standard deviations of all D + 1 outputs
  (next-state change and reward), as the reference code (``max_i ‖σ_i‖`` over the whole output).
- The penalty is applied when a rollout is stored (with the model of that moment), as the reference.
- The model trains alongside the agent, on the sampler's batches (``model_based.py``), rather than
  being fitted to convergence before the policy; rollouts start after ``model.warmup`` updates.
- The encoder is frozen (``model_based.py``, point 1); finetuning's auxiliary losses cannot apply.
- Goals and task ids: the model's state holds g (``model_based.py``, point 2), so the predicted
  reward of a relabeled 0/1 goal-reaching row is the model's estimate of success for that goal.
"""

from __future__ import annotations

import dataclasses

import torch

from robot_rl.algos.model_based import ModelBased, ModelConfig
from robot_rl.algos.sac import SAC, SACConfig
from robot_rl.models.dynamics import DynamicsConfig, ModelStep


@dataclasses.dataclass(frozen=True)
class MOPOConfig(SACConfig):
    """SAC's fields plus the ensemble (``dynamics``), the rollouts and mixing (``model``) and λ."""

    dynamics: DynamicsConfig = dataclasses.field(default_factory=DynamicsConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    penalty_coef: float = 1.0  # λ

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.penalty_coef < 0:
            raise ValueError(f"penalty_coef must be >= 0, got {self.penalty_coef}")


def penalized_reward(s: ModelStep, penalty_coef: float) -> torch.Tensor:
    """r̃ = r̂ − λ·u, u = max_i ‖σ_i‖ over the elites (``ModelStep.max_std_norm``) -> (B,)."""
    return s.reward - penalty_coef * s.max_std_norm


class MOPO(ModelBased, SAC):
    name = "mopo"
    config_class = MOPOConfig
    cfg: MOPOConfig

    def model_transition(self, z: torch.Tensor, s: ModelStep) -> tuple[torch.Tensor, torch.Tensor]:
        return penalized_reward(s, self.cfg.penalty_coef), torch.zeros_like(s.reward, dtype=torch.bool)
