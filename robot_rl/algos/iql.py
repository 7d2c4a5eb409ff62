"""Implicit Q-Learning (IQL; Kostrikov, Nair & Levine, 2021, "Offline RL with Implicit Q-Learning").

Equations (``docs/algorithms.md``, "IQL"), ``u = Q̄(s, a) − V(s)``, ``Q̄ = min_i Q̄_i``::

    L_V(ψ) = E_D[ L₂^τ(Q̄(s, a) − V_ψ(s)) ],            L₂^τ(u) = |τ − 1(u < 0)|·u²      (eq. 5)
    L_Q(θ) = E_D[ Σ_i (r + γ(1 − d)·V_ψ(s') − Q_θi(s, a))² ]                              (eq. 6)
    L_π(φ) = −E_D[ min(exp(β·(Q̄(s, a) − V_ψ(s))), w_max) · log π_φ(a | s) ]               (eq. 7)

No action outside the data is ever queried. ``s``, ``g`` and task ids all come through the one
Batch; the goal-conditioned form (GCIQL, as ogbench ``impls/agents/gciql.py``) is the same
equations with features of ``(s, g)``.

Choices and deviations:
- One critic step on ``L_V + L_Q`` (both train the shared encoder); the reference steps V then Q
  with separate optimizers. Adam is per-parameter, so this differs only in the encoder, which
  gets the sum of both gradients (as ogbench does with one total loss).
- The actor is ``N(tanh μ(s), σ(s)²)`` (``heads.GaussianActor``; the reference: a Gaussian with a tanh
  mean and a state-independent std), whose log-density is finite at dataset actions of ±1;
  ``actor_distribution="tanh_gaussian"`` gives the squashed head instead. It reads detached features
  (of this update's single encoder pass) and
  the advantage under V after this step's value update (the reference also steps V first).
- ``mc_lower_bound`` (off by default): Q's target is ``max(r + γ(1 − d)·V(s'), G)``, G the data's
  Monte-Carlo return (``qtopt.py`` explains why this is a lower bound of Q* in a deterministic
  simulator and what it buys on long-horizon goals).
- ``beta`` defaults to 20, not the paper's 3 (locomotion) or 10 (AntMaze): with robot-rl's sparse
  0/1 rewards Q lies in [0, 1] and advantages are a few hundredths, so β = 3 weights every dataset
  action almost alike (behaviour cloning of noisy data). On tabletop reach_red from states (300
  episodes, 5,000 updates, 100 held-out seeds): β = 3: 0.87, 10: 0.96, 20: 0.99 success.
- ``actor_loss="ddpgbc"`` (OGBench's GCIQL actor; Fujimoto & Gu, 2021) replaces eq. 7 by

      L_π(φ) = −E[Q(s, μ_φ(s)) / stopgrad(E|Q(s, μ_φ(s))|)] + α·E[½‖μ_φ(s) − a‖²]

  with μ the actor's mode and Q the online critics' minimum (only the actor steps): the BC term is
  OGBench's −α·log π(a|s) under its constant unit standard deviation, up to a constant. The actor's
  σ is then untrained (deterministic evaluation reads μ).
- ``reward_offset`` shifts every reward of the TD target: −1 gives OGBench's ``r = success − 1``
  (success ends the episode, so Q counts the negative number of steps to the goal); affine in Q
  to robot-rl's 0/1 reward, but it changes the scale the expectile and the actor see.
- Goals for the actor (``Batch.actor_goals``): the sampler's separate actor goals when drawn
  (``RelabelConfig.actor_goals``, OGBench's uniform future goals), else the rows' own goals.
- ``Q̄`` in ``L_V`` and ``L_π`` is the Polyak target ensemble (as the reference), reading the
  online encoder's features (``base.py``: there is no target encoder).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from data_lake.batch import FINAL, FUTURE, NEGATIVE, Batch
from robot_rl.algos.base import (
    AlgoConfig,
    BaseAlgorithm,
    Encoded,
    Nets,
    encode,
    encode_goals,
    make_optimizer,
    polyak_update,
)
from robot_rl.nets import ObservationSpec, ValueNetwork, make_actor
from robot_rl.nets.heads import check_actor_distribution


@dataclasses.dataclass(frozen=True)
class IQLConfig(AlgoConfig):
    expectile: float = 0.7  # τ of L₂^τ
    beta: float = 20.0  # inverse temperature of the advantage weights (see the module docstring)
    max_weight: float = 100.0  # w_max: exp-advantage weights are clipped here
    num_critics: int = 2
    mc_lower_bound: bool = False  # Q's target max(r + γ(1 − d)·V(s'), the data's Monte-Carlo return)
    actor_distribution: str = "gaussian"  # "gaussian": N(tanh μ, σ²) | "tanh_gaussian": tanh(N(μ, σ²))
    actor_loss: str = "awr"  # "awr": eq. 7 | "ddpgbc": DDPG + α·BC (OGBench's GCIQL)
    alpha: float = 0.3  # BC coefficient of the DDPG+BC actor
    reward_offset: float = 0.0  # added to every reward in the TD target (-1: OGBench's success − 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_actor_distribution(self.actor_distribution)
        if self.actor_loss not in ("awr", "ddpgbc"):
            raise ValueError(f"actor_loss must be 'awr' or 'ddpgbc', got {self.actor_loss!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.reward_offset != 0 and self.mc_lower_bound:
            raise ValueError("mc_lower_bound reads 0/1-reward returns: it cannot be combined with reward_offset")
        if not 0 < self.expectile < 1:
            raise ValueError(f"expectile must be in (0, 1), got {self.expectile}")
        if self.beta < 0 or self.max_weight <= 0:
            raise ValueError(f"beta must be >= 0 and max_weight > 0, got {self.beta}, {self.max_weight}")
        if self.num_critics < 1:
            raise ValueError(f"num_critics must be >= 1, got {self.num_critics}")


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """L₂^τ(u) = |τ − 1(u < 0)|·u², elementwise."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.pow(2)


