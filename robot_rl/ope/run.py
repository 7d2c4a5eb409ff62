"""Off-policy evaluation end to end: checkpoints + a pinned lake snapshot -> every estimator's value of
each checkpoint's policy per task, with intervals, weight diagnostics, a ranking and (given the true
values) the ranking metrics. ``robot-rl ope`` (``robot_rl/commands/ope.py``) and pretraining's
``ope_every`` both call it; ``docs/ope.md`` is the user's guide.

The evaluated policy π of a checkpoint is its deterministic action m(s) plus Gaussian noise, clipped:
``a = clip(m(s) + σ·ε, −1, 1)`` (``robot_rl.ope.target.TargetPolicy``), the policy a user then rolls
out with that noise. Per task (each task's episodes on their own; rewards are the episodes' stored
rewards, the goal a goal-conditioned policy is given is the episode's commanded goal), or with
``goals=[final, future, commanded]`` per goal source (over every episode, or per task when tasks are
named too: hindsight goals from the episodes' own observations and the sampler's reward rule,
``robot_rl.ope.dataset``; FQE then relabels its batches from the same source):

    data       load_logged: the task's whole episodes of the pinned snapshot
    μ          the lake's logged ``action_logp`` (behavior="logged"), or a behavior model fitted once
               per task on the same episodes (behavior="model": every estimate that reads the
               importance weights then says it rests on that model)
    per policy log π of every logged action, then the estimators:

    is, pdis, wis, cwpdis   importance sampling (``robot_rl.ope.estimators``)
    fqe                     the direct method with FQE as the model: (1/N) Σ_i V̂(s_0^i), V̂ = E_{a~π} Q̂
                            (Le et al., 2019); ``dm`` is accepted as another name for it
    dr, wdr                 doubly robust with FQE's Q̂ and V̂ (Jiang & Li, 2016; Thomas & Brunskill, 2016)
    lstdq                   LSTD-Q (Lagoudakis & Parr, 2003) on φ(s, a) = random Fourier features of
                            [x(s), a], x(s) the checkpoint's frozen encoder embedding (or its state input)
    dualdice                DualDICE (Nachum et al., 2019) on the same features

Intervals (level ``level``, percentile bootstrap, ``n_boot`` resamples of the trajectories):
trajectory-weight estimators (is, pdis, wis, cwpdis, dr, wdr) are recomputed on each resample (the
FQE model held fixed for dr/wdr). fqe, lstdq and dualdice bootstrap only their final averaging step
(the fitted Q̂, w or ζ held fixed): the interval then shows how much the estimate depends on which
initial states and transitions were logged, not the uncertainty of the fit itself, and is narrower
than the estimator's real error.

The fitted models treat a trajectory's last logged step as its end (d = 1) for LSTD-Q and DualDICE, as
the trajectory estimators do (they estimate the return over the logged horizon); FQE is trained on the
sampler's transitions, which bootstrap through a time limit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_rl.config import LakeConfig, ObsConfig
from robot_rl.ope.behavior import BehaviorConfig
from robot_rl.ope.data import Trajectories
from robot_rl.ope.dataset import (
    LoggedData,
    behavior_logp,
    check_goal_source,
    load_logged,
    model_values,
    trajectories_from,
)
from robot_rl.ope.dice import DiceConfig, dualdice
from robot_rl.ope.estimators import (
    ESTIMATORS,
    Estimate,
    effective_sample_size,
    estimate,
    max_weight_share,
    weight_warnings,
)
from robot_rl.ope.fqe import FQEConfig, FQEModel, fit_fqe, fqe_sampler_config
from robot_rl.ope.lstd import StateActionRFF, lstdq
from robot_rl.ope.target import TargetPolicy, check_sigma

WEIGHT_NAMES = ("is", "pdis", "wis", "cwpdis")
NAMES = ("fqe", *WEIGHT_NAMES, "dr", "wdr", "dualdice", "lstdq")  # what the command reports
ALIASES = {"dm": "fqe"}  # the direct method is reported as fqe (its model)
NEEDS_FQE = ("fqe", "dr", "wdr")
BEHAVIORS = ("logged", "model")
INTERVALS = {
    **{n: "percentile bootstrap over trajectories" for n in WEIGHT_NAMES},
    "dr": "percentile bootstrap over trajectories (the FQE model held fixed)",
    "wdr": "percentile bootstrap over trajectories (the FQE model held fixed)",
    "fqe": "bootstrap of the final average over initial states (the FQE model held fixed)",
    "lstdq": "bootstrap of the final average over initial states (the LSTD-Q weights held fixed)",
    "dualdice": "bootstrap of the final weighted average over trajectories (the ratios ζ held fixed)",
}


def canonical_estimators(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` with aliases resolved (``dm`` -> ``fqe``), duplicates dropped; an unknown name is a
    ValueError listing the known ones."""
    unknown = [n for n in names if n not in NAMES and n not in ALIASES]
    if unknown:
        raise ValueError(
            f"unknown estimator(s) {unknown}; known: {', '.join(NAMES)} (dm is another name for fqe, the "
            "direct method with FQE as its model)"
        )
    if not names:
        raise ValueError(f"estimators is empty; pick some of: {', '.join(NAMES)}")
    return tuple(dict.fromkeys(ALIASES.get(n, n) for n in names))


