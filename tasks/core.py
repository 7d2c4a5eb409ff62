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
"""

from __future__ import annotations

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


class Policy:
    """Acts in a task's env: ``action = clip(expert(env) + noise * N(0, I))``, or uniform.

    The expert is reset automatically at the first ``act`` of every episode.

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

    def act(self, env: RobotEnv) -> np.ndarray:
        """The action for the env's current state, float32 in [-1, 1]."""
        if not isinstance(env, RobotEnv):
            raise TypeError(
                "scripted policies read the simulator state: pass the env, not "
                f"{type(env).__name__} (an observation cannot drive the expert)"
            )
        shape = env.action_space.shape
        if self.expert is None:
            return self.rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        episode = (id(env), env.episode_id)
        if episode != self._episode:
            self._episode = episode
            self.expert.reset(env, self.rng)
        action = np.asarray(self.expert(env), dtype=np.float64)
        if action.shape != shape:
            raise ValueError(f"expert returned shape {action.shape}, env expects {shape}")
        if self.noise > 0:
            action = action + self.noise * self.rng.standard_normal(shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


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
