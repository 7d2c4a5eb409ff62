"""Trajectory estimators of off-policy evaluation against exact values of small tabular MDPs
(tests/ope_mdp.py): consistency, unbiasedness, the bias of the self-normalized ones, the doubly robust
variance reduction, hand-computed values, bootstrap intervals, weight diagnostics, input validation,
the ranking metrics and the plot."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from robot_rl.ope import Estimate, Trajectories, estimate, plot_estimates
from robot_rl.ope.estimators import (
    ESTIMATORS,
    MODEL_BEHAVIOR_WARNING,
    bootstrap_ci,
    bootstrap_statistics,
    cw_per_decision_is,
    direct_method,
    doubly_robust,
    effective_sample_size,
    importance_sampling,
    log_weights,
    max_weight_share,
    per_decision_is,
    per_step_ess,
    weight_warnings,
    weighted_doubly_robust,
    weighted_is,
)
from robot_rl.ope.metrics import ci_coverage, rank_average, regret_at_1, relative_absolute_error, spearman
from tests.ope_mdp import exact_value, perturbed_q, q_values, random_mdp, random_policy, sample

# ---------------------------------------------------------------- the problem most tests use

MDP = random_mdp(seed=0)  # 5 states, 3 actions, H = 8, γ = 0.9, (s, a)-dependent termination
PI = random_policy(MDP, seed=2)
MU = 0.5 * PI + 0.5 * random_policy(MDP, seed=1)  # off-policy, ratios below 2 per step
FAR = random_policy(MDP, seed=1)  # further off-policy: V(FAR) is 20% below V(π)
TRUTH = exact_value(MDP, PI)


@functools.cache
def big() -> Trajectories:
    return sample(MDP, MU, PI, n=20_000, seed=11).traj


def datasets(traj: Trajectories, size: int) -> list[Trajectories]:
    """Independent datasets of ``size`` trajectories: consecutive blocks of i.i.d. trajectories."""
    return [traj.select(slice(k, k + size)) for k in range(0, traj.n - size + 1, size)]


def mean_and_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


# ---------------------------------------------------------------- statistical properties


def test_the_mdp_sampler_matches_the_exact_value() -> None:
    on_policy = sample(MDP, PI, PI, n=20_000, seed=5).traj
    mean, se = mean_and_se(list(on_policy.returns))
    assert abs(mean - TRUTH) < 4 * se
    assert abs(exact_value(MDP, MU) - TRUTH) > 0.1  # the off-policy problem is not trivial


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_converges_to_the_exact_value(name: str) -> None:
    fn = ESTIMATORS[name]
    small = [abs(fn(sample(MDP, MU, PI, n=200, seed=100 + k).traj) - TRUTH) for k in range(5)]
    err = abs(fn(big()) - TRUTH)
    se = float(bootstrap_statistics(big(), name, n_boot=100, seed=0).std())
    assert err < 4 * se + 1e-6, (name, err, se)
    assert err < 0.03 * TRUTH, (name, err)
    assert err < np.mean(small), (name, err, small)


def test_cwpdis_normalizes_over_all_trajectories_not_only_the_running_ones() -> None:
    """Episode lengths depend on the policy here: normalizing each step only over the trajectories still
    running estimates Σ γ^t E_π[r_t | T > t], far from V(π); the ratio-1 padding is consistent."""
    traj = big()
    w = np.exp(log_weights(traj))  # (N, T)
    running_only = (w * traj.rewards).sum(0) / (w * traj.mask).sum(0) @ traj.discounts
    se = float(bootstrap_statistics(traj, "cwpdis", n_boot=100, seed=0).std())
    assert abs(cw_per_decision_is(traj) - TRUTH) < 4 * se
    assert abs(running_only - TRUTH) > 0.2 * TRUTH


def test_is_pdis_and_dr_with_a_wrong_model_are_unbiased_on_tiny_datasets() -> None:
    wrong = perturbed_q(q_values(MDP, PI), scale=0.5, seed=3)
    data = sample(MDP, MU, PI, n=10_000, seed=21, q_model=wrong).traj
    parts = datasets(data, 5)  # 2000 datasets of 5 trajectories
    for fn in (importance_sampling, per_decision_is, doubly_robust):
        mean, se = mean_and_se([fn(d) for d in parts])
        assert abs(mean - TRUTH) < 4 * se, (fn.__name__, mean, TRUTH, se)
    dm_mean, dm_se = mean_and_se([direct_method(d) for d in parts])
    assert dm_mean - TRUTH > 0.3 and dm_mean - TRUTH > 20 * dm_se  # the model really is wrong


def test_wis_is_biased_for_one_trajectory_but_consistent() -> None:
    """With N = 1 the weights cancel: WIS is the logged return, whose mean is V(μ), not V(π)."""
    data = sample(MDP, FAR, PI, n=3000, seed=31).traj
    mean, se = mean_and_se([weighted_is(d) for d in datasets(data, 1)])
    assert abs(mean - exact_value(MDP, FAR)) < 4 * se
    assert abs(mean - TRUTH) > 8 * se
    assert abs(weighted_is(big()) - TRUTH) < 0.03 * TRUTH


def test_exact_model_removes_the_variance_in_a_deterministic_mdp() -> None:
    """One start state, deterministic transitions and rewards: DM, DR and WDR with the exact Q^π equal
    V(π) on every dataset; PDIS still varies."""
    mdp = random_mdp(seed=4, deterministic=True)
    pi = random_policy(mdp, seed=2)
    mu = 0.5 * pi + 0.5 * random_policy(mdp, seed=1)
    truth = exact_value(mdp, pi)
    parts = datasets(sample(mdp, mu, pi, n=1000, seed=41).traj, 5)
    for fn in (direct_method, doubly_robust, weighted_doubly_robust):
        np.testing.assert_allclose([fn(d) for d in parts], truth, rtol=0, atol=1e-10, err_msg=fn.__name__)
    assert np.std([per_decision_is(d) for d in parts]) > 0.1


def test_exact_model_reduces_the_variance_in_a_stochastic_mdp() -> None:
    """What is left of DR's variance is the environment's (start state, transitions); PDIS adds the
    weights' (here μ is far from π)."""
    parts = datasets(sample(MDP, FAR, PI, n=4000, seed=51).traj, 20)
    dr = [doubly_robust(d) for d in parts]
    pdis = [per_decision_is(d) for d in parts]
    assert np.var(dr) < 0.5 * np.var(pdis)


