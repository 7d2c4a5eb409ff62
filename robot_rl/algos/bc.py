"""Behaviour cloning and goal-conditioned BC (GCBC; Ghosh et al., 2019 / Lynch et al., 2020 for the goal form).

Objective (``docs/algorithms.md``, "BC and goal-conditioned BC")::

    max_π  E_{(s, a, g) ~ D}[ log π(a | s, g) ]

with ``g`` the sampler's relabeled goal (or none, or a task id) and π a Gaussian on the encoder's
features (``actor_distribution``: ``gaussian`` = N(tanh μ, σ²), the default, or ``tanh_gaussian``).
The goal enters through the encoder (early or late fusion, see
``robot_rl/nets/encoders.py``); with ``Batch.goals`` None it is plain BC.

Choices and deviations:
- The actor's loss trains the encoder (no critic here), so features are *not* detached.
- The default head is ``N(tanh μ, σ²)`` on the action, not a tanh-squashed Gaussian: scripted data
  saturates at ±1 (a third of the tabletop's actions), where the squashed density needs
  ``atanh(1 − 1e-6)`` and its log-Jacobian swamps the loss (``heads.py``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import AlgoConfig, BaseAlgorithm, Encoded, Nets, encode, make_optimizer
from robot_rl.nets import ObservationSpec, make_actor
from robot_rl.nets.heads import check_actor_distribution


@dataclasses.dataclass(frozen=True)
class BCConfig(AlgoConfig):
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    actor_distribution: str = "gaussian"  # "gaussian": N(tanh μ, σ²) | "tanh_gaussian": tanh(N(μ, σ²))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"log_std_min must be < log_std_max, got {self.log_std_min}, {self.log_std_max}")
        check_actor_distribution(self.actor_distribution)


def bc_loss(enc: Encoded, nets: Nets, cfg: BCConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L(π) = −E[log π(a | s, g)]."""
    dist = nets.actor(enc.features)
    actions = enc.batch.actions  # (B, A)
    log_prob = dist.log_prob(actions)  # (B,)
    loss = -log_prob.mean()
    metrics = {
        "actor/bc_loss": loss.detach(),
        "actor/log_prob": log_prob.mean().detach(),
        "actor/mse": (dist.mode() - actions).pow(2).mean().detach(),
        "actor/log_std": dist.log_std.mean().detach(),
    }
    return loss, metrics


class BC(BaseAlgorithm):
    name = "bc"
    config_class = BCConfig
    cfg: BCConfig

    @classmethod
    def build_actor(cls, cfg: BCConfig, spec: ObservationSpec, feature_dim: int) -> nn.Module:
        return make_actor(
            cfg.actor_distribution, feature_dim, spec.action_dim, cfg.hidden, cfg.log_std_min, cfg.log_std_max
        )

    def build_networks(self) -> dict[str, nn.Module]:
        encoder = self.encoder()
        return {"encoder": encoder, "actor": self.build_actor(self.cfg, self.spec, encoder.out_dim)}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": make_optimizer([self.nets.encoder, self.nets.actor], self.cfg.actor_lr)}

    def update(self, batch: Batch) -> dict[str, float]:
        enc = encode(self.nets.encoder, batch, next_observations=False)
        loss, metrics = bc_loss(enc, self.nets, self.cfg)
        loss = self.with_auxiliary(loss, metrics)  # BC's loss trains the encoder
        self.optimize("actor", loss)
        self.step += 1
        return self.metrics(metrics)
