"""UWAC (Wu et al., 2021, "Uncertainty Weighted Actor-Critic for Offline Reinforcement Learning").

BEAR (``bear.py``) whose critic and actor losses down-weight state-action pairs with uncertain
Q-values, the uncertainty measured by Monte-Carlo dropout in the critic. Reference code: apple/ml-uwac
(``rlkit/torch/sac/uwac_dropout.py``, ``rlkit/torch/networks.py::FlattenDropout_Mlp``).
Equations (``docs/algorithms.md``, "UWAC"), ``Q^t`` the t-th of T stochastic (dropout) passes,
``ens_λ(Q) = λ·min_j Q_j + (1 − λ)·max_j Q_j``::

    Var[Q_j](s, a) = 1/(T − 1)·Σ_t (Q_j^t(s, a) − mean_t Q_j^t(s, a))²
    w(v)       = clip(β / v, 0, w_max)
    y          = r + γ(1 − d)·max_i ens_λ(Q̄(s', a'_i)),   a'_i ~ π(·|s'),  a'* the maximizing a'_i    (BEAR's)
    L_Q        = Σ_j E_D[ w((1 − d)·Σ_j Var[Q̄_j](s', a'*)) · (Q_j^drop(s, a) − y)² ]   (Q^drop: one dropout pass)
    L_π        = E_s[ −(1/n)·Σ_k w(Σ_j Var[Q_j](s, a_k))·min_j Q_j(s, a_k) + α·(MMD(s) − ε) ]   (w detached)
    VAE, MMD, α: as BEAR

Defaults as the reference's D4RL script: dropout 0.1, w ∈ [0, 1], the Gaussian kernel with σ = 20,
ε = 0.07, n = 4 MMD samples, actor rate 1e-4; T = 10 passes (the reference: 100) and β = 0.005 (the
reference: 0.5), both explained below.

Choices and deviations:
- MC dropout on cached embeddings: the T passes run only the critic head, and only from its second
  layer: the first layer's pre-activation (``W_f·f`` once per state, plus ``W_a·a``) does not depend
  on the masks. Each pass is one sampled network (a mask per pass and hidden layer, shared by every
  row; the reference draws a mask per row), drawn from the algorithm's generator so resumes are
  bitwise. The critic's training pass draws a mask per row. Without a generator (acting,
  ``q_estimate``) the critic is deterministic (inverted dropout: the standard weight-scaling
  approximation of the MC mean).
- The T passes estimate only the variance, without gradient; the values in y and in L_π come from
  the deterministic critic (the reference uses the mean of its passes, with gradient). The target's
  variance is taken at its maximizing action a'* (the reference: the largest variance among the m
  samples, each of 100 passes). Together this costs B·(m + T) target rows instead of B·m·T.
- T = 10 passes instead of 100 (the variance of 10 draws ranks pairs alike at a tenth of the cost).
- The weight multiplies the squared error, ``w·(Q − y)²``, as in the paper; the reference squares it
  (``((Q − y)·w)²``). ``β / Var`` as in the paper; the reference's script defaults to ``exp(−β·Var)``.
- Terminal rows (``d = 1``) bootstrap nothing, so their weight ignores ``Var[Q̄(s', ·)]`` (the reference
  weights them by it too): with 0/1 rewards those are the success transitions.
- β = 0.005 instead of 0.5: β is on the scale of Var[Q], and the reference's is for D4RL returns in
  the hundreds. With robot-rl's 0/1 rewards (Q ≤ 1) dropout variances are about 1e-3, so β = 0.5 puts
  every weight at w_max and UWAC is BEAR with a dropout critic (point-mass learning check: 0.27-0.29
  success on a seed where β = 0.002-0.005, mean weights 0.6-0.95, reach 0.67-0.92).
- No spectral norm on the critic (the reference's ``--SN``), no Q penalty (its default 0).
- Everything else, including its deviations, is BEAR's (``bear.py``): the loss pieces are imported.
"""

from __future__ import annotations

import dataclasses
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from robot_rl.algos.base import Encoded, Nets
from robot_rl.algos.bear import (
    BEAR,
    BEARConfig,
    bellman_loss,
    constrained_actor_loss,
    ensemble_q,
    next_actions,
    support_samples,
)
from robot_rl.nets import Critic


