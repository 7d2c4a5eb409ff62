"""A small tabular MDP toolkit for off-policy evaluation tests: exact values by backward recursion and
trajectories sampled under a behavior policy as :class:`robot_rl.ope.Trajectories`.

The MDP is finite-horizon with termination: from a start state s_0 ~ d0, at step t = 0 … H − 1 the
agent takes a ~ policy(·|s), receives r(s, a) (deterministic), the episode ends with probability
term(s, a), otherwise moves to s' ~ P(·|s, a); it is cut after H steps. Values are time-dependent:

    Q_t(s, a) = r(s, a) + γ (1 − term(s, a)) Σ_s' P(s'|s, a) V_{t+1}(s'),    V_t(s) = Σ_a π(a|s) Q_t(s, a),
    V_H = 0,    V(π) = Σ_s d0(s) V_0(s).

Use::

    mdp = random_mdp(seed=0)
    mu, pi = random_policy(mdp, seed=1), random_policy(mdp, seed=2)
    data = sample(mdp, mu, pi, n=1000, seed=3)        # data.traj: Trajectories with the exact Q^π, V^π
    exact_value(mdp, pi)                               # the truth
"""

from __future__ import annotations

import dataclasses

import numpy as np

from robot_rl.ope.data import Trajectories


@dataclasses.dataclass(frozen=True)
class TabularMDP:
    transitions: np.ndarray  # (S, A, S) P(s' | s, a)
    rewards: np.ndarray  # (S, A) r(s, a)
    terminate: np.ndarray  # (S, A) probability that the episode ends after (s, a)
    start: np.ndarray  # (S,) d0
    horizon: int  # H: at most H steps
    gamma: float

    @property
    def n_states(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.rewards.shape[1])


@dataclasses.dataclass(frozen=True)
class TabularSample:
    traj: Trajectories  # q_hat / v_hat: the model passed to sample (the exact Q^π, V^π by default)
    states: np.ndarray  # (N, H) int s_t, -1 past the end
    actions: np.ndarray  # (N, H) int a_t, -1 past the end
    next_states: np.ndarray  # (N, H) int s_{t+1} (drawn even when the episode ends there), -1 past the end
    terminated: np.ndarray  # (N, H) bool: the episode ended by termination after step t (not the time limit)


def random_mdp(
    seed: int,
    n_states: int = 5,
    n_actions: int = 3,
    horizon: int = 8,
    gamma: float = 0.9,
    deterministic: bool = False,
) -> TabularMDP:
    """A random MDP. Rewards in [0, 1]; termination probabilities in [0, 0.4] that depend on (s, a), so
    the episode length depends on the policy. ``deterministic``: one-hot transitions, termination in
    {0, 1} (about 1 pair in 6 ends the episode), one start state — every return then follows from the
    actions alone."""
    rng = np.random.default_rng(seed)
    S, A = n_states, n_actions
    rewards = rng.uniform(0.0, 1.0, size=(S, A))
    if deterministic:
        transitions = np.eye(S)[rng.integers(0, S, size=(S, A))]  # (S, A, S) one-hot
        terminate = (rng.uniform(size=(S, A)) < 1 / 6).astype(np.float64)
        start = np.eye(S)[0]
    else:
        transitions = rng.dirichlet(np.ones(S), size=(S, A))  # (S, A, S)
        terminate = rng.uniform(0.0, 0.4, size=(S, A))
        start = rng.dirichlet(np.ones(S))
    return TabularMDP(transitions, rewards, terminate, start, horizon, gamma)


def random_policy(mdp: TabularMDP, seed: int, temperature: float = 1.0) -> np.ndarray:
    """(S, A) softmax of standard normal logits / temperature: stochastic with full support."""
    logits = np.random.default_rng(seed).standard_normal((mdp.n_states, mdp.n_actions)) / temperature
    return softmax(logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def q_values(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """(H, S, A) Q^π_t by backward recursion."""
    H, S, A = mdp.horizon, mdp.n_states, mdp.n_actions
    q = np.zeros((H, S, A))
    v_next = np.zeros(S)
    for t in reversed(range(H)):
        q[t] = mdp.rewards + mdp.gamma * (1.0 - mdp.terminate) * (mdp.transitions @ v_next)
        v_next = (policy * q[t]).sum(axis=1)
    return q


def v_values(q: np.ndarray, policy: np.ndarray) -> np.ndarray:
    """(H, S) V_t(s) = Σ_a π(a|s) Q_t(s, a) of a (H, S, A) Q."""
    return (q * policy[None]).sum(axis=2)


def exact_value(mdp: TabularMDP, policy: np.ndarray) -> float:
    """V(π) = Σ_s d0(s) V^π_0(s)."""
    return float(mdp.start @ v_values(q_values(mdp, policy), policy)[0])


def perturbed_q(q: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """A wrong model: Q + scale·(1 + u), u ~ U(−0.5, 0.5) fixed per (t, s, a): systematically too high
    by about ``scale``, not noise that averages out."""
    rng = np.random.default_rng(seed)
    return q + scale * (1.0 + rng.uniform(-0.5, 0.5, size=q.shape))


def _draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of (N, K) probabilities, by the inverse CDF."""
    u = rng.uniform(size=(probs.shape[0], 1))
    return np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)


def sample(
    mdp: TabularMDP,
    behavior: np.ndarray,
    target: np.ndarray,
    n: int,
    seed: int,
    q_model: np.ndarray | None = None,
    behavior_source: str = "logged",
) -> TabularSample:
    """``n`` trajectories under ``behavior``, as Trajectories with log μ and log π of the logged actions
    and ``q_hat``/``v_hat`` from ``q_model`` ((H, S, A); the exact Q^π of ``target`` by default;
    v_hat = Σ_a π Q_model, so the model is self-consistent as DR assumes)."""
    rng = np.random.default_rng(seed)
    H = mdp.horizon
    q = q_values(mdp, target) if q_model is None else q_model
    v = v_values(q, target)
    states, actions, next_states = (np.full((n, H), -1) for _ in range(3))
    terminated = np.zeros((n, H), dtype=bool)
    mask = np.zeros((n, H), dtype=bool)
    s = _draw(np.broadcast_to(mdp.start, (n, mdp.n_states)), rng)
    alive = np.ones(n, dtype=bool)
    for t in range(H):
        a = _draw(behavior[s], rng)
        ends = rng.uniform(size=n) < mdp.terminate[s, a]
        s_next = _draw(mdp.transitions[s, a], rng)
        mask[:, t] = alive
        states[alive, t], actions[alive, t], next_states[alive, t] = s[alive], a[alive], s_next[alive]
        terminated[:, t] = alive & ends
        alive = alive & ~ends
        s = s_next
    st, at = np.maximum(states, 0), np.maximum(actions, 0)
    steps = np.broadcast_to(np.arange(H), (n, H))
    traj = Trajectories(
        rewards=np.where(mask, mdp.rewards[st, at], 0.0),
        mask=mask,
        behavior_logp=np.where(mask, np.log(behavior[st, at]), 0.0),
        target_logp=np.where(mask, np.log(target[st, at]), 0.0),
        gamma=mdp.gamma,
        q_hat=np.where(mask, q[steps, st, at], 0.0),
        v_hat=np.where(mask, v[steps, st], 0.0),
        behavior_source=behavior_source,
    )
    return TabularSample(traj, states, actions, next_states, terminated)
