"""Off-policy evaluation benchmark: every estimator against the simulator's true value of each policy.

    .venv/bin/python -m benchmarks.ope [--quick] [--json PATH] [--out DIR]

The question an estimator answers: given episodes logged by other (behavior) policies μ, what is the
value V(π) = E_π[Σ_t γ^t r_t] of a policy π never run, and which of several candidate policies is
the best? Here the candidates can also be run in the simulator, so every answer is checked.

Data (one fresh local lake; states only: the proprioception, the scene vector and the commanded
goal state, so nothing is rendered for learning or for the truth). Per task, as many episodes of
each behavior: the scripted expert with Gaussian action noise of std BEHAVIOR_NOISE (0.3 and 0.6),
clipped to [−1, 1], and the uniform random policy (collect's widest noise level); ``collect`` logs
each action's log μ(a_t | s_t) (the censored Gaussian, or −4·log 2) as ``action_logp``. The random
episodes are there for coverage: μ must put probability where the targets act, and only uniform
actions cover the uniform random target (and the poor early checkpoints). Two tabletop tasks with
two goal sets: ``reach_red`` (the gripper 5 cm above the red block) and ``pick_and_lift_red`` (the
red block lifted 6 cm).

Policies, each evaluated as a stochastic target a = clip(m(s) + σ·ε, −1, 1), ε ~ N(0, I), with the
same σ = SIGMA for the truth and for every estimator:

    bc<N>     one goal-conditioned BC run on the noisy experts of both tasks (commanded goal states),
              kept after N updates (the run resumed from its own checkpoint at each stage: one run,
              early stages worse)
    scripted  the task's scripted expert (robot_rl.ope.target.ScriptedTarget: m(s) by replaying
              each logged episode in the simulator)
    random    uniform actions in [−1, 1]^4 (log π = −4·log 2; not of the Gaussian form)

Reward and horizon (the same definition everywhere): r_t = 1 on the first transition that reaches
the task's success, and the episode ends there (success is absorbing: ``success_terminal`` for the
logged trajectories and for FQE's sampler, ``stop_on_success`` for the simulator), or after the
task's episode length (40 / 50 steps). So V(π) = E_π[γ^τ·1(τ < T)], τ the step of the success.

Truth: the mean discounted return of ``truth_rollouts`` rollouts of π per task in the simulator,
reset seeds held out from collection, with its normal 95% interval.

Estimators (per task, on that task's logged episodes, with the settings and the code paths of
``robot-rl ope``, ``robot_rl.ope.run``; ρ_t = π(a_t|s_t)/μ(a_t|s_t), w_t = Π_{t'≤t} ρ_t', G = Σ_t γ^t r_t):

    fqe             the direct method with Fitted Q Evaluation (Le, Voloshin & Yue, 2019): Q fitted
                    by Q ← r + γ(1 − d)·E_{a'~π} Q(s', a') on the sampler's transitions, V̂ = mean_i V̂(s_0^i)
    is, pdis, wis   trajectory-wise, per-decision and weighted importance sampling (Precup, Sutton
                    & Singh, 2000): mean_i w_T^i G_i, mean_i Σ_t γ^t w_t^i r_t^i, Σ_i w_T^i G_i / Σ_i w_T^i
    cwpdis          per-decision IS normalized per step, Σ_t γ^t Σ_i w_t^i r_t^i / Σ_i w_t^i
                    (Voloshin et al., 2019, "Empirical Study of Off-Policy Policy Evaluation")
    dr              doubly robust, mean_i Σ_t γ^t [w_t (r_t − Q̂(s_t, a_t)) + w_{t−1} V̂(s_t)] with
                    FQE's Q̂ and V̂ = E_π Q̂ (Jiang & Li, 2016)
    wdr             the same with per-step self-normalized weights (Thomas & Brunskill, 2016)
    dualdice        DualDICE (Nachum, Chow, Dai & Li, 2019): descent-ascent on
                    E_D[(ν − γ(1 − d)·E_π ν')ζ − ζ²/2] − (1 − γ)E_{s0, a0~π}[ν] gives ζ ≈ d^π/d^D,
                    V̂ = Σ ζ r / ((1 − γ)·Σ ζ + γ·Σ ζ d) over the transitions
    lstdq           LSTD-Q (Lagoudakis & Parr, 2003): w = (A + λI)⁻¹b with b = mean φ(s, a)·r,
                    A = mean φ(s, a)(φ(s, a) − γ(1 − d)·E_π φ(s', a'))ᵀ; V̂ = mean_i E_π φ(s_0^i, a)ᵀw

lstdq and dualdice (ν, ζ linear) share random Fourier features φ(s, a) of [x, a], x the standardized
(state, scene, goal) vector the policies read (``robot-rl ope lstd.features=state``; the same x for
every policy, the random and scripted ones included), bandwidth sqrt(dim [x, a]).

Intervals: 95% percentile bootstrap over the logged trajectories. fqe, dr and wdr hold the fitted Q̂
fixed, lstdq its weights w and dualdice its ratios ζ (as ``robot-rl ope`` does): those intervals show
which trajectories were logged, not the error of the fit, and their coverage says how far to trust them.

Per task and estimator (``robot_rl.ope.metrics``): relative absolute error mean_k |V̂_k − V_k|/|V_k|
over the policies whose true value is not 0, Spearman's rank correlation with the truth, regret@1 of
deploying the policy with the highest estimate (normalized by the range of true values), and the
coverage of the 95% intervals. The issue's targets: for the best estimator, Spearman ≥ 0.8 and
regret@1 ≤ 0.1 on both tasks. Every estimator is reported, even a bad one; an estimator that fails
on a policy (a weight beyond float64, a singular system) is reported as failed, with its reason.

Deviations, with the reasons:
- The truth and the estimators count the return over the task's episode length. FQE's sampler
  bootstraps at a time-limit cut (``data_lake.sampler``'s rule), so fqe counts what a policy would
  still earn after it; lstdq and dualdice end every logged episode at its last transition, as the
  importance-sampling estimators do. The difference is at most γ^T ≤ 0.95^40 = 0.13 of the value of
  a state not yet solved at the time limit, and nearly every behavior episode succeeds before it.
- FQE's target critic follows by Polyak averaging with τ = FQE_TAU = 0.05 instead of 0.005: with
  2000 updates that is ~100 backups, enough to carry a success 15-50 steps back to the start of a
  lift (with 0.005, V̂(s_0) of the scripted lift stayed near 0.09 where the truth is 0.45).
- FQE of the scripted expert needs m(s') at any sampled state, and the expert reads the simulator:
  m is computed by replay for every logged row and looked up by the exact (state, scene, goal)
  vector; an episode's final observation (the next state of its last transition only, never a
  logged row) takes the m of the nearest logged row.
- FQE of the uniform random policy: ``fit_fqe`` draws a' = clip(m(s') + σ·ε); here ``pi`` returns a
  fresh uniform draw per row and σ = 0, so each TD target uses one uniform a' (an unbiased
  one-sample expectation); V̂(s) averages Q̂ over UNIFORM_V_SAMPLES uniform actions.
- The uniform policy's log π of a logged action with a component at exactly ±1 is −inf
  (``RandomTarget``): the noisy expert's clipped components are point masses, which uniform actions
  never produce, so those trajectories get weight 0.

JSON (flat, floats): ``<task>_<estimator>_{rel_error,spearman,regret1,coverage}``,
``<task>_<estimator>_warned`` (the share of policies whose estimate carries a degenerate-weights
warning), ``<task>_<policy>_truth`` (+ ``_ci_low``, ``_ci_high``), ``<task>_<policy>_<estimator>`` (+ CI),
``<task>_<policy>_ess``, ``<task>_best_{spearman,regret1}`` and ``<task>_best_is_<estimator>`` = 1,
``targets_met`` (1 when one estimator meets both targets on both tasks), ``targets_met_by_<estimator>``,
``budget_*``, phase times (``collect_s``, ``pretrain_s``, ``<task>_{truth,fqe,weights,linear}_s``) and
``seconds``. ``--out DIR`` keeps ``<task>/ope.png`` (every estimate with its interval and the truth),
the pretraining run and the policies.

Budget: the full run takes ~15 minutes on one CPU core (``torch.set_num_threads(1)``), FQE most of
it; ``--quick`` (a few episodes, updates and rollouts: it checks the pipeline, its figures mean
nothing) under a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import report

TASKS = ("tabletop/reach_red", "tabletop/pick_and_lift_red")
BEHAVIOR_NOISE = (0.3, 0.6)  # the noisy experts' action noise std; plus as many uniform random episodes
SIGMA = 0.25  # every target's action noise std
GAMMA = 0.95
REF = "tag:v1"  # every behavior episode
EXPERT_REF = "tag:experts"  # the noisy experts' episodes only: what BC imitates
ESTIMATOR_NAMES = ("fqe", "is", "pdis", "wis", "cwpdis", "dr", "wdr", "dualdice", "lstdq")  # as robot-rl ope names them
FQE_TAU = 0.05  # the target critic follows within ~20 updates: ~100 backups in 2000 updates (a lift takes 15-50 steps)
UNIFORM_V_SAMPLES = 64  # uniform actions averaged in the random policy's V̂
TRUTH_ENVS = 50  # envs stepped together in the truth's rollouts
TRUTH_SEED = 5_000_000  # reset seeds of the truth: task k, rollout i -> TRUTH_SEED + 100_000·k + i
SPEARMAN_TARGET, REGRET_TARGET = 0.8, 0.1


@dataclasses.dataclass(frozen=True)
class Budget:
    episodes: int  # behavior episodes per task and behavior (each noise level, random)
    checkpoints: tuple[int, ...]  # BC updates after which a policy is kept (ascending)
    batch: int  # BC and FQE batch size
    truth_rollouts: int  # per policy and task
    fqe_steps: int
    fqe_hidden: tuple[int, ...]
    features: int  # random Fourier features of lstdq / dualdice
    dice_steps: int  # DualDICE's descent-ascent steps
    n_boot: int  # bootstrap resamples of every interval


QUICK = Budget(5, (30, 120), 64, 8, 50, (64, 64), 32, 100, 100)
FULL = Budget(100, (100, 300, 1000, 3000, 6000), 256, 200, 2000, (128, 128), 128, 2000, 500)


# ---------------------------------------------------------------------------- data and policies
def build_lake(uri: str, b: Budget) -> None:
    """Per task, ``b.episodes`` episodes of each behavior (with ``action_logp``): the noisy experts, tagged
    ``experts`` (what BC learns from), then the uniform random policy, tagged ``v1`` (all the behavior
    data). Run k has collect seed k. No image is used: collect records one small camera."""
    from data_lake import Lake
    from tasks.collect import CollectConfig, collect

    runs: list[tuple[str, str, float | None]] = [(task, "noisy", noise) for task in TASKS for noise in BEHAVIOR_NOISE]
    runs += [(task, "random", None) for task in TASKS]
    for k, (task, policy, noise) in enumerate(runs):
        if policy == "random" and "experts" not in Lake.open(uri).tags():
            Lake.open(uri).tag("experts")
        cfg = CollectConfig(
            task, b.episodes, uri, policy=policy, noise=noise, seed=k, image_size=16, cameras=("front",), progress=False
        )
        collect(cfg)
    Lake.open(uri).tag("v1")


def obs_config() -> Any:
    from robot_rl.config import ObsConfig

    return ObsConfig(cameras=(), use_state=True, scene_state=True, augment_pad=0)


def task_config() -> Any:
    """Commanded goals, the task's reward, success absorbing: what BC imitates and FQE evaluates."""
    from data_lake.sampler import RelabelConfig
    from robot_rl.pretrain import TaskConfig

    relabel = RelabelConfig(
        future=0.0, final=0.0, negative=0.0, commanded=1.0, task=0.0, gamma=GAMMA, success_terminal=True
    )
    return TaskConfig(conditioning="goal", relabel=relabel)