@dataclasses.dataclass(frozen=True)
class UWACConfig(BEARConfig):
    """BEAR's fields with the UWAC reference's defaults, plus the dropout uncertainty's:"""

    actor_lr: float = 1e-4
    kernel: str = "gaussian"
    mmd_sigma: float = 20.0
    epsilon: float = 0.07
    num_mmd_samples: int = 4
    dropout: float = 0.1  # p of the critic's dropout (after every hidden ReLU)
    mc_passes: int = 10  # T stochastic passes per Var[Q]
    beta: float = 0.005  # β of w = clip(β / Var, 0, w_max), on the scale of Var[Q] (see the docstring)
    max_weight: float = 1.0  # w_max
    weight_actor: bool = True  # weight the actor's Q term too (the reference's var_Pi)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.dropout < 1:
            raise ValueError(f"dropout must be in (0, 1): MC dropout needs stochastic passes, got {self.dropout}")
        if self.mc_passes < 2:
            raise ValueError(f"mc_passes must be >= 2 to estimate a variance, got {self.mc_passes}")
        if self.beta <= 0 or self.max_weight <= 0:
            raise ValueError(f"beta and max_weight must be > 0, got {self.beta}, {self.max_weight}")


class DropoutCritic(Critic):
    """``heads.Critic`` with inverted dropout after every hidden ReLU, active only when given a generator
    (the masks come from it); ``forward`` and generator-less calls are deterministic.

    ``q_values(..., generator=g)`` is one training pass (a mask per row); ``mc_q_values`` runs T passes, each
    a network sampled once (one mask per pass and layer, shared by every row, as MC dropout samples
    weights). Both keep ``Critic.q_values``'s split first layer (``W_f·f`` once per state); its
    pre-activation does not depend on the masks, so T passes compute it once.
    """

    def __init__(
        self, feature_dim: int, action_dim: int, hidden: tuple[int, ...], n: int, layer_norm: bool, dropout: float
    ) -> None:
        super().__init__(feature_dim, action_dim, hidden, n, layer_norm)
        self.dropout = dropout

    def dropout_layers(self, x: torch.Tensor, passes: int, per_row: bool, generator: torch.Generator) -> torch.Tensor:
        """The remaining layers on first-layer pre-activations x (N, R, H) with a mask after every hidden ReLU:
        per row (one pass) or per pass (shared by the R rows) -> (N, R, T). The first ReLU runs once, before
        the T passes fan out."""
        N, R, _ = x.shape
        keep = 1.0 - self.dropout
        x = x.unsqueeze(2)  # (N, R, 1, H): broadcast over the T passes by the first mask
        for i, layer in enumerate([*self.hidden[1:], self.out]):
            if self.layer_norm:
                x = F.layer_norm(x, x.shape[-1:])
            shape = (N, R, 1, x.shape[-1]) if per_row else (N, 1, passes, x.shape[-1])
            mask = (torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype) < keep).to(x.dtype) / keep
            if i > 0 and not (torch.is_grad_enabled() and x.requires_grad):
                h = x.relu_().mul_(mask)  # (N, R, T, H) in place: no graph holds x (saves two big temporaries)
            else:
                h = F.relu(x) * mask  # (N, R, T, H)
            x = torch.baddbmm(layer.bias, h.reshape(N, R * passes, -1), layer.weight).view(N, R, passes, -1)
        return x.squeeze(-1)  # (N, R, T)

    def q_values(
        self,
        features: torch.Tensor,
        actions: torch.Tensor,
        members: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """features (B, F) cached, actions (B, M, A) -> Q (N, B, M); one dropout pass with ``generator``."""
        if generator is None:
            return super().q_values(features, actions, members)
        if members is not None:
            raise ValueError("a dropout pass evaluates every member: pass members=None with a generator")
        B, M, _ = actions.shape
        q = self.dropout_layers(self.first_layer(features, actions), 1, True, generator)  # (N, B·M, 1)
        return q.view(self.n, B, M)

    def mc_q_values(
        self, features: torch.Tensor, actions: torch.Tensor, passes: int, generator: torch.Generator
    ) -> torch.Tensor:
        """T stochastic passes: features (B, F) cached, actions (B, M, A) -> Q^t (N, B, M, T)."""
        B, M, _ = actions.shape
        q = self.dropout_layers(self.first_layer(features, actions), passes, False, generator)  # (N, B·M, T)
        return q.view(self.n, B, M, passes)


def dropout_critic(nets: Nets, name: str) -> DropoutCritic:
    """``nets[name]``, a DropoutCritic (``critic`` or ``target_critic``; unchecked: loss tests pass stubs)."""
    return cast(DropoutCritic, nets[name])


@torch.no_grad()
def mc_variance(
    critic: DropoutCritic, features: torch.Tensor, actions: torch.Tensor, passes: int, rng: torch.Generator
) -> torch.Tensor:
    """Var[Q] over T dropout passes of the critic head alone, no gradient: features (B, F) cached, actions
    (B, M, A) -> unbiased variance (N, B, M)."""
    return critic.mc_q_values(features, actions, passes, rng).var(-1)  # (N, B, M)


def uncertainty_weight(variance: torch.Tensor, cfg: UWACConfig) -> torch.Tensor:
    """w = clip(β / Var, 0, w_max), elementwise (a zero variance gets w_max)."""
    return (cfg.beta / variance).clamp(0.0, cfg.max_weight)


def critic_loss(
    enc: Encoded, nets: Nets, cfg: UWACConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_j E[w·(Q_j(s, a) − y)²]: BEAR's target, rows weighted by Var[Q̄(s', a'*)] at the target's action."""
    b = enc.batch
    with torch.no_grad():
        next_a = next_actions(enc, nets, cfg.num_target_samples, rng)  # (B, m, A)
        next_features = enc.require_next()  # (B, F)
        next_q = nets.target_critic.q_values(next_features, next_a)  # (N, B, m), deterministic
        next_v, best = ensemble_q(next_q, cfg.lmbda).max(1)  # (B,), (B,)
        best_a = next_a[torch.arange(len(best), device=best.device), best].unsqueeze(1)  # (B, 1, A): a'*
        not_done = 1.0 - b.terminals  # (B,)
        td_target = b.rewards + cfg.gamma * not_done * next_v  # (B,)
        target_critic = dropout_critic(nets, "target_critic")
        var = mc_variance(target_critic, next_features, best_a, cfg.mc_passes, rng)  # (N, B, 1)
        target_var = not_done * var.sum(0)[:, 0]  # (B,)
        weight = uncertainty_weight(target_var, cfg)  # (B,)
    critic = dropout_critic(nets, "critic")
    q = critic.q_values(enc.features, b.actions.unsqueeze(1), generator=rng)[..., 0]  # (N, B), one pass
    loss, metrics = bellman_loss(q, td_target, weight)
    metrics |= {"uwac/target_var": target_var.mean(), "uwac/critic_weight": weight.mean()}
    return loss, metrics


def actor_loss(
    enc: Encoded, nets: Nets, cfg: UWACConfig, rng: torch.Generator, q_start: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BEAR's L_π with the value term w(Σ_j Var[Q_j(s, a_k)])·min_j Q_j(s, a_k), on detached features."""
    features = enc.features.detach()  # (B, F)
    actions, mmd_ = support_samples(features, nets, cfg, rng)  # (B, n, A), (B,)
    q = nets.critic.q_values(features, actions).min(0).values  # (B, n), deterministic
    if cfg.weight_actor:
        critic = dropout_critic(nets, "critic")
        var = mc_variance(critic, features, actions.detach(), cfg.mc_passes, rng).sum(0)  # (B, n)
        weight = uncertainty_weight(var, cfg)  # (B, n)
    else:
        var, weight = torch.zeros_like(q.detach()), torch.ones_like(q.detach())  # (B, n)
    loss, metrics = constrained_actor_loss(weight * q, mmd_, nets, cfg, q_start)
    metrics |= {"uwac/policy_var": var.mean(), "uwac/actor_weight": weight.mean()}
    return loss, metrics


class UWAC(BEAR):
    """BEAR with a dropout critic and uncertainty-weighted critic and actor losses."""

    name = "uwac"
    config_class = UWACConfig
    cfg: UWACConfig

    def build_critic_networks(self) -> dict[str, nn.Module]:
        cfg, encoder = self.cfg, self.encoder()
        critic = DropoutCritic(
            encoder.out_dim, self.spec.action_dim, cfg.hidden, cfg.num_critics, cfg.layer_norm, cfg.dropout
        )
        return {"encoder": encoder, "critic": critic, "target_critic": self.target(critic)}

    def critic_objective(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return critic_loss(enc, self.nets, self.cfg, self.rng)

    def actor_objective(self, enc: Encoded, q_start: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return actor_loss(enc, self.nets, self.cfg, self.rng, q_start)
