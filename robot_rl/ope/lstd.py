"""LSTD-Q (Lagoudakis & Parr, 2003): the linear fixed point of a policy's Bellman equation, in closed form.

For features φ(s, a) ∈ R^F and a policy π, LSTD-Q finds the weights w of Q̂(s, a) = φ(s, a)ᵀw whose
Bellman error, projected on the span of the features, is zero::

    φ̄'_i = E_{a' ~ π(s'_i)} φ(s'_i, a')                      the next row's features under π
    A    = (1/N)·Σ_i φ_i (φ_i − γ(1 − d_i)·φ̄'_i)ᵀ           (F, F), not symmetric
    b    = (1/N)·Σ_i φ_i r_i                                 (F,)
    w    = (A + λI)⁻¹ b                                      by a factorized solve, never an inverse

and, as an off-policy evaluation (OPE) estimate, the value of π from M initial states::

    V̂(π) = (1/M)·Σ_j φ̄(s0_j)ᵀw,   φ̄(s0) = E_{a ~ π(s0)} φ(s0, a)

With one-hot (s, a) features, A = diag(d^D)(I − γP^π) and w is exactly Q^π wherever the data cover
(s, a) (``tests/test_ope_lstd.py`` checks it against the linear-algebra Q^π). Least-squares policy
iteration (LSPI) repeats w ← LSTD-Q(π_w), π_w(s) = argmax_a φ(s, a)ᵀw (``lspi_finite`` below for a
finite action set; ``robot_rl/algos/lspi.py`` for the learner on encoder features).

Stochastic π: φ̄' is the expectation over π's actions. Pass the next features either already
averaged, (N, F), or per action, (N, m, F): m actions sampled from π (the plain mean), or the whole
finite action set with π's probabilities ``next_probs`` (N, m) (the exact expectation).

Choices and deviations:
- A and b are averages over the rows rather than the paper's sums, so the ridge λ means the same
  thing whatever the number of rows (on the sums it is ridge λ·N).
- The solver. ``A + λI`` is not symmetric (the −γφφ̄'ᵀ term), and off-policy it is not positive
  definite in general, so a Cholesky factorization does not apply to it. Solving the normal equations
  (A + λI)ᵀ(A + λI)w = (A + λI)ᵀb would make the system SPD but square its condition number. The
  solve is therefore an LU factorization with partial pivoting (``torch.linalg.solve_ex``, LAPACK
  getrf/getrs), in float64. Where the system is SPD, namely when A is exactly symmetric (γ = 0 or
  every row terminal, A = Σφφᵀ/N: a ridge regression of rewards) and λ > 0, it is a Cholesky solve,
  with LU as the fallback if the factorization fails. A singular system (λ = 0 and features the data
  never excite) is an error that says so, never a silent pseudo-inverse.
- ``LSTDStatistics`` streams: A, b and the row count accumulate batch by batch (float64 buffers of
  an ``nn.Module``, so a learner saves them in its checkpoints), and ``solve`` equals the one-shot
  ``lstdq`` on the concatenated rows up to float rounding.

Features (how φ(s, a) is formed):
- ``state_features(x)``: the state itself plus a constant, [x, 1].
- ``RandomFourierFeatures``: Rahimi & Recht (2007), z(x) = sqrt(2/D)·cos(Wx + c), W ~ N(0, I/ℓ²),
  c ~ U[0, 2π), drawn from an explicit seed (same seed, same features), so z(x)ᵀz(y) approximates
  the Gaussian kernel exp(−‖x − y‖²/(2ℓ²)).
- ``encoder_features``: the embedding of a frozen ``robot_rl.nets.ObservationEncoder`` (random or
  loaded from a checkpoint with ``load_encoder``), goals and task ids included.
- State-action features for continuous actions: ``StateActionRFF``, random Fourier features of the
  concatenation [x, a] (W = [W_x, W_a], so W_x x is computed once per state and every action sample
  adds only W_a a), plus a constant; or ``outer_action_features``, ψ(x) ⊗ [a, 1] (Q linear in a,
  whose argmax lies on a corner of the box). For a finite action set: ``one_hot_action_features``,
  ψ(x) in the block of the action taken (the paper's construction).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from data_lake.batch import Observation
    from robot_rl.nets import ObservationEncoder

ArrayLike = torch.Tensor | np.ndarray


# ---------------------------------------------------------------------------- input checks
def as_float64(x: ArrayLike, name: str) -> torch.Tensor:
    """``x`` as a float64 tensor (numpy arrays converted; the device of a tensor kept); finite values only."""
    t = torch.as_tensor(x)
    if t.is_complex():
        raise ValueError(f"{name} must be real numbers, got {t.dtype}")
    t = t.to(torch.float64)
    bad = ~torch.isfinite(t)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has a non-finite value ({float(t[idx])}) at index {idx}: clean the data first")
    return t


def check_rows(
    phi: ArrayLike, phi_next: ArrayLike, rewards: ArrayLike, terminals: ArrayLike, next_probs: ArrayLike | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(φ (N, F), φ̄' (N, F) expected under π, r (N,), d (N,)) in float64 on φ's device, shapes checked."""
    phi_t = as_float64(phi, "phi")
    if phi_t.dim() != 2:
        raise ValueError(f"phi must be (N, F) features of (s, a), got shape {tuple(phi_t.shape)}")
    N, F = phi_t.shape
    dev = phi_t.device
    nxt = expected_features(phi_next, next_probs, "phi_next").to(dev)
    if nxt.shape != (N, F):
        raise ValueError(
            f"phi_next must be (N, F) = {(N, F)} or (N, m, F), got {tuple(torch.as_tensor(phi_next).shape)}"
        )
    r = as_float64(rewards, "rewards").to(dev)
    d = as_float64(terminals, "terminals").to(dev)
    for name, v in (("rewards", r), ("terminals", d)):
        if v.shape != (N,):
            raise ValueError(f"{name} must be (N,) = ({N},) like phi's rows, got {tuple(v.shape)}")
    off = ((d != 0) & (d != 1)).nonzero()
    if len(off):
        i = int(off[0, 0])
        raise ValueError(f"terminals must be 0 or 1, row {i} has {float(d[i])}")
    return phi_t, nxt, r, d