def value_loss(enc: Encoded, nets: Nets, cfg: IQLConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_V = E[L₂^τ(Q̄(s, a) − V(s))] (eq. 5); V trains the encoder."""
    with torch.no_grad():
        target_q = nets.target_critic(enc.features.detach(), enc.batch.actions).min(0).values  # (B,)
    v = nets.value(enc.features)  # (B,)
    loss = expectile_loss(target_q - v, cfg.expectile).mean()
    return loss, {"value/loss": loss.detach(), "value/v": v.mean().detach(), "value/target_q": target_q.mean()}


def critic_loss(enc: Encoded, nets: Nets, cfg: IQLConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = E[Σ_i (r + γ(1 − d)·V(s') − Q_i(s, a))²] (eq. 6)."""
    b = enc.batch
    with torch.no_grad():
        next_v = nets.value(enc.next_features)  # (B,)
        td_target = b.rewards + cfg.reward_offset + cfg.gamma * (1.0 - b.terminals) * next_v  # (B,)
        if cfg.mc_lower_bound:
            td_target = torch.maximum(td_target, b.mc_returns)  # (B,)
    q = nets.critic(enc.features, b.actions)  # (N, B)
    td_loss = (q - td_target).pow(2).mean(1).sum()
    metrics = {
        "critic/td_loss": td_loss.detach(),
        "critic/q": q.mean().detach(),
        "critic/td_target": td_target.mean(),
    }
    return td_loss, metrics


def actor_loss(enc: Encoded, nets: Nets, cfg: IQLConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π = −E[min(exp(β·(Q̄(s, a) − V(s))), w_max)·log π(a | s)] (eq. 7), on detached features.

    Rows whose goal comes from another episode (``NEGATIVE``) get weight 0: the data never reached that
    goal, so its action demonstrates nothing about it (as GC-BC, and ogbench's GCIQL, which draws the
    actor's goals from the row's own trajectory only). They still train V and Q.
    """
    b = enc.batch
    features, actions = enc.features.detach(), b.actions  # (B, F), (B, A)
    with torch.no_grad():
        advantage = nets.target_critic(features, actions).min(0).values - nets.value(features)  # (B,)
        weight = torch.exp(cfg.beta * advantage).clamp(max=cfg.max_weight)  # (B,)
        if b.goals is not None:
            own = (b.goal_source != NEGATIVE).float()  # (B,)
            weight = weight * own * len(own) / own.sum().clamp_min(1.0)  # mean over the kept rows
    return weighted_log_likelihood(nets.actor(features), actions, weight, advantage, cfg.max_weight)


def ddpg_bc_actor_loss(
    features: torch.Tensor, actions: torch.Tensor, nets: Nets, cfg: IQLConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π = −E[Q(s, μ(s))] / E|Q(s, μ(s))| + α·E[½‖μ(s) − a‖²] (DDPG+BC), features (B, F) detached."""
    mu = nets.actor(features).mode()  # (B, A)
    q = nets.critic(features, mu.clamp(-1.0, 1.0)).min(0).values  # (B,)
    q_loss = -q.mean() / q.abs().mean().detach().clamp_min(1e-6)
    bc_loss = cfg.alpha * 0.5 * (mu - actions).pow(2).sum(-1).mean()
    loss = q_loss + bc_loss
    metrics = {
        "actor/loss": loss.detach(),
        "actor/q_loss": q_loss.detach(),
        "actor/bc_loss": bc_loss.detach(),
        "actor/q": q.mean().detach(),
        "actor/mse": (mu - actions).pow(2).mean().detach(),
    }
    return loss, metrics


def weighted_log_likelihood(
    dist: Any, actions: torch.Tensor, weight: torch.Tensor, advantage: torch.Tensor, max_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """−E[w·log π(a | s)] with the advantage-weighting metrics (IQL eq. 7, AWAC's actor loss)."""
    log_prob = dist.log_prob(actions)  # (B,)
    loss = -(weight * log_prob).mean()
    metrics = {
        "actor/loss": loss.detach(),
        "actor/advantage": advantage.mean(),
        "actor/weight": weight.mean(),
        "actor/weight_clipped": (weight >= max_weight).float().mean(),
        "actor/log_prob": log_prob.mean().detach(),
        "actor/mse": (dist.mode() - actions).pow(2).mean().detach(),
    }
    return loss, metrics


class IQL(BaseAlgorithm):
    name = "iql"
    config_class = IQLConfig
    cfg: IQLConfig

    @classmethod
    def build_actor(cls, cfg: IQLConfig, spec: ObservationSpec, feature_dim: int) -> nn.Module:
        return make_actor(cfg.actor_distribution, feature_dim, spec.action_dim, cfg.hidden)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, spec = self.cfg, self.spec
        nets = self.encoder_and_critic(cfg.num_critics)
        f = self.feature_dim(nets)
        return {
            **nets,
            "value": ValueNetwork(f, cfg.hidden, cfg.layer_norm),
            "actor": self.build_actor(cfg, spec, f),
        }

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        n = self.nets
        return {
            "critic": make_optimizer([n.encoder, n.critic, n.value], self.cfg.critic_lr),
            "actor": make_optimizer([n.actor], self.cfg.actor_lr),
        }

    def update(self, batch: Batch) -> dict[str, float]:
        enc = encode(self.nets.encoder, batch)
        v_loss, v_metrics = value_loss(enc, self.nets, self.cfg)
        q_loss, q_metrics = critic_loss(enc, self.nets, self.cfg)
        self.optimize("critic", self.with_auxiliary(v_loss + q_loss, q_metrics))

        if batch.actor_goals is not None:  # the actor's own goals: features of (s, g_actor)
            enc = dataclasses.replace(enc, features=encode_goals(self.nets.encoder, batch, batch.actor_goals))
        if self.cfg.actor_loss == "ddpgbc":
            f, a = enc.features.detach(), batch.actions  # (B, F), (B, A)
            if batch.goals is not None and batch.actor_goals is None:  # the rows' goals: own-trajectory ones
                keep = (batch.goal_source == FUTURE) | (batch.goal_source == FINAL)  # (B,)
                f, a = f[keep], a[keep]
            pi_loss, pi_metrics = ddpg_bc_actor_loss(f, a, self.nets, self.cfg)
        else:
            pi_loss, pi_metrics = actor_loss(enc, self.nets, self.cfg)
        self.optimize("actor", pi_loss)

        polyak_update(self.nets.target_critic, self.nets.critic, self.cfg.tau)
        self.step += 1
        return self.metrics({**v_metrics, **q_metrics, **pi_metrics})
