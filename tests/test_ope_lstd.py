"""LSTD-Q, LSPI and their features (``robot_rl/ope/lstd.py``, ``robot_rl/algos/lspi.py``).

A slippery chain MDP with one-hot (s, a) features, where the exact Q^π is linear algebra: LSTD-Q must
reproduce it, LSPI must reach value iteration's optimal policy. Then the solver paths, streaming,
input errors, the random features, and the LSPI learner on a contextual bandit whose best action is known.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from data_lake.batch import Batch, Observation
from robot_rl.algos import ALGOS
from robot_rl.algos.lspi import LSPIConfig
from robot_rl.nets import EncoderConfig, ObservationEncoder, ObservationSpec
from robot_rl.ope.lstd import (
    LSTDStatistics,
    RandomFourierFeatures,
    StateActionRFF,
    encoder_features,
    load_encoder,
    lspi_finite,
    lstdq,
    lstdq_value,
    one_hot_action_features,
    outer_action_features,
    solve_ridge,
    state_features,
)

torch.set_num_threads(1)


@dataclasses.dataclass(frozen=True)
class Chain:
    """S states in a row, actions 0 = left, 1 = right; the intended move happens with probability 3/4,
    the opposite one with 1/4 (walls clip). r(s, a) = 1 in state 0, 2 in state S − 1, 0 elsewhere."""

    S: int = 7
    gamma: float = 0.9

    @property
    def P(self) -> np.ndarray:  # (S, 2, S)
        P = np.zeros((self.S, 2, self.S))
        for s in range(self.S):
            for a, step in ((0, -1), (1, 1)):
                P[s, a, min(max(s + step, 0), self.S - 1)] += 0.75
                P[s, a, min(max(s - step, 0), self.S - 1)] += 0.25
        return P

    @property
    def R(self) -> np.ndarray:  # (S, 2)
        R = np.zeros((self.S, 2))
        R[0], R[-1] = 1.0, 2.0
        return R

    def q_of(self, pi: np.ndarray) -> np.ndarray:
        """Exact Q^π (S, 2) = (I − γP^π)⁻¹ r, P^π the (S·2, S·2) state-action transition matrix."""
        P_pi = np.einsum("sat,tb->satb", self.P, pi).reshape(self.S * 2, self.S * 2)
        return np.linalg.solve(np.eye(self.S * 2) - self.gamma * P_pi, self.R.reshape(-1)).reshape(self.S, 2)

    def optimal(self) -> tuple[np.ndarray, np.ndarray]:
        """Value iteration to convergence -> (Q* (S, 2), greedy actions (S,))."""
        Q = np.zeros((self.S, 2))
        for _ in range(2000):
            Q = self.R + self.gamma * self.P @ Q.max(1)
        return Q, Q.argmax(1)

    def onehot(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        """One-hot (s, a) features (N, 2S)."""
        return np.eye(2 * self.S)[s * 2 + a]

    def rows(self) -> dict[str, np.ndarray]:
        """Every (s, a, s') with multiplicity proportional to its probability (3 : 1): the exact expectation
        as equally weighted rows. ``phi_next_all`` (N, 2, F) holds φ(s', a') for both actions."""
        s, a, t = [], [], []
        for si in range(self.S):
            for ai in range(2):
                for ti in range(self.S):
                    n = round(4 * self.P[si, ai, ti])
                    s += [si] * n
                    a += [ai] * n
                    t += [ti] * n
        s_, a_, t_ = np.array(s), np.array(a), np.array(t)
        phi_next_all = np.stack([self.onehot(t_, np.full_like(t_, b)) for b in (0, 1)], 1)
        return {"s": s_, "a": a_, "next": t_, "phi": self.onehot(s_, a_), "phi_next_all": phi_next_all}


CHAIN = Chain()
PI = np.random.default_rng(0).dirichlet([1.0, 1.0], size=CHAIN.S)  # a fixed stochastic policy (S, 2)


def test_lstdq_matches_the_exact_q_of_a_fixed_stochastic_policy() -> None:
    d = CHAIN.rows()
    r, term = CHAIN.R[d["s"], d["a"]], np.zeros(len(d["s"]))
    q_pi = CHAIN.q_of(PI).reshape(-1)
    # φ̄' exact for the finite action set: per-action features with π's probabilities
    w = lstdq(d["phi"], d["phi_next_all"], r, term, CHAIN.gamma, ridge=0.0, next_probs=PI[d["next"]])
    np.testing.assert_allclose(w.numpy(), q_pi, atol=1e-10)
    # the same expectation passed already averaged, (N, F)
    expected = np.einsum("nk,nkf->nf", PI[d["next"]], d["phi_next_all"])
    np.testing.assert_allclose(lstdq(d["phi"], expected, r, term, CHAIN.gamma, ridge=0.0).numpy(), q_pi, atol=1e-10)
    # a wrong discount or the behaviour's action at s' (not π's) gives a different answer
    assert np.abs(lstdq(d["phi"], expected, r, term, 0.8, ridge=0.0).numpy() - q_pi).max() > 0.5
    # OPE: V̂ = mean over initial states of φ̄(s0)ᵀw == d0ᵀV^π, from s0 uniform over the chain
    s0 = np.arange(CHAIN.S)
    phi0 = np.stack([CHAIN.onehot(s0, np.full_like(s0, b)) for b in (0, 1)], 1)  # (S, 2, F)
    v_exact = float((PI * CHAIN.q_of(PI)).sum(1).mean())
    assert lstdq_value(phi0, w, probs0=PI) == pytest.approx(v_exact, abs=1e-10)
    # m actions sampled from π average to the same expectation as m grows
    rng = np.random.default_rng(1)
    a0 = (rng.random((CHAIN.S, 4000)) < PI[:, 1:]).astype(int)  # (S, m) sampled actions
    phi0_sampled = CHAIN.onehot(np.repeat(s0[:, None], 4000, 1), a0)  # (S, m, F)
    assert lstdq_value(phi0_sampled, w) == pytest.approx(v_exact, abs=0.05)


def test_terminal_rows_stop_bootstrapping() -> None:
    """With every row terminal, Q = r (γ has no effect) and A = Σφφᵀ is symmetric: the Cholesky path."""
    d = CHAIN.rows()
    r = CHAIN.R[d["s"], d["a"]]
    w = lstdq(d["phi"], d["phi_next_all"].mean(1), r, np.ones(len(r)), CHAIN.gamma, ridge=0.0)
    np.testing.assert_allclose(w.numpy(), CHAIN.R.reshape(-1), atol=1e-12)


def test_ridge_to_zero_recovers_q() -> None:
    d = CHAIN.rows()
    r, term = CHAIN.R[d["s"], d["a"]], np.zeros(len(d["s"]))
    nxt = np.einsum("nk,nkf->nf", PI[d["next"]], d["phi_next_all"])
    q_pi = CHAIN.q_of(PI).reshape(-1)
    errors = [
        np.abs(lstdq(d["phi"], nxt, r, term, CHAIN.gamma, ridge=lam).numpy() - q_pi).max()
        for lam in (1e-1, 1e-3, 1e-6, 1e-9)
    ]
    assert errors[0] > 1.0, errors  # a strong ridge shrinks Q visibly
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-5, errors


def test_solver_is_cholesky_for_a_symmetric_system_and_lu_otherwise(monkeypatch) -> None:
    rng = np.random.default_rng(2)
    phi, nxt, r = rng.normal(size=(50, 6)), rng.normal(size=(50, 6)), rng.normal(size=50)
    A = torch.tensor(phi.T @ phi / 50)
    b = torch.tensor(phi.T @ r / 50)
    calls: list[str] = []
    for name in ("cholesky_ex", "solve_ex"):
        fn = getattr(torch.linalg, name)
        monkeypatch.setattr(torch.linalg, name, lambda *a, _f=fn, _n=name, **k: calls.append(_n) or _f(*a, **k))
    w = solve_ridge(A, b, 0.1)
    assert calls == ["cholesky_ex"]
    np.testing.assert_allclose(w.numpy(), np.linalg.solve(A.numpy() + 0.1 * np.eye(6), b.numpy()), atol=1e-12)
    calls.clear()
    w = lstdq(phi, nxt, r, np.zeros(50), 0.9, ridge=0.1)  # A not symmetric: LU
    assert calls == ["solve_ex"]
    A = phi.T @ (phi - 0.9 * nxt) / 50
    np.testing.assert_allclose(w.numpy(), np.linalg.solve(A + 0.1 * np.eye(6), phi.T @ r / 50), atol=1e-12)


def test_streaming_statistics_equal_the_one_shot_solve() -> None:
    rng = np.random.default_rng(3)
    N, F = 300, 12
    phi, nxt = rng.normal(size=(N, F)), rng.normal(size=(N, 5, F))  # 5 sampled next actions per row
    r, term = rng.normal(size=N), (rng.random(N) < 0.1).astype(float)
    stats = LSTDStatistics(F)
    for chunk in np.array_split(np.arange(N), [7, 100, 101, 250]):
        stats.add(phi[chunk], nxt[chunk], r[chunk], term[chunk], 0.95)
    assert stats.rows == N
    once = lstdq(phi, nxt, r, term, 0.95, ridge=1e-3)
    torch.testing.assert_close(stats.solve(1e-3), once, atol=1e-12, rtol=1e-12)
    stats.reset()
    assert stats.rows == 0 and not stats.A.any() and not stats.b.any()


def test_lspi_reaches_the_optimal_policy_of_the_chain() -> None:
    d = CHAIN.rows()
    r, term = CHAIN.R[d["s"], d["a"]], np.zeros(len(d["s"]))
    q_star, best = CHAIN.optimal()
    assert 0 < best.sum() < CHAIN.S  # the optimum goes left near state 0 and right elsewhere: not trivial
    res = lspi_finite(d["phi"], d["phi_next_all"], r, term, CHAIN.gamma, ridge=0.0)
    assert res.converged and res.iterations <= 6, res
    greedy = res.w.numpy().reshape(CHAIN.S, 2).argmax(1)
    np.testing.assert_array_equal(greedy, best)
    np.testing.assert_allclose(res.w.numpy(), q_star.reshape(-1), atol=1e-8)  # Q^{π*} = Q*
    # one iteration only evaluates the uniform policy, which is not optimal here
    one = lspi_finite(d["phi"], d["phi_next_all"], r, term, CHAIN.gamma, ridge=0.0, max_iterations=1)
    assert not one.converged and np.abs(one.w.numpy() - q_star.reshape(-1)).max() > 0.5


def test_bad_inputs_fail_with_clear_errors() -> None:
    rng = np.random.default_rng(4)
    phi, nxt, r, d = rng.normal(size=(10, 3)), rng.normal(size=(10, 3)), rng.normal(size=10), np.zeros(10)
    with pytest.raises(ValueError, match="phi_next must be"):
        lstdq(phi, nxt[:9], r, d, 0.9)
    with pytest.raises(ValueError, match=r"rewards must be \(N,\)"):
        lstdq(phi, nxt, r[:9], d, 0.9)
    bad = r.copy()
    bad[6] = np.nan
    with pytest.raises(ValueError, match=r"rewards has a non-finite value \(nan\) at index \(6,\)"):
        lstdq(phi, nxt, bad, d, 0.9)
    with pytest.raises(ValueError, match="terminals must be 0 or 1, row 2"):
        lstdq(phi, nxt, r, np.array([0, 0, 0.5, *[0] * 7]), 0.9)
    with pytest.raises(ValueError, match="gamma must be in"):
        lstdq(phi, nxt, r, d, 1.5)
    with pytest.raises(ValueError, match="singular"):
        zero = phi.copy()
        zero[:, 1] = 0  # a feature the data never excite
        lstdq(zero, zero * 0, r, d, 0.9, ridge=0.0)
    with pytest.raises(ValueError, match="probs of row 0 must be >= 0 and sum to 1"):
        lstdq(phi, np.stack([nxt, nxt], 1), r, d, 0.9, next_probs=np.full((10, 2), 0.7))
    with pytest.raises(ValueError, match="no rows added"):
        LSTDStatistics(3).solve(0.1)
    with pytest.raises(ValueError, match="w must be"):
        lstdq_value(phi, np.zeros(4))


def test_random_fourier_features_are_deterministic_for_a_seed_and_approximate_the_kernel() -> None:
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = RandomFourierFeatures(3, 64, 0.7, seed=11), RandomFourierFeatures(3, 64, 0.7, seed=11)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), RandomFourierFeatures(3, 64, 0.7, seed=12)(x))
    big = RandomFourierFeatures(3, 20_000, 1.5, seed=0)
    z = big(x)  # (5, D)
    kernel = torch.exp(-torch.cdist(x, x).pow(2) / (2 * 1.5**2))
    torch.testing.assert_close(z @ z.mT, kernel, atol=0.03, rtol=0)


def test_state_action_features() -> None:
    g = torch.Generator().manual_seed(0)
    x, acts = torch.randn(4, 5, generator=g), torch.rand(4, 3, 2, generator=g) * 2 - 1
    f = StateActionRFF(5, 2, 32, 1.0, seed=3)
    many = f.many(f.state_part(x), acts)  # (4, 3, 33): W x computed once per state
    assert many.shape == (4, 3, 33) and torch.all(many[..., -1] == 1)
    for k in range(3):
        torch.testing.assert_close(many[:, k], f(x, acts[:, k]), atol=1e-12, rtol=0)
    psi = state_features(np.array([[2.0, 3.0]]))
    np.testing.assert_array_equal(psi.numpy(), [[2.0, 3.0, 1.0]])
    np.testing.assert_array_equal(one_hot_action_features(psi, [1], 3).numpy(), [[0, 0, 0, 2, 3, 1, 0, 0, 0]])
    np.testing.assert_array_equal(
        outer_action_features(psi, np.array([[0.5]])).numpy(), [[1.0, 2.0, 1.5, 3.0, 0.5, 1.0]]
    )


def test_encoder_features_from_a_saved_policy(tmp_path) -> None:
    from robot_rl import checkpoint
    from robot_rl.algos import BCConfig

    spec = ObservationSpec(action_dim=2, state_dim=3, num_tasks=2)
    algo = ALGOS["bc"](BCConfig(encoder=EncoderConfig(state_hidden=8, task_embedding_dim=4), hidden=(8,)), spec)
    checkpoint.save_policy(tmp_path / "policy", algo)
    obs, tasks = Observation({}, torch.randn(6, 3)), torch.tensor([0, 1, 0, 1, 1, 0])
    encoder = load_encoder(tmp_path / "policy")
    assert isinstance(encoder, ObservationEncoder) and not any(p.requires_grad for p in encoder.parameters())
    torch.testing.assert_close(
        encoder_features(encoder, obs, None, tasks), encoder_features(algo.nets.encoder, obs, None, tasks)
    )


# ---------------------------------------------------------------------------- the LSPI learner
def bandit_batch(n: int, seed: int) -> Batch:
    """A contextual bandit through the learner's Batch: state x ~ U[-1, 1], one action, r = 1 − (a − x)²,
    every row terminal. The best action is a = x."""
    g = torch.Generator().manual_seed(seed)
    x, a = torch.rand(n, 1, generator=g) * 2 - 1, torch.rand(n, 1, generator=g) * 2 - 1
    zeros = torch.zeros(n)
    return Batch(
        observations=Observation({}, x),
        actions=a,
        rewards=1 - (a - x).squeeze(1) ** 2,
        terminals=torch.ones(n),
        next_observations=Observation({}, x),
        goals=None,
        task_ids=zeros.long(),
        mc_returns=zeros,
        goal_source=zeros.long(),
    )


@pytest.mark.parametrize("improvement", ["grid", "cem"])
def test_lspi_learner_finds_the_best_action_of_a_bandit(improvement: str) -> None:
    cfg = LSPIConfig(
        num_features=64,
        bandwidth=0.7,
        ridge=1e-4,
        samples_per_iteration=512,
        probe_size=64,
        improvement=improvement,
        grid_points=41,
        gamma=0.9,
    )
    algo = ALGOS["lspi"](cfg, ObservationSpec(action_dim=1, state_dim=1))
    for i in range(16):
        metrics = algo.update(bandit_batch(256, seed=i))
    assert metrics["lspi/converged"] == 1.0 and metrics["lspi/iteration"] <= 4, metrics
    x = torch.linspace(-0.8, 0.8, 17).unsqueeze(1)  # the random features fit worse at the box's edge
    a = algo.act(Observation({}, x), deterministic=True)
    assert (a - x).abs().max() < 0.1, torch.cat([x, a], 1)
    q = algo.q_estimate(bandit_batch(64, seed=99))
    b = bandit_batch(64, seed=99)
    assert (q - b.rewards).abs().mean() < 0.05  # Q of the data's actions = r (terminal rows)


def drift_batch(n: int, seed: int) -> Batch:
    """x' = clip(x + a/4, −1, 1) with r = −x² of the current state: the action matters only through the
    bootstrapped value of x' (a learner without the γ·φ̄' term cannot tell actions apart)."""
    g = torch.Generator().manual_seed(seed)
    x, a = torch.rand(n, 1, generator=g) * 2 - 1, torch.rand(n, 1, generator=g) * 2 - 1
    zeros = torch.zeros(n)
    next_x = (x + 0.25 * a).clamp(-1, 1)
    return Batch(
        Observation({}, x),
        a,
        -(x.squeeze(1) ** 2),
        zeros,
        Observation({}, next_x),
        None,
        zeros.long(),
        zeros,
        zeros.long(),
    )


def test_lspi_learner_steers_towards_the_reward_through_bootstrapping() -> None:
    cfg = LSPIConfig(
        num_features=100,
        bandwidth=0.5,
        ridge=1e-5,
        samples_per_iteration=2048,
        probe_size=64,
        improvement="grid",
        grid_points=21,
        gamma=0.8,
    )
    algo = ALGOS["lspi"](cfg, ObservationSpec(action_dim=1, state_dim=1))
    for i in range(48):
        algo.update(drift_batch(256, seed=i))
    assert algo.state.iteration >= 4
    x = torch.tensor([-0.9, -0.6, -0.3, -0.1, 0.1, 0.3, 0.6, 0.9]).unsqueeze(1)
    a = algo.act(Observation({}, x))  # (8, 1): towards 0, at full speed when far
    assert (torch.sign(a) == -torch.sign(x)).all(), torch.cat([x, a], 1)
    assert (a[x.abs() >= 0.6].abs() >= 0.8).all(), torch.cat([x, a], 1)


def test_lspi_loads_its_frozen_encoder_from_a_checkpoint(tmp_path) -> None:
    from robot_rl import checkpoint
    from robot_rl.algos import BCConfig

    spec = ObservationSpec(action_dim=2, state_dim=3)
    enc = EncoderConfig(state_hidden=8)
    bc = ALGOS["bc"](BCConfig(encoder=enc, hidden=(8,), seed=1), spec)
    checkpoint.save_policy(tmp_path / "policy", bc)
    cfg = LSPIConfig(
        encoder=enc, seed=2, samples_per_iteration=8, probe_size=4, encoder_checkpoint=str(tmp_path / "policy")
    )
    lspi = ALGOS["lspi"](cfg, spec)
    got, want = lspi.nets.encoder.state_dict(), bc.nets.encoder.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not any(p.requires_grad for p in lspi.nets.encoder.parameters())
    with pytest.raises(ValueError, match="does not fit this observation spec and encoder config"):
        ALGOS["lspi"](dataclasses.replace(cfg, encoder=EncoderConfig(state_hidden=16)), spec)
