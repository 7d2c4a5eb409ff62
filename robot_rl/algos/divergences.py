"""Behaviour regularization shared by BEAR, UWAC and BRAC: divergences to the data's policy and their pieces.

One place for the estimators the three algorithms import (``bear.py``, ``uwac.py``, ``brac.py``)::

    sampled MMD    MMD²(X, Y) = mean_{i,i'} k(x_i, x_i') − 2·mean_{i,j} k(x_i, y_j) + mean_{j,j'} k(y_j, y_j')
                   laplacian  k(x, y) = exp(−‖x − y‖₁ / (2σ))
                   gaussian   k(x, y) = exp(−‖x − y‖² / (2σ))
                   BEAR constrains MMD = sqrt(MMD² + 1e-6) (``sqrt=True``); BRAC penalizes MMD².
    KL (primal)    D_KL(s) ≈ (1/n)·Σ_k [log π(a_k|s) − log π_b(clip(a_k)|s)],   a_k ~ π(·|s)
                   (Wu, Tucker & Nachum, 2019, §3; ``clip`` = ±(1 − ε) keeps π_b's density finite)
    Wasserstein    D_W(s) = c(s, a_π) − c(s, a_b),   a_π ~ π(·|s), a_b the data's action
    (dual)         L_c = −E[D_W(s)] + γ_gp·E[max(‖∇_â c(s, â)‖ − 1, 0)²],  â = a_π + u·(a_b − a_π), u ~ U[0, 1]
    behaviour      L_b = −E_D[log π_b(clip(a)|s)]          (max likelihood, BRAC's fitted π_b)
    Lagrange       L_α = −exp(log α)·(E[D(s)] − ε)          (dual ascent: α grows while D > ε)

Kernel widths follow the BEAR reference's code (aviralkumar2907/BEAR ``mmd_loss_laplacian`` /
``mmd_loss_gaussian``: a ``2σ`` in the exponent, the Gaussian's on the squared distance). BRAC's
reference Laplacian ``exp(−‖x − y‖₁ / σ_BRAC)`` is this one with ``σ = σ_BRAC / 2``.

Samples come in (B, N, A) blocks: N samples per state, all states at once; every kernel matrix is
(B, N, M) from one broadcast, so no state is ever re-encoded or looped over.

The VAE behaviour model of BEAR and UWAC (``nets/vae.py``) is fitted with its own ``vae_loss``;
``vae_samples`` here also returns the decoder's pre-tanh output, on which BEAR matches supports.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from robot_rl.nets import ConditionalVAE, Critic, Gaussian, TanhGaussian
from robot_rl.nets.vae import LATENT_CLIP

KERNELS = ("laplacian", "gaussian")
MMD_EPS = 1e-6  # inside BEAR's sqrt (the reference's)
CLIP_EPS = 1e-3  # actions are clipped to ±(1 − CLIP_EPS) before π_b's density (BRAC's CLIP_EPS)


class ActionCritic(Protocol):
    """A critic-style network ``c(features (B, F), actions (B, A)) -> (N, B)`` (``heads.Critic``)."""

    def __call__(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor: ...


def check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


# ---------------------------------------------------------------------------- MMD
def kernel_matrix(x: torch.Tensor, y: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    """k(x_i, y_j) for x (B, N, A), y (B, M, A) -> (B, N, M)."""
    diff = x.unsqueeze(2) - y.unsqueeze(1)  # (B, N, M, A)
    if kernel == "laplacian":
        return torch.exp(-diff.abs().sum(-1) / (2.0 * sigma))  # (B, N, M)
    if kernel == "gaussian":
        return torch.exp(-diff.pow(2).sum(-1) / (2.0 * sigma))  # (B, N, M)
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str, sigma: float, sqrt: bool = False) -> torch.Tensor:
    """Sampled MMD² between the N rows of x (B, N, A) and the M rows of y (B, M, A), per state -> (B,).

    The biased (V-statistic) estimate, diagonals included, as both references; ``sqrt=True`` returns
    ``sqrt(MMD² + 1e-6)`` (BEAR's constrained quantity).
    """
    k_xx = kernel_matrix(x, x, kernel, sigma).mean((1, 2))  # (B,)
    k_xy = kernel_matrix(x, y, kernel, sigma).mean((1, 2))  # (B,)
    k_yy = kernel_matrix(y, y, kernel, sigma).mean((1, 2))  # (B,)
    mmd2 = k_xx - 2.0 * k_xy + k_yy  # (B,)
    return (mmd2 + MMD_EPS).sqrt() if sqrt else mmd2


# ---------------------------------------------------------------------------- samples
def raw_policy_samples(
    dist: TanhGaussian, num: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n reparameterized samples of a tanh-Gaussian policy: pre-tanh u (B, n, A) and a = tanh(u) (B, n, A)."""
    mean, log_std = dist.mean.unsqueeze(1), dist.log_std.unsqueeze(1)  # (B, 1, A)
    shape = (mean.shape[0], num, mean.shape[-1])
    eps = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)  # (B, n, A)
    u = mean + log_std.exp() * eps  # (B, n, A)
    return u, torch.tanh(u)


