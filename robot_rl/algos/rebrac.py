"""ReBRAC (Tarasov et al., 2023): TD3+BC with behaviour penalties in actor and critic target; paper batch 1024.

Tarasov, Kurenkov, Nikulin & Kolesnikov, "Revisiting the Minimalist Approach to Offline Reinforcement
Learning" (reference: CORL ``rebrac.py``). TD3+BC (``td3bc.py``) plus the design choices the paper found
to matter: a BC penalty in the critic's target as well as the actor's loss, LayerNorm in the critics,
deeper networks, larger batches and learning rates. Equations, ``Q̄``, ``π̄`` the Polyak targets, ``a'_D``
the data's action at ``s'``::

    ã'     = clip(π̄(s') + clip(ε, −c, c), −1, 1),   ε ~ N(0, σ²)                  (TD3's smoothing)
    y      = r + γ(1 − d)·( min_i Q̄_i(s', ã') − β_critic·‖ã' − a'_D‖² )
    L_Q    = Σ_i E_D[(Q_i(s, a) − y)²]
    L_π    = E_D[ β_actor·‖π(s) − a‖² − λ·min_i Q_i(s, π(s)) ],   λ = α / E_D|min_i Q_i(s, π(s))|  (λ detached)

The actor and both targets update every ``policy_freq`` critic steps (TD3's delay, step 0 included).

Built on ``td3bc.py``: the config, networks, optimizers and the critic loss are TD3+BC's. The critic
loss runs ``td3bc.critic_loss`` with the target critic wrapped in ``BehaviorPenalty``, which subtracts
``β_critic·‖ã' − a'_D‖²`` from every member's value at the smoothed target action: the penalty is the
same for every member, so ``min_i (Q̄_i − p) = min_i Q̄_i − p`` is exactly the target above.

Defaults (the paper's and the reference's base config): three hidden layers of 256, learning rates
1e-3, LayerNorm critics, β_actor = β_critic = 1 (the paper tunes both per dataset: β_actor in
[5e-4, 1], β_critic in [0, 0.5]), λ normalized (α = 1), σ = 0.2, c = 0.5, delay 2, γ = 0.99,
τ = 5e-3. **Batch size 1024** in the paper: the batch is a pretraining setting here
(``robot-rl pretrain algo=rebrac batch_size=1024``), not an algorithm field.

Choices and deviations:
- ``a'_D`` is ``Batch.next_actions`` (the sampler's action at ``s'``). The last stored step of an
  episode carries no action, so for a transition into it the sampler repeats ``a_t``; with a terminal
  there the penalty is multiplied by ``1 − d = 0``; for a cut-off episode it compares with ``a_t``
  (the reference drops those transitions).
- LayerNorm is the shared critic's (``heads.Critic(layer_norm=True)``: normalization without affine
  parameters before each ReLU; the reference applies LayerNorm with scale and bias after it). The actor
  has none (the reference's default ``actor_ln=False``).
- Networks use PyTorch's default initialization (the reference: hidden biases 0.1, output layers
  U(±1e-3) for the actor and U(±3e-3) for the critic).
- Encode once (``base.py``): the critic trains the encoder; the actor reads detached features; the
  target actor and target critic read the online encoder's detached ``s'`` embedding.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from robot_rl.algos import td3bc
from robot_rl.algos.base import Encoded, Nets
from robot_rl.algos.td3bc import TD3BC, TD3BCConfig


@dataclasses.dataclass(frozen=True)
class ReBRACConfig(TD3BCConfig):
    """TD3+BC's fields with the paper's defaults (``alpha``: λ = α / E|Q|, ReBRAC's α = 1) plus the β's.

    The paper trains with batches of 1024: the batch is a pretraining setting, ``batch_size=1024``.
    """

    hidden: tuple[int, ...] = (256, 256, 256)
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    layer_norm: bool = True  # LayerNorm critics
    alpha: float = 1.0
    beta_actor: float = 1.0  # β_actor: BC penalty in the actor loss
    beta_critic: float = 1.0  # β_critic: BC penalty in the critic target
    normalize_q: bool = True  # λ = α / E|Q|; False: λ = α

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta_actor < 0 or self.beta_critic < 0:
            raise ValueError(f"beta_actor and beta_critic must be >= 0, got {self.beta_actor}, {self.beta_critic}")


class BehaviorPenalty(nn.Module):
    """The target critic minus ``β·‖a − a'_D‖²``: features (B, F), actions (B, A) -> (N, B)."""

    def __init__(self, target_critic: nn.Module, next_actions: torch.Tensor, beta: float):
        super().__init__()
        self.target_critic, self.next_actions, self.beta = target_critic, next_actions, beta
        self.penalty: torch.Tensor | None = None  # (B,) ‖a − a'_D‖² of the last call

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.penalty = (actions - self.next_actions).pow(2).sum(-1)  # (B,)
        return self.target_critic(features, actions) - self.beta * self.penalty  # (N, B)


def critic_loss(
    enc: Encoded, nets: Nets, cfg: ReBRACConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TD3+BC's L_Q to the penalized target y = r + γ(1 − d)·(min_i Q̄_i(s', ã') − β_critic·‖ã' − a'_D‖²)."""
    next_actions = enc.batch.next_actions  # (B, A)
    if next_actions is None:
        raise ValueError(
            "ReBRAC's critic penalty needs the data's next actions (Batch.next_actions): the Sampler fills them; "
            "a hand-built Batch must set next_actions"
        )
    penalized = BehaviorPenalty(nets.target_critic, next_actions, cfg.beta_critic)
    loss, metrics = td3bc.critic_loss(enc, Nets({**nets, "target_critic": penalized}), cfg, rng)
    assert penalized.penalty is not None
    metrics["rebrac/critic_penalty"] = penalized.penalty.mean()
    return loss, metrics


def actor_loss(enc: Encoded, nets: Nets, cfg: ReBRACConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π = E[β_actor·‖π(s) − a‖² − λ·min_i Q_i(s, π(s))], λ = α / E|min_i Q_i| (detached), detached features."""
    features, actions = enc.features.detach(), enc.batch.actions  # (B, F), (B, A)
    pi = nets.actor(features).mode()  # (B, A)
    q = nets.critic(features, pi).min(0).values  # (B,)
    lmbda = cfg.alpha / q.abs().mean().detach().clamp(min=1e-6) if cfg.normalize_q else q.new_tensor(cfg.alpha)
    bc_penalty = (pi - actions).pow(2).sum(-1)  # (B,)
    loss = (cfg.beta_actor * bc_penalty - lmbda * q).mean()
    metrics = {
        "actor/loss": loss.detach(),
        "actor/q": q.mean().detach(),
        "actor/lambda": lmbda,
        "actor/bc_penalty": bc_penalty.mean().detach(),
    }
    return loss, metrics


class ReBRAC(TD3BC):
    """TD3+BC's networks, optimizers and delayed update with ReBRAC's two losses."""

    name = "rebrac"
    config_class = ReBRACConfig
    cfg: ReBRACConfig
    critic_loss = staticmethod(critic_loss)  # type: ignore[assignment]  # ReBRAC's losses take its config
    actor_loss = staticmethod(actor_loss)  # type: ignore[assignment]