def test_on_policy_every_weighted_estimator_is_the_monte_carlo_mean() -> None:
    traj = sample(MDP, PI, PI, n=500, seed=61).traj
    mc = traj.returns.mean()
    for name in ("is", "pdis", "wis", "cwpdis"):
        assert ESTIMATORS[name](traj) == pytest.approx(mc, abs=1e-12), name
    assert effective_sample_size(traj) == pytest.approx(500)
    np.testing.assert_allclose(per_step_ess(traj), 500)
    assert max_weight_share(traj) == pytest.approx(1 / 500)
    assert weight_warnings(traj) == []


# ---------------------------------------------------------------- exact values by hand


def two_trajectories(**overrides: object) -> Trajectories:
    """Trajectory 0: 2 steps, r = (1, 2), ρ = (2, 0.5); trajectory 1: 1 step, r = 3, ρ = 0.5; γ = 0.5.
    Past the end of trajectory 1 every field holds junk, which must be ignored."""
    fields: dict[str, object] = {
        "rewards": np.array([[1.0, 2.0], [3.0, 7.0]]),
        "mask": np.array([[True, True], [True, False]]),
        "behavior_logp": np.log([[0.25, 0.5], [0.5, 0.1]]),
        "target_logp": np.log([[0.5, 0.25], [0.25, 0.9]]),
        "gamma": 0.5,
        "q_hat": np.array([[1.5, 1.0], [2.0, 99.0]]),
        "v_hat": np.array([[1.2, 0.8], [2.5, 99.0]]),
    }
    fields.update(overrides)
    return Trajectories(**fields)  # type: ignore[arg-type]