def expected_features(phi: ArrayLike, probs: ArrayLike | None = None, name: str = "features") -> torch.Tensor:
    """E_{a ~ π} φ(s, a) -> (N, F): ``phi`` (N, F) as given, or (N, m, F) averaged over the m actions
    (sampled from π: the plain mean; a finite action set: weighted by π's ``probs`` (N, m), rows sum to 1)."""
    t = as_float64(phi, name)
    if t.dim() == 2:
        if probs is not None:
            raise ValueError(f"{name} is (N, F), already an expectation: probs need per-action (N, m, F) features")
        return t
    if t.dim() != 3:
        raise ValueError(f"{name} must be (N, F) or (N, m, F), got shape {tuple(t.shape)}")
    if probs is None:
        return t.mean(1)  # (N, F)
    p = as_float64(probs, f"{name} probs").to(t.device)
    if p.shape != t.shape[:2]:
        raise ValueError(f"{name} probs must be (N, m) = {tuple(t.shape[:2])}, got {tuple(p.shape)}")
    sums = p.sum(1)
    bad = ((sums - 1).abs() > 1e-6) | (p < 0).any(1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} probs of row {i} must be >= 0 and sum to 1, got {p[i].tolist()}")
    return torch.einsum("nm,nmf->nf", p, t)  # (N, F)


# ---------------------------------------------------------------------------- solver
def solve_ridge(A: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    """w = (A + λI)⁻¹ b in float64: Cholesky when A is exactly symmetric and λ > 0, else LU (see module doc)."""
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    F = A.shape[0]
    if A.shape != (F, F) or b.shape != (F,):
        raise ValueError(f"A must be (F, F) and b (F,), got {tuple(A.shape)} and {tuple(b.shape)}")
    M = A.to(torch.float64) + ridge * torch.eye(F, dtype=torch.float64, device=A.device)  # (F, F)
    rhs = b.to(torch.float64).unsqueeze(1)  # (F, 1)
    if ridge > 0 and torch.equal(A, A.mT):
        L, info = torch.linalg.cholesky_ex(M)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, L).squeeze(1)  # (F,)
    w, info = torch.linalg.solve_ex(M, rhs)
    if int(info) != 0 or not torch.isfinite(w).all():
        rank = int(torch.linalg.matrix_rank(M))
        raise ValueError(
            f"A + λI is singular (rank {rank} < {F} features, ridge {ridge}): the data do not excite every "
            "feature; use ridge > 0, fewer features, or more diverse data"
        )
    return w.squeeze(1)  # (F,)


