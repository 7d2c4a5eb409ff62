"""Task, the scripted/random policies that act in a task, and the task registry (a plain dict).

A :class:`Task` names one thing to do in one world. It builds the env, documents its reset
distribution, its ``achieved_goal`` vector, its success rule and what its goal image shows, and
provides a scripted expert. Success is decided from simulator state by the task's detector; the
env's ``info["is_success"]`` reports the same rule (tabletop) or the wrapped env's own verdict
(gymnasium-robotics, whose detectors are checked against it in the tests).

Policies: ``task.scripted_policy(noise, rng)`` is the expert plus Gaussian action noise of
standard deviation ``noise`` (0 = expert, 0.3 = "noisy"), clipped to [-1, 1];
``task.random_policy(rng)`` draws uniform actions. :data:`NOISE_LEVELS` names the usual levels and
:func:`make_policy` builds a policy by level name. Scripted policies read the simulator, so
``act`` takes the env, not an observation. :class:`ScriptedPolicy` puts one per env behind the
rollout loop's :class:`sim.rollout.Policy` (``act(observations, envs) -> (B, A)``).

Action probabilities (off-policy evaluation needs μ(a_t | s_t) of every logged action): a noisy
expert's action is a censored Gaussian per component — the Gaussian density
N(a; m, σ²) inside (-1, 1) and a point mass at each bound, P(a = 1) = Φ(-(1 - m)/σ) and
P(a = -1) = Φ(-(1 + m)/σ), which is where clipping puts the tails. :func:`censored_gaussian_logp`
computes it (summed over action components); uniform random actions have log μ = -A·log 2; the
noiseless expert is deterministic and has no density. Each :class:`Policy` records the log
probability of every action it returns in the current episode (``Policy.logps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sim.base import Observation, RobotEnv

NOISE_LEVELS: dict[str, float | None] = {"expert": 0.0, "noisy": 0.3, "random": None}
"""Policy level -> Gaussian noise std on the expert's action; None = uniform random actions."""


class Expert(Protocol):
    """A scripted controller: reads the simulator, returns an action in [-1, 1]."""

    def reset(self, env: RobotEnv, rng: np.random.Generator) -> None: ...

    def __call__(self, env: RobotEnv) -> np.ndarray: ...


class StatelessExpert:
    """Adapts a pure function ``env -> action`` (most experts) to :class:`Expert`."""

    def __init__(self, fn: Callable[[RobotEnv], np.ndarray]) -> None:
        self.fn = fn

    def reset(self, env: RobotEnv, rng: np.random.Generator) -> None:
        pass

    def __call__(self, env: RobotEnv) -> np.ndarray:
        return self.fn(env)


_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _log_ndtr(x: float) -> float:
    """log Φ(x), the log standard normal CDF, accurate in both tails (float64)."""
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    # Mills ratio series: Φ(x) = φ(x)/|x| · (1 - 1/x² + 3/x⁴ - 15/x⁶ + 105/x⁸ - ...) for x -> -inf
    u = 1.0 / (x * x)
    return -0.5 * x * x - math.log(-x) - _LOG_SQRT_2PI + math.log1p(-u * (1 - 3 * u * (1 - 5 * u * (1 - 7 * u))))


_log_ndtr_array = np.vectorize(_log_ndtr, otypes=[np.float64])


