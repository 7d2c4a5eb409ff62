"""The off-policy evaluation figure: every estimator's value of every policy with its bootstrap
interval, next to the simulator's truth."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from robot_rl.ope.estimators import Estimate

__all__ = ["plot_estimates"]


def plot_estimates(
    rows: Mapping[str, Mapping[str, Estimate]],
    path: str | Path,
    truth: Mapping[str, float] | None = None,
    title: str = "off-policy estimates",
) -> Path:
    """One PNG: policies along x (the order of ``rows``: policy -> estimator name -> :class:`Estimate`,
    as :func:`robot_rl.ope.estimators.estimate` returns per policy), one colour per estimator, a dot at
    the estimate with its interval as an error bar (none when the interval is NaN), the truth
    (``truth``: policy -> value) as a black bar across each policy's group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robot_rl.diagnostics import save_figure  # imports torch (through data_lake.batch): only when plotting

    if not rows:
        raise ValueError("plot_estimates needs at least one policy")
    policies = list(rows)
    if truth is not None and (missing := [p for p in policies if p not in truth]):
        raise ValueError(f"truth has no value for {missing}; it has {sorted(truth)}")
    names = list(dict.fromkeys(name for per_policy in rows.values() for name in per_policy))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(policies) + 2.0), 4.0))
    for j, name in enumerate(names):
        xs, ys, errs = [], [], []
        for k, policy in enumerate(policies):
            e = rows[policy].get(name)
            if e is None:
                continue
            xs.append(k - 0.4 + (j + 0.5) * width)
            ys.append(e.value)
            has_ci = math.isfinite(e.ci_low) and math.isfinite(e.ci_high)
            errs.append((e.value - e.ci_low, e.ci_high - e.value) if has_ci else (0.0, 0.0))
        yerr = np.maximum(np.array(errs, dtype=np.float64).T, 0.0)  # (2, K); percentile CIs may exclude the value
        ax.errorbar(xs, ys, yerr=yerr, fmt="o", ms=4, capsize=3, color=f"C{j % 10}", label=name)
    if truth is not None:
        ax.hlines(
            [truth[p] for p in policies],
            np.arange(len(policies)) - 0.45,
            np.arange(len(policies)) + 0.45,
            colors="k",
            lw=2,
            zorder=1,  # under the estimates
            label="truth (simulator)",
        )
    ax.set_xticks(
        range(len(policies)),
        policies,
        rotation=20 if len(policies) > 4 else 0,
        ha="right" if len(policies) > 4 else "center",
    )
    ax.set(ylabel="value V(π)", title=title)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, ax, path)