# ---------------------------------------------------------------------------- LSTD-Q
class LSTDStatistics(nn.Module):
    """Running sums of LSTD-Q's A (F, F) and b (F,) and the row count, as float64 buffers (checkpointed
    with the module); ``solve`` gives w from the averages. ``add`` batch by batch == ``lstdq`` at once."""

    A: torch.Tensor
    b: torch.Tensor
    n: torch.Tensor

    def __init__(self, num_features: int):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.register_buffer("A", torch.zeros(num_features, num_features, dtype=torch.float64))
        self.register_buffer("b", torch.zeros(num_features, dtype=torch.float64))
        self.register_buffer("n", torch.zeros((), dtype=torch.int64))

    @property
    def num_features(self) -> int:
        return self.b.shape[0]

    @property
    def rows(self) -> int:
        return int(self.n)

    def reset(self) -> None:
        self.A.zero_()
        self.b.zero_()
        self.n.zero_()

    @torch.no_grad()
    def add(
        self,
        phi: ArrayLike,
        phi_next: ArrayLike,
        rewards: ArrayLike,
        terminals: ArrayLike,
        gamma: float,
        next_probs: ArrayLike | None = None,
    ) -> None:
        """Add rows: A += Σ φ(φ − γ(1 − d)φ̄')ᵀ, b += Σ φ·r, n += N (``phi_next`` as in ``expected_features``)."""
        check_gamma(gamma)
        phi_t, nxt, r, d = check_rows(phi, phi_next, rewards, terminals, next_probs)
        if phi_t.shape[1] != self.num_features:
            raise ValueError(f"phi has {phi_t.shape[1]} features, these statistics {self.num_features}")
        phi_t, nxt, r, d = (t.to(self.A.device) for t in (phi_t, nxt, r, d))
        td = phi_t - gamma * (1.0 - d).unsqueeze(1) * nxt  # (N, F) φ − γ(1 − d)φ̄'
        self.A.add_(phi_t.mT @ td)  # (F, F)
        self.b.add_(phi_t.mT @ r)  # (F,)
        self.n.add_(phi_t.shape[0])

    def solve(self, ridge: float) -> torch.Tensor:
        """w = (A/n + λI)⁻¹ (b/n) -> (F,) float64."""
        if self.rows == 0:
            raise ValueError("no rows added: call add() before solve()")
        return solve_ridge(self.A / self.rows, self.b / self.rows, ridge)


def check_gamma(gamma: float) -> None:
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")


def lstdq(
    phi: ArrayLike,
    phi_next: ArrayLike,
    rewards: ArrayLike,
    terminals: ArrayLike,
    gamma: float,
    ridge: float = 1e-6,
    next_probs: ArrayLike | None = None,
) -> torch.Tensor:
    """LSTD-Q weights w (F,) float64 of π from N rows: φ(s, a) (N, F), φ(s', ·) under π (N, F) or (N, m, F)
    (``next_probs`` (N, m): π's probabilities of a finite action set), rewards (N,), terminals (N,) in {0, 1}."""
    phi_t = as_float64(phi, "phi")
    stats = LSTDStatistics(phi_t.shape[-1] if phi_t.dim() == 2 else 1).to(phi_t.device)
    stats.add(phi_t, phi_next, rewards, terminals, gamma, next_probs)
    return stats.solve(ridge)


def lstdq_value(phi0: ArrayLike, w: ArrayLike, probs0: ArrayLike | None = None) -> float:
    """OPE estimate V̂(π) = mean_j φ̄(s0_j)ᵀw: ``phi0`` (M, F) already under π, or (M, m, F) per action
    (sampled from π, or a finite set with ``probs0`` (M, m)); ``w`` (F,) from ``lstdq``."""
    mean0 = expected_features(phi0, probs0, "phi0")  # (M, F)
    w_t = as_float64(w, "w").to(mean0.device)
    if w_t.shape != (mean0.shape[1],):
        raise ValueError(f"w must be (F,) = ({mean0.shape[1]},) like phi0's features, got {tuple(w_t.shape)}")
    return float((mean0 @ w_t).mean())


# ---------------------------------------------------------------------------- LSPI (finite action set)
@dataclasses.dataclass(frozen=True)
class LSPIResult:
    """LSPI's last weights, the greedy action index of every row's next state, and how it stopped."""

    w: torch.Tensor  # (F,) float64
    next_actions: torch.Tensor  # (N,) int64, argmax_a φ(s', a)ᵀw
    iterations: int  # LSTD-Q solves
    changed: float  # fraction of next-state greedy actions the last improvement changed
    converged: bool  # changed <= tol before max_iterations


