"""Heads on encoder features: a batched critic ensemble, tanh-Gaussian and deterministic actors, a value net.

Actors called by ``Policy`` return a distribution-like object with ``mode()`` and ``sample()``:
``TanhGaussian``, or ``Deterministic`` (TD3's action plus Gaussian exploration noise when sampled).

The critic ensemble is ONE module: every layer is an ``EnsembleLinear`` with weights (N, in, out),
evaluated for all N members with one ``torch.baddbmm``, so N critics cost one batched matmul per
layer, not N module calls. ``Critic.q_values`` evaluates M actions per state on a cached embedding
(features repeated, never re-encoded): CQL's sampled actions and CEM use it.

Tanh-Gaussian (SAC, Haarnoja et al., 2018, appendix C): ``u ~ N(μ, σ)``, ``a = tanh(u)``,
``log π(a) = log N(u; μ, σ) − Σ_j log(1 − tanh(u_j)²)``, with the stable form
``log(1 − tanh(u)²) = 2·(log 2 − u − softplus(−2u))``.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """N independent linear layers: (N, B, in) -> (N, B, out) in one ``baddbmm``; nn.Linear's init per member."""

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))  # (N, in, out)
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))  # (N, 1, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)  # (N, B, out)


class Critic(nn.Module):
    """An ensemble of N Q-functions Q_i(features, action), evaluated as one batched module."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: tuple[int, ...], n: int = 2):
        super().__init__()
        self.n = n
        dims = [feature_dim + action_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(n, i, o) for i, o in itertools.pairwise(dims))
        self.out = EnsembleLinear(n, dims[-1], 1)

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """features (B, F), actions (B, A) -> Q (N, B)."""
        x = torch.cat([features, actions], dim=-1)  # (B, F + A)
        x = x.unsqueeze(0).expand(self.n, *x.shape)  # (N, B, F + A)
        for layer in self.hidden:
            x = F.relu(layer(x))  # (N, B, H)
        return self.out(x).squeeze(-1)  # (N, B)

    def q_values(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """features (B, F) cached, actions (B, M, A) -> Q (N, B, M); the features are repeated, not re-encoded."""
        B, M, A = actions.shape
        rep = features.unsqueeze(1).expand(B, M, features.shape[-1]).reshape(B * M, -1)  # (B*M, F)
        return self(rep, actions.reshape(B * M, A)).view(self.n, B, M)  # (N, B, M)


class ValueNetwork(nn.Module):
    """V(features) -> (B,)."""

    def __init__(self, feature_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(feature_dim, hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)  # (B,)


def _log_one_minus_tanh_sq(u: torch.Tensor) -> torch.Tensor:
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


class TanhGaussian:
    """The distribution of ``tanh(u)``, ``u ~ N(mean, exp(log_std))`` (diagonal), batch shape (B,)."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean, self.log_std = mean, log_std  # (B, A)

    def _gauss_log_prob(self, u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        z = (u - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(
        self, num: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized actions and their log-probs: (B, A), (B,) or, with ``num``, (B, M, A), (B, M)."""
        mean, log_std = self.mean, self.log_std
        if num is not None:
            mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)  # (B, 1, A)
            shape = (mean.shape[0], num, mean.shape[-1])
        else:
            shape = tuple(mean.shape)
        eps = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + torch.exp(log_std) * eps  # (B, [M,] A)
        log_prob = self._gauss_log_prob(u, mean, log_std) - _log_one_minus_tanh_sq(u).sum(-1)  # (B, [M])
        return torch.tanh(u), log_prob

    def log_prob(self, actions: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """log π(a) for actions (B, A) in [-1, 1] (clamped to ±(1 − eps) before atanh) -> (B,)."""
        a = actions.clamp(-1.0 + eps, 1.0 - eps)
        u = torch.atanh(a)  # (B, A)
        return self._gauss_log_prob(u, self.mean, self.log_std) - _log_one_minus_tanh_sq(u).sum(-1)

    def mode(self) -> torch.Tensor:
        return torch.tanh(self.mean)  # (B, A)


class TanhGaussianActor(nn.Module):
    """features -> TanhGaussian; log std clamped to [log_std_min, log_std_max]."""

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        hidden: tuple[int, ...],
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.net = mlp(feature_dim, hidden, 2 * action_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, features: torch.Tensor) -> TanhGaussian:
        mean, log_std = self.net(features).chunk(2, dim=-1)  # (B, A) each
        return TanhGaussian(mean, log_std.clamp(self.log_std_min, self.log_std_max))


class DeterministicActor(nn.Module):
    """features -> tanh(MLP(features)) in [-1, 1]^A (TD3-style)."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(feature_dim, hidden, action_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(features))  # (B, A)


class Deterministic:
    """A deterministic action ``μ(s)`` behind the TanhGaussian interface that ``Policy`` calls.

    ``mode()`` is ``μ(s)``; ``sample`` adds TD3's Gaussian exploration noise ``N(0, noise_std²)`` and
    clips to [-1, 1] (Fujimoto et al., 2018). There is no density: the log-probs are None.
    """

    def __init__(self, action: torch.Tensor, noise_std: float):
        self.action, self.noise_std = action, noise_std  # (B, A)

    def sample(self, num: int | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, None]:
        """Noisy actions (B, A) or, with ``num``, (B, M, A); no log-probs."""
        a = self.action if num is None else self.action.unsqueeze(1).expand(-1, num, -1)  # (B, [M,] A)
        eps = torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype)
        return (a + self.noise_std * eps).clamp(-1.0, 1.0), None

    def mode(self) -> torch.Tensor:
        return self.action  # (B, A)


class NoisyDeterministicActor(DeterministicActor):
    """A DeterministicActor that returns a ``Deterministic`` (explores with ``exploration_noise`` when sampled)."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: tuple[int, ...], exploration_noise: float = 0.1):
        super().__init__(feature_dim, action_dim, hidden)
        self.exploration_noise = exploration_noise

    def forward(self, features: torch.Tensor) -> Deterministic:  # type: ignore[override]
        return Deterministic(super().forward(features), self.exploration_noise)  # (B, A)