@torch.no_grad()
def vae_samples(
    vae: ConditionalVAE, features: torch.Tensor, num: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples of the VAE behaviour model on cached features (B, F), no gradient: the decoder's pre-tanh
    output (B, n, A) and the actions tanh of it (B, n, A); z ~ N(0, I) clipped as ``ConditionalVAE.decode``."""
    shape = (features.shape[0], num, vae.latent_dim)
    z = torch.randn(shape, generator=generator, device=features.device, dtype=features.dtype)
    raw = vae.decoder(features, z.clamp(-LATENT_CLIP, LATENT_CLIP))  # (B, n, A)
    return raw, torch.tanh(raw)


# ---------------------------------------------------------------------------- KL through a fitted π_b
def log_prob_n(dist: Gaussian | TanhGaussian, actions: torch.Tensor, eps: float = CLIP_EPS) -> torch.Tensor:
    """log π(a) of n actions per state, actions (B, n, A) clipped to ±(1 − eps), under a (B,)-batched
    ``Gaussian`` or ``TanhGaussian`` -> (B, n)."""
    per_sample = type(dist)(dist.mean.unsqueeze(1), dist.log_std.unsqueeze(1))  # batch shape (B, 1)
    return per_sample.log_prob(actions.clamp(-1.0 + eps, 1.0 - eps))  # (B, n)


def kl_divergence(log_prob: torch.Tensor, behavior: Gaussian | TanhGaussian, actions: torch.Tensor) -> torch.Tensor:
    """D_KL(π ‖ π_b)(s) ≈ mean_k [log π(a_k|s) − log π_b(a_k|s)] from n samples a_k ~ π (B, n, A) and their
    log π (B, n) -> (B,). Gradients reach π through both the samples and log π; π_b's parameters are the
    caller's to detach."""
    return (log_prob - log_prob_n(behavior, actions)).mean(1)  # (B,)


def behavior_loss(
    behavior: nn.Module, features: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_b = −E[log π_b(clip(a)|s)]: fit the behaviour policy by maximum likelihood on features (B, F)."""
    dist = behavior(features)
    log_prob = dist.log_prob(actions.clamp(-1.0 + CLIP_EPS, 1.0 - CLIP_EPS))  # (B,)
    loss = -log_prob.mean()
    metrics = {
        "behavior/nll": loss.detach(),
        "behavior/mse": (dist.mode() - actions).pow(2).mean().detach(),
        "behavior/log_std": dist.log_std.mean().detach(),
    }
    return loss, metrics


# ---------------------------------------------------------------------------- Wasserstein dual
def dual_critic(feature_dim: int, action_dim: int, hidden: tuple[int, ...]) -> Critic:
    """The Wasserstein dual's discriminator c(s, a): a one-member ``Critic`` without an output bias (a
    constant cancels in c(s, a_π) − c(s, a_b) and in ∇_a c; it is a zero buffer, outside the state dict)."""
    critic = Critic(feature_dim, action_dim, hidden, 1)
    del critic.out.bias
    critic.out.register_buffer("bias", torch.zeros(1, 1, 1), persistent=False)
    return critic


def wasserstein_dual(
    critic: ActionCritic, features: torch.Tensor, policy_actions: torch.Tensor, data_actions: torch.Tensor
) -> torch.Tensor:
    """D_W(s) = c(s, a_π) − c(s, a_b) for actions (B, A) -> (B,) (the first member of the critic)."""
    return critic(features, policy_actions)[0] - critic(features, data_actions)[0]  # (B,)


def gradient_penalty(
    critic: ActionCritic,
    features: torch.Tensor,
    policy_actions: torch.Tensor,
    data_actions: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """E[max(‖∇_â c(s, â)‖ − 1, 0)²] at â = a_π + u·(a_b − a_π), u ~ U[0, 1] per row (the one-sided
    penalty of BRAC's reference; features (B, F) are treated as constants)."""
    u = torch.rand((len(features), 1), generator=generator, device=features.device, dtype=features.dtype)
    interp = (policy_actions + u * (data_actions - policy_actions)).detach().requires_grad_(True)  # (B, A)
    (grad,) = torch.autograd.grad(critic(features, interp)[0].sum(), interp, create_graph=True)  # (B, A)
    slope = (grad.pow(2).sum(-1) + 1e-8).sqrt()  # (B,)
    return (slope - 1.0).clamp(min=0.0).pow(2).mean()


def dual_critic_loss(
    critic: ActionCritic,
    features: torch.Tensor,
    policy_actions: torch.Tensor,
    data_actions: torch.Tensor,
    gp_weight: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_c = −E[c(s, a_π) − c(s, a_b)] + γ_gp·GP: the discriminator maximizes the Wasserstein dual."""
    features, policy_actions = features.detach(), policy_actions.detach()
    dual = wasserstein_dual(critic, features, policy_actions, data_actions)  # (B,)
    penalty = gradient_penalty(critic, features, policy_actions, data_actions, generator)
    loss = -dual.mean() + gp_weight * penalty
    return loss, {"dual/loss": loss.detach(), "dual/w": dual.mean().detach(), "dual/gp": penalty.detach()}


# ---------------------------------------------------------------------------- Lagrange multiplier
def lagrange_loss(log_alpha: torch.Tensor, divergence: torch.Tensor, epsilon: float) -> torch.Tensor:
    """L_α = −exp(log α)·(E[D] − ε): a descent step raises α while the divergence exceeds ε, lowers it below."""
    return -log_alpha.exp() * (divergence.detach().mean() - epsilon)


@torch.no_grad()
def clip_log_alpha(log_alpha: torch.Tensor, low: float, high: float) -> None:
    """Clip log α in place after its step (the references' ``log_alpha.data.clamp_``)."""
    log_alpha.clamp_(low, high)
