"""DualDICE (``robot_rl/ope/dice.py``) on tabular MDPs with one-hot (s, a) features, where the
occupancy ratio d^π/d^D and the value of π are exact linear algebra.

Data rows enumerate every (s, a, s') with a multiplicity proportional to d^D(s, a)·P(s'|s, a), so the
empirical distribution is the exact one and the tolerances measure the optimizer, not sampling noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from robot_rl.ope.dice import DiceConfig, dualdice, dualdice_linear
from robot_rl.ope.lstd import lstdq, lstdq_value

torch.set_num_threads(1)
STEPS = 500


@dataclasses.dataclass(frozen=True)
class Tabular:
    P: np.ndarray  # (S, K, S) transition probabilities (multiples of 1/4)
    terminal: np.ndarray  # (S, K) 1: the transition enters the absorbing state
    R: np.ndarray  # (S, K)
    pi: np.ndarray  # (S, K) π's probabilities (multiples of 1/4)
    counts: np.ndarray  # (S, K) data multiplicity of each (s, a): d^D ∝ counts
    gamma: float
    s0: int = 0

    @property
    def S(self) -> int:
        return self.R.shape[0]

    @property
    def K(self) -> int:
        return self.R.shape[1]

    def onehot(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.eye(self.S * self.K)[np.asarray(s) * self.K + np.asarray(a)]

    def exact(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(d^π (S·K,) over the non-absorbing pairs, d^D (S·K,), V(π)); terminal transitions lead nowhere."""
        SK = self.S * self.K
        P_pi = np.einsum("sat,tb->satb", self.P * (1 - self.terminal)[..., None], self.pi).reshape(SK, SK)
        d0 = np.zeros(SK)
        d0[self.s0 * self.K : (self.s0 + 1) * self.K] = self.pi[self.s0]
        d_pi = (1 - self.gamma) * np.linalg.solve((np.eye(SK) - self.gamma * P_pi).T, d0)
        d_data = self.counts.reshape(-1) / self.counts.sum()
        return d_pi, d_data, float(d_pi @ self.R.reshape(-1)) / (1 - self.gamma)

    def rows(self) -> dict[str, np.ndarray]:
        """φ (N, F), φ(s', a') for 4 actions listed with π's multiplicities (N, 4, F) (their mean is exact),
        φ(s0, a0 ~ π) (4, F), rewards, terminals, and each row's (s, a) index."""
        s, a, t = [], [], []
        for si in range(self.S):
            for ai in range(self.K):
                for ti in range(self.S):
                    n = self.counts[si, ai] * round(4 * self.P[si, ai, ti])
                    s, a, t = s + [si] * n, a + [ai] * n, t + [ti] * n
        s_, a_, t_ = np.array(s), np.array(a), np.array(t)
        listed = np.array([np.repeat(np.arange(self.K), np.round(4 * p).astype(int)) for p in self.pi])  # (S, 4)
        phi_next = self.onehot(t_[:, None], listed[t_])  # (N, 4, F)
        return {
            "phi": self.onehot(s_, a_),
            "phi_next": phi_next,
            "phi0": self.onehot(np.full(4, self.s0), listed[self.s0]),
            "rewards": self.R[s_, a_],
            "terminals": self.terminal[s_, a_].astype(float),
            "index": s_ * self.K + a_,
        }


def random_tabular(seed: int, terminals: bool) -> Tabular:
    """6 states, 2 actions; each (s, a) moves to one state w.p. 3/4 and another w.p. 1/4."""
    rng = np.random.default_rng(seed)
    S, K = 6, 2
    P = np.zeros((S, K, S))
    for s in range(S):
        for a in range(K):
            i, j = rng.choice(S, 2, replace=False)
            P[s, a, i], P[s, a, j] = 0.75, 0.25
    terminal = np.zeros((S, K))
    if terminals:
        terminal[3, 1] = terminal[5, 0] = 1
    pi = rng.choice([0.25, 0.5, 0.75], size=S)
    return Tabular(
        P=P,
        terminal=terminal,
        R=rng.uniform(0, 1, (S, K)),
        pi=np.stack([pi, 1 - pi], 1),
        counts=rng.integers(1, 4, (S, K)),
        gamma=0.9,
    )