def pretrain_checkpoints(uri: str, b: Budget, root: Path) -> dict[str, Path]:
    """One goal-conditioned BC run, resumed from its own checkpoint at each stage of ``b.checkpoints``;
    the policy of each stage is copied to ``root/policies/bc<N>``."""
    from robot_rl.config import LakeConfig
    from robot_rl.hydra_utils import algo_settings
    from robot_rl.pretrain import PretrainConfig, pretrain

    run, out = root / "pretrain", {}
    for k, steps in enumerate(b.checkpoints):
        cfg = PretrainConfig(
            algo="bc",
            algo_cfg=algo_settings("bc", gamma=GAMMA),
            lake=LakeConfig(uri, EXPERT_REF),
            obs=obs_config(),
            task=task_config(),
            steps=steps,
            batch_size=b.batch,
            run_dir=str(run),
            resume=k > 0,
            save_every=steps,
            progress=False,
        )
        pretrain(cfg)
        out[f"bc{steps}"] = Path(shutil.copytree(run / "policy", root / "policies" / f"bc{steps}"))
    return out


def make_targets(task: str, policies: dict[str, Path]) -> dict[str, Any]:
    """Policy name -> target, in the order random, the checkpoints, scripted."""
    from robot_rl.ope.target import RandomTarget, ScriptedTarget, TargetPolicy

    checkpoints = {name: TargetPolicy.load(str(path), SIGMA) for name, path in policies.items()}
    return {"random": RandomTarget(4), **checkpoints, "scripted": ScriptedTarget(task, SIGMA)}


