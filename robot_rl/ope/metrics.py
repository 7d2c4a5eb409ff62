"""How well off-policy estimates rank and value a set of policies (checkpoints), against the truth
measured in the simulator (Voloshin et al., 2019; Fu et al., 2021 "Benchmarks for Deep Off-Policy
Evaluation" use the same three views: error, rank correlation, regret of the selected policy).

Every function takes one value per policy, either as two sequences in the same order or as two
mappings from policy name to value (aligned by name; the key sets must match), and returns a float:

    relative_absolute_error   mean_k |V̂_k − V_k| / |V_k|
    spearman                  Pearson correlation of the ranks (ties get their average rank)
    regret_at_1               (max_k V_k − V_{k̂}) / (max_k V_k − min_k V_k),  k̂ = argmax_k V̂_k
    ci_coverage               share of policies with low_k ≤ V_k ≤ high_k
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["ci_coverage", "rank_average", "regret_at_1", "relative_absolute_error", "spearman"]

Values = Mapping[str, float] | Sequence[float] | np.ndarray


def _aligned(*named: tuple[str, Values]) -> list[np.ndarray]:
    """The arguments as float arrays in one policy order (by name when they are all mappings)."""
    mappings = [v for _, v in named if isinstance(v, Mapping)]
    if len(mappings) == len(named):
        keys = list(mappings[0])
        for (name, _), values in zip(named[1:], mappings[1:], strict=True):
            if set(values) != set(keys):
                raise ValueError(f"{name} names other policies than {named[0][0]}: {sorted(values)} vs {sorted(keys)}")
        arrays = [np.array([m[k] for k in keys], dtype=np.float64) for m in mappings]
    elif mappings:
        raise ValueError("pass every argument as a mapping (policy -> value) or every one as a sequence")
    else:
        arrays = [np.asarray(v, dtype=np.float64) for _, v in named]
    for (name, _), arr in zip(named, arrays, strict=True):
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{name} must be one value per policy (a non-empty 1-D sequence), got shape {arr.shape}")
        if arr.shape != arrays[0].shape:
            raise ValueError(f"{name} has {arr.size} policies but {named[0][0]} has {arrays[0].size}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} has a non-finite value at policy {int(np.argmin(np.isfinite(arr)))}: {arr}")
    return arrays


def relative_absolute_error(estimates: Values, truth: Values) -> float:
    """mean_k |V̂_k − V_k| / |V_k|. A true value of 0 makes it undefined: a ValueError naming the policy."""
    est, true = _aligned(("estimates", estimates), ("truth", truth))
    if (true == 0).any():
        raise ValueError(
            f"relative error is undefined: the true value of policy {int(np.argmax(true == 0))} is 0 "
            "(compare absolute errors |V̂ − V| instead)"
        )
    return float(np.mean(np.abs(est - true) / np.abs(true)))


def rank_average(x: np.ndarray) -> np.ndarray:
    """Ranks 1..K of ``x`` (ascending), tied values sharing the average of their ranks."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(estimates: Values, truth: Values) -> float:
    """Spearman's rank correlation of the estimates with the truth (average ranks for ties), in [−1, 1].
    NaN when either side is constant (a ranking with no order has no correlation). Needs 2+ policies."""
    est, true = _aligned(("estimates", estimates), ("truth", truth))
    if est.size < 2:
        raise ValueError(f"spearman needs at least 2 policies, got {est.size}")
    a, b = rank_average(est), rank_average(true)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 0 else math.nan


def regret_at_1(estimates: Values, truth: Values) -> float:
    """Normalized regret of deploying the policy with the highest estimate:
    (max_k V_k − V_{k̂}) / (max_k V_k − min_k V_k), in [0, 1] (0: the best was picked; 1: the worst).
    Normalized by the range of the true values so it compares across tasks; 0 when all true values are
    equal. Several policies tied at the highest estimate count as a uniform pick among them (the mean
    of their true values)."""
    est, true = _aligned(("estimates", estimates), ("truth", truth))
    spread = float(true.max() - true.min())
    if spread == 0.0:
        return 0.0
    picked = float(true[est == est.max()].mean())
    return (float(true.max()) - picked) / spread


def ci_coverage(lows: Values, highs: Values, truth: Values) -> float:
    """Share of policies whose interval [low, high] contains the true value (bounds inclusive)."""
    low, high, true = _aligned(("lows", lows), ("highs", highs), ("truth", truth))
    if (low > high).any():
        raise ValueError(f"interval of policy {int(np.argmax(low > high))} has low > high")
    return float(np.mean((low <= true) & (true <= high)))