def censored_gaussian_logp(action: np.ndarray, mean: np.ndarray, std: float | np.ndarray) -> np.ndarray:
    """log P(action) of ``clip(mean + std·N(0, I), -1, 1)``, summed over the last (action) axis.

    Per component: a value inside (-1, 1) has the Gaussian log density ``log N(a; m, std²)``; a value
    at exactly +1 (-1) carries the tail mass clipping puts there, ``log Φ(-(1 - m)/std)``
    (``log Φ(-(1 + m)/std)``). ``action`` and ``mean`` broadcast against each other (``(..., A)``);
    ``std`` is a scalar or broadcasts too. Returns float64 ``(...)``.

    Raises ValueError for ``std <= 0`` (a deterministic policy has no density: importance weights
    need a stochastic policy, e.g. the expert with noise > 0) and for actions outside [-1, 1]
    (clipping never produces them).
    """
    a = np.asarray(action, dtype=np.float64)
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    if not (s > 0).all() or not np.isfinite(s).all():
        raise ValueError(
            f"censored_gaussian_logp needs std > 0 (got {s.min() if s.size else s}): a deterministic policy "
            "(noise 0) has no action density; evaluate a stochastic one (noise > 0)"
        )
    if not (np.isfinite(a).all() and np.isfinite(m).all()):
        raise ValueError("censored_gaussian_logp: action and mean must be finite")
    if (np.abs(a) > 1.0).any():
        bad = a[np.abs(a) > 1.0].ravel()[0]
        raise ValueError(f"action component {bad} lies outside [-1, 1]: a clipped policy cannot have taken it")
    a, m, s = np.broadcast_arrays(a, m, s)
    z = (a - m) / s
    out = -0.5 * z * z - np.log(s) - _LOG_SQRT_2PI  # interior: Gaussian log density
    upper, lower = a >= 1.0, a <= -1.0
    if upper.any():
        out[upper] = _log_ndtr_array((m[upper] - 1.0) / s[upper])  # P(a = +1) = Φ(-(1 - m)/σ)
    if lower.any():
        out[lower] = _log_ndtr_array((-1.0 - m[lower]) / s[lower])  # P(a = -1) = Φ(-(1 + m)/σ)
    return out.sum(axis=-1)


def uniform_logp(action_dim: int) -> float:
    """log density of a uniform action in [-1, 1]^A: ``-A·log 2``."""
    return -action_dim * math.log(2.0)


class Policy:
    """Acts in a task's env: ``action = clip(expert(env) + noise * N(0, I))``, or uniform.

    The expert is reset automatically at the first ``act`` of every episode. ``logps`` holds the log
    probability of each action returned in the current episode (:func:`censored_gaussian_logp` of a
    noisy expert's action, ``-A·log 2`` for a uniform one); it stays empty for the noiseless expert,
    whose actions have no density (``stochastic`` is False).

    Args:
        expert: the scripted controller, or None for uniform random actions.
        noise: standard deviation of the Gaussian action noise (ignored when random).
        rng: source of noise (and of the expert's own random choices, e.g. play).
    """

    def __init__(self, expert: Expert | None, noise: float, rng: np.random.Generator) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.expert, self.noise, self.rng = expert, noise, rng
        self._episode: tuple[int, int] | None = None
        self.logps: list[float] = []  # log μ(a_t | s_t) of this episode's actions (stochastic policies)

    @property
    def stochastic(self) -> bool:
        """Whether the actions have a density (uniform random, or an expert with noise > 0)."""
        return self.expert is None or self.noise > 0

    def act(self, env: RobotEnv) -> np.ndarray:
        """The action for the env's current state, float32 in [-1, 1]."""
        if not isinstance(env, RobotEnv):
            raise TypeError(
                "scripted policies read the simulator state: pass the env, not "
                f"{type(env).__name__} (an observation cannot drive the expert)"
            )
        shape = env.action_space.shape
        episode = (id(env), env.episode_id)
        new_episode = episode != self._episode
        if new_episode:
            self._episode = episode
            self.logps = []
        if self.expert is None:
            uniform = self.rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
            self.logps.append(uniform_logp(shape[0]))
            return uniform
        if new_episode:
            self.expert.reset(env, self.rng)
        mean = np.asarray(self.expert(env), dtype=np.float64)
        if mean.shape != shape:
            raise ValueError(f"expert returned shape {mean.shape}, env expects {shape}")
        action = mean
        if self.noise > 0:
            action = mean + self.noise * self.rng.standard_normal(shape)
        out = np.clip(action, -1.0, 1.0).astype(np.float32)
        if self.noise > 0:  # the probability of the action actually returned (float32, clipped)
            self.logps.append(float(censored_gaussian_logp(out, mean, self.noise)))
        return out


class ScriptedPolicy:
    """Scripted policies, one per env (each with its expert's state and its RNG), as one
    :class:`sim.rollout.Policy`: env ``j`` of a rollout is acted by ``policies[j]``.

    Each :class:`Policy` resets its expert itself when its env starts a new episode.
    """

    def __init__(self, policies: Sequence[Policy]) -> None:
        if not policies:
            raise ValueError("ScriptedPolicy needs one scripted policy per env, got none")
        self.policies = list(policies)

    def reset(self, envs: Sequence[RobotEnv]) -> None:
        if len(envs) != len(self.policies):
            raise ValueError(f"{len(self.policies)} scripted policies cannot act in {len(envs)} envs")

    def act(self, observations: Sequence[Observation], envs: Sequence[RobotEnv]) -> np.ndarray:
        return np.stack([p.act(env) for p, env in zip(self.policies, envs, strict=True)])  # (B, A)