# ---------------------------------------------------------------------------- the truth
def true_returns(task: str, k: int, target: Any, n: int) -> np.ndarray:
    """(≥ n,) discounted returns of the stochastic target in the simulator (stop at success), in full
    batches of up to TRUTH_ENVS envs."""
    import tasks as registry
    from sim.rollout import rollout

    spec = registry.get(task)
    size = min(n, TRUTH_ENVS)
    envs = [spec.make_env(16, ("front",)) for _ in range(size)]
    for env in envs:
        env.render_images = False  # states only
    seed = TRUTH_SEED + 100_000 * k
    policy = target.rollout_policy(task, size, seed)
    returns = []
    for start in range(0, n, size):
        seeds = [seed + start + j for j in range(size)]
        for traj in rollout(envs, policy, seeds, spec.max_episode_steps, stop_on_success=True):
            returns.append(sum(GAMMA**t * r for t, r in enumerate(traj.rewards)))
    for env in envs:
        env.close()
    return np.array(returns, np.float64)


# ---------------------------------------------------------------------------- settings of the estimators
def ope_config(b: Budget, seed: int) -> Any:
    """The estimators' settings, as ``robot-rl ope`` takes them (``robot_rl.ope.run.OPEConfig``): FQE
    small for the CPU, the linear methods on the state vector the policies read."""
    from robot_rl.ope.dice import DiceConfig
    from robot_rl.ope.fqe import FQEConfig
    from robot_rl.ope.run import LSTDConfig, OPEConfig

    fqe = FQEConfig(
        hidden=b.fqe_hidden,
        steps=b.fqe_steps,
        batch_size=b.batch,
        n_action_samples=4,
        tau=FQE_TAU,
        log_every=max(1, b.fqe_steps // 10),
    )
    lstd = LSTDConfig(features="state", num_features=b.features)
    return OPEConfig(
        estimators=ESTIMATOR_NAMES,
        gamma=GAMMA,
        sigma=SIGMA,
        n_boot=b.n_boot,
        seed=seed,
        progress=False,
        fqe=fqe,
        lstd=lstd,
        dualdice=DiceConfig(steps=b.dice_steps),
    )


# ---------------------------------------------------------------------------- FQE for every kind of target
class ExpertMeans:
    """The scripted expert's m(s) at the lake's states, as FQE's ``pi``: replayed once for every logged
    row (``ScriptedTarget.score_logged``) and looked up by the exact (state, scene, goal) vector; a
    state that is no logged row (an episode's final observation) takes the nearest row's m."""

    def __init__(self, data: Any, means: np.ndarray):
        self.keys = state_vectors(data).astype(np.float32)  # (M, K)
        self.rows = {key.tobytes(): i for i, key in enumerate(self.keys)}
        self.means = torch.from_numpy(means.astype(np.float32))  # (M, A)
        self.calls = self.misses = 0

    def __call__(self, obs: Any, goals: Any, task_ids: Any) -> torch.Tensor:
        x = torch.cat([obs.state, goals.state], 1).cpu().numpy().astype(np.float32)  # (B, K)
        rows = np.array([self.rows.get(key.tobytes(), -1) for key in x])
        miss = np.flatnonzero(rows < 0)
        for i in miss:
            rows[i] = int(np.argmin(((self.keys - x[i]) ** 2).sum(1)))
        self.calls, self.misses = self.calls + len(x), self.misses + len(miss)
        return self.means[rows]  # (B, A)


def state_vectors(data: Any) -> np.ndarray:
    """(M, D) float64: each logged row's state, scene vector and commanded goal state (what the policies
    read, in the order a batch has them)."""
    goal = data.goals["state"][data.episode_of]
    return np.concatenate([data.steps["state"], data.steps["achieved_goal"], goal], 1).astype(np.float64)


def uniform_pi(seed: int) -> Callable[[Any, Any, Any], torch.Tensor]:
    """``pi`` for FQE of the uniform random policy (with σ = 0): one fresh uniform action per row."""
    generator = torch.Generator().manual_seed(seed)

    def pi(obs: Any, goals: Any, task_ids: Any) -> torch.Tensor:
        return torch.rand((obs.batch_size, 4), generator=generator) * 2.0 - 1.0  # (B, 4)

    return pi


class UniformQ:
    """FQE's Q̂ of the uniform random policy for the estimators: Q̂(s, a) as fitted, V̂(s) the mean of
    Q̂(s, ·) over UNIFORM_V_SAMPLES uniform actions (seeded)."""

    def __init__(self, model: Any):
        self.model, self.spec, self.nets = model, model.spec, model.nets

    def q(self, obs: Any, goals: Any, task_ids: Any, actions: torch.Tensor) -> torch.Tensor:
        return self.model.q(obs, goals, task_ids, actions)

    @torch.no_grad()
    def v(self, obs: Any, goals: Any, task_ids: Any) -> torch.Tensor:
        f = self.model.features(obs, goals, task_ids)  # (B, F)
        generator = torch.Generator().manual_seed(0)
        u = torch.rand((f.shape[0], UNIFORM_V_SAMPLES, 4), generator=generator) * 2.0 - 1.0  # (B, K, 4)
        return self.nets.critic.q_values(f, u).mean(-1).mean(0)  # (B,)


def fit_q(sampler: Any, spec: Any, name: str, target: Any, full: Any, cfg: Any) -> Any:
    """FQE of one target on the task's sampler -> what the estimators read (the model, or a wrapper)."""
    from robot_rl.ope.fqe import fit_fqe
    from robot_rl.ope.target import RandomTarget, ScriptedTarget

    fcfg = cfg.fqe_config()
    if isinstance(target, RandomTarget):
        return UniformQ(fit_fqe(sampler, spec, uniform_pi(cfg.seed), 0.0, fcfg))
    if isinstance(target, ScriptedTarget):
        _, means = target.score_logged(full)
        lookup = ExpertMeans(full, means)
        model = fit_fqe(sampler, spec, lookup, SIGMA, fcfg)
        if lookup.misses > 0.1 * lookup.calls:
            raise RuntimeError(f"{name}: {lookup.misses} of {lookup.calls} FQE states are no logged row")
        return model
    return fit_fqe(sampler, spec, target.mean, SIGMA, fcfg)


# ---------------------------------------------------------------------------- LSTD-Q and DualDICE
def linear_features(data: Any, means: np.ndarray | None, cfg: Any) -> Any:
    """``robot_rl.ope.run.linear_features`` with ``lstd.features="state"`` for any target: random Fourier
    features of [x, a], x the standardized state vector, a scaled by its std, bandwidth sqrt(dim [x, a]);
    π's actions are clip(m + σ·ε) around the target's means, or uniform when ``means`` is None."""
    from robot_rl.ope.lstd import StateActionRFF
    from robot_rl.ope.run import LinearFeatures

    lc = cfg.lstd
    x = state_vectors(data)  # (M, X)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    a_scale = torch.from_numpy(np.maximum(data.actions.std(0), 1e-6))  # (A,)
    A, X = data.action_dim, x.shape[1]
    rff = StateActionRFF(X, A, lc.num_features, lc.bandwidth or math.sqrt(X + A), lc.seed)
    gen = torch.Generator().manual_seed(lc.seed)
    shape = (data.num_steps, lc.n_action_samples, A)
    if means is None:
        sampled = torch.rand(shape, generator=gen, dtype=torch.float64) * 2.0 - 1.0  # (M, m, A) uniform
    else:
        noise = cfg.sigma * torch.randn(shape, generator=gen, dtype=torch.float64)
        sampled = (torch.from_numpy(means).double().unsqueeze(1) + noise).clamp(-1.0, 1.0)  # (M, m, A)
    xt = torch.from_numpy(x)
    phi = rff(xt, torch.from_numpy(data.actions.astype(np.float64)) / a_scale)  # (M, F)
    on_pi = rff.many(rff.state_part(xt), sampled / a_scale)  # (M, m, F) φ(s_t, a ~ π)
    last = data.starts + data.lengths - 1  # each trajectory's last step: its end (success or the time limit)
    nxt = np.minimum(np.arange(data.num_steps) + 1, data.num_steps - 1)  # the next row; unused where d = 1
    terminals = np.zeros(data.num_steps)
    terminals[last] = 1.0
    return LinearFeatures(
        phi,
        on_pi[torch.from_numpy(nxt)],
        on_pi[torch.from_numpy(data.starts)],
        torch.from_numpy(data.rewards),
        torch.from_numpy(terminals),
        data.episode_of,
    )


# ---------------------------------------------------------------------------- one task
@dataclasses.dataclass
class TaskResult:
    truth: dict[str, tuple[float, float, float]]  # policy -> (mean, ci_low, ci_high)
    estimates: dict[str, dict[str, Any]]  # policy -> estimator -> Estimate
    failures: dict[str, dict[str, str]]  # policy -> estimator -> reason
    ess: dict[str, float]  # policy -> Kish ESS of the trajectory weights
    episodes: int
    seconds: dict[str, float]


def evaluate_task(uri: str, k: int, task: str, policies: dict[str, Path], b: Budget) -> TaskResult:
    """The truth, then every estimator, of every policy on one task."""
    from data_lake import Lake
    from data_lake.sampler import Sampler
    from robot_rl.nets import ObservationSpec
    from robot_rl.ope.dataset import load_logged, trajectories_from
    from robot_rl.ope.estimators import effective_sample_size, estimate
    from robot_rl.ope.fqe import fqe_sampler_config
    from robot_rl.ope.run import dualdice_estimate, lstdq_estimate

    targets = make_targets(task, policies)
    cfg = ope_config(b, seed=k)
    t0 = time.perf_counter()
    truth = {}
    for name, target in targets.items():
        g = true_returns(task, k, target, b.truth_rollouts)
        half = 1.96 * g.std(ddof=1) / math.sqrt(len(g))
        truth[name] = (float(g.mean()), float(g.mean() - half), float(g.mean() + half))
    t1 = time.perf_counter()
    data = load_logged(uri, REF, task=task, success_terminal=True)  # the estimators' trajectories
    full = load_logged(uri, REF, task=task)  # every logged row: the scripted expert's lookup for FQE
    view = Lake.open(uri).checkout(REF)
    scfg = fqe_sampler_config(cfg.fqe_config(), obs_config(), task_config(), data.episode_ids, prefetch=2)
    estimates: dict[str, dict[str, Any]] = {}
    failures: dict[str, dict[str, str]] = {}
    ess: dict[str, float] = {}
    seconds = {"truth_s": t1 - t0, "fqe_s": 0.0, "weights_s": 0.0, "linear_s": 0.0}
    with Sampler(view, scfg, progress=False) as sampler:
        spec = ObservationSpec.from_sampler(sampler, 0, sampler.statistics())
        for name, target in targets.items():
            estimates[name], failures[name] = {}, {}
            t = time.perf_counter()
            try:
                q_model = fit_q(sampler, spec, name, target, full, cfg)
            except (ValueError, FloatingPointError) as e:  # FQE diverged: fqe, dr and wdr fail, the rest go on
                q_model, failures[name] = None, {est: f"FQE: {e}" for est in ("fqe", "dr", "wdr")}
            traj = trajectories_from(data, target, GAMMA, fqe=q_model)
            seconds["fqe_s"] += time.perf_counter() - t
            ess[name] = effective_sample_size(traj)
            t = time.perf_counter()
            feats = linear_features(data, target.score_logged(data)[1], cfg)
            seconds["linear_s"] += time.perf_counter() - t
            for est in ESTIMATOR_NAMES:
                t, linear = time.perf_counter(), est in ("lstdq", "dualdice")
                if est in failures[name]:
                    continue
                try:
                    if linear:
                        fn = lstdq_estimate if est == "lstdq" else dualdice_estimate
                        estimates[name][est] = fn(feats, traj, cfg, ess[name])
                    else:  # fqe is the direct method "dm" with FQE's V̂
                        (one,) = estimate(traj, ("dm" if est == "fqe" else est,), cfg.n_boot, cfg.seed).values()
                        estimates[name][est] = dataclasses.replace(one, name=est)
                except (ValueError, FloatingPointError) as e:
                    failures[name][est] = str(e)
                seconds["linear_s" if linear else "weights_s"] += time.perf_counter() - t
    return TaskResult(truth, estimates, failures, ess, data.num_episodes, seconds)


# ---------------------------------------------------------------------------- metrics and report
def estimator_metrics(res: TaskResult, est: str) -> dict[str, float]:
    """rel_error, spearman, regret1, coverage of one estimator over the task's policies (NaN when it
    failed on any policy), and ``warned``: the share of policies whose estimate rests on degenerate
    importance weights (``estimators.weight_warnings``: Kish ESS below 10% of N or 10 trajectories, or
    one trajectory holding half the weight)."""
    from robot_rl.ope.metrics import ci_coverage, regret_at_1, relative_absolute_error, spearman

    nan = dict.fromkeys(("rel_error", "spearman", "regret1", "coverage", "warned"), math.nan)
    if any(est not in per for per in res.estimates.values()):
        return nan
    truth = {p: t[0] for p, t in res.truth.items()}
    value = {p: per[est].value for p, per in res.estimates.items()}
    nonzero = [p for p in truth if truth[p] != 0.0]
    return {
        "rel_error": relative_absolute_error([value[p] for p in nonzero], [truth[p] for p in nonzero])
        if nonzero
        else math.nan,
        "spearman": spearman(value, truth),
        "regret1": regret_at_1(value, truth),
        "coverage": ci_coverage(
            {p: per[est].ci_low for p, per in res.estimates.items()},
            {p: per[est].ci_high for p, per in res.estimates.items()},
            truth,
        ),
        "warned": float(np.mean([bool(per[est].warnings) for per in res.estimates.values()])),
    }


def best_estimator(metrics: dict[str, dict[str, float]]) -> str | None:
    """Highest Spearman, then lowest regret@1, then lowest relative error."""
    ok = [e for e, m in metrics.items() if math.isfinite(m["spearman"])]
    if not ok:
        return None

    def key(e: str) -> tuple[float, float, float]:
        m = metrics[e]
        return (-m["spearman"], m["regret1"], m["rel_error"] if math.isfinite(m["rel_error"]) else math.inf)

    return min(ok, key=key)


def print_task(task: str, res: TaskResult, metrics: dict[str, dict[str, float]]) -> None:
    print(f"\n{task}: {res.episodes} behavior episodes, γ = {GAMMA}, target σ = {SIGMA}")
    head = f"{'policy':10s} {'truth [95% CI]':>22s} " + " ".join(f"{e:>8s}" for e in ESTIMATOR_NAMES) + "      ess"
    print(head)
    for p, (v, lo, hi) in res.truth.items():
        cells = [
            cell(res.estimates[p][e].value) if e in res.estimates[p] else f"{'failed':>8s}" for e in ESTIMATOR_NAMES
        ]
        print(f"{p:10s} {v:6.3f} [{lo:6.3f}, {hi:6.3f}] " + " ".join(cells) + f" {res.ess[p]:8.1f}")
    print(f"{'estimator':10s} {'rel_error':>10s} {'spearman':>9s} {'regret@1':>9s} {'coverage':>9s} {'warned':>7s}")
    for e, m in metrics.items():
        print(
            f"{e:10s} {m['rel_error']:10.3f} {m['spearman']:9.3f} {m['regret1']:9.3f} {m['coverage']:9.3f}"
            f" {m['warned']:7.2f}"
        )
    for p, fails in res.failures.items():
        for e, why in fails.items():
            print(f"  {e} failed on {p}: {why}")


def cell(v: float) -> str:
    return f"{v:8.3f}" if abs(v) < 1e4 else f"{v:8.1e}"


def plot_task(task: str, res: TaskResult, out: Path) -> None:
    from robot_rl.ope.plots import plot_estimates

    (out / short(task)).mkdir(parents=True, exist_ok=True)
    truth = {p: t[0] for p, t in res.truth.items()}
    plot_estimates(res.estimates, out / short(task) / "ope.png", truth, f"{short(task)}: off-policy estimates vs truth")


def short(task: str) -> str:
    return task.split("/")[1]


def record(figs: dict[str, float], task: str, res: TaskResult, metrics: dict[str, dict[str, float]]) -> None:
    t = short(task)
    for e, m in metrics.items():
        for key, v in m.items():
            figs[f"{t}_{e}_{key}"] = v
    for p, (v, lo, hi) in res.truth.items():
        figs[f"{t}_{p}_truth"], figs[f"{t}_{p}_truth_ci_low"], figs[f"{t}_{p}_truth_ci_high"] = v, lo, hi
        figs[f"{t}_{p}_ess"] = res.ess[p]
        for e in ESTIMATOR_NAMES:
            est = res.estimates[p].get(e)
            figs[f"{t}_{p}_{e}"] = est.value if est else math.nan
            figs[f"{t}_{p}_{e}_ci_low"] = est.ci_low if est else math.nan
            figs[f"{t}_{p}_{e}_ci_high"] = est.ci_high if est else math.nan
    best = best_estimator(metrics)
    figs[f"{t}_best_spearman"] = metrics[best]["spearman"] if best else math.nan
    figs[f"{t}_best_regret1"] = metrics[best]["regret1"] if best else math.nan
    if best:
        figs[f"{t}_best_is_{best}"] = 1.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny run (under a minute): checks the pipeline only")
    p.add_argument("--json")
    p.add_argument("--out", help="keep ope.png per task, the pretraining run and the policies here")
    a = p.parse_args()
    torch.set_num_threads(1)
    b = QUICK if a.quick else FULL
    t0 = time.perf_counter()
    figs: dict[str, float] = {}
    results: dict[str, tuple[TaskResult, dict[str, dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.out) if a.out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for stale in ("pretrain", "policies"):  # a fresh run every time
            shutil.rmtree(root / stale, ignore_errors=True)
        uri = str(Path(tmp) / "lake")
        build_lake(uri, b)
        figs["collect_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        policies = pretrain_checkpoints(uri, b, root)
        figs["pretrain_s"] = time.perf_counter() - t1
        for k, task in enumerate(TASKS):
            res = evaluate_task(uri, k, task, policies, b)
            metrics = {e: estimator_metrics(res, e) for e in ESTIMATOR_NAMES}
            results[task] = (res, metrics)
            print_task(task, res, metrics)
            record(figs, task, res, metrics)
            figs |= {f"{short(task)}_{key}": v for key, v in res.seconds.items()}
            if a.out:
                plot_task(task, res, root)
    passing = [
        e
        for e in ESTIMATOR_NAMES
        if all(m[e]["spearman"] >= SPEARMAN_TARGET and m[e]["regret1"] <= REGRET_TARGET for _, m in results.values())
    ]
    figs["targets_met"] = float(bool(passing))
    figs |= {f"targets_met_by_{e}": 1.0 for e in passing}
    figs |= {
        "gamma": GAMMA,
        "sigma": SIGMA,
        "budget_behavior_episodes_per_task": float(b.episodes * (len(BEHAVIOR_NOISE) + 1)),
        "budget_policies": float(len(b.checkpoints) + 2),
        "budget_pretrain_updates": float(b.checkpoints[-1]),
        "budget_truth_rollouts": float(b.truth_rollouts),
        "budget_fqe_steps": float(b.fqe_steps),
        "budget_features": float(b.features),
        "budget_dice_steps": float(b.dice_steps),
        "budget_n_boot": float(b.n_boot),
        "seconds": time.perf_counter() - t0,
    }
    warned = [e for e in passing if any(m[e]["warned"] > 0.5 for _, m in results.values())]
    print(f"\nestimators meeting Spearman >= {SPEARMAN_TARGET} and regret@1 <= {REGRET_TARGET} on both tasks: "
          f"{', '.join(passing) or 'none'}")  # fmt: skip
    if warned:
        print(f"  of which rest on degenerate importance weights for most policies of a task: {', '.join(warned)}")
    print()
    targets = {f"{short(t)}_best_spearman": f">= {SPEARMAN_TARGET}" for t in TASKS}
    targets |= {f"{short(t)}_best_regret1": f"<= {REGRET_TARGET}" for t in TASKS}
    targets["targets_met"] = "1 (one estimator meets both on both tasks)"
    per_policy = tuple(f"{short(t)}_{p}_" for t in TASKS for p in results[t][0].truth)
    report(figs, targets, a.json, skip=tuple(k for k in figs if k.startswith(per_policy)))


if __name__ == "__main__":
    main()
