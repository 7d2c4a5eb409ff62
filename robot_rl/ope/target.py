"""The evaluated (target) policy of off-policy evaluation, as a stochastic policy with a density.

Every target is evaluated the same way by the simulator's truth and by every estimator: its
deterministic action ``m(s)`` plus Gaussian noise, clipped to the action box,

    a = clip(m(s) + σ·ε, −1, 1),   ε ~ N(0, I)

exactly how ``tasks.core.Policy`` makes collect's noisy experts. Its density is the censored
Gaussian, per action component j:

    log π(a_j | s) = log N(a_j; m_j, σ²)       for −1 < a_j < 1
                   = log Φ(−(1 − m_j)/σ)       for a_j = +1   (the upper tail, clipped onto the bound)
                   = log Φ(−(1 + m_j)/σ)       for a_j = −1

summed over components (:func:`censored_gaussian_log_prob`, the torch twin of
``tasks.core.censored_gaussian_logp``). The importance ratio of a logged action is
ρ_t = π(a_t | s_t) / μ(a_t | h_t) (Precup, Sutton & Singh, 2000); both sides use this form, so
an expert with noise σ evaluated on its own data has ρ_t = 1.

Targets (each scores the logged actions of a :class:`robot_rl.ope.dataset.LoggedData` with
``score_logged(data) -> (log π (M,), m(s) (M, A) | None)``):

    TargetPolicy    a trained policy (``robot_rl.checkpoint.load_policy``: the acting networks
                    only), m(s) = its deterministic action, batched on its device. ``mean``,
                    ``sample``, ``log_prob`` on device tensors; ``act_fn`` / ``rollout_policy``
                    make it act in ``sim.rollout.rollout`` (``robot_rl.evaluate.evaluate``), so
                    the truth is measured on exactly this stochastic policy.
    RandomTarget    uniform actions in [−1, 1]^A: log π = −A·log 2 everywhere.
    ScriptedTarget  a task's scripted expert with noise σ. m(s_t) at a logged state needs the
                    simulator: the episode is replayed (env reset with the episode's ``env_seed``
                    — checked against its first stored state — then the stored ``sim_state`` of
                    every step set in order, so an expert's internal phase follows the episode).
                    Experts that draw random choices (``tasks/play``) are refused: their action
                    probability at a state is a mixture over choices the replay cannot see.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import mujoco
import numpy as np
import torch

import tasks as registry
from data_lake.batch import Observation
from robot_rl.checkpoint import load_policy
from robot_rl.policy import ActFn, LearnedPolicy
from sim.rollout import sim_state
from tasks.core import Policy, ScriptedPolicy, censored_gaussian_logp, uniform_logp

if TYPE_CHECKING:
    from robot_rl.algos import TrainedPolicy
    from robot_rl.ope.dataset import LoggedData

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def censored_gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """log P(actions) of ``clip(mean + std·N(0, I), −1, 1)``: (..., A) -> (...), summed over A.

    Interior components get the Gaussian log density; components at exactly ±1 the tail mass
    ``log Φ(∓(1 ∓ m)/std)`` (``torch.special.log_ndtr``, stable far in the tails). ``std``: a
    positive scalar or a tensor broadcasting against ``mean``. Differentiable in ``mean`` and ``std``.
    """
    std_t = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if not bool((std_t > 0).all()):
        raise ValueError("censored_gaussian_log_prob needs std > 0: a deterministic policy has no action density")
    a = actions.to(mean.dtype)
    z = (a - mean) / std_t
    interior = -0.5 * z.pow(2) - torch.log(std_t) - LOG_SQRT_2PI  # (..., A)
    upper = torch.special.log_ndtr((mean - 1.0) / std_t)  # P(a = +1) = Φ(−(1 − m)/σ)
    lower = torch.special.log_ndtr((-1.0 - mean) / std_t)  # P(a = −1) = Φ(−(1 + m)/σ)
    out = torch.where(a >= 1.0, upper, torch.where(a <= -1.0, lower, interior))
    return out.sum(-1)


def check_sigma(sigma: float) -> float:
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(
            f"the target policy's noise std sigma must be > 0 (got {sigma}): a deterministic policy has no "
            "action density, so importance sampling cannot evaluate it; use e.g. sigma=0.2"
        )
    return float(sigma)


def check_action_dim(what: str, policy_dim: int, data_dim: int) -> None:
    if policy_dim != data_dim:
        raise ValueError(
            f"{what} acts with {policy_dim}-dimensional actions but the logged data has {data_dim}-dimensional "
            "actions: evaluate it on episodes of its own robot"
        )


class Target(Protocol):
    """A target policy as the loader uses it."""

    name: str
    sigma: float | None  # the Gaussian noise std (None: not of the form m(s) + noise)
    action_dim: int | None  # None: any

    def score_logged(self, data: LoggedData) -> tuple[np.ndarray, np.ndarray | None]:
        """(log π(a_t | s_t) float64 (M,), m(s_t) float32 (M, A) or None) of the M logged transitions."""
        ...


# ---------------------------------------------------------------------------- a trained policy
class TargetPolicy:
    """A trained policy's deterministic action plus N(0, σ²) noise, clipped to [−1, 1].

    Args:
        trained: the acting networks (``robot_rl.checkpoint.load_policy``).
        sigma: the noise std σ > 0.
        task_vocab: the task names of the training data, in task-id order (the checkpoint's
            ``meta["tasks"]``); task-conditioned networks are told the index of the evaluated task.
        batch_size: rows per device call when scoring logged data.
    """

    def __init__(
        self, trained: TrainedPolicy, sigma: float, task_vocab: Sequence[str] = (), batch_size: int = 1024
    ) -> None:
        self.trained, self.sigma, self.task_vocab = trained, check_sigma(sigma), tuple(task_vocab)
        self.spec, self.device, self.batch_size = trained.spec, trained.device, batch_size
        self.action_dim: int | None = trained.spec.action_dim
        self.name = f"{trained.name}+N(0,{sigma:g}²)"
        if self.spec.num_tasks and len(self.task_vocab) != self.spec.num_tasks:
            raise ValueError(
                f"the networks are conditioned on {self.spec.num_tasks} tasks; task_vocab names {len(self.task_vocab)}"
            )

    @classmethod
    def load(cls, ckpt: str | os.PathLike[str], sigma: float, device: str | torch.device = "cpu") -> TargetPolicy:
        """The policy saved at ``ckpt`` (a policy, checkpoint or run directory; acting networks only)."""
        from robot_rl.checkpoint import resolve_checkpoint

        trained, meta = load_policy(resolve_checkpoint(ckpt), device)
        return cls(trained, sigma, meta.get("tasks", ()))

    def task_id(self, task: str) -> int | None:
        """The task id a task-conditioned network is told for ``task`` (None for other networks)."""
        if not self.spec.num_tasks:
            return None
        if task not in self.task_vocab:
            raise ValueError(f"the policy was trained on tasks {list(self.task_vocab)}; it cannot be told {task!r}")
        return self.task_vocab.index(task)

    # ------------------------------------------------------------ device tensors, batched
    @torch.no_grad()
    def mean(self, obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
        """m(s): the deterministic action (B, A). Goals and task ids reach the networks only when they
        are conditioned on them; a sampling policy (CEM) draws its candidates from a fixed seed."""
        goal = goals if self.spec.has_goal else None
        tids = task_ids if self.spec.num_tasks else None
        generator = torch.Generator(self.device).manual_seed(0)
        return self.trained.act(obs, goal, tids, deterministic=True, generator=generator).float()  # (B, A)

    @torch.no_grad()
    def sample(
        self,
        obs: Observation,
        goals: Observation | None,
        task_ids: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """a = clip(m(s) + σ·ε, −1, 1) (B, A)."""
        m = self.mean(obs, goals, task_ids)
        eps = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
        return (m + self.sigma * eps).clamp(-1.0, 1.0)  # (B, A)

    @torch.no_grad()
    def log_prob(
        self, obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None, actions: torch.Tensor
    ) -> torch.Tensor:
        """log π(a | s) (B,) of actions (B, A): the censored Gaussian around m(s)."""
        check_action_dim(f"policy {self.name}", int(self.action_dim or 0), int(actions.shape[-1]))
        m = self.mean(obs, goals, task_ids).double()
        return censored_gaussian_log_prob(actions.to(m.device).double(), m, self.sigma)  # (B,)

    def score_logged(self, data: LoggedData) -> tuple[np.ndarray, np.ndarray]:
        check_action_dim(f"policy {self.name}", int(self.action_dim or 0), data.action_dim)
        logp = np.empty(data.num_steps, np.float64)
        means = np.empty((data.num_steps, data.action_dim), np.float32)
        for rows, obs, goals, task_ids in data.device_batches(self.spec, self.task_id, self.device, self.batch_size):
            m = self.mean(obs, goals, task_ids)  # (B, A)
            actions = torch.from_numpy(data.actions[rows]).to(m.device).double()
            logp[rows] = censored_gaussian_log_prob(actions, m.double(), self.sigma).cpu().numpy()
            means[rows] = m.cpu().numpy()
        return logp, means

    # ------------------------------------------------------------ acting in the simulator (the truth)
    def act_fn(self, seed: int = 0) -> ActFn:
        """This stochastic policy as an ``ActFn`` with a generator of its own (``evaluate(target.act_fn(s),
        target.spec, cfg, target.task_vocab)`` measures its true success and return)."""
        generator = torch.Generator(self.device).manual_seed(seed)

        def act(obs: Observation, goal: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
            return self.sample(obs, goal, task_ids, generator)

        return act

    def rollout_policy(self, task: str, num_envs: int = 1, seed: int = 0) -> LearnedPolicy:
        """A ``sim.rollout.Policy`` acting with this stochastic policy in ``task``'s envs (any number:
        one batched call per step, one generator for all)."""
        return LearnedPolicy(self.act_fn(seed), self.spec, self.device, self.task_id(task))


# ---------------------------------------------------------------------------- uniform random
class RandomTarget:
    """Uniform random actions in [−1, 1]^A: log π(a | s) = −A·log 2 inside the box. A logged action with a
    component at exactly ±1 (a noisy expert's clipped component: a point mass of the censored Gaussian) has
    probability 0 under uniform actions, so its log π is −inf (its importance ratio is 0)."""

    sigma: float | None = None

    def __init__(self, action_dim: int) -> None:
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        self.action_dim: int | None = action_dim
        self.name = "random"

    def score_logged(self, data: LoggedData) -> tuple[np.ndarray, None]:
        check_action_dim("the uniform random policy", int(self.action_dim or 0), data.action_dim)
        logp = np.full(data.num_steps, uniform_logp(data.action_dim), np.float64)
        return np.where((np.abs(data.actions) >= 1.0).any(axis=1), -np.inf, logp), None

    def rollout_policy(self, task: str, num_envs: int = 1, seed: int = 0) -> ScriptedPolicy:
        """Uniform actions in ``num_envs`` envs (one RNG each), for the truth."""
        seq = np.random.SeedSequence(seed).spawn(num_envs)
        return ScriptedPolicy([Policy(None, 0.0, np.random.default_rng(s)) for s in seq])


# ---------------------------------------------------------------------------- a task's scripted expert
class ReplayError(ValueError):
    """A logged episode cannot be replayed in the simulator to query the scripted expert."""


class ScriptedTarget:
    """Task ``task``'s scripted expert with Gaussian noise σ, scored at logged states by replay.

    ``seed`` seeds the generator handed to the expert's ``reset`` (an expert that uses it is refused,
    see the module docstring).
    """

    def __init__(self, task: str, sigma: float, seed: int = 0) -> None:
        self.task = registry.get(task)
        self.sigma: float | None = check_sigma(sigma)
        self.seed = seed
        self._env = self.task.make_env(image_size=16)
        self._env.render_images = False
        self.action_dim: int | None = int(self._env.action_space.shape[0])
        self.name = f"{task} expert+N(0,{sigma:g}²)"

    def score_logged(self, data: LoggedData) -> tuple[np.ndarray, np.ndarray]:
        check_action_dim(f"{self.name}", int(self.action_dim or 0), data.action_dim)
        if "sim_state" not in data.steps:
            raise ReplayError(
                f"scoring {self.name} at logged states replays the episodes in the simulator, but the selected "
                "episodes store no 'sim_state' (only episodes recorded by robot-rl collect or finetune do)"
            )
        means = np.empty((data.num_steps, data.action_dim), np.float32)
        for i in range(data.num_episodes):
            rows = data.rows_of(i)
            means[rows] = self._replay(data, i, rows)
        sigma = float(self.sigma or 0.0)
        logp = censored_gaussian_logp(data.actions, means.astype(np.float64), sigma)
        return logp, means

    def _replay(self, data: LoggedData, i: int, rows: np.ndarray) -> np.ndarray:
        """The expert's actions m(s_t) (T_i, A) along episode ``i``, replayed from its stored states."""
        eid, env, task = data.episode_ids[i], self._env, self.task
        if data.episode_tasks[i] != task.name:
            raise ReplayError(f"episode {eid} is of task {data.episode_tasks[i]!r}; {self.name} replays {task.name!r}")
        env_seed = data.metadata[i].get("env_seed")
        if env_seed is None:
            raise ReplayError(f"episode {eid} has no 'env_seed' in its metadata: its reset cannot be replayed")
        states = data.steps["sim_state"][rows]  # (T_i, D)
        env.reset(seed=int(env_seed))
        first = sim_state(env)
        if first.shape != states[0].shape or not np.allclose(first, states[0], atol=1e-9):
            raise ReplayError(
                f"episode {eid}: resetting {task.name} with env_seed {env_seed} does not give the episode's first "
                "stored state (another world or code version?), so the expert cannot be replayed on it"
            )
        rng = np.random.default_rng(self.seed)
        before = rng.bit_generator.state
        expert = task.expert()
        expert.reset(env, rng)
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        out = np.empty((len(rows), env.action_space.shape[0]), np.float32)
        for t, state in enumerate(states):
            mujoco.mj_setState(env.model, env.data, state, spec)
            mujoco.mj_forward(env.model, env.data)
            env.elapsed_steps = t
            out[t] = np.asarray(expert(env), np.float64)
        if rng.bit_generator.state != before:
            raise ReplayError(
                f"{task.name}'s expert draws random choices (e.g. play's targets): its action probability at a "
                "logged state is a mixture over choices a replay cannot see; evaluate a stateless expert, a "
                "trained policy or the random policy instead"
            )
        return out

    def rollout_policy(self, task: str, num_envs: int = 1, seed: int = 0) -> ScriptedPolicy:
        """The same stochastic expert acting in ``num_envs`` envs of ``task`` (one RNG each), for the truth."""
        if task != self.task.name:
            raise ValueError(f"{self.name} acts in {self.task.name!r}, not {task!r}")
        seq = np.random.SeedSequence(seed).spawn(num_envs)
        return ScriptedPolicy(
            [self.task.scripted_policy(float(self.sigma or 0.0), np.random.default_rng(s)) for s in seq]
        )


__all__ = [
    "RandomTarget",
    "ReplayError",
    "ScriptedTarget",
    "Target",
    "TargetPolicy",
    "censored_gaussian_log_prob",
]
