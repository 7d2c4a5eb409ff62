"""DualDICE (Nachum, Chow, Dai & Li, 2019): the ratio d^π/d^D of a policy's discounted state-action
occupancy to the data's, learned without knowing the behaviour policy, and the value it implies.

With d^π(s, a) = (1 − γ)·Σ_t γ^t P(s_t = s, a_t = a | s_0 ~ μ_0, π) and D the data's distribution of
(s, a, r, s'), DualDICE solves the saddle point (the Fenchel dual of ½·E_D[ζ²] with f(x) = x²/2)::

    min_ν max_ζ  L(ν, ζ) = E_D[(ν(s, a) − γ(1 − d)·ν̄(s'))·ζ(s, a) − ζ(s, a)²/2] − (1 − γ)·E_{s0 ~ μ0, a0 ~ π}[ν(s0, a0)]
    ν̄(s') = E_{a' ~ π(s')} ν(s', a')

Given ν, the best ζ is the Bellman residual ν − γP^πν; at the saddle point ζ*(s, a) = d^π(s, a)/d^D(s, a),
and the value of π is

    V(π) = E_{d^π}[r]/(1 − γ) = E_D[ζ*·r]/(1 − γ)

Terminals (absorbing states). A transition with d = 1 enters an absorbing state that earns 0 forever;
ν is fixed at 0 there (the (1 − d) factor), which keeps the identity behind DualDICE,
E_{d^π}[ν − γP^πν] = (1 − γ)·E_{μ0}[ν], true over the states the data cover. The absorbing state is
never in the data, but it holds part of d^π, γ/(1 − γ)·E_D[ζ·d] (the mass that flows into it and
stays), so the total mass is

    Z = E_D[ζ] + γ/(1 − γ)·E_D[ζ·d]       (= 1 at the saddle point; E_D[ζ] without terminals)

The estimate is self-normalized by it: V̂ = E_D[ζ·r] / ((1 − γ)·Z). ``normalizer`` reports Z, so the
plain estimate is V̂·Z.

Inputs are features: φ(s, a) (N, F) of the data rows, φ(s', a') with a' ~ π(s') (N, m, F) for m samples
(ν̄ is their mean; (N, F) is one sample or, for a linear ν, the expected feature), φ(s0, a0 ~ π) (M, F),
rewards (N,), terminals (N,). ν and ζ are linear in the features (``hidden=()``, with a bias) or small
ReLU MLPs on them.

Choices and deviations:
- ν is parametrized as ν_θ(s, a) + c/(1 − γ) with a separate scalar c. The constant is in ν's class
  already (a bias), so the objective and its saddle point are DualDICE's, but gradient descent-ascent
  converges far faster: the level of ν is the slowest direction of the game, since adding a constant
  to ν changes the residual ν − γν' by only (1 − γ) times it. With c the level follows
  ∂L/∂c = Z − 1 directly. On a 6-state MDP (γ = 0.9, largest ratio 11), Adam with both learning
  rates 0.3 and 2000 steps ends 0.016 from the ratio with c and 5.9 from it without.
- Optimizer: Adam for each player (ν descends, ζ ascends on the same L, simultaneous full-batch
  steps), with β1 = 0.5 (momentum 0.9 makes the game spiral), ζ's learning rate three times ν's, and a
  cosine decay of both to 0, so the last iterates settle instead of circling the saddle point.
- Self-normalized by Z (above); the paper divides by 1 − γ only.
- ``dualdice_linear``: the saddle point in closed form for linear ν and ζ on the same features,
  ζ = φᵀu with (A + λI)ᵀu = (1 − γ)·E_{μ0, π}[φ(s0, a0)], A LSTD-Q's matrix (``lstd.py``). Its plain
  estimate uᵀb/(1 − γ) equals LSTD-Q's φ̄0ᵀ(A + λI)⁻¹b: on shared linear features the two methods agree
  (the duality of Nachum & Dai, 2020), and they differ only through Z.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from robot_rl.ope.lstd import ArrayLike, LSTDStatistics, as_float64, check_gamma, expected_features, solve_ridge


@dataclasses.dataclass(frozen=True)
class DiceConfig:
    steps: int = 2000  # full-batch Adam steps of both players
    nu_lr: float = 0.1
    zeta_lr: float = 0.3
    beta1: float = 0.5  # Adam's momentum for both players
    hidden: tuple[int, ...] = ()  # (): ν and ζ linear in the features; else ReLU MLP sizes
    seed: int = 0  # initialization of MLPs (linear players start at 0)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (self.nu_lr > 0 and self.zeta_lr > 0):
            raise ValueError(f"learning rates must be > 0, got nu_lr={self.nu_lr}, zeta_lr={self.zeta_lr}")
        if not 0 <= self.beta1 < 1:
            raise ValueError(f"beta1 must be in [0, 1), got {self.beta1}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {self.hidden}")


@dataclasses.dataclass(frozen=True)
class DiceResult:
    value: float  # V̂(π) = E_D[ζ·r] / ((1 − γ)·Z)
    zeta: np.ndarray  # (N,) ζ on the data rows, the estimate of d^π/d^D
    steps: int
    final_loss: float  # L(ν, ζ) at the end (nan for the closed form)
    normalizer: float  # Z = E_D[ζ] + γ/(1 − γ)·E_D[ζ·d], 1 at the saddle point


@dataclasses.dataclass(frozen=True)
class DiceData:
    """The checked float64 inputs: φ (N, F), φ(s', a' ~ π) (N, m, F), φ(s0, a0 ~ π) (M, F), r (N,), d (N,)."""

    phi: torch.Tensor
    phi_next: torch.Tensor
    phi0: torch.Tensor
    rewards: torch.Tensor
    terminals: torch.Tensor

    @classmethod
    def of(
        cls, phi: ArrayLike, phi_next: ArrayLike, phi0: ArrayLike, rewards: ArrayLike, terminals: ArrayLike
    ) -> DiceData:
        p = as_float64(phi, "phi")
        if p.dim() != 2:
            raise ValueError(f"phi must be (N, F) features of the data's (s, a), got {tuple(p.shape)}")
        N, F = p.shape
        nxt = as_float64(phi_next, "phi_next").to(p.device)
        nxt = nxt.unsqueeze(1) if nxt.dim() == 2 else nxt  # (N, m, F)
        if nxt.dim() != 3 or nxt.shape[0] != N or nxt.shape[2] != F:
            raise ValueError(f"phi_next must be (N, F) or (N, m, F) with N={N}, F={F}, got {tuple(nxt.shape)}")
        p0 = as_float64(phi0, "phi0").to(p.device)
        if p0.dim() != 2 or p0.shape[1] != F or len(p0) == 0:
            raise ValueError(f"phi0 must be (M, F={F}) features of (s0, a0 ~ π), M >= 1, got {tuple(p0.shape)}")
        r, d = as_float64(rewards, "rewards").to(p.device), as_float64(terminals, "terminals").to(p.device)
        for name, v in (("rewards", r), ("terminals", d)):
            if v.shape != (N,):
                raise ValueError(f"{name} must be (N,) = ({N},) like phi's rows, got {tuple(v.shape)}")
        off = ((d != 0) & (d != 1)).nonzero()
        if len(off):
            raise ValueError(f"terminals must be 0 or 1, row {int(off[0, 0])} has {float(d[off[0, 0]])}")
        return cls(p, nxt, p0, r, d)


def head(in_dim: int, hidden: tuple[int, ...]) -> nn.Module:
    """A scalar function of the features: linear (starting at 0) or a ReLU MLP."""
    if not hidden:
        lin = nn.Linear(in_dim, 1, dtype=torch.float64)
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
        return lin
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h, dtype=torch.float64), nn.ReLU()]
        in_dim = h
    return nn.Sequential(*layers, nn.Linear(in_dim, 1, dtype=torch.float64))


class DiceNets(nn.Module):
    """ν(s, a) = ν_θ(φ) + c/(1 − γ) and ζ(s, a) = ζ_θ(φ)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], gamma: float):
        super().__init__()
        self.nu_net, self.zeta = head(in_dim, hidden), head(in_dim, hidden)
        self.level = nn.Parameter(torch.zeros((), dtype=torch.float64))  # c
        self.gamma = gamma

    def nu(self, phi: torch.Tensor) -> torch.Tensor:
        """ν on features (..., F) -> (...)."""
        return self.nu_net(phi).squeeze(-1) + self.level / (1.0 - self.gamma)


