"""Trajectory estimators of a target policy's value from data logged by another policy.

Notation. Trajectory i of N has real steps t = 0 … T_i − 1, rewards r_t, the logged action's
probability under the behavior policy μ and the evaluated (target) policy π. The per-step ratio and
the cumulative importance weight are

    ρ_t = π(a_t | s_t) / μ(a_t | h_t),      w_t = Π_{t' ≤ t} ρ_{t'},      w_{−1} = 1,

computed in log space (log w_t = cumsum of log π − log μ). Past a trajectory's end the ratio is 1,
so w_t stays at its final value w_T (the standard padding: a finished trajectory sits in an absorbing
state with reward 0). The discounted return is G = Σ_t γ^t r_t. Every estimator estimates
V(π) = E_π[Σ_{t<T} γ^t r_t] over the logged horizon.

    dm      (1/N) Σ_i V̂(s_0^i)                                       the direct method (a model: FQE)
    is      (1/N) Σ_i w_T^i G_i                                        Precup et al. (2000)
    pdis    (1/N) Σ_i Σ_t γ^t w_t^i r_t^i                              Precup et al. (2000)
    wis     Σ_i w_T^i G_i / Σ_i w_T^i                                   Precup et al. (2000)
    cwpdis  Σ_t γ^t Σ_i w_t^i r_t^i / Σ_i w_t^i                        Thomas (2015); Voloshin et al. (2019)
    dr      (1/N) Σ_i Σ_t γ^t [w_t^i (r_t^i − Q̂_t^i) + w_{t−1}^i V̂_t^i]   Jiang & Li (2016)
    wdr     Σ_i Σ_t γ^t [w̃_t^i (r_t^i − Q̂_t^i) + w̃_{t−1}^i V̂_t^i]       Thomas & Brunskill (2016)

with Q̂_t^i = Q̂(s_t^i, a_t^i), V̂_t^i = V̂(s_t^i) = E_{a~π} Q̂(s_t^i, a) (0 past the end: the value of
the absorbing state), and the self-normalized weights w̃_t^i = w_t^i / Σ_j w_t^j, w̃_{−1}^i = 1/N.
IS, PDIS and DR are unbiased (DR for any model whose V̂ is the π-average of its Q̂; with the exact
Q^π its only variance is the environment's); WIS, CWPDIS and WDR trade a bias that vanishes as
N grows for a variance that no longer grows with the weights' scale (Voloshin et al., 2019 study
them all empirically).

Conventions and deviations, with the reasons:
- Self-normalization runs over all N trajectories at every step, a finished trajectory keeping its
  final weight (the ratio-1 padding above), for WIS, CWPDIS and WDR alike. Normalizing CWPDIS only
  over the trajectories still running at t is a common reading, but it estimates
  Σ_t γ^t E_π[r_t | T > t] instead of Σ_t γ^t E_π[r_t 1(T > t)]: it is inconsistent as soon as the
  episode length depends on the policy (termination on success), which is the robotics case. With a
  fixed horizon the two coincide. A test shows the difference.
- 0/0 := 0 in the self-normalized estimators: a step where every weight is 0 (π never takes the
  logged actions up to there) contributes nothing. The public WIS raises instead when all N
  trajectory weights are 0, since the estimate would carry no information.
- Weights are exponentiated after subtracting the per-step maximum log weight when they are
  normalized (exact; no overflow). The unnormalized estimators (is, pdis, dr) exponentiate the raw
  log weights; a weight beyond float64's range is a ValueError naming the trajectory and the step,
  never an inf.

Each estimator is a pure function ``(Trajectories) -> float`` in ``ESTIMATORS``. Internally each is
written once for a (B, N) matrix of trajectory multiplicities ``counts`` — one row per dataset —
which is how :func:`bootstrap_ci` evaluates B resamples in one matrix product (a resample is a
vector of counts that sums to N) and the point estimate is the row of ones.

Diagnostics of the weights: :func:`effective_sample_size` (Kish's (Σ w_T)² / Σ w_T²),
:func:`per_step_ess`, :func:`max_weight_share` and :func:`weight_warnings`. Uncertainty:
:func:`bootstrap_ci` (percentile bootstrap over trajectories) and :func:`estimate`, which runs
several estimators into :class:`Estimate` records.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from robot_rl.ope.data import Trajectories

__all__ = [
    "ESTIMATORS",
    "MAX_WEIGHT_SHARE",
    "MIN_ESS",
    "MIN_ESS_FRACTION",
    "MODEL_BEHAVIOR_WARNING",
    "MODEL_ESTIMATORS",
    "WEIGHTED_ESTIMATORS",
    "Estimate",
    "bootstrap_ci",
    "bootstrap_statistics",
    "cw_per_decision_is",
    "direct_method",
    "doubly_robust",
    "effective_sample_size",
    "estimate",
    "importance_sampling",
    "log_weights",
    "max_weight_share",
    "per_decision_is",
    "per_step_ess",
    "weight_warnings",
    "weighted_doubly_robust",
    "weighted_is",
]

# weight_warnings thresholds: the weights have degenerated when the Kish effective sample size of
# the trajectory weights is below MIN_ESS_FRACTION·N or below MIN_ESS trajectories, or when one
# trajectory carries more than MAX_WEIGHT_SHARE of the total weight.
MIN_ESS_FRACTION = 0.10
MIN_ESS = 10.0
MAX_WEIGHT_SHARE = 0.5

LOG_MAX = math.log(np.finfo(np.float64).max)  # ≈ 709.78: exp beyond it overflows
_CHUNK_ELEMENTS = 2_000_000  # bootstrap counts held at once (B_chunk · N)

Counts = np.ndarray  # (B, N) float64 multiplicity of each trajectory in each of B datasets


# ---------------------------------------------------------------- weights


def log_weights(traj: Trajectories) -> np.ndarray:
    """(N, T) log w_t = Σ_{t' ≤ t} (log π − log μ), constant past each trajectory's end (ratio 1);
    -inf once π gives a logged action probability 0."""
    return np.cumsum(traj.target_logp - traj.behavior_logp, axis=1)  # 0 past the end (data.py zeroes it)


def _weights(traj: Trajectories, estimator: str) -> np.ndarray:
    """(N, T) w_t, exponentiated raw; an overflowing weight is a ValueError naming where."""
    logw = log_weights(traj)
    over = logw > LOG_MAX
    if over.any():
        i, t = np.argwhere(over)[0]
        raise ValueError(
            f"{estimator}: the importance weight of trajectory {i} overflows float64 at step {t} "
            f"(log w = {logw[i, t]:.1f} > {LOG_MAX:.1f}): π and μ barely overlap; use a self-normalized "
            "estimator (wis, cwpdis, wdr) or the direct method, and check the weight diagnostics"
        )
    return np.exp(logw)


def _shifted_weights(traj: Trajectories) -> np.ndarray:
    """(N, T) w_t / max_i w_t^i per step (1 at the largest weight; a step where all are 0 stays 0)."""
    logw = log_weights(traj)
    top = logw.max(axis=0)  # (T,)
    return np.exp(logw - np.where(np.isfinite(top), top, 0.0))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise with 0/0 := 0 (den ≥ 0)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _require_model(traj: Trajectories, estimator: str, fields: Sequence[str]) -> None:
    missing = [f for f in fields if getattr(traj, f) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ValueError(
            f"{estimator} needs a model of Q^π but {' and '.join(missing)} {verb} None. Fit FQE for the "
            "target policy on the same data and pass its Q̂(s_t, a_t) as q_hat and V̂(s_t) = E_π Q̂(s_t, ·) as "
            "v_hat, or use an importance-sampling estimator (is, pdis, wis, cwpdis)"
        )


# ---------------------------------------------------------------- estimators on counts (B, N) -> (B,)


def _dm(traj: Trajectories, counts: Counts) -> np.ndarray:
    _require_model(traj, "dm", ["v_hat"])
    assert traj.v_hat is not None
    return counts @ traj.v_hat[:, 0] / counts.sum(axis=1)


def _is(traj: Trajectories, counts: Counts) -> np.ndarray:
    w_T = _weights(traj, "is")[:, -1]  # (N,)
    return counts @ (w_T * traj.returns) / counts.sum(axis=1)


def _pdis(traj: Trajectories, counts: Counts) -> np.ndarray:
    terms = (_weights(traj, "pdis") * traj.rewards) @ traj.discounts  # (N,)
    return counts @ terms / counts.sum(axis=1)


def _wis(traj: Trajectories, counts: Counts) -> np.ndarray:
    u_T = _shifted_weights(traj)[:, -1]  # (N,)
    return _ratio(counts @ (u_T * traj.returns), counts @ u_T)


def _cwpdis(traj: Trajectories, counts: Counts) -> np.ndarray:
    u = _shifted_weights(traj)  # (N, T)
    per_step = _ratio(counts @ (u * traj.rewards), counts @ u)  # (B, T)
    return per_step @ traj.discounts


def _dr(traj: Trajectories, counts: Counts) -> np.ndarray:
    _require_model(traj, "dr", ["q_hat", "v_hat"])
    assert traj.q_hat is not None and traj.v_hat is not None
    w = _weights(traj, "dr")  # (N, T)
    w_prev = np.concatenate([np.ones((traj.n, 1)), w[:, :-1]], axis=1)  # (N, T) w_{t−1}, w_{−1} = 1
    terms = (w * (traj.rewards - traj.q_hat) + w_prev * traj.v_hat) @ traj.discounts  # (N,)
    return counts @ terms / counts.sum(axis=1)


def _wdr(traj: Trajectories, counts: Counts) -> np.ndarray:
    _require_model(traj, "wdr", ["q_hat", "v_hat"])
    assert traj.q_hat is not None and traj.v_hat is not None
    u = _shifted_weights(traj)  # (N, T)
    u_prev = np.concatenate([np.ones((traj.n, 1)), u[:, :-1]], axis=1)  # (N, T); column 0 gives w̃_{−1} = c_i/Σc
    correction = _ratio(counts @ (u * (traj.rewards - traj.q_hat)), counts @ u)  # (B, T) Σ_i w̃_t (r − Q̂)
    baseline = _ratio(counts @ (u_prev * traj.v_hat), counts @ u_prev)  # (B, T) Σ_i w̃_{t−1} V̂_t
    return (correction + baseline) @ traj.discounts


# ---------------------------------------------------------------- the public estimators


def _point(fn: Callable[[Trajectories, Counts], np.ndarray], traj: Trajectories, name: str) -> float:
    value = float(fn(traj, np.ones((1, traj.n)))[0])
    if not math.isfinite(value):
        raise ValueError(f"{name}: the estimate is {value} (weights or values too large for float64)")
    return value


def direct_method(traj: Trajectories) -> float:
    """dm: (1/N) Σ_i V̂(s_0^i), the model's value of the logged initial states (needs v_hat)."""
    return _point(_dm, traj, "dm")


def importance_sampling(traj: Trajectories) -> float:
    """is: (1/N) Σ_i w_T^i G_i, trajectory-wise importance sampling (unbiased)."""
    return _point(_is, traj, "is")


def per_decision_is(traj: Trajectories) -> float:
    """pdis: (1/N) Σ_i Σ_t γ^t w_t^i r_t^i, each reward weighted by the ratios up to its step (unbiased)."""
    return _point(_pdis, traj, "pdis")


def weighted_is(traj: Trajectories) -> float:
    """wis: Σ_i w_T^i G_i / Σ_i w_T^i (biased for small N, consistent). Raises when every w_T is 0."""
    if not np.isfinite(log_weights(traj)[:, -1]).any():
        raise ValueError(
            "wis: every trajectory weight is 0 (π gives probability 0 to an action of every logged trajectory); "
            "the data says nothing about π through importance weights"
        )
    return _point(_wis, traj, "wis")


def cw_per_decision_is(traj: Trajectories) -> float:
    """cwpdis: Σ_t γ^t Σ_i w_t^i r_t^i / Σ_i w_t^i over all N trajectories (finished ones keep w_T)."""
    return _point(_cwpdis, traj, "cwpdis")


def doubly_robust(traj: Trajectories) -> float:
    """dr: (1/N) Σ_i Σ_t γ^t [w_t (r_t − Q̂_t) + w_{t−1} V̂_t], w_{−1} = 1 (needs q_hat and v_hat)."""
    return _point(_dr, traj, "dr")


def weighted_doubly_robust(traj: Trajectories) -> float:
    """wdr: Σ_i Σ_t γ^t [w̃_t (r_t − Q̂_t) + w̃_{t−1} V̂_t] with per-step self-normalized w̃, w̃_{−1} = 1/N."""
    return _point(_wdr, traj, "wdr")


ESTIMATORS: dict[str, Callable[[Trajectories], float]] = {
    "dm": direct_method,
    "is": importance_sampling,
    "pdis": per_decision_is,
    "wis": weighted_is,
    "cwpdis": cw_per_decision_is,
    "dr": doubly_robust,
    "wdr": weighted_doubly_robust,
}
_ON_COUNTS: dict[Callable[[Trajectories], float], Callable[[Trajectories, Counts], np.ndarray]] = {
    direct_method: _dm,
    importance_sampling: _is,
    per_decision_is: _pdis,
    weighted_is: _wis,
    cw_per_decision_is: _cwpdis,
    doubly_robust: _dr,
    weighted_doubly_robust: _wdr,
}
MODEL_ESTIMATORS = ("dm", "dr", "wdr")  # need q_hat / v_hat from FQE
WEIGHTED_ESTIMATORS = ("is", "pdis", "wis", "cwpdis", "dr", "wdr")  # read the importance weights


# ---------------------------------------------------------------- weight diagnostics


def _kish(logw: np.ndarray) -> np.ndarray:
    """Kish ESS (Σw)²/Σw² along axis 0 of log weights (scale-free; 0 where every weight is 0)."""
    top = logw.max(axis=0)
    w = np.exp(logw - np.where(np.isfinite(top), top, 0.0))
    return _ratio(w.sum(axis=0) ** 2, (w**2).sum(axis=0))


def effective_sample_size(traj: Trajectories) -> float:
    """Kish's effective sample size (Σ_i w_T^i)² / Σ_i (w_T^i)² of the trajectory weights: N for equal
    weights, ≈ 1 when one trajectory dominates, 0 when every weight is 0."""
    return float(_kish(log_weights(traj)[:, -1]))


def per_step_ess(traj: Trajectories) -> np.ndarray:
    """(T,) Kish ESS of the cumulative weights w_t at each step, over all N trajectories (finished ones
    keep w_T): where along the horizon the weights degenerate."""
    return _kish(log_weights(traj))


def max_weight_share(traj: Trajectories) -> float:
    """max_i w_T^i / Σ_i w_T^i: the share of the total weight on the heaviest trajectory (1/N at best);
    NaN when every weight is 0."""
    u = _shifted_weights(traj)[:, -1]
    total = u.sum()
    return float(u.max() / total) if total > 0 else math.nan


def weight_warnings(traj: Trajectories) -> list[str]:
    """Human sentences, empty when the trajectory weights look healthy. Warns when the Kish ESS is
    below ``MIN_ESS_FRACTION``·N or below ``MIN_ESS`` trajectories, when one trajectory carries more
    than ``MAX_WEIGHT_SHARE`` of the total weight, and when every weight is 0."""
    n, ess = traj.n, effective_sample_size(traj)
    if ess == 0.0:
        return [
            "every trajectory weight is 0: the target policy gives probability 0 to an action of every logged "
            "trajectory, so the importance-sampling estimates carry no information"
        ]
    out = []
    low = [f"below {MIN_ESS_FRACTION:.0%} of N"] if ess < MIN_ESS_FRACTION * n else []
    low += [f"below {MIN_ESS:g} trajectories"] if ess < MIN_ESS else []
    if low:
        out.append(
            f"the importance weights have degenerated: effective sample size {ess:.1f} of {n} trajectories "
            f"({' and '.join(low)}); the weighted estimates rest on a few trajectories and their intervals are "
            "unreliable — log data closer to the target policy, or trust the model-based estimate (dm) more"
        )
    share = max_weight_share(traj)
    if share > MAX_WEIGHT_SHARE:
        heaviest = int(np.argmax(log_weights(traj)[:, -1]))
        out.append(
            f"one trajectory (index {heaviest}) carries {share:.0%} of the total importance weight "
            f"(more than {MAX_WEIGHT_SHARE:.0%}): the importance-sampling estimates are essentially that one return"
        )
    return out


# ---------------------------------------------------------------- uncertainty


def _resamples(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap index chunks (B_chunk, N), drawn in order from one seeded generator."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def _counts(index: np.ndarray, n: int) -> Counts:
    """(B, N) multiplicities of a (B, N) index matrix."""
    b = index.shape[0]
    flat = (index + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_statistics(
    traj: Trajectories,
    estimator: str | Callable[[Trajectories], float],
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """(n_boot,) the estimator on n_boot resamples of the trajectories (with replacement). A registered
    estimator (name or function) runs all resamples as one count matrix; any other callable is called
    on each resampled :class:`Trajectories` (same resamples for the same seed)."""
    fn = _resolve(estimator)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    on_counts = _ON_COUNTS.get(fn)
    if on_counts is not None:
        fn(traj)  # the point estimate's checks (model present, weights in range) with their messages
    stats = []
    for index in _resamples(traj.n, n_boot, seed):
        if on_counts is not None:
            stats.append(on_counts(traj, _counts(index, traj.n)))
        else:
            stats.append(np.array([fn(traj.select(row)) for row in index]))
    return np.concatenate(stats)


def bootstrap_ci(
    traj: Trajectories,
    estimator: str | Callable[[Trajectories], float],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) at ``level``: trajectories resampled with replacement
    ``n_boot`` times, the (1 − level)/2 and (1 + level)/2 quantiles of the estimates. Deterministic
    for a seed."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    stats = bootstrap_statistics(traj, estimator, n_boot, seed)
    low, high = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def _resolve(estimator: str | Callable[[Trajectories], float]) -> Callable[[Trajectories], float]:
    if callable(estimator):
        return estimator
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[estimator]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One estimator's value of one policy, its bootstrap interval and what to be wary of.

    ``ess`` is the Kish ESS of the data's trajectory weights under the evaluated policy (a property of
    the data and π, reported for every estimator); ``warnings`` are human sentences."""

    name: str
    value: float
    ci_low: float  # NaN when no bootstrap was run (n_boot = 0)
    ci_high: float
    ess: float
    warnings: tuple[str, ...] = ()


MODEL_BEHAVIOR_WARNING = (
    "the behavior probabilities come from a fitted behavior model (behavior_source='model'), not from the "
    "logged action_logp: this estimate's importance weights are only as good as that model"
)


def estimate(
    traj: Trajectories,
    names: Sequence[str] = tuple(ESTIMATORS),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Estimate]:
    """Run the estimators ``names`` on ``traj``: value, percentile bootstrap interval (``n_boot`` = 0: no
    interval, NaN bounds), the weights' ESS and warnings. Weighted estimators get the weight warnings
    and, for ``behavior_source == "model"``, a sentence that they rest on a fitted behavior model; the
    direct method reads no weights and gets neither. Checks every name and model field first."""
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; known: {', '.join(ESTIMATORS)}")
    needs_model = [n for n in names if n in MODEL_ESTIMATORS]
    if needs_model:
        _require_model(traj, "/".join(needs_model), ["q_hat", "v_hat"] if set(needs_model) - {"dm"} else ["v_hat"])
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    ess = effective_sample_size(traj)
    weight_notes = tuple(weight_warnings(traj))
    if traj.behavior_source == "model":
        weight_notes = (MODEL_BEHAVIOR_WARNING, *weight_notes)
    out = {}
    for name in names:
        value = ESTIMATORS[name](traj)
        low, high = bootstrap_ci(traj, name, n_boot, level, seed) if n_boot > 0 else (math.nan, math.nan)
        notes = weight_notes if name in WEIGHTED_ESTIMATORS else ()
        out[name] = Estimate(name, value, low, high, ess, notes)
    return out