# ---------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class LSTDConfig:
    """The linear features of lstdq and dualdice: φ(s, a) = [z([x(s), a]), 1], z random Fourier features."""

    features: str = "encoder"  # x(s): "encoder" (the checkpoint's frozen embedding) | "state" (its state input)
    num_features: int = 128
    bandwidth: float | None = None  # None: sqrt(dim [x, a]) (x and a standardized over the data)
    ridge: float = 1e-3  # λ of LSTD-Q's (A + λI) w = b
    n_action_samples: int = 10  # actions a' ~ π(s') averaged in φ̄(s') and φ̄(s0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.features not in ("encoder", "state"):
            raise ValueError(f"lstd.features must be 'encoder' or 'state', got {self.features!r}")
        if self.num_features < 1 or self.n_action_samples < 1:
            raise ValueError(
                f"lstd.num_features and lstd.n_action_samples must be >= 1, got {self.num_features}, "
                f"{self.n_action_samples}"
            )
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ValueError(f"lstd.bandwidth must be > 0 (or null), got {self.bandwidth}")
        if not self.ridge >= 0:
            raise ValueError(f"lstd.ridge must be >= 0, got {self.ridge}")


@dataclasses.dataclass(frozen=True)
class OPEConfig:
    """What to evaluate, on which data, with which estimators (``configs/ope/ope.yaml``)."""

    ckpt: tuple[str, ...] = ()  # checkpoint, policy or run directories
    lake: LakeConfig = dataclasses.field(default_factory=LakeConfig)
    tasks: tuple[str, ...] = ()  # (): every task of the snapshot, each on its own (or all together with goals)
    goals: tuple[str, ...] = ()  # (): each task's commanded goals | goal sources: commanded, final, future
    goal_reward: str = "distance"  # hindsight rewards: "distance" (‖ag' − g‖ < goal_epsilon) | "index"
    goal_epsilon: float = 0.05
    estimators: tuple[str, ...] = ("fqe", *WEIGHT_NAMES, "dr", "wdr")
    gamma: float = 0.99
    sigma: float = 0.2  # the target policy's Gaussian noise std
    behavior: str = "logged"  # "logged": the lake's action_logp | "model": a fitted behavior model
    success_terminal: bool = True  # a trajectory ends at its first rewarded step (as rollouts stop on success)
    max_episodes: int | None = None  # per task, the first ones in lake order
    n_boot: int = 1000  # bootstrap resamples; 0: no intervals
    level: float = 0.95
    seed: int = 0
    truth: str | None = None  # JSON of true values: {policy: V} or {task: {policy: V}}
    device: str = "cpu"
    progress: bool = True
    fqe: FQEConfig = dataclasses.field(default_factory=lambda: FQEConfig(steps=2000))
    lstd: LSTDConfig = dataclasses.field(default_factory=LSTDConfig)
    dualdice: DiceConfig = dataclasses.field(default_factory=DiceConfig)
    behavior_model: BehaviorConfig = dataclasses.field(default_factory=BehaviorConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "estimators", canonical_estimators(self.estimators))
        check_sigma(self.sigma)
        if self.behavior not in BEHAVIORS:
            raise ValueError(f"behavior must be one of {BEHAVIORS}, got {self.behavior!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if "dualdice" in self.estimators and self.gamma >= 1:
            raise ValueError("dualdice needs gamma < 1 (its objective weights the initial states by 1 − γ)")
        if self.n_boot < 0 or not 0 < self.level < 1:
            raise ValueError(f"n_boot must be >= 0 and level in (0, 1), got {self.n_boot}, {self.level}")
        if self.max_episodes is not None and self.max_episodes < 1:
            raise ValueError(f"max_episodes must be >= 1 (or null), got {self.max_episodes}")
        for source in self.goals:
            check_goal_source(source, self.goal_reward, self.goal_epsilon)
        if len(set(self.goals)) != len(self.goals):
            raise ValueError(f"goals names a source twice: {list(self.goals)}")

    def units(self, snapshot_tasks: Sequence[str]) -> list[tuple[str, str | None, str]]:
        """What is evaluated, each on its own: (name, task or None for every task, goal source)."""
        if not self.goals:
            return [(t, t, "commanded") for t in (self.tasks or snapshot_tasks)]
        return [
            (f"goals={g}" if t is None else f"{t} goals={g}", t, g) for t in (self.tasks or [None]) for g in self.goals
        ]

    def fqe_config(self) -> FQEConfig:
        """FQE's settings with this evaluation's γ and seed."""
        return dataclasses.replace(self.fqe, gamma=self.gamma, seed=self.seed)


# ---------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class PolicyResult:
    """One policy on one task's logged trajectories."""

    estimates: dict[str, Estimate]  # estimator -> value, interval, ESS, warnings
    errors: dict[str, str]  # estimator -> why it gave no value (e.g. weights overflowing float64)
    trajectories: int
    ess: float  # Kish ESS of the trajectory weights
    max_weight_share: float
    warnings: tuple[str, ...]  # the weights' degeneracy warnings

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, e in self.estimates.items():
            out[name] = {"value": e.value, "ci": [_num(e.ci_low), _num(e.ci_high)], "warnings": list(e.warnings)}
        for name, msg in self.errors.items():
            out[name] = {"value": None, "error": msg}
        return {
            "trajectories": self.trajectories,
            "ess": self.ess,
            "max_weight_share": _num(self.max_weight_share),
            "warnings": list(self.warnings),
            "estimates": out,
        }


@dataclasses.dataclass
class OPEReport:
    """Every task's results for every policy, the rankings and, with the truth, the metrics."""

    cfg: OPEConfig
    snapshot_id: str
    policies: dict[str, dict[str, Any]]  # label -> checkpoint path, algorithm, step
    results: dict[str, dict[str, PolicyResult]]  # task -> label -> result
    truth: dict[str, dict[str, float]]  # task -> label -> true value (may be empty)

    def ranking(self, task: str) -> dict[str, list[str]]:
        """estimator -> policy labels, highest estimate first (policies it failed on left out)."""
        per = self.results[task]
        return {
            name: sorted((p for p in per if name in per[p].estimates), key=lambda p: -per[p].estimates[name].value)
            for name in self.cfg.estimators
        }

    def metrics(self, task: str) -> dict[str, dict[str, float | None]]:
        """estimator -> relative absolute error, Spearman, regret@1 and interval coverage vs the truth
        (None where undefined: Spearman of one policy, relative error of a true value 0, no intervals)."""
        truth = self.truth.get(task)
        if not truth:
            return {}
        out = {}
        for name in self.cfg.estimators:
            ests = {p: r.estimates[name] for p, r in self.results[task].items() if name in r.estimates}
            if set(ests) == set(truth):  # else the estimator failed on some policy
                out[name] = _metric_row(ests, truth)
        return out

    def to_json(self) -> dict[str, Any]:
        c = self.cfg
        tasks = {}
        for task, per in self.results.items():
            tasks[task] = {
                "policies": {p: r.to_json() for p, r in per.items()},
                "ranking": self.ranking(task) if len(per) > 1 else {},
                "truth": self.truth.get(task, {}),
                "metrics": self.metrics(task),
            }
        return {
            "lake": {"uri": c.lake.uri, "ref": c.lake.ref, "snapshot_id": self.snapshot_id},
            "target": f"each checkpoint's deterministic action + N(0, {c.sigma:g}²) noise, clipped to [-1, 1]",
            "sigma": c.sigma,
            "gamma": c.gamma,
            "behavior": c.behavior,
            "success_terminal": c.success_terminal,
            "goals": list(c.goals) or "each task's commanded goals and stored rewards",
            **({"goal_reward": c.goal_reward, "goal_epsilon": c.goal_epsilon} if c.goals else {}),
            "n_boot": c.n_boot,
            "level": c.level,
            "estimators": list(c.estimators),
            "intervals": {n: INTERVALS[n] for n in c.estimators},
            "policies": self.policies,
            "tasks": tasks,
        }


def _fmt(x: float) -> str:
    """4 decimals, or 3 significant digits for values too small to show that way (importance weights)."""
    return f"{x:.4f}" if x == 0 or abs(x) >= 1e-3 else f"{x:.2e}"


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _metric_row(ests: dict[str, Estimate], truth: dict[str, float]) -> dict[str, float | None]:
    from robot_rl.ope.metrics import ci_coverage, regret_at_1, relative_absolute_error, spearman

    values = {p: e.value for p, e in ests.items()}
    lows, highs = {p: e.ci_low for p, e in ests.items()}, {p: e.ci_high for p, e in ests.items()}
    has_ci = all(math.isfinite(v) for v in (*lows.values(), *highs.values()))
    return {
        "relative_absolute_error": _safe(relative_absolute_error, values, truth),
        "spearman": _safe(spearman, values, truth) if len(values) > 1 else None,
        "regret_at_1": _safe(regret_at_1, values, truth),
        "ci_coverage": _safe(ci_coverage, lows, highs, truth) if has_ci else None,
    }


def _safe(fn: Callable[..., float], *args: Any) -> float | None:
    try:
        value = fn(*args)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------- one policy on one task's data
class _Scored:
    """A target policy that keeps what ``score_logged`` computed (π's actions m(s_t) are needed again
    by FQE's V̂ and the linear features)."""

    def __init__(self, target: TargetPolicy) -> None:
        self.target, self.name = target, target.name
        self.sigma: float | None = target.sigma
        self.action_dim: int | None = target.action_dim
        self.means: np.ndarray | None = None

    def score_logged(self, data: LoggedData) -> tuple[np.ndarray, np.ndarray]:
        logp, self.means = self.target.score_logged(data)
        return logp, self.means


def evaluate_policy(
    data: LoggedData, target: TargetPolicy, cfg: OPEConfig, behavior: Any, view_ref: str
) -> PolicyResult:
    """Every estimator of ``cfg`` for ``target`` on ``data`` (``behavior``: "logged" or a fitted behavior
    model; ``view_ref`` pins the snapshot FQE samples from). A shape or probability error of the data
    raises; an estimator that cannot give a number (weights beyond float64, FQE diverging) is reported."""
    scored = _Scored(target)
    traj = trajectories_from(data, scored, cfg.gamma, behavior=behavior)  # checks action dims and log μ
    assert scored.means is not None
    estimates: dict[str, Estimate] = {}
    errors: dict[str, str] = {}
    ess = effective_sample_size(traj)
    model_names = [n for n in cfg.estimators if n in NEEDS_FQE]
    if model_names:
        try:
            traj = with_fqe(traj, data, target, scored.means, cfg, view_ref)
        except (ValueError, FloatingPointError) as e:
            errors.update({n: f"FQE: {e}" for n in model_names})
    for name in cfg.estimators:
        if name in errors:
            continue
        try:
            if name in ESTIMATORS:
                estimates[name] = estimate(traj, [name], cfg.n_boot, cfg.seed, cfg.level)[name]
            elif name == "fqe":
                dm = estimate(traj, ["dm"], cfg.n_boot, cfg.seed, cfg.level)["dm"]
                estimates[name] = dataclasses.replace(dm, name="fqe")
        except (ValueError, FloatingPointError) as e:
            errors[name] = str(e)
    linear = [n for n in ("lstdq", "dualdice") if n in cfg.estimators]
    if linear:
        feats = linear_features(data, target, scored.means, cfg)
        for name in linear:
            try:
                estimates[name] = (lstdq_estimate if name == "lstdq" else dualdice_estimate)(feats, traj, cfg, ess)
            except (ValueError, FloatingPointError) as e:
                errors[name] = str(e)
    ordered = {n: estimates[n] for n in cfg.estimators if n in estimates}
    return PolicyResult(ordered, errors, traj.n, ess, max_weight_share(traj), tuple(weight_warnings(traj)))


def _task_ids(target: TargetPolicy, vocab: Sequence[str], device: torch.device) -> torch.Tensor | None:
    """The policy's task id of each sampler task id (None for networks not conditioned on tasks)."""
    if not target.spec.num_tasks:
        return None
    return torch.tensor([target.task_id(t) for t in vocab], dtype=torch.int64, device=device)


def fit_fqe_for(
    data: LoggedData, target: TargetPolicy, cfg: OPEConfig, view_ref: str
) -> tuple[FQEModel, tuple[str, ...]]:
    """FQE of ``target`` on ``data``'s episodes, observing what the policy observes (its cameras, state
    and commanded goal; task ids when the policy is task-conditioned) -> (model, its task vocabulary)."""
    from data_lake import Lake
    from data_lake.sampler import RelabelConfig, Sampler
    from robot_rl.nets import ObservationSpec
    from robot_rl.pretrain import TaskConfig

    spec, fcfg = target.spec, cfg.fqe_config()
    goal, source = spec.has_goal, data.goal_source
    relabel = RelabelConfig(
        future=float(source == "future"), final=float(source == "final"), negative=0.0,
        commanded=float(goal and source == "commanded"), task=0.0 if goal else 1.0,
        future_mode="uniform", reward_rule=data.goal_reward, epsilon=data.goal_epsilon,
        gamma=cfg.gamma, success_terminal=cfg.success_terminal,
    )  # fmt: skip
    task = TaskConfig(conditioning="goal" if goal else "none", relabel=relabel)
    obs = ObsConfig(
        cameras=tuple(spec.cameras), use_state=spec.proprio_dim > 0, scene_state=spec.scene_state_dim > 0, augment_pad=0
    )
    view = Lake.open(data.lake).checkout(view_ref)
    device = target.device
    with Sampler(view, fqe_sampler_config(fcfg, obs, task, data.episode_ids, prefetch=2), device, False) as sampler:
        vocab = tuple(sampler.tasks)
        fspec = ObservationSpec.from_sampler(sampler, len(vocab) if spec.num_tasks else 0, sampler.statistics())
        to_policy = _task_ids(target, vocab, device)

        def pi(obs: Any, goals: Any, task_ids: torch.Tensor | None) -> torch.Tensor:
            tids = None if to_policy is None or task_ids is None else to_policy[task_ids]
            return target.mean(obs, goals, tids)  # (B, A)

        model = fit_fqe(sampler, fspec, pi, target.sigma, fcfg, progress=cfg.progress, device=device)
    return model, vocab


def with_fqe(
    traj: Trajectories, data: LoggedData, target: TargetPolicy, means: np.ndarray, cfg: OPEConfig, view_ref: str
) -> Trajectories:
    """``traj`` with FQE's Q̂(s_t, a_t) and V̂(s_t) = E_{a~π} Q̂(s_t, a) (V̂ over π's own actions m(s_t))."""
    model, vocab = fit_fqe_for(data, target, cfg, view_ref)
    q, v = model_values(data, model, means, vocab)
    return dataclasses.replace(traj, q_hat=data.padded(q), v_hat=data.padded(v))


# ---------------------------------------------------------------------------- LSTD-Q and DualDICE
@dataclasses.dataclass(frozen=True)
class LinearFeatures:
    """φ of the M logged transitions, E_{a'~π} φ(s', a') (M, m, F) samples, φ(s0, a0 ~ π) (N, m, F)."""

    phi: torch.Tensor  # (M, F)
    phi_next: torch.Tensor  # (M, m, F); rows with d = 1 are never read
    phi0: torch.Tensor  # (N, m, F)
    rewards: torch.Tensor  # (M,)
    terminals: torch.Tensor  # (M,) 1 at each trajectory's last step
    episode_of: np.ndarray  # (M,)


def state_inputs(data: LoggedData, target: TargetPolicy, kind: str) -> np.ndarray:
    """x(s_t) (M, X) float64: the frozen encoder's embedding, or the state (and goal state) the policy reads."""
    spec, out = target.spec, []
    encoder = getattr(target.trained.policy, "encoder", None)
    if kind == "encoder" and encoder is None:
        raise ValueError(f"{target.name} has no observation encoder to embed states with: use lstd.features=state")
    for _, obs, goals, task_ids in data.device_batches(spec, target.task_id, target.device):
        if kind == "encoder":
            assert encoder is not None
            with torch.no_grad():
                (x,) = encoder([obs], goals if spec.has_goal else None, task_ids if spec.num_tasks else None)
        else:
            parts = [t for t in (obs.state, None if goals is None else goals.state) if t is not None]
            if not parts:
                raise ValueError(f"{target.name} reads no state vector (images only): use lstd.features=encoder")
            x = torch.cat(parts, 1)
        out.append(x.double().cpu().numpy())
    return np.concatenate(out)


def linear_features(data: LoggedData, target: TargetPolicy, means: np.ndarray, cfg: OPEConfig) -> LinearFeatures:
    """Random Fourier features of [x(s), a] with x and a standardized over the data (see ``LSTDConfig``)."""
    lc = cfg.lstd
    x = state_inputs(data, target, lc.features)  # (M, X)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    a_scale = np.maximum(data.actions.std(0), 1e-6)  # actions in [-1, 1]; standardized per dim, not centered
    A, X = data.action_dim, x.shape[1]
    bandwidth = lc.bandwidth or math.sqrt(X + A)
    rff = StateActionRFF(X, A, lc.num_features, bandwidth, lc.seed)
    gen = torch.Generator().manual_seed(lc.seed)
    m = torch.from_numpy(means).double()  # (M, A) π's m(s_t)
    noise = cfg.sigma * torch.randn((len(m), lc.n_action_samples, A), generator=gen, dtype=torch.float64)
    sampled = (m.unsqueeze(1) + noise).clamp(-1.0, 1.0) / torch.from_numpy(a_scale)  # (M, m, A) a ~ π(s_t)
    xt = torch.from_numpy(x)
    state_part = rff.state_part(xt)  # (M, D)
    phi = rff(xt, torch.from_numpy(data.actions.astype(np.float64) / a_scale))  # (M, F)
    on_pi = rff.many(state_part, sampled)  # (M, m, F) φ(s_t, a ~ π)
    starts, last = data.starts, data.starts + data.lengths - 1
    nxt = np.minimum(np.arange(data.num_steps) + 1, data.num_steps - 1)  # next row; unused where d = 1
    terminals = np.zeros(data.num_steps)
    terminals[last] = 1.0
    return LinearFeatures(
        phi,
        on_pi[torch.from_numpy(nxt)],
        on_pi[torch.from_numpy(starts)],
        torch.from_numpy(data.rewards),
        torch.from_numpy(terminals),
        data.episode_of,
    )


def _with_initial_values(traj: Trajectories, values: np.ndarray) -> Trajectories:
    """``traj`` carrying per-trajectory values V̂(s_0^i) (N,) as v_hat, so the "dm" average and its bootstrap apply."""
    v = np.zeros_like(traj.rewards)
    v[:, 0] = values
    return dataclasses.replace(traj, q_hat=None, v_hat=v)


def lstdq_estimate(f: LinearFeatures, traj: Trajectories, cfg: OPEConfig, ess: float) -> Estimate:
    """V̂ = (1/N) Σ_i φ̄(s_0^i)ᵀw, w = LSTD-Q(π) on the transitions."""
    w = lstdq(f.phi, f.phi_next, f.rewards, f.terminals, cfg.gamma, cfg.lstd.ridge)  # (F,)
    values = (f.phi0.mean(1) @ w).numpy()  # (N,)
    e = estimate(_with_initial_values(traj, values), ["dm"], cfg.n_boot, cfg.seed, cfg.level)["dm"]
    return dataclasses.replace(e, name="lstdq", ess=ess)


def dualdice_estimate(f: LinearFeatures, traj: Trajectories, cfg: OPEConfig, ess: float) -> Estimate:
    """V̂ = Σ ζ·r / ((1 − γ)·Σ ζ + γ·Σ ζ·d) over the transitions, ζ ≈ d^π/d^D from DualDICE; the
    bootstrap resamples whole trajectories of that ratio."""
    linear = not cfg.dualdice.hidden
    nxt = f.phi_next.mean(1) if linear else f.phi_next  # a linear ν needs only E_π φ(s', ·)
    phi0 = f.phi0.mean(1) if linear else f.phi0.flatten(0, 1)
    res = dualdice(f.phi, nxt, phi0, f.rewards, f.terminals, cfg.gamma, cfg.dualdice)
    n, g = traj.n, cfg.gamma
    zr, z, zd = (np.bincount(f.episode_of, weights=w, minlength=n) for w in _dice_terms(res.zeta, f))

    def on_counts(counts: np.ndarray) -> np.ndarray:  # (B, N) -> (B,)
        return counts @ zr / ((1.0 - g) * (counts @ z) + g * (counts @ zd))

    value = float(on_counts(np.ones((1, n)))[0])
    low = high = math.nan
    if cfg.n_boot > 0:
        stats = on_counts(_bootstrap_counts(n, cfg.n_boot, cfg.seed))
        low, high = (float(q) for q in np.quantile(stats, [(1 - cfg.level) / 2, (1 + cfg.level) / 2]))
    if not math.isfinite(value):
        raise ValueError(f"dualdice: the estimate is {value} (ζ did not fit: more steps or other learning rates)")
    return Estimate("dualdice", value, low, high, ess)


def _dice_terms(zeta: np.ndarray, f: LinearFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    zeta = zeta.astype(np.float64)
    return zeta * f.rewards.numpy(), zeta, zeta * f.terminals.numpy()


def _bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multiplicities of n trajectories in each resample with replacement."""
    index = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    flat = (index + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


# ---------------------------------------------------------------------------- the whole evaluation
def run_ope(cfg: OPEConfig, labels: Sequence[str] | None = None) -> OPEReport:
    """Evaluate every checkpoint of ``cfg`` on every task of the pinned snapshot (``labels``: the
    policies' names, default the ``ckpt`` strings)."""
    from data_lake import Lake
    from robot_rl.runs import resolve_device

    if not cfg.ckpt:
        raise ValueError("ope needs ckpt=<a checkpoint, policy or run directory> (or a list [a, b] to rank several)")
    labels = list(labels or cfg.ckpt)
    if len(set(labels)) != len(labels):
        raise ValueError(f"each checkpoint must be named once, got {labels}")
    device = resolve_device(cfg.device)
    targets = {label: TargetPolicy.load(path, cfg.sigma, device) for label, path in zip(labels, cfg.ckpt, strict=True)}
    if cfg.goals:
        blind = [label for label, t in targets.items() if not t.spec.has_goal]
        if blind:
            raise ValueError(
                f"goals={list(cfg.goals)} evaluates goal-conditioned policies, but {blind} read no goal: "
                "evaluate them per task (goals=null)"
            )
    view = Lake.open(cfg.lake.uri).checkout(cfg.lake.ref)
    pinned = f"snapshot:{view.snapshot_id}"
    units = cfg.units(sorted({r.task for r in view.episodes()}))
    truth = read_truth(cfg.truth, [name for name, _, _ in units], labels)
    cameras = sorted({c for t in targets.values() for c in (*t.spec.cameras, *t.spec.goal_cameras)})
    results: dict[str, dict[str, PolicyResult]] = {}
    for name, task, source in units:
        data = load_logged(
            cfg.lake.uri,
            pinned,
            task=task,
            max_episodes=cfg.max_episodes,
            success_terminal=cfg.success_terminal,
            cameras=cameras,
            goal_source=source,
            goal_reward=cfg.goal_reward,
            goal_epsilon=cfg.goal_epsilon,
            goal_seed=cfg.seed,
        )
        behavior = "logged" if cfg.behavior == "logged" else fit_behavior_once(data, cfg, device)
        results[name] = {label: evaluate_policy(data, t, cfg, behavior, pinned) for label, t in targets.items()}
    policies = {
        label: {"checkpoint": path, "algo": t.trained.name, "step": t.trained.step}
        for (label, t), path in zip(targets.items(), cfg.ckpt, strict=True)
    }
    return OPEReport(cfg, view.snapshot_id, policies, results, truth)


def fit_behavior_once(data: LoggedData, cfg: OPEConfig, device: torch.device) -> Any:
    """μ̂ fitted on the task's episodes: one model for every policy evaluated on them."""
    from robot_rl.ope.behavior import fit_behavior

    return fit_behavior(data.lake, f"snapshot:{data.snapshot_id}", cfg.behavior_model, data.episode_ids, device)


def read_truth(path: str | None, tasks: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """The true values of ``path`` as task -> policy -> V: ``{policy: V}`` (one task) or ``{task: {policy: V}}``."""
    if path is None:
        return {}
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"truth={path} must be a JSON object {{policy: value}} or {{task: {{policy: value}}}}")
    nested = all(isinstance(v, dict) for v in raw.values())
    if not nested:
        if len(tasks) != 1:
            raise ValueError(
                f"truth={path} gives one value per policy but {len(tasks)} tasks are evaluated: nest it by task"
            )
        raw = {tasks[0]: raw}
    out = {}
    for task, per in raw.items():
        if task not in tasks:
            raise ValueError(f"truth={path} names task {task!r}, not among the evaluated {list(tasks)}")
        if set(per) != set(labels):
            raise ValueError(
                f"truth={path} for {task} names policies {sorted(per)}; the evaluated ones are {list(labels)} "
                "(the ckpt values exactly as given)"
            )
        out[task] = {p: float(v) for p, v in per.items()}
    return out


# ---------------------------------------------------------------------------- outputs
def format_report(report: OPEReport) -> str:
    """The human summary: per task, a table of every estimate, the warnings, the ranking and the metrics."""
    c = report.cfg
    lines = [
        f"off-policy evaluation on lake {c.lake.uri} ({c.lake.ref} -> snapshot {report.snapshot_id[:12]}), "
        f"γ = {c.gamma:g}",
        f"target policy: each checkpoint's deterministic action + N(0, {c.sigma:g}²) noise, clipped to [-1, 1]",
        "behavior μ: " + ("the lake's logged action_logp" if c.behavior == "logged" else "a fitted behavior model "
                          "(the importance-weighted estimates are only as good as it)"),
    ]  # fmt: skip
    if c.goals:
        rule = "‖ag' − g‖ < " + f"{c.goal_epsilon:g}" if c.goal_reward == "distance" else "reaching the goal's own step"
        lines.append(f"goals: hindsight sources {', '.join(c.goals)} (final: each episode's last observation; "
                     f"future: a uniform later step, the trajectory cut there), reward 1 on {rule}")  # fmt: skip
    width = max(12, *(len(p) for p in report.policies))
    pct = f"{c.level:.0%} CI"
    for task, per in report.results.items():
        n = next(iter(per.values())).trajectories
        lines += [
            "",
            f"{'' if c.goals else 'task '}{task}: {n} logged trajectories",
            f"  {'policy':{width}s}  {'estimator':9s} {'value':>9s}  {pct}",
        ]
        for label, r in per.items():
            for name in c.estimators:
                e = r.estimates.get(name)
                if e is None:
                    lines.append(f"  {label:{width}s}  {name:9s} {'failed':>9s}  {r.errors[name][:90]}")
                    continue
                ci = f"[{_fmt(e.ci_low)}, {_fmt(e.ci_high)}]" if math.isfinite(e.ci_low) else "-"
                lines.append(f"  {label:{width}s}  {name:9s} {_fmt(e.value):>9s}  {ci}")
            lines.append(
                f"  {label:{width}s}  weights: ESS {r.ess:.1f} of {r.trajectories}, max share {r.max_weight_share:.2f}"
            )
            lines += [f"  warning ({label}): {w}" for w in r.warnings]
        if len(per) > 1:
            lines.append("  ranking (highest estimate first):")
            for name, order in report.ranking(task).items():
                values = [per[p].estimates[name].value for p in order]
                chain = "".join(
                    f" {'=' if v == prev else '>'} {p}"
                    for p, v, prev in zip(order[1:], values[1:], values[:-1], strict=True)
                )
                lines.append(f"    {name:9s} {order[0]}{chain}" if order else f"    {name:9s} (failed)")
        metrics = report.metrics(task)
        if metrics:
            lines.append(f"  against the truth ({c.truth}): rel. abs. error, Spearman, regret@1, CI coverage")
            for name, m in metrics.items():
                cells = [f"{v:8.3f}" if v is not None else f"{'-':>8s}" for v in m.values()]
                lines.append(f"    {name:9s} {' '.join(cells)}")
    return "\n".join(lines)


def write_outputs(report: OPEReport, out: Path) -> tuple[Path, Path]:
    """``<out>/ope.json`` (everything) and ``<out>/ope.png`` (every estimate with its interval, and the truth)."""
    from robot_rl.ope.plots import plot_estimates

    out.mkdir(parents=True, exist_ok=True)
    path = out / "ope.json"
    path.write_text(json.dumps(report.to_json(), indent=1))
    several = len(report.results) > 1
    rows, truth = {}, {}
    for task, per in report.results.items():
        for label, r in per.items():
            key = f"{label}\n{task}" if several else label
            rows[key] = r.estimates
            if task in report.truth:
                truth[key] = report.truth[task][label]
    title = f"OPE, σ = {report.cfg.sigma:g}, γ = {report.cfg.gamma:g}" + (
        "" if several else f": {next(iter(report.results))}"
    )
    png = plot_estimates(rows, out / "ope.png", truth if len(truth) == len(rows) else None, title)
    return path, png


def default_out(ckpts: Sequence[str]) -> Path:
    """``<run dir>/ope`` for one checkpoint inside a run, else ``runs/ope/<time>``."""
    if len(ckpts) == 1:
        d = Path(ckpts[0]).resolve()
        run = next((p for p in (d, *d.parents) if (p / "run.json").exists()), None)
        if run is not None:
            return run / "ope"
    return Path(f"runs/ope/{dt.datetime.now():%Y%m%d-%H%M%S}")


# ---------------------------------------------------------------------------- during pretraining
class PretrainOPE:
    """Cheap OPE of the current policy during pretraining (``PretrainConfig.ope_every``): the run's own
    snapshot, its held-out episodes when it has some (else in-sample, and it says so), the lake's logged
    μ, no intervals; FQE (and so fqe/dr/wdr) only when asked. ``measure(algo)`` -> ``ope/<name>`` scalars."""

    def __init__(
        self,
        lake_uri: str,
        snapshot_id: str,
        episodes: Sequence[str] | None,
        spec: Any,
        task_vocab: Sequence[str],
        cfg: OPEConfig,
    ) -> None:
        self.cfg, self.spec, self.vocab = cfg, spec, tuple(task_vocab)
        self.ref = f"snapshot:{snapshot_id}"
        self.in_sample = not episodes
        cameras = (*spec.cameras, *spec.goal_cameras)
        self.data = load_logged(
            lake_uri,
            self.ref,
            episodes=episodes or None,
            max_episodes=cfg.max_episodes,
            success_terminal=cfg.success_terminal,
            cameras=cameras,
        )
        self.data.observations(spec, np.arange(1))  # the policy's inputs exist (cameras, goals): fail now
        behavior_logp(self.data, "logged", fit=lambda: None)  # type: ignore[arg-type,return-value]  # no action_logp: the error now
        where = "in-sample: the run has no held-out episodes (calibration_episodes=0)" if self.in_sample else "held out"
        print(f"ope: every evaluation uses {self.data.num_episodes} episodes ({where}), σ = {cfg.sigma:g}")

    def measure(self, algo: Any) -> dict[str, float]:
        """The estimates of ``algo``'s current policy as ``ope/<estimator>`` scalars (NaN for one that
        failed), with ``ope/ess`` and ``ope/in_sample``. Leaves every global RNG as it was."""
        from robot_rl.algos.base import TrainedPolicy

        trained = TrainedPolicy(algo.name, algo.cfg, algo.spec, algo.policy, algo.step, algo.device)
        target = TargetPolicy(trained, self.cfg.sigma, self.vocab)
        devices = [algo.device] if algo.device.type == "cuda" else []
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=devices):
            r = evaluate_policy(self.data, target, self.cfg, "logged", self.ref)
        values = {f"ope/{n}": r.estimates[n].value if n in r.estimates else math.nan for n in self.cfg.estimators}
        return values | {
            "ope/ess": r.ess,
            "ope/in_sample": float(self.in_sample),
            "time/ope_s": time.perf_counter() - t0,
        }


__all__ = [
    "ALIASES",
    "NAMES",
    "LSTDConfig",
    "OPEConfig",
    "OPEReport",
    "PolicyResult",
    "PretrainOPE",
    "canonical_estimators",
    "default_out",
    "evaluate_policy",
    "format_report",
    "read_truth",
    "run_ope",
    "write_outputs",
]
