"""Heads on encoder features: a batched critic ensemble, tanh-Gaussian and deterministic actors, a value net.

Actors called by ``Policy`` return a distribution-like object with ``mode()`` and ``sample()``:
``TanhGaussian``, ``Gaussian``, or ``Deterministic`` (TD3's action plus Gaussian exploration noise
when sampled).

Which Gaussian: ``TanhGaussian`` squashes samples, so SAC-style actors can use reparameterized
samples and their exact log-densities. Its density at a dataset action of exactly ±1 (a saturated
scripted controller, an open gripper: a third of the tabletop data) needs ``atanh(1 − ε)`` ≈ 7.3
and a huge ``−log(1 − a²)``, which then dominates a maximum-likelihood loss (BC, IQL, AWAC). There
``Gaussian`` is the right head: ``N(tanh(μ), σ²)`` on the action itself (IQL's and AWAC's reference
policies), whose log-density is finite everywhere; samples are clipped to the box. On the tabletop,
goal-conditioned BC from states goes from 0.38 to 0.95 of reach goals with it (``docs/learning.md``).

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


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, layer_norm: bool = False) -> nn.Sequential:
    """Linear -> [LayerNorm ->] ReLU per hidden size, then a Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), *([nn.LayerNorm(h)] if layer_norm else []), nn.ReLU()]
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
    """An ensemble of N Q-functions Q_i(features, action), evaluated as one batched module.

    Scoring M actions per state (``q_values``) splits the first layer, ``W·[f, a] = W_f·f + W_a·a``:
    ``W_f·f`` is computed once per state and broadcast over its M actions, so the features are never
    copied M times and the (F + A)-wide product runs on B rows instead of B·M. ``members`` evaluates
    only the first k members (CEM ranks by Q_1 alone: scoring the others would be thrown away).
    ``layer_norm``: every hidden layer is normalized (LayerNorm without affine parameters) before its
    ReLU, as OGBench's value networks (it keeps Q bounded when goals are drawn far from the data).
    """

    def __init__(
        self, feature_dim: int, action_dim: int, hidden: tuple[int, ...], n: int = 2, layer_norm: bool = False
    ) -> None:
        super().__init__()
        self.n, self.layer_norm = n, layer_norm
        dims = [feature_dim + action_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(n, i, o) for i, o in itertools.pairwise(dims))
        self.out = EnsembleLinear(n, dims[-1], 1)

    def forward(self, features: torch.Tensor, actions: torch.Tensor, members: int | None = None) -> torch.Tensor:
        """features (B, F), actions (B, A) -> Q (N, B) (the first ``members`` only, when given)."""
        return self.q_values(features, actions.unsqueeze(1), members).squeeze(-1)  # (N, B)

    def q_values(self, features: torch.Tensor, actions: torch.Tensor, members: int | None = None) -> torch.Tensor:
        """features (B, F) cached, actions (B, M, A) -> Q (N, B, M); the features are never repeated.

        ``members``: evaluate only the first k ensemble members -> (k, B, M).
        """
        B, M, _ = actions.shape
        n = self.n if members is None else members
        x = self.first_layer(features, actions, n)  # (n, B·M, H)
        for layer in [*self.hidden, self.out][1:]:
            if self.layer_norm:
                x = F.layer_norm(x, x.shape[-1:])
            x = torch.baddbmm(layer.bias[:n], F.relu(x), layer.weight[:n])  # (n, B·M, H')
        return x.view(n, B, M)  # (n, B, M)

    def first_layer(self, features: torch.Tensor, actions: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Pre-activations of the first hidden layer of the first ``n`` members (all by default), split as
        ``W_f·f + W_a·a``: features (B, F), actions (B, M, A) -> (n, B·M, H)."""
        B, M, A = actions.shape
        n = self.n if n is None else n
        first = self.hidden[0] if len(self.hidden) else self.out  # no hidden layer: the output layer
        assert isinstance(first, EnsembleLinear)
        w = first.weight[:n]  # (n, F + A, H)
        F_ = features.shape[-1]
        h_f = torch.baddbmm(first.bias[:n], features.unsqueeze(0).expand(n, B, F_), w[:, :F_])  # (n, B, H)
        h_a = torch.bmm(actions.reshape(1, B * M, A).expand(n, B * M, A), w[:, F_:])  # (n, B·M, H)
        return (h_a.view(n, B, M, -1) + h_f.unsqueeze(2)).view(n, B * M, -1)  # (n, B·M, H)


class ValueNetwork(nn.Module):
    """V(features) -> (B,)."""

    def __init__(self, feature_dim: int, hidden: tuple[int, ...], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(feature_dim, hidden, 1, layer_norm)

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
        shape: tuple[int, ...]
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


class Gaussian:
    """``N(mean, exp(log_std)²)`` (diagonal) over actions, ``mean = tanh(μ)`` in the box; batch shape (B,).

    ``log_prob`` is the plain Gaussian log-density (finite for actions at ±1); ``sample`` clips to
    [-1, 1] and returns the density of the unclipped draw.
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean, self.log_std = mean, log_std  # (B, A)

    def _log_prob(self, a: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        z = (a - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """log π(a) for actions (B, A) -> (B,)."""
        return self._log_prob(actions, self.mean, self.log_std)

    def sample(
        self, num: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions clipped to [-1, 1] and the log-density of the unclipped draw: (B, A), (B,) or (B, M, A), (B, M)."""
        mean, log_std = self.mean, self.log_std
        shape: tuple[int, ...]
        if num is not None:
            mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)  # (B, 1, A)
            shape = (mean.shape[0], num, mean.shape[-1])
        else:
            shape = tuple(mean.shape)
        eps = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
        a = mean + torch.exp(log_std) * eps  # (B, [M,] A)
        return a.clamp(-1.0, 1.0), self._log_prob(a, mean, log_std)

    def mode(self) -> torch.Tensor:
        return self.mean  # (B, A)


class GaussianActor(TanhGaussianActor):
    """features -> Gaussian with mean tanh(μ) (for actors trained by likelihood of dataset actions)."""

    def forward(self, features: torch.Tensor) -> Gaussian:  # type: ignore[override]
        mean, log_std = self.net(features).chunk(2, dim=-1)  # (B, A) each
        return Gaussian(torch.tanh(mean), log_std.clamp(self.log_std_min, self.log_std_max))


ACTOR_DISTRIBUTIONS = ("gaussian", "tanh_gaussian")


def check_actor_distribution(distribution: str) -> None:
    if distribution not in ACTOR_DISTRIBUTIONS:
        raise ValueError(f"actor_distribution must be one of {ACTOR_DISTRIBUTIONS}, got {distribution!r}")


def make_actor(
    distribution: str,
    feature_dim: int,
    action_dim: int,
    hidden: tuple[int, ...],
    log_std_min: float = -5.0,
    log_std_max: float = 2.0,
) -> TanhGaussianActor:
    """The actor head by name: ``gaussian`` (``GaussianActor``) or ``tanh_gaussian`` (``TanhGaussianActor``)."""
    check_actor_distribution(distribution)
    cls = GaussianActor if distribution == "gaussian" else TanhGaussianActor
    return cls(feature_dim, action_dim, hidden, log_std_min, log_std_max)


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