class EnvFactory(Protocol):
    def __call__(
        self, image_size: int, cameras: Sequence[str] | None, seed: int | None, max_steps: int
    ) -> RobotEnv: ...


@dataclass(frozen=True)
class Task:
    """One named task. Build it with :func:`register`, fetch it with ``tasks.get(name)``.

    Attributes:
        name: registry key, ``"<world>/<task>"``.
        description: one line.
        max_episode_steps: episode length (env truncation).
        reset_distribution: what ``reset`` randomizes.
        achieved_goal: definition of the ``achieved_goal`` / ``desired_goal`` vectors.
        success: the success rule, thresholds included.
        goal_image: what the goal image shows (which bodies are moved to the goal).
        cameras: camera names the world offers; the first is the default.
        build_env: ``(image_size, cameras, seed, max_steps) -> env``.
        detector: success detector on simulator state.
        expert: factory of the scripted expert.
    """

    name: str
    description: str
    max_episode_steps: int
    reset_distribution: str
    achieved_goal: str
    success: str
    goal_image: str
    cameras: tuple[str, ...]
    build_env: EnvFactory
    detector: Callable[[RobotEnv], bool]
    expert: Callable[[], Expert]

    def __post_init__(self) -> None:
        if "/" not in self.name:
            raise ValueError(f"task names are '<world>/<task>', got {self.name!r}")
        if self.max_episode_steps <= 0:
            raise ValueError(f"{self.name}: max_episode_steps must be > 0")

    def make_env(self, image_size: int = 64, cameras: Sequence[str] | None = None, seed: int | None = None) -> RobotEnv:
        """Build the env; ``cameras`` defaults to the first of :attr:`cameras`."""
        cams = (self.cameras[0],) if cameras is None else tuple(cameras)
        return self.build_env(image_size, cams, seed, self.max_episode_steps)

    def is_success(self, env: RobotEnv) -> bool:
        """Success detector on simulator state (not pixels)."""
        return bool(self.detector(env))

    def reward(self, env: RobotEnv) -> float:
        """Sparse reward: 1.0 on success, else 0.0."""
        return 1.0 if self.is_success(env) else 0.0

    def goal_images(self, env: RobotEnv) -> dict[str, np.ndarray]:
        """The commanded goal as images from every env camera (state restored bit-exactly)."""
        return env.render_goal()

    def goal_state(self, env: RobotEnv) -> np.ndarray:
        """The commanded goal as a vector (``desired_goal``, float32)."""
        return env.desired_goal().astype(np.float32)

    def scripted_policy(self, noise: float, rng: np.random.Generator) -> Policy:
        """The scripted expert with Gaussian action noise of std ``noise`` (0 = expert)."""
        return Policy(self.expert(), noise, rng)

    def random_policy(self, rng: np.random.Generator) -> Policy:
        """Uniform random actions in [-1, 1]."""
        return Policy(None, 0.0, rng)


def make_policy(task: Task, level: str, rng: np.random.Generator) -> Policy:
    """A policy by level name: one of :data:`NOISE_LEVELS` (``expert``, ``noisy``, ``random``)."""
    if level not in NOISE_LEVELS:
        raise ValueError(f"unknown policy level {level!r}; known: {list(NOISE_LEVELS)}")
    noise = NOISE_LEVELS[level]
    return task.random_policy(rng) if noise is None else task.scripted_policy(noise, rng)


REGISTRY: dict[str, Task] = {}
"""Every task by name. Filled by the world modules when ``tasks`` is imported."""


def register(task: Task) -> Task:
    if task.name in REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    REGISTRY[task.name] = task
    return task


def names() -> list[str]:
    """All registered task names, sorted."""
    return sorted(REGISTRY)


def get(name: str) -> Task:
    """The task called ``name``; a KeyError lists the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(names())}") from None