def per_pair(zeta: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """ζ of each (s, a) pair from the rows' values (every row of a pair has the same one-hot features)."""
    out = np.zeros(n)
    out[index] = zeta
    return out


@pytest.mark.parametrize("terminals", [False, True], ids=["no-terminals", "absorbing"])
def test_dualdice_recovers_the_occupancy_ratio_and_the_value(terminals: bool) -> None:
    mdp = random_tabular(0, terminals)
    d = mdp.rows()
    d_pi, d_data, v_exact = mdp.exact()
    ratio = d_pi / d_data
    assert np.abs(ratio - 1).max() > 0.5  # far from the data's own distribution: ζ = 1 would fail below
    args = (d["phi"], d["phi_next"], d["phi0"], d["rewards"], d["terminals"], mdp.gamma)
    res = dualdice(*args, DiceConfig(steps=STEPS))
    zeta = per_pair(res.zeta, d["index"], mdp.S * mdp.K)
    assert np.abs(zeta - ratio).max() < 0.01 * ratio.max(), (zeta, ratio)
    assert res.value == pytest.approx(v_exact, rel=1e-3)
    assert res.normalizer == pytest.approx(1.0, abs=1e-3) and res.steps == STEPS and np.isfinite(res.final_loss)
    if terminals:  # the absorbing state holds mass that E_D[ζ] alone misses
        assert res.zeta.mean() < 0.9
    # the closed-form saddle point for linear ν, ζ is exact
    lin = dualdice_linear(*args, ridge=0.0)
    np.testing.assert_allclose(per_pair(lin.zeta, d["index"], mdp.S * mdp.K), ratio, atol=1e-10)
    assert lin.value == pytest.approx(v_exact, rel=1e-10) and lin.normalizer == pytest.approx(1.0, abs=1e-10)


def test_linear_dualdice_and_lstdq_agree_on_shared_features() -> None:
    """On the same linear features, the closed-form DualDICE's plain estimate uᵀb/(1 − γ) is LSTD-Q's value."""
    rng = np.random.default_rng(1)
    N, F = 200, 8
    phi, nxt, phi0 = rng.normal(size=(N, F)), rng.normal(size=(N, F)), rng.normal(size=(5, F))
    r, term = rng.normal(size=N), (rng.random(N) < 0.2).astype(float)
    lin = dualdice_linear(phi, nxt, phi0, r, term, 0.9, ridge=1e-3)
    v_lstd = lstdq_value(phi0, lstdq(phi, nxt, r, term, 0.9, ridge=1e-3))
    assert lin.value * lin.normalizer == pytest.approx(v_lstd, rel=1e-10)


def test_dualdice_is_deterministic_for_a_seed() -> None:
    mdp = random_tabular(2, True)
    d = mdp.rows()
    args = (d["phi"], d["phi_next"], d["phi0"], d["rewards"], d["terminals"], mdp.gamma)
    runs = [dualdice(*args, DiceConfig(steps=30, hidden=(8,), seed=s)) for s in (5, 5, 6)]
    np.testing.assert_array_equal(runs[0].zeta, runs[1].zeta)
    assert runs[0].value == runs[1].value and runs[0].final_loss == runs[1].final_loss
    assert not np.array_equal(runs[0].zeta, runs[2].zeta)


def test_bad_inputs_fail_with_clear_errors() -> None:
    mdp = random_tabular(0, False)
    d = mdp.rows()
    args = [d["phi"], d["phi_next"], d["phi0"], d["rewards"], d["terminals"]]
    with pytest.raises(ValueError, match="gamma < 1"):
        dualdice(*args, 1.0)
    with pytest.raises(ValueError, match="phi_next must be"):
        dualdice(d["phi"], d["phi_next"][:-1], *args[2:], 0.9)
    with pytest.raises(ValueError, match="phi0 must be"):
        dualdice(*args[:2], d["phi0"][:, :-1], *args[3:], 0.9)
    bad = d["rewards"].copy()
    bad[3] = np.inf
    with pytest.raises(ValueError, match=r"rewards has a non-finite value \(inf\) at index \(3,\)"):
        dualdice(*args[:3], bad, args[4], 0.9)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        DiceConfig(steps=0)