def lspi_finite(
    phi: ArrayLike,
    phi_next_all: ArrayLike,
    rewards: ArrayLike,
    terminals: ArrayLike,
    gamma: float,
    ridge: float = 1e-6,
    max_iterations: int = 20,
    tol: float = 0.0,
) -> LSPIResult:
    """LSPI on a fixed sample with a finite action set of K actions: ``phi_next_all`` (N, K, F) holds
    φ(s'_i, a_k) for every action. π_0 is uniform over the K actions; then repeat w ← LSTD-Q(π),
    π(s') = argmax_k φ(s', a_k)ᵀw, until at most a fraction ``tol`` of the N greedy actions change."""
    nxt = as_float64(phi_next_all, "phi_next_all")
    if nxt.dim() != 3:
        raise ValueError(f"phi_next_all must be (N, K, F): φ(s', a) for each of K actions, got {tuple(nxt.shape)}")
    if max_iterations < 1 or not 0 <= tol < 1:
        raise ValueError(f"need max_iterations >= 1 and 0 <= tol < 1, got {max_iterations}, {tol}")
    N, K, _ = nxt.shape
    probs = torch.full((N, K), 1.0 / K, dtype=torch.float64, device=nxt.device)  # π_0 uniform
    greedy: torch.Tensor | None = None
    changed = 1.0
    for it in range(1, max_iterations + 1):
        w = lstdq(phi, nxt, rewards, terminals, gamma, ridge, next_probs=probs)  # (F,)
        new = (nxt @ w).argmax(1)  # (N,)
        changed = 1.0 if greedy is None else float((new != greedy).double().mean())
        greedy = new
        probs = torch.nn.functional.one_hot(new, K).to(torch.float64)  # (N, K) the greedy π
        if changed <= tol:
            return LSPIResult(w, new, it, changed, True)
    assert greedy is not None
    return LSPIResult(w, greedy, max_iterations, changed, False)


# ---------------------------------------------------------------------------- features
def state_features(x: ArrayLike) -> torch.Tensor:
    """ψ(x) = [x, 1] -> (N, D + 1) float64: the state itself and a constant."""
    t = as_float64(x, "x")
    if t.dim() != 2:
        raise ValueError(f"x must be (N, D), got shape {tuple(t.shape)}")
    return torch.cat([t, torch.ones(len(t), 1, dtype=t.dtype, device=t.device)], 1)


def one_hot_action_features(psi: ArrayLike, actions: ArrayLike, num_actions: int) -> torch.Tensor:
    """φ(s, a) = e_a ⊗ ψ(s) -> (N, K·D): ψ(s) in the block of action index a (Lagoudakis & Parr's features)."""
    p = as_float64(psi, "psi")
    a = torch.as_tensor(actions, device=p.device)
    if p.dim() != 2 or a.shape != (p.shape[0],) or a.is_floating_point():
        raise ValueError(f"need psi (N, D) and integer actions (N,), got {tuple(p.shape)} and {tuple(a.shape)}")
    if len(a) and (a.min() < 0 or a.max() >= num_actions):
        raise ValueError(f"action indexes must be in [0, {num_actions}), got [{int(a.min())}, {int(a.max())}]")
    onehot = torch.nn.functional.one_hot(a.long(), num_actions).to(p.dtype)  # (N, K)
    return (onehot.unsqueeze(2) * p.unsqueeze(1)).flatten(1)  # (N, K·D)


def outer_action_features(psi: ArrayLike, actions: ArrayLike) -> torch.Tensor:
    """φ(s, a) = ψ(s) ⊗ [a, 1] -> (N, D·(A + 1)): Q linear in the action, with state-dependent slopes."""
    p, a = as_float64(psi, "psi"), as_float64(actions, "actions")
    if p.dim() != 2 or a.dim() != 2 or len(p) != len(a):
        raise ValueError(f"need psi (N, D) and actions (N, A), got {tuple(p.shape)} and {tuple(a.shape)}")
    a1 = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)  # (N, A + 1)
    return (p.unsqueeze(2) * a1.to(p.device).unsqueeze(1)).flatten(1)  # (N, D·(A + 1))


