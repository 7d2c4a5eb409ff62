"""BEAR (Kumar, Fu, Tucker & Levine, 2019, "Stabilizing Off-Policy Q-Learning via Bootstrapping Error Reduction").

Support matching: the actor maximizes the ensemble's conservative value under a constraint that its
action distribution stays within the support of the data's, measured by a sampled MMD to a VAE of
the data's actions. Reference code: aviralkumar2907/BEAR (``algos.py::BEAR``) and its rlkit port
(apple/ml-uwac ``rlkit/torch/sac/bear.py``, which produced the D4RL numbers).
Equations (``docs/algorithms.md``, "BEAR"), ``Q̄_j`` the Polyak target ensemble, ``e`` the embedding::

    G_ω(s)   conditional VAE of the data's actions (``nets/vae.py``): L_VAE = ‖a − â‖² + ½·KL(N(μ, σ) ‖ N(0, I))
    y        = r + γ(1 − d)·max_{i=1..m} [ λ·min_j Q̄_j(s', a'_i) + (1 − λ)·max_j Q̄_j(s', a'_i) ],  a'_i ~ π(·|s')
    L_Q      = Σ_j E_D[ (Q_j(s, a) − y)² ]
    MMD(s)   = sqrt(MMD²({u_k}, {v_k}) + 1e-6),   u_k pre-tanh samples of π(·|s), v_k pre-tanh samples of G_ω(s)
    L_π      = E_s[ −(1/n)·Σ_k min_j Q_j(s, tanh u_k) + α·(MMD(s) − ε) ]                  (α detached)
    L_α      = −α·(E_s[MMD(s)] − ε),   α = exp(log α),  log α clipped to [log_alpha_min, log_alpha_max]

MMD kernels (``divergences.py``): Laplacian ``exp(−‖x − y‖₁ / (2σ))`` or Gaussian ``exp(−‖x − y‖² / (2σ))``,
σ as in the reference's code. Defaults: the reference README's (Laplacian, σ = 10, n = 5 samples,
ε = 0.05, log α ≤ 10), λ = 0.75 and m = 10 target samples (BCQ's), the VAE of BCQ (750, 750).
One update: the VAE step, the critic step, the actor step, the α step, then the Polyak target.

Choices and deviations:
- Encode once (``base.py``): the critic trains the encoder; the VAE and the actor read detached
  features; the target reads the online encoder's detached ``s'`` embedding. The m target actions
  and the n actor / VAE samples are scored on the cached embeddings (``Critic.q_values``, ``PairMLP``).
- MMD on pre-tanh actions (the reference's "to prevent gradient dying out due to saturation"): the
  actor's ``u`` and the VAE decoder's output before its tanh.
- Target actions come from the online actor (the rlkit port; the original keeps a target actor).
- The actor's Q term is the mean over the same n samples the MMD uses (the original; the rlkit
  port scores one); no ensemble-variance term (the README's ``lamda=0``, ``use_ensemble_variance=False``).
- ``warmup_steps`` (default 0): the reference trains the actor on the MMD term alone for its first
  20 "epochs" (rlkit: 40,000 steps); the Q term is multiplied by 0 before ``warmup_steps``, so the
  update costs the same throughout.
- ε = 0.05 (the reference's) lies below the sampled MMD's floor: for n samples of one distribution the
  estimate is about ``2·(1 − E k(x, x'))/n > 0`` (MMD 0.1-0.2 here for n = 5), so the constraint rarely
  holds and log α climbs to its clip, as in the reference. A larger ε lets α settle (the point-mass
  learning check uses 0.25).
- log α starts at ``log_alpha_init`` = 0 (the rlkit port; the original draws it from N(0, 1)).
- Acting: ``π``'s mode ``tanh(μ(s))``; the reference's ``select_action`` takes the best of 10 samples
  by Q_1, which would put the critic into the deployed policy.
- Critics use the repo's ``hidden`` (256, 256), not the reference's (400, 300).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import AlgoConfig, BaseAlgorithm, Encoded, Nets, Scalar, encode, make_optimizer, polyak_update
from robot_rl.algos.bcq import vae_of
from robot_rl.algos.divergences import check_kernel, clip_log_alpha, lagrange_loss, mmd, raw_policy_samples, vae_samples
from robot_rl.nets import ConditionalVAE, ObservationSpec, TanhGaussianActor, check_vae_settings, vae_loss


@dataclasses.dataclass(frozen=True)
class BEARConfig(AlgoConfig):
    num_critics: int = 2
    lmbda: float = 0.75  # λ of the soft clipped double-Q target
    num_target_samples: int = 10  # m actions of π(s') the target maximizes over
    num_mmd_samples: int = 5  # n samples each of π(s) and G_ω(s) in the sampled MMD
    kernel: str = "laplacian"  # "laplacian" | "gaussian"
    mmd_sigma: float = 10.0  # σ of the kernel (the reference's parametrization, see divergences.py)
    epsilon: float = 0.05  # ε: the MMD threshold of the constraint
    log_alpha_init: float = 0.0
    alpha_lr: float = 1e-3  # Adam rate of log α (dual ascent)
    log_alpha_min: float = -5.0
    log_alpha_max: float = 10.0  # the reference's lagrange_thresh
    warmup_steps: int = 0  # updates whose actor loss is the MMD term alone
    vae_hidden: tuple[int, ...] = (750, 750)
    latent_dim: int | None = None  # None: 2·dim(A)
    vae_lr: float = 3e-4
    kl_weight: float = 0.5  # of KL in L_VAE

    def __post_init__(self) -> None:
        super().__post_init__()
        check_kernel(self.kernel)
        if min(self.num_critics, self.num_target_samples, self.num_mmd_samples) < 1:
            raise ValueError(
                f"num_critics, num_target_samples and num_mmd_samples must be >= 1, got "
                f"{self.num_critics}, {self.num_target_samples}, {self.num_mmd_samples}"
            )
        if not 0 <= self.lmbda <= 1:
            raise ValueError(f"lmbda must be in [0, 1], got {self.lmbda}")
        if self.mmd_sigma <= 0 or self.epsilon < 0 or self.alpha_lr <= 0:
            raise ValueError(
                f"mmd_sigma and alpha_lr must be > 0 and epsilon >= 0, got {self.mmd_sigma}, {self.alpha_lr}, "
                f"{self.epsilon}"
            )
        if not self.log_alpha_min <= self.log_alpha_init <= self.log_alpha_max:
            raise ValueError(
                f"need log_alpha_min <= log_alpha_init <= log_alpha_max, got "
                f"{self.log_alpha_min}, {self.log_alpha_init}, {self.log_alpha_max}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check_vae_settings(self.vae_hidden, self.latent_dim, self.vae_lr, self.kl_weight)


def bear_vae_loss(
    enc: Encoded, nets: Nets, cfg: BEARConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_VAE = ‖a − â‖² + ½·KL on the detached embedding of s (``nets/vae.py``)."""
    return vae_loss(vae_of(nets), enc.features.detach(), enc.batch.actions, cfg.kl_weight, rng)