def normalizer(zeta: torch.Tensor, terminals: torch.Tensor, gamma: float) -> torch.Tensor:
    """Z = E_D[ζ] + γ/(1 − γ)·E_D[ζ·d]: the mass of d^π on the data's states plus the absorbing state's."""
    return zeta.mean() + gamma / (1.0 - gamma) * (zeta * terminals).mean()


def dualdice_loss(nets: DiceNets, data: DiceData, gamma: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L(ν, ζ) = E_D[(ν − γ(1 − d)ν̄')·ζ − ζ²/2] − (1 − γ)·E_0[ν(s0, a0)]; ν minimizes it, ζ maximizes it."""
    zeta = nets.zeta(data.phi).squeeze(-1)  # (N,)
    nu = nets.nu(data.phi)  # (N,)
    nu_next = nets.nu(data.phi_next).mean(1)  # (N,) mean over π's m next actions
    residual = nu - gamma * (1.0 - data.terminals) * nu_next  # (N,) ν − γ(1 − d)ν̄'
    nu0 = nets.nu(data.phi0).mean()
    loss = (residual * zeta - 0.5 * zeta.pow(2)).mean() - (1.0 - gamma) * nu0
    return loss, {
        "dice/loss": loss.detach(),
        "dice/normalizer": normalizer(zeta.detach(), data.terminals, gamma),
        "dice/zeta_mean": zeta.detach().mean(),
    }


def estimate(zeta: torch.Tensor, data: DiceData, gamma: float) -> tuple[float, float]:
    """(V̂ = E_D[ζ·r] / ((1 − γ)·Z), Z)."""
    z = normalizer(zeta, data.terminals, gamma)
    if not abs(float(z)) > 1e-12:
        raise ValueError(
            f"the estimated total mass Z = {float(z)} is ~0: ζ did not fit (more steps, other learning rates)"
        )
    return float((zeta * data.rewards).mean() / ((1.0 - gamma) * z)), float(z)


def dualdice(
    phi: ArrayLike,
    phi_next: ArrayLike,
    phi0: ArrayLike,
    rewards: ArrayLike,
    terminals: ArrayLike,
    gamma: float,
    cfg: DiceConfig | None = None,
) -> DiceResult:
    """Train ν and ζ by Adam descent-ascent on ``dualdice_loss`` for ``cfg.steps`` full-batch steps (seeded,
    CPU or the features' device) -> the self-normalized value, ζ on the data rows, and the final loss."""
    cfg = cfg or DiceConfig()
    check_gamma(gamma)
    if gamma >= 1:
        raise ValueError("DualDICE needs gamma < 1 (its objective weights the initial states by 1 − γ)")
    data = DiceData.of(phi, phi_next, phi0, rewards, terminals)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        nets = DiceNets(data.phi.shape[1], cfg.hidden, gamma).to(data.phi.device)
    nu_params = [*nets.nu_net.parameters(), nets.level]
    betas = (cfg.beta1, 0.999)
    opt_nu = torch.optim.Adam(nu_params, lr=cfg.nu_lr, betas=betas)
    opt_zeta = torch.optim.Adam(nets.zeta.parameters(), lr=cfg.zeta_lr, betas=betas)
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(o, cfg.steps) for o in (opt_nu, opt_zeta)]
    for _ in range(cfg.steps):
        loss, _ = dualdice_loss(nets, data, gamma)
        grads = torch.autograd.grad(loss, [*nu_params, *nets.zeta.parameters()])
        for p, g in zip(nu_params, grads[: len(nu_params)], strict=True):
            p.grad = g  # descent on L
        for p, g in zip(nets.zeta.parameters(), grads[len(nu_params) :], strict=True):
            p.grad = -g  # ascent on L
        opt_nu.step()
        opt_zeta.step()
        for s in schedules:
            s.step()
    with torch.no_grad():
        final, _ = dualdice_loss(nets, data, gamma)
        zeta = nets.zeta(data.phi).squeeze(-1)  # (N,)
    value, z = estimate(zeta, data, gamma)
    return DiceResult(value, zeta.cpu().numpy(), cfg.steps, float(final), z)


def dualdice_linear(
    phi: ArrayLike,
    phi_next: ArrayLike,
    phi0: ArrayLike,
    rewards: ArrayLike,
    terminals: ArrayLike,
    gamma: float,
    ridge: float = 1e-6,
) -> DiceResult:
    """The saddle point for linear ν and ζ in closed form: ζ = φᵀu, (A + λI)ᵀu = (1 − γ)·mean(φ0), with A
    LSTD-Q's matrix of the same rows (a factorized solve, ``lstd.solve_ridge``)."""
    check_gamma(gamma)
    if gamma >= 1:
        raise ValueError("DualDICE needs gamma < 1 (its objective weights the initial states by 1 − γ)")
    data = DiceData.of(phi, phi_next, phi0, rewards, terminals)
    stats = LSTDStatistics(data.phi.shape[1]).to(data.phi.device)
    stats.add(data.phi, expected_features(data.phi_next), data.rewards, data.terminals, gamma)
    A = stats.A / stats.rows  # (F, F)
    u = solve_ridge(A.mT.contiguous(), (1.0 - gamma) * data.phi0.mean(0), ridge)  # (F,)
    zeta = data.phi @ u  # (N,)
    value, z = estimate(zeta, data, gamma)
    return DiceResult(value, zeta.cpu().numpy(), 0, float("nan"), z)
