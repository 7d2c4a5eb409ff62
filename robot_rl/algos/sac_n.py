"""SAC-N (An, Moon, Kim & Song, 2021, "Uncertainty-Based Offline RL with Diversified Q-Ensemble"): SAC with N critics.

Pessimism from the ensemble alone: with enough critics, the minimum over them is a lower confidence
bound that penalizes actions outside the data (the paper's SAC-N, reference: snu-mllab/EDAC and
CORL ``sac_n.py``). Equations, ``Q̄`` the Polyak target ensemble, ``α`` the entropy temperature::

    y      = r + γ(1 − d)·( min_{j=1..N} Q̄_j(s', a') − α·log π(a'|s') ),   a' ~ π(·|s')
    L_Q    = Σ_{i=1..N} E_D[(Q_i(s, a) − y)²]
    L_π    = E_s[ α·log π(ã|s) − min_{j=1..N} Q_j(s, ã) ],   ã ~ π(·|s) reparameterized
    L_α    = −log α·(log π(ã|s) + H_target),   H_target = −dim(A)

EDAC (``edac.py``) is this algorithm plus a gradient-diversity term on ``L_Q``.

Built on ``sac.py``: the soft backup (``soft_td_target``), ``actor_loss`` and ``temperature_loss`` are
SAC's; the N critics are one batched module (``heads.Critic``: one ``baddbmm`` per layer for all N).

Choices and deviations:
- ``L_Q`` is the reference's plain squared error summed over critics (``sac.py`` halves it), so EDAC's
  η weighs the diversity term against the same TD scale as the reference.
- Update order as the reference (which found it better than SAC's critic → actor → α): actor, then
  temperature, then critic and targets. The reference steps α before the actor on a fresh sample;
  here α steps right after the actor on the actor's own samples (one sampling fewer): the actor
  step uses α before that step (one Adam step of ``alpha_lr`` on log α earlier).
- Defaults as the reference: N = 10, three hidden layers of 256, learning rates 3e-4, α starts at 1.
  The paper tunes N per task (up to 500 on some D4RL tasks); raise ``num_critics`` for harder data.
- Networks use PyTorch's default initialization (the reference sets hidden biases to 0.1 and the
  output layers to U(±3e-3)); the actor is ``heads.TanhGaussianActor`` (one linear layer for mean and
  log σ; the reference has two).
- Encode once (``base.py``): the critic loss trains the encoder; the actor reads detached features;
  the target critic reads the online encoder's detached ``s'`` embedding (no target encoder).
"""

from __future__ import annotations

import dataclasses

import torch

from data_lake.batch import Batch
from robot_rl.algos.base import Encoded, Nets, encode, polyak_update
from robot_rl.algos.sac import SAC, SACConfig, actor_loss, soft_td_target, temperature_loss


@dataclasses.dataclass(frozen=True)
class SACNConfig(SACConfig):
    """SAC's fields with the paper's defaults: N = 10 critics, 3 × 256 hidden layers."""

    hidden: tuple[int, ...] = (256, 256, 256)
    num_critics: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_critics < 2:
            raise ValueError(
                f"SAC-N's pessimism is the minimum over an ensemble: num_critics must be >= 2, got {self.num_critics}"
            )


def ensemble_td_loss(q: torch.Tensor, td_target: torch.Tensor) -> torch.Tensor:
    """Σ_i E_B[(Q_i − y)²] for q (N, B) and y (B,)."""
    return (q - td_target).pow(2).mean(1).sum()


def critic_loss(
    enc: Encoded, nets: Nets, cfg: SACNConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_i E[(Q_i(s, a) − y)²], y the soft backup with the minimum over all N target critics."""
    alpha = nets.log_alpha().exp().detach() if cfg.backup_entropy else None
    td_target, _ = soft_td_target(enc, nets, cfg.gamma, rng, alpha)  # (B,)
    q = nets.critic(enc.features, enc.batch.actions)  # (N, B)
    td_loss = ensemble_td_loss(q, td_target)
    return td_loss, critic_metrics(q, td_target, td_loss)


def critic_metrics(q: torch.Tensor, td_target: torch.Tensor, td_loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """TD loss, mean Q of the data, its spread over the ensemble, and the target, all detached."""
    q = q.detach()  # (N, B)
    return {
        "critic/td_loss": td_loss.detach(),
        "critic/q_data": q.mean(),
        "critic/q_std": q.std(0).mean(),  # disagreement of the N critics on data actions
        "critic/td_target": td_target.mean(),
    }


class SACN(SAC):
    """SAC's networks and losses with N critics; the reference's update order (actor, α, critic)."""

    name = "sac_n"
    config_class = SACNConfig
    cfg: SACNConfig

    def critic_objective(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return critic_loss(enc, self.nets, self.cfg, self.rng)

    def update(self, batch: Batch) -> dict[str, float]:
        cfg, nets = self.cfg, self.nets
        enc = encode(nets.encoder, batch)
        pi_loss, metrics = actor_loss(enc, nets, cfg, self.rng)
        self.optimize("actor", pi_loss)
        if cfg.auto_entropy:
            self.optimize("alpha", temperature_loss(metrics["actor/entropy"], nets, self.target_entropy))

        q_loss, q_metrics = self.critic_objective(enc)
        self.optimize("critic", self.with_auxiliary(q_loss, q_metrics))
        polyak_update(nets.target_critic, nets.critic, cfg.tau)
        self.step += 1
        return self.metrics({**q_metrics, **metrics})