# w: trajectory 0 (2, 1), trajectory 1 (0.5, 0.5 padded); G = (2, 3)
HAND = {
    "dm": (1.2 + 2.5) / 2,
    "is": (1 * 2 + 0.5 * 3) / 2,  # 1.75
    "pdis": ((2 * 1 + 0.5 * 1 * 2) + 0.5 * 3) / 2,  # 2.25
    "wis": (1 * 2 + 0.5 * 3) / (1 + 0.5),  # 2.333…
    "cwpdis": (2 * 1 + 0.5 * 3) / 2.5 + 0.5 * (1 * 2) / 1.5,  # 1.4 + 0.666…
    # trajectory 0: 2(1 − 1.5) + 1.2 + 0.5[1(2 − 1) + 2·0.8] = 1.5; trajectory 1: 0.5(3 − 2) + 2.5 = 3
    "dr": (1.5 + 3.0) / 2,
    # w̃_−1 = (.5, .5), w̃_0 = (.8, .2), w̃_1 = (2/3, 1/3)
    "wdr": (0.8 * -0.5 + 0.2 * 1.0 + 0.5 * 1.2 + 0.5 * 2.5) + 0.5 * (2 / 3 * 1.0 + 0.8 * 0.8),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_hand_computed_two_trajectory_example(name: str) -> None:
    assert ESTIMATORS[name](two_trajectories()) == pytest.approx(HAND[name], abs=1e-12)


def test_hand_example_diagnostics() -> None:
    traj = two_trajectories()
    assert effective_sample_size(traj) == pytest.approx(1.5**2 / 1.25)
    np.testing.assert_allclose(per_step_ess(traj), [2.5**2 / 4.25, 1.5**2 / 1.25])
    assert max_weight_share(traj) == pytest.approx(1 / 1.5)
    np.testing.assert_allclose(traj.rewards, [[1.0, 2.0], [3.0, 0.0]])  # the junk past the end is zeroed


# ---------------------------------------------------------------- weights: overflow, zeros, diagnostics


def dominated(n: int, log_ratio: float, heavy: int = 0) -> Trajectories:
    """n one-step trajectories with reward i; trajectory ``heavy`` has log ratio ``log_ratio``, the others 0."""
    target = np.zeros((n, 1))
    target[heavy, 0] = log_ratio
    return Trajectories(np.arange(n, dtype=float)[:, None], np.ones((n, 1), bool), np.zeros((n, 1)), target, 0.9)


def test_ess_is_about_one_and_warns_when_one_weight_dominates() -> None:
    traj = dominated(100, 20.0, heavy=3)
    assert effective_sample_size(traj) == pytest.approx(1.0, abs=1e-6)
    assert max_weight_share(traj) == pytest.approx(1.0, abs=1e-6)
    warnings = weight_warnings(traj)
    assert len(warnings) == 2
    assert "effective sample size 1.0 of 100" in warnings[0]
    assert "index 3" in warnings[1] and "100%" in warnings[1]


def test_ess_warns_below_ten_trajectories_and_below_ten_percent() -> None:
    assert effective_sample_size(dominated(8, 0.0)) == pytest.approx(8)
    assert "below 10 trajectories" in weight_warnings(dominated(8, 0.0))[0]
    assert weight_warnings(dominated(50, 0.0)) == []
    few = dominated(200, 3.0)  # one weight e³ ≈ 20 among 199 ones: ESS ≈ 80, share ≈ 9%: healthy
    assert weight_warnings(few) == []
    # ten weights of e^8 among 1000: ESS ≈ 10.9, share < 10% each: only the 10%-of-N rule fires
    target = np.zeros((1000, 1))
    target[:10] = 8.0
    traj = Trajectories(np.ones((1000, 1)), np.ones((1000, 1), bool), np.zeros((1000, 1)), target, 0.9)
    (warning,) = weight_warnings(traj)
    assert "below 10% of N" in warning and "below 10 trajectories" not in warning


def test_an_overflowing_weight_is_an_error_naming_the_trajectory() -> None:
    traj = dominated(4, 800.0, heavy=2)
    for fn in (importance_sampling, per_decision_is):
        with pytest.raises(ValueError, match="trajectory 2 overflows"):
            fn(traj)
    assert weighted_is(traj) == pytest.approx(2.0)  # normalized: exact despite the scale
    assert cw_per_decision_is(traj) == pytest.approx(2.0)
    assert effective_sample_size(traj) == pytest.approx(1.0)


def test_target_probability_zero_gives_weight_zero() -> None:
    traj = two_trajectories(target_logp=np.array([[np.log(0.5), -np.inf], [np.log(0.25), 0.0]]))
    # trajectory 0's weights (2, 0): PDIS = (2·1 + 0 + 0.5·3) / 2
    assert per_decision_is(traj) == pytest.approx((2.0 + 1.5) / 2)
    assert weighted_is(traj) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="every trajectory weight is 0"):
        weighted_is(dominated(3, -np.inf, heavy=0).select([0, 0]))
    assert "every trajectory weight is 0" in weight_warnings(dominated(3, -np.inf).select([0]))[0]


