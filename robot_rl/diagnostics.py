"""Learning diagnostics: is the critic calibrated, and which goals does the policy reach?

Two questions a user tuning on their own data asks first (``docs/learning.md`` shows both):

**Q calibration.** For a relabeled row the sampler knows the data's own discounted return
``mc_return`` (``γ^(j − t − 1)`` for a hindsight goal reached ``j − t`` steps later, the task's
return-to-go for task rows, 0 for a goal from another episode). In a deterministic simulator that
return is a lower bound of Q*(s, a, g): a calibrated critic sits on or above the diagonal of
Q against it, and far above it only where the data was slow. A critic far below the diagonal
has not propagated value (too few updates, γ too small for the horizon); one high above it on
other-episode goals is overestimating. ``calibration`` gathers (Q, G, source) on held-out
episodes; ``calibration_metrics`` summarizes them (logged to TensorBoard under ``calibration/``
by ``robot-rl pretrain`` when ``calibration_episodes > 0``); ``plot_calibration`` draws them.

**Success by distance.** ``success_by_distance`` bins evaluation episodes by the distance from
the start to the goal (``start_distance`` in every episode record of ``robot_rl.evaluate``):
a policy that only reaches near goals shows it here, where the overall rate hides it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_lake.batch import GOAL_SOURCES

if TYPE_CHECKING:
    from robot_rl.algos import Algorithm

SOURCE_NAMES = {code: name for name, code in GOAL_SOURCES.items()}


def save_figure(fig: Any, axes: Any, path: str | Path) -> Path:
    """Grid on ``axes`` (one or an array), tight layout, write ``path`` (110 dpi), close: the end of every plot."""
    import matplotlib.pyplot as plt

    for ax in np.atleast_1d(axes):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def calibration(algo: Algorithm, batches: Sequence[Any]) -> dict[str, np.ndarray] | None:
    """Q(s, a, g) of the data's action, the data's return G and the goal source of every row of
    ``batches`` (device Batches): ``{"q", "mc", "source"}`` (N,) each; None for an algorithm
    without a critic."""
    qs, mcs, sources = [], [], []
    for batch in batches:
        q = algo.q_estimate(batch)
        if q is None:
            return None
        qs.append(q.float().cpu().numpy())
        mcs.append(batch.mc_returns.float().cpu().numpy())
        sources.append(batch.goal_source.cpu().numpy())
    return {"q": np.concatenate(qs), "mc": np.concatenate(mcs), "source": np.concatenate(sources)}


def calibration_metrics(cal: dict[str, np.ndarray]) -> dict[str, float]:
    """Scalars of a calibration sample, per goal source present and overall.

    ``q_mean``, ``mc_mean``; ``gap`` = mean(Q − G); ``below`` = share of rows with Q < G − 0.05 (a lower
    bound violated: value not yet propagated); ``corr`` = Pearson correlation of Q and G (NaN when
    either is constant).
    """
    out: dict[str, float] = {}

    def stats(prefix: str, q: np.ndarray, mc: np.ndarray) -> None:
        out[f"{prefix}q_mean"] = float(q.mean())
        out[f"{prefix}mc_mean"] = float(mc.mean())
        out[f"{prefix}gap"] = float((q - mc).mean())
        out[f"{prefix}below"] = float((q < mc - 0.05).mean())
        out[f"{prefix}corr"] = float(np.corrcoef(q, mc)[0, 1]) if q.std() > 0 and mc.std() > 0 else math.nan

    stats("", cal["q"], cal["mc"])
    for code in np.unique(cal["source"]):
        keep = cal["source"] == code
        stats(f"{SOURCE_NAMES.get(int(code), str(code))}/", cal["q"][keep], cal["mc"][keep])
    return out


def plot_calibration(cal: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """Q against the data's return G, one colour per goal source, binned means over the scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for code in np.unique(cal["source"]):
        keep = cal["source"] == code
        ax.scatter(cal["mc"][keep], cal["q"][keep], s=4, alpha=0.25, label=SOURCE_NAMES.get(int(code), str(code)))
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(cal["mc"], edges) - 1, 0, len(edges) - 2)
    centres = [(edges[i] + edges[i + 1]) / 2 for i in range(len(edges) - 1) if (idx == i).any()]
    means = [cal["q"][idx == i].mean() for i in range(len(edges) - 1) if (idx == i).any()]
    ax.plot(centres, means, "k-o", ms=3, label="mean Q per bin")
    lo, hi = min(0.0, float(cal["q"].min())), max(1.0, float(cal["q"].max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="Q = G")
    ax.set(xlabel="data's discounted return G (a lower bound of Q*)", ylabel="Q(s, a, g)", title=title)
    ax.legend(fontsize=7, markerscale=3)
    return save_figure(fig, ax, path)


def success_by_distance(episodes: Sequence[dict[str, Any]], edges: Sequence[float]) -> list[dict[str, Any]]:
    """Evaluation episodes binned by ``start_distance``: one row per bin [lo, hi) with episodes, the
    success rate and its Wilson 95% interval (bins without episodes are left out)."""
    from robot_rl.evaluate import wilson_interval

    rows = []
    for lo, hi in itertools.pairwise(edges):
        eps = [e for e in episodes if lo <= e["start_distance"] < hi]
        if not eps:
            continue
        wins = sum(bool(e["success"]) for e in eps)
        ci = wilson_interval(wins, len(eps))
        rows.append({"lo": lo, "hi": hi, "episodes": len(eps), "success_rate": wins / len(eps), "ci95": list(ci)})
    return rows


def plot_success_by_distance(curves: dict[str, list[dict[str, Any]]], path: str | Path, title: str) -> Path:
    """One line per policy (``success_by_distance`` rows) with Wilson intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, rows in curves.items():
        x = np.array([(r["lo"] + r["hi"]) / 2 for r in rows])
        y = np.array([r["success_rate"] for r in rows])
        # (2, n) distances to the interval ends; floating point can put an end a hair inside y
        err = np.clip(np.array([[y[i] - r["ci95"][0], r["ci95"][1] - y[i]] for i, r in enumerate(rows)]).T, 0, None)
        ax.errorbar(x, y, yerr=err if len(rows) else None, marker="o", capsize=3, label=name)
    ax.set(xlabel="distance from start to goal (m)", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, ax, path)
