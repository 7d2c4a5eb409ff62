"""MOReL (Kidambi et al., 2020): SAC in a pessimistic MDP that halts where the ensemble's members disagree.

"MOReL: Model-Based Offline Reinforcement Learning". The dynamics ensemble, its training, the
rollouts and the mixing of real and model rows are shared with MOPO and COMBO (``model_based.py``;
the ensemble of Janner et al., 2019, MBPO, and Chua et al., 2018, PETS, in ``robot_rl/models``).

Equations, z = [f(s), g] the frozen encoder's features, f_i the elites' mean next states::

    disc(z, a) = max_{i,j} ‖f_i(z, a) − f_j(z, a)‖₂                    (USAD, the unknown state-action detector)
    U(z, a)    = 1[disc(z, a) > δ],   δ = the halt_quantile quantile of disc on the data's (z, a)
    pessimistic MDP: U = 0: (ẑ', r̂) from the model;   U = 1: → HALT, reward −κ, done = 1 (absorbing)
    SAC (``sac.py``) on real rows and rollouts in the pessimistic MDP (mixed by real_ratio)

Choices and deviations:
- δ: the paper sets the threshold from the discrepancy on the dataset (its code: mean + β·std, or the
  maximum); here it is a quantile of disc on each real batch, averaged over updates with
  ``threshold_decay``, so it follows the model as it trains (a buffer of ``nets.world``; saved).
- HALT is a terminal (done = 1: no bootstrapping past it) with reward −κ, which is the value of the
  absorbing state with the paper's reward −κ on HALT and 0 after; halted rows leave the rollout.
- The paper plans with the model (NPG with model rollouts only); here SAC learns from model rows mixed
  with real ones (a small real_ratio is closest to the paper).
- disc is over the elites' next-state means (``ModelStep.disagreement``), the reward excluded.
- Model training, frozen encoder, goals and tasks: as MOPO (``mopo.py``, ``model_based.py``).
"""

from __future__ import annotations

import dataclasses

import torch

from robot_rl.algos.model_based import ModelBased, ModelConfig
from robot_rl.algos.sac import SAC, SACConfig
from robot_rl.models.dynamics import DynamicsConfig, ModelStep


@dataclasses.dataclass(frozen=True)
class MOReLConfig(SACConfig):
    """SAC's fields plus the ensemble (``dynamics``), the rollouts and mixing (``model``) and the HALT rule."""

    dynamics: DynamicsConfig = dataclasses.field(default_factory=DynamicsConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    halt_quantile: float = 0.99  # δ: this quantile of disc on the data's (z, a)
    halt_reward: float = 1.0  # κ: a HALT transition's reward is −κ
    threshold_decay: float = 0.99  # exponential average of the per-batch quantile

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.halt_quantile <= 1 or not 0 <= self.threshold_decay < 1:
            raise ValueError(
                f"need halt_quantile in (0, 1], threshold_decay in [0, 1); got {self.halt_quantile}, "
                f"{self.threshold_decay}"
            )
        if self.halt_reward < 0:
            raise ValueError(f"halt_reward (κ) must be >= 0, got {self.halt_reward}")
        if self.dynamics.elites < 2:
            raise ValueError(f"MOReL's disagreement needs >= 2 elites, got dynamics.elites={self.dynamics.elites}")


def halt(s: ModelStep, threshold: torch.Tensor | float, halt_reward: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pessimistic MDP's (reward, done) of a model step: disc > δ → (−κ, 1), else (r̂, 0) -> (B,), (B,) bool."""
    unknown = s.disagreement > threshold  # (B,)
    return torch.where(unknown, torch.full_like(s.reward, -halt_reward), s.reward), unknown


class MOReL(ModelBased, SAC):
    name = "morel"
    config_class = MOReLConfig
    cfg: MOReLConfig

    def build_networks(self) -> dict[str, torch.nn.Module]:
        nets = super().build_networks()
        nets["world"].register_buffer("halt_threshold", torch.zeros(()))  # δ, averaged over updates
        return nets

    @property
    def halt_threshold(self) -> torch.Tensor:
        return self.world.get_buffer("halt_threshold")

    @torch.no_grad()
    def world_metrics(self, z: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """δ ← decay·δ + (1 − decay)·quantile(disc on the real batch) (δ = the first batch's quantile at first)."""
        disc = self.world.model.step(z, a, self.rng).disagreement  # (B,)
        q = torch.quantile(disc, self.cfg.halt_quantile)
        decay = self.cfg.threshold_decay if self.step > 0 else 0.0
        self.halt_threshold.mul_(decay).add_((1 - decay) * q)
        return {"morel/threshold": self.halt_threshold.clone(), "morel/disc_data": disc.mean()}

    def model_transition(self, z: torch.Tensor, s: ModelStep) -> tuple[torch.Tensor, torch.Tensor]:
        return halt(s, self.halt_threshold, self.cfg.halt_reward)