# ---------------------------------------------------------------- bootstrap and estimate()


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_vectorized_bootstrap_equals_resampling_trajectories(name: str) -> None:
    """The count-matrix form of each estimator gives what the estimator gives on each resample."""
    traj = sample(MDP, MU, PI, n=30, seed=71).traj
    fn = ESTIMATORS[name]
    fast = bootstrap_statistics(traj, name, n_boot=40, seed=3)
    slow = bootstrap_statistics(traj, lambda t: fn(t), n_boot=40, seed=3)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_bootstrap_is_deterministic_for_a_seed_and_narrows_with_n() -> None:
    traj = sample(MDP, MU, PI, n=200, seed=81).traj
    assert bootstrap_ci(traj, "pdis", 300, seed=1) == bootstrap_ci(traj, "pdis", 300, seed=1)
    assert bootstrap_ci(traj, "pdis", 300, seed=1) != bootstrap_ci(traj, "pdis", 300, seed=2)
    low, high = bootstrap_ci(traj, "pdis", 300, seed=1)
    assert low < per_decision_is(traj) < high
    wide = high - low
    low, high = bootstrap_ci(big().select(slice(0, 2000)), "pdis", 300, seed=1)
    assert high - low < 0.5 * wide  # ≈ 1/√10 expected


def test_bootstrap_interval_covers_the_truth() -> None:
    covered = {"pdis": 0, "wis": 0, "dr": 0}
    for rep in range(100):
        traj = sample(MDP, MU, PI, n=400, seed=1000 + rep).traj
        for name in covered:
            low, high = bootstrap_ci(traj, name, n_boot=200, seed=rep)
            covered[name] += low <= TRUTH <= high
    assert all(c >= 90 for c in covered.values()), covered


def test_estimate_runs_estimators_with_intervals_and_warnings() -> None:
    traj = sample(MDP, MU, PI, n=300, seed=91).traj
    out = estimate(traj, ["dm", "pdis", "wdr"], n_boot=50, seed=0)
    assert list(out) == ["dm", "pdis", "wdr"]
    for name, e in out.items():
        assert isinstance(e, Estimate) and e.name == name
        assert e.value == ESTIMATORS[name](traj)
        assert (e.ci_low, e.ci_high) == bootstrap_ci(traj, name, 50, seed=0)
        assert e.ess == pytest.approx(effective_sample_size(traj))
    no_ci = estimate(traj, ["is"], n_boot=0)["is"]
    assert math.isnan(no_ci.ci_low) and math.isnan(no_ci.ci_high)

    modeled = sample(MDP, MU, PI, n=300, seed=91, behavior_source="model").traj
    out = estimate(modeled, list(ESTIMATORS), n_boot=0)
    for name in ("is", "pdis", "wis", "cwpdis", "dr", "wdr"):
        assert MODEL_BEHAVIOR_WARNING in out[name].warnings, name
    assert out["dm"].warnings == ()  # the direct method reads no behavior probabilities


def test_estimate_errors_name_the_fix() -> None:
    traj = sample(MDP, MU, PI, n=20, seed=92).traj
    with pytest.raises(ValueError, match=r"unknown estimator.*'mis'.*known: dm, is, pdis, wis, cwpdis, dr, wdr"):
        estimate(traj, ["pdis", "mis"])
    bare = Trajectories(traj.rewards, traj.mask, traj.behavior_logp, traj.target_logp, traj.gamma)
    with pytest.raises(ValueError, match="dr needs a model.*q_hat and v_hat are None.*Fit FQE"):
        estimate(bare, ["pdis", "dr"])
    with pytest.raises(ValueError, match="dm needs a model.*v_hat is None.*Fit FQE"):
        direct_method(bare)
    with pytest.raises(ValueError, match="unknown estimator"):
        bootstrap_ci(traj, "nope")