class RandomFourierFeatures(nn.Module):
    """z(x) = sqrt(2/D)·cos(Wx + c), W ~ N(0, I/ℓ²) (D, in), c ~ U[0, 2π) (D,), drawn from ``seed``
    (Rahimi & Recht, 2007): z(x)ᵀz(y) ≈ exp(−‖x − y‖²/(2ℓ²)). Float64 buffers, saved with the module."""

    weight: torch.Tensor
    phase: torch.Tensor

    def __init__(self, in_dim: int, num_features: int, bandwidth: float, seed: int):
        super().__init__()
        if in_dim < 1 or num_features < 1 or not bandwidth > 0:
            raise ValueError(
                f"need in_dim >= 1, num_features >= 1, bandwidth > 0; got {in_dim}, {num_features}, {bandwidth}"
            )
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(num_features, in_dim, generator=g, dtype=torch.float64) / bandwidth
        c = torch.rand(num_features, generator=g, dtype=torch.float64) * 2 * math.pi
        self.register_buffer("weight", w)  # (D, in)
        self.register_buffer("phase", c)  # (D,)

    @property
    def num_features(self) -> int:
        return self.phase.shape[0]

    def project(
        self, x: torch.Tensor, columns: slice = slice(None), dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """x W[:, columns]ᵀ -> (..., D) in ``dtype``, the pre-activation of the inputs in ``columns``."""
        return x.to(dtype) @ self.weight[:, columns].mT.to(dtype)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """sqrt(2/D)·cos(pre + c), in pre's dtype."""
        return math.sqrt(2.0 / self.num_features) * torch.cos(pre + self.phase.to(pre.dtype))

    def forward(self, x: ArrayLike) -> torch.Tensor:
        t = torch.as_tensor(x, device=self.weight.device)
        if t.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"input has {t.shape[-1]} dims, these features take {self.weight.shape[1]}")
        return self.activate(self.project(t))  # (..., D)


class StateActionRFF(nn.Module):
    """φ(x, a) = [z([x, a]), 1] -> (..., D + 1) float64: random Fourier features of the concatenation of
    the state embedding x (F,) and the action a (A,), plus a constant. ``many`` scores several actions per
    state from one projection of x (W_x x once, then W_a a per action)."""

    def __init__(self, state_dim: int, action_dim: int, num_features: int, bandwidth: float, seed: int):
        super().__init__()
        self.state_dim, self.action_dim = state_dim, action_dim
        self.rff = RandomFourierFeatures(state_dim + action_dim, num_features, bandwidth, seed)

    @property
    def out_dim(self) -> int:
        return self.rff.num_features + 1

    def state_part(self, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """W_x x -> (B, D) in ``dtype``, computed once per state."""
        if x.dim() != 2 or x.shape[1] != self.state_dim:
            raise ValueError(f"states must be (B, {self.state_dim}), got {tuple(x.shape)}")
        return self.rff.project(x, slice(0, self.state_dim), dtype)

    def fourier(self, x_part: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """z([x, a]) for K actions per state, without the constant: (B, D), (B, K, A) -> (B, K, D) in x_part's dtype."""
        if actions.dim() != 3 or actions.shape[0] != x_part.shape[0] or actions.shape[2] != self.action_dim:
            raise ValueError(f"actions must be (B={x_part.shape[0]}, K, {self.action_dim}), got {tuple(actions.shape)}")
        pre = x_part.unsqueeze(1) + self.rff.project(actions, slice(self.state_dim, None), x_part.dtype)  # (B, K, D)
        return self.rff.activate(pre)  # (B, K, D)

    def many(self, x_part: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """φ for K actions per state: W_x x (B, D) from ``state_part``, actions (B, K, A) -> (B, K, D + 1)."""
        z = self.fourier(x_part, actions)  # (B, K, D)
        return torch.cat([z, torch.ones_like(z[..., :1])], -1)  # (B, K, D + 1)

    def forward(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """φ(x, a) for one action per state: x (B, F), actions (B, A) -> (B, D + 1)."""
        return self.many(self.state_part(x), actions.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def encoder_features(
    encoder: ObservationEncoder,
    observations: Observation,
    goals: Observation | None = None,
    task_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The frozen encoder's embedding (B, F) of device observations (with their goals / task ids), no gradients."""
    (x,) = encoder([observations], goals, task_ids)  # (B, F)
    return x


def load_encoder(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ObservationEncoder:
    """The (frozen, eval-mode) observation encoder of a checkpoint or saved policy directory."""
    from robot_rl.checkpoint import load_policy  # checkpoint imports the algorithms, which import this module

    trained, _ = load_policy(path, device)
    encoder = trained.policy.encoder
    encoder.requires_grad_(False)
    return encoder.eval()
