"""Off-policy evaluation: the value of a policy estimated from data logged by other policies, before
deploying it. ``data`` (the ``Trajectories`` input), ``estimators`` (dm, is, pdis, wis, cwpdis, dr,
wdr; weight diagnostics; bootstrap intervals), ``metrics`` (ranking against the simulator's truth),
``plots``."""

from robot_rl.ope.data import Trajectories
from robot_rl.ope.estimators import (
    ESTIMATORS,
    Estimate,
    bootstrap_ci,
    effective_sample_size,
    estimate,
    max_weight_share,
    per_step_ess,
    weight_warnings,
)
from robot_rl.ope.metrics import ci_coverage, regret_at_1, relative_absolute_error, spearman
from robot_rl.ope.plots import plot_estimates

__all__ = [
    "ESTIMATORS",
    "Estimate",
    "Trajectories",
    "bootstrap_ci",
    "ci_coverage",
    "effective_sample_size",
    "estimate",
    "max_weight_share",
    "per_step_ess",
    "plot_estimates",
    "regret_at_1",
    "relative_absolute_error",
    "spearman",
    "weight_warnings",
]