# ---------------------------------------------------------------- validation


def test_behavior_probability_zero_names_the_trajectory_and_step() -> None:
    behavior = np.log([[0.25, 0.5], [0.5, 0.1]])
    behavior[1, 0] = -np.inf
    with pytest.raises(ValueError, match="behavior_logp is -inf at trajectory 1, step 0.*probability 0"):
        two_trajectories(behavior_logp=behavior)
    # past the end it is padding, not an error
    two_trajectories(behavior_logp=np.array([[0.0, 0.0], [0.0, -np.inf]]))


def test_shape_dtype_prefix_and_finiteness_errors() -> None:
    with pytest.raises(ValueError, match=r"target_logp has shape \(2, 3\) but rewards has \(2, 2\)"):
        two_trajectories(target_logp=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"q_hat has shape \(2,\)"):
        two_trajectories(q_hat=np.zeros(2))
    with pytest.raises(ValueError, match="mask of trajectory 1 is not a prefix: step 2 is real after padded step 1"):
        holes = np.array([[True, True, True], [True, False, True]])
        Trajectories(np.ones((2, 3)), holes, np.zeros((2, 3)), np.zeros((2, 3)), 0.9)
    with pytest.raises(ValueError, match="trajectory 0 has no real step"):
        two_trajectories(mask=np.array([[False, False], [True, False]]))
    with pytest.raises(ValueError, match="mask must be a bool array"):
        two_trajectories(mask=np.array([[1.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="rewards is nan at trajectory 0, step 1"):
        two_trajectories(rewards=np.array([[1.0, np.nan], [3.0, 0.0]]))
    with pytest.raises(ValueError, match="gamma must be in"):
        two_trajectories(gamma=1.5)
    with pytest.raises(ValueError, match="behavior_source"):
        two_trajectories(behavior_source="guessed")


# ---------------------------------------------------------------- metrics and plot


def test_spearman_with_ties_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, size=9).astype(float), rng.integers(0, 4, size=9).astype(float)
        expected = stats.spearmanr(a, b).statistic
        got = spearman(a, b)
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(rank_average(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_regret_error_and_coverage_by_hand() -> None:
    truth = {"a": 1.0, "b": 3.0, "c": 2.0}
    assert regret_at_1({"a": 5.0, "b": 0.0, "c": 1.0}, truth) == pytest.approx(1.0)  # picked the worst
    assert regret_at_1({"a": 0.0, "b": 9.0, "c": 1.0}, truth) == pytest.approx(0.0)
    assert regret_at_1({"c": 4.0, "a": 0.0, "b": 1.0}, truth) == pytest.approx(0.5)  # aligned by name
    assert regret_at_1([2.0, 0.0, 2.0], [1.0, 3.0, 2.0]) == pytest.approx(0.75)  # tie: mean of 1 and 2
    assert regret_at_1([1.0, 2.0], [4.0, 4.0]) == 0.0
    assert relative_absolute_error([1.1, 1.8], [1.0, 2.0]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="true value of policy 1 is 0"):
        relative_absolute_error([1.0, 1.0], [1.0, 0.0])
    assert ci_coverage([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], [0.5, 2.0, 5.0, 3.5]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="names other policies"):
        spearman({"a": 1.0, "b": 2.0}, {"a": 1.0, "x": 2.0})
    with pytest.raises(ValueError, match="has 3 policies but estimates has 2"):
        regret_at_1([1.0, 2.0], [1.0, 2.0, 3.0])


def test_plot_estimates_writes_a_png(tmp_path) -> None:
    rows = {
        policy: estimate(sample(MDP, MU, PI, n=100, seed=seed).traj, ["pdis", "wis", "dr"], n_boot=30)
        for policy, seed in (("ckpt_1", 1), ("ckpt_2", 2))
    }
    rows["ckpt_2"]["dr"] = Estimate("dr", 1.0, math.nan, math.nan, 1.0)  # no interval: a bare dot
    path = plot_estimates(rows, tmp_path / "ope.png", truth={"ckpt_1": TRUTH, "ckpt_2": TRUTH})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match=r"truth has no value for \['ckpt_2'\]"):
        plot_estimates(rows, tmp_path / "x.png", truth={"ckpt_1": TRUTH})