def ensemble_q(q: torch.Tensor, lmbda: float) -> torch.Tensor:
    """λ·min_j Q_j + (1 − λ)·max_j Q_j over the ensemble of Q (N, B, n) -> (B, n) (BCQ's soft clipped double-Q
    before its max over samples; BRAC's ``ensemble_q_lambda``)."""
    return lmbda * q.min(0).values + (1.0 - lmbda) * q.max(0).values  # (B, n)


def next_actions(enc: Encoded, nets: Nets, num: int, rng: torch.Generator) -> torch.Tensor:
    """m samples of π(·|s') on the cached s' embedding, no gradient -> (B, m, A)."""
    with torch.no_grad():
        return nets.actor(enc.require_next()).sample(num, rng)[0]  # (B, m, A)


def bellman_loss(
    q: torch.Tensor, td_target: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ_j E[w·(Q_j(s, a) − y)²] for Q (N, B), y (B,) and optional row weights w (B,) (UWAC's)."""
    sq = (q - td_target).pow(2)  # (N, B)
    td_loss = (sq if weight is None else weight * sq).mean(1).sum()
    metrics = {
        "critic/td_loss": td_loss.detach(),
        "critic/q_data": q.mean().detach(),
        "critic/td_target": td_target.mean().detach(),
    }
    return td_loss, metrics


def critic_loss(
    enc: Encoded, nets: Nets, cfg: BEARConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_j E[(Q_j(s, a) − y)²], y the soft clipped double-Q target over m samples of π(s')."""
    b = enc.batch
    with torch.no_grad():
        next_a = next_actions(enc, nets, cfg.num_target_samples, rng)  # (B, m, A)
        next_q = nets.target_critic.q_values(enc.require_next(), next_a)  # (N, B, m), cached s' embedding
        next_v = ensemble_q(next_q, cfg.lmbda).max(1).values  # (B,)
        td_target = b.rewards + cfg.gamma * (1.0 - b.terminals) * next_v  # (B,)
    return bellman_loss(nets.critic(enc.features, b.actions), td_target)  # Q (N, B)


def support_samples(
    features: torch.Tensor, nets: Nets, cfg: BEARConfig, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n reparameterized actions of π(·|s) (B, n, A) and MMD(s) (B,) to n samples of G_ω(s), features (B, F)."""
    u, actions = raw_policy_samples(nets.actor(features), cfg.num_mmd_samples, rng)  # (B, n, A) each
    behavior_raw, _ = vae_samples(vae_of(nets), features, cfg.num_mmd_samples, rng)  # (B, n, A), no gradient
    return actions, mmd(u, behavior_raw, cfg.kernel, cfg.mmd_sigma, sqrt=True)  # (B, n, A), (B,)


def constrained_actor_loss(
    q: torch.Tensor, mmd_: torch.Tensor, nets: Nets, cfg: BEARConfig, q_start: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π = E_s[−q_start·mean_k q(s, a_k) + α·(MMD(s) − ε)] for the value term q (B, n) and MMD (B,)."""
    alpha = nets.log_alpha().exp().detach()
    loss = (-q_start * q.mean(1) + alpha * (mmd_ - cfg.epsilon)).mean()
    metrics = {
        "actor/loss": loss.detach(),
        "actor/q": q.mean().detach(),
        "bear/mmd": mmd_.mean().detach(),
        "bear/alpha": alpha,
    }
    return loss, metrics


def actor_loss(
    enc: Encoded, nets: Nets, cfg: BEARConfig, rng: torch.Generator, q_start: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_π with the value term min_j Q_j(s, a_k) of the n MMD samples, on detached features."""
    features = enc.features.detach()  # (B, F)
    actions, mmd_ = support_samples(features, nets, cfg, rng)  # (B, n, A), (B,)
    q = nets.critic.q_values(features, actions).min(0).values  # (B, n)
    return constrained_actor_loss(q, mmd_, nets, cfg, q_start)


def alpha_loss(mmd_: torch.Tensor, nets: Nets, cfg: BEARConfig) -> torch.Tensor:
    """L_α = −α·(E[MMD] − ε) (dual ascent on log α; clipped after the step)."""
    return lagrange_loss(nets.log_alpha(), mmd_, cfg.epsilon)


class BEAR(BaseAlgorithm):
    name = "bear"
    config_class = BEARConfig
    cfg: BEARConfig

    @classmethod
    def build_actor(cls, cfg: BEARConfig, spec: ObservationSpec, feature_dim: int) -> nn.Module:
        return TanhGaussianActor(feature_dim, spec.action_dim, cfg.hidden)

    def build_critic_networks(self) -> dict[str, nn.Module]:
        """``encoder``, ``critic`` and ``target_critic`` (UWAC builds a dropout critic here)."""
        return self.encoder_and_critic(self.cfg.num_critics)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, spec = self.cfg, self.spec
        nets = self.build_critic_networks()
        f = self.feature_dim(nets)
        return {
            **nets,
            "vae": ConditionalVAE(f, spec.action_dim, cfg.latent_dim, cfg.vae_hidden),
            "actor": self.build_actor(cfg, spec, f),
            "log_alpha": Scalar(cfg.log_alpha_init),
        }

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        n, cfg = self.nets, self.cfg
        return {
            "vae": make_optimizer([vae_of(n)], cfg.vae_lr),
            "critic": make_optimizer([n.encoder, n.critic], cfg.critic_lr),
            "actor": make_optimizer([n.actor], cfg.actor_lr),
            "alpha": make_optimizer([n.log_alpha], cfg.alpha_lr),
        }

    def critic_objective(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return critic_loss(enc, self.nets, self.cfg, self.rng)

    def actor_objective(self, enc: Encoded, q_start: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return actor_loss(enc, self.nets, self.cfg, self.rng, q_start)

    def update(self, batch: Batch) -> dict[str, float]:
        cfg, nets = self.cfg, self.nets
        enc = encode(nets.encoder, batch)
        v_loss, metrics = bear_vae_loss(enc, nets, cfg, self.rng)
        self.optimize("vae", v_loss)

        q_loss, q_metrics = self.critic_objective(enc)
        self.optimize("critic", self.with_auxiliary(q_loss, q_metrics))

        pi_loss, pi_metrics = self.actor_objective(enc, float(self.step >= cfg.warmup_steps))
        self.optimize("actor", pi_loss)
        self.optimize("alpha", alpha_loss(pi_metrics["bear/mmd"], nets, cfg))
        clip_log_alpha(nets.log_alpha.value, cfg.log_alpha_min, cfg.log_alpha_max)

        polyak_update(nets.target_critic, nets.critic, cfg.tau)
        self.step += 1
        return self.metrics({**metrics, **q_metrics, **pi_metrics})
