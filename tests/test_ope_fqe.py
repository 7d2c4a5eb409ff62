"""Fitted Q evaluation: known answers (a one-step bandit, a 2-step chain with and without terminals),
one encoder pass per observation per update, save/load, determinism, and a real sampler on a
small collected tabletop lake (images, goals, task ids)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from data_lake import Lake
from data_lake.batch import Batch, Observation
from data_lake.sampler import RelabelConfig, Sampler
from robot_rl.algos.base import TrainedPolicy
from robot_rl.algos.bc import BC, BCConfig
from robot_rl.config import ObsConfig
from robot_rl.nets import EncoderConfig, ObservationSpec
from robot_rl.ope.fqe import (
    FQE,
    FQEConfig,
    FQEModel,
    deterministic_actions,
    fit_fqe,
    fqe_sampler_config,
)
from robot_rl.pretrain import TaskConfig
from tasks.collect import CollectConfig, collect

torch.set_num_threads(1)

TINY_ENCODER = EncoderConfig(feature_dim=8, conv_channels=4, conv_layers=2, task_embedding_dim=4)


def state_obs(x: np.ndarray) -> Observation:
    return Observation({}, torch.as_tensor(x, dtype=torch.float32))


def make_batch(
    s: np.ndarray, a: np.ndarray, r: np.ndarray, d: np.ndarray, s2: np.ndarray, goals: Observation | None = None
) -> Batch:
    B = len(a)
    return Batch(
        observations=state_obs(s),
        actions=torch.as_tensor(a, dtype=torch.float32),
        rewards=torch.as_tensor(r, dtype=torch.float32),
        terminals=torch.as_tensor(d, dtype=torch.float32),
        next_observations=state_obs(s2),
        goals=goals,
        task_ids=torch.zeros(B, dtype=torch.int64),
        mc_returns=torch.zeros(B),
        goal_source=torch.zeros(B, dtype=torch.int64),
    )


def one_hot(idx: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[idx]


def state_pi(means: list[float]):  # type: ignore[no-untyped-def]
    """pi for one-hot states: the deterministic action of state i is means[i] (action dim 1)."""
    table = torch.tensor(means, dtype=torch.float32)

    def pi(obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
        assert obs.state is not None
        return (obs.state @ table).unsqueeze(1)  # (B, 1)

    return pi


def expected_sq(mean: float, sigma: float, target: float, n: int = 2_000_000) -> float:
    """E[(clip(mean + σ·ε, −1, 1) − target)²] by Monte Carlo (includes the clipping)."""
    a = np.clip(mean + sigma * np.random.default_rng(0).standard_normal(n), -1, 1)
    return float(np.mean((a - target) ** 2))


# ---------------------------------------------------------------------------- (1) one-step bandit
def test_one_step_bandit_q_and_v_match_closed_form() -> None:
    """r = −(a − a*_s)², every step terminal: Q(s, a) = r(s, a), V(s) = −E_π[(a − a*_s)²]."""
    a_star, means, sigma = np.array([0.5, -0.3]), [0.2, 0.1], 0.1
    rng = np.random.default_rng(0)

    def batches() -> Iterator[Batch]:
        while True:
            i = rng.integers(0, 2, 128)
            a = rng.uniform(-1, 1, (128, 1))
            r = -((a[:, 0] - a_star[i]) ** 2)
            yield make_batch(one_hot(i, 2), a, r, np.ones(128), one_hot(1 - i, 2))

    cfg = FQEConfig(hidden=(64, 64), lr=3e-3, gamma=0.9, steps=600, n_action_samples=4, batch_size=128, tau=0.05)
    spec = ObservationSpec(action_dim=1, state_dim=2)
    model = fit_fqe(batches(), spec, state_pi(means), sigma, cfg)
    grid = torch.linspace(-0.9, 0.9, 7).unsqueeze(1)  # (7, 1)
    for s in range(2):
        obs = state_obs(one_hot(np.full(7, s), 2))
        q = model.q(obs, None, None, grid)
        np.testing.assert_allclose(q.numpy(), -((grid[:, 0].numpy() - a_star[s]) ** 2), atol=0.04)
        v = model.v(state_obs(one_hot(np.array([s]), 2)), None, None, n_samples=4000)
        assert v.item() == pytest.approx(-expected_sq(means[s], sigma, a_star[s]), abs=0.03)
    assert model.history[-1]["fqe/td_loss"] < model.history[0]["fqe/td_loss"]


# ---------------------------------------------------------------------------- (2), (3) bootstrapping and terminals
CHAIN_R0, CHAIN_TARGET, CHAIN_SIGMA, CHAIN_GAMMA = 0.5, 0.2, 0.3, 0.9


def chain_batches(seed: int, first_terminal: bool) -> Iterator[Batch]:
    """s0 --(r0 = 0.5)--> s1 --(r1 = 1 − (a − 0.2)², terminal)--> s2; s0's step terminal if asked."""
    rng = np.random.default_rng(seed)
    while True:
        i = rng.integers(0, 2, 128)  # 0: s0, 1: s1
        a = rng.uniform(-1, 1, (128, 1))
        r = np.where(i == 0, CHAIN_R0, 1.0 - (a[:, 0] - CHAIN_TARGET) ** 2)
        d = np.where(i == 0, float(first_terminal), 1.0)
        yield make_batch(one_hot(i, 3), a, r, d, one_hot(i + 1, 3))


def chain_values(model: FQEModel) -> tuple[np.ndarray, float, float]:
    grid = torch.linspace(-0.9, 0.9, 5).unsqueeze(1)
    q0 = model.q(state_obs(one_hot(np.zeros(5, int), 3)), None, None, grid).numpy()
    v0 = model.v(state_obs(one_hot(np.array([0]), 3)), None, None, n_samples=4000).item()
    v1 = model.v(state_obs(one_hot(np.array([1]), 3)), None, None, n_samples=4000).item()
    return q0, v0, v1


CHAIN_CFG = FQEConfig(
    hidden=(64, 64), lr=3e-3, gamma=CHAIN_GAMMA, steps=900, n_action_samples=8, batch_size=128, tau=0.05
)


def test_two_step_chain_bootstraps_through_the_stochastic_policy() -> None:
    """Q(s0, ·) = r0 + γ·V(s1), V(s1) = 1 − E_π[(a − 0.2)²] with π = clip(0 + 0.3·ε): it needs the
    bootstrap (not r0), the discount (not r0 + V(s1)) and π's noise (not the deterministic action's value)."""
    v1_true = 1.0 - expected_sq(0.0, CHAIN_SIGMA, CHAIN_TARGET)  # ≈ 0.87
    q0_true = CHAIN_R0 + CHAIN_GAMMA * v1_true  # ≈ 1.283
    model = fit_fqe(
        chain_batches(0, False), ObservationSpec(1, state_dim=3), state_pi([0, 0, 0]), CHAIN_SIGMA, CHAIN_CFG
    )
    q0, v0, v1 = chain_values(model)
    assert v1 == pytest.approx(v1_true, abs=0.03)
    np.testing.assert_allclose(q0, q0_true, atol=0.035)  # the same for every action at s0
    assert v0 == pytest.approx(q0_true, abs=0.03)
    wrong = {"deterministic π": CHAIN_R0 + CHAIN_GAMMA * (1 - 0.2**2), "γ = 1": CHAIN_R0 + v1_true, "no bootstrap": 0.5}
    for what, value in wrong.items():
        assert abs(v0 - value) > 0.045, f"V(s0) = {v0:.3f} is as close to the {what} answer {value:.3f}"


def test_terminals_stop_bootstrapping() -> None:
    """The same chain with s0's step terminal: Q(s0, ·) = r0, while s1 keeps its value (hard target copies)."""
    cfg = FQEConfig(**{**CHAIN_CFG.__dict__, "target_every": 25})
    model = fit_fqe(chain_batches(1, True), ObservationSpec(1, state_dim=3), state_pi([0, 0, 0]), CHAIN_SIGMA, cfg)
    q0, v0, v1 = chain_values(model)
    np.testing.assert_allclose(q0, CHAIN_R0, atol=0.03)
    assert v0 == pytest.approx(CHAIN_R0, abs=0.03)
    assert v1 == pytest.approx(1.0 - expected_sq(0.0, CHAIN_SIGMA, CHAIN_TARGET), abs=0.03)


# ---------------------------------------------------------------------------- (4) encode once
IMAGE_SPEC = ObservationSpec(action_dim=2, cameras=("front",), image_sizes=((16, 16),), state_dim=3)


def image_batches(seed: int, spec: ObservationSpec = IMAGE_SPEC, B: int = 8) -> Iterator[Batch]:
    g = torch.Generator().manual_seed(seed)

    def obs() -> Observation:
        return Observation({"front": torch.rand(B, 3, 16, 16, generator=g)}, torch.randn(B, 3, generator=g))

    while True:
        goals = Observation({}, torch.randn(B, spec.goal_state_dim, generator=g)) if spec.has_goal else None
        yield Batch(
            observations=obs(),
            actions=torch.rand(B, 2, generator=g) * 2 - 1,
            rewards=torch.rand(B, generator=g),
            terminals=(torch.rand(B, generator=g) < 0.2).float(),
            next_observations=obs(),
            goals=goals,
            task_ids=torch.randint(0, max(spec.num_tasks, 1), (B,), generator=g),
            mc_returns=torch.zeros(B),
            goal_source=torch.zeros(B, dtype=torch.int64),
        )


def linear_pi(obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
    assert obs.state is not None
    return torch.tanh(obs.state[:, :2])  # (B, 2)


@pytest.mark.parametrize("n_action_samples", [1, 16])
def test_each_update_encodes_s_and_s_prime_once(n_action_samples: int) -> None:
    cfg = FQEConfig(encoder=TINY_ENCODER, hidden=(16,), steps=3, n_action_samples=n_action_samples, batch_size=8)
    pi_calls = []

    def pi(obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor:
        pi_calls.append(obs.batch_size)
        return linear_pi(obs, goals, task_ids)

    learner = FQE(cfg, IMAGE_SPEC, pi, 0.2, torch.device("cpu"))
    calls = {"trunk": 0, "state": 0}
    learner.nets.encoder.trunks["shared"].register_forward_hook(
        lambda *_: calls.__setitem__("trunk", calls["trunk"] + 1)
    )
    learner.nets.encoder.state_norm.register_forward_hook(lambda *_: calls.__setitem__("state", calls["state"] + 1))
    batches = image_batches(0)
    for k in range(1, 4):
        learner.update(next(batches))
        assert calls == {"trunk": 2 * k, "state": 2 * k}  # s and s', whatever the number of action samples
        assert pi_calls == [8] * k  # pi once per update, on s'


# ---------------------------------------------------------------------------- (5) save / load, determinism
GOAL_TASK_SPEC = ObservationSpec(
    action_dim=2, cameras=("front",), image_sizes=((16, 16),), state_dim=3, has_goal=True, goal_state_dim=2, num_tasks=2
)


def test_save_load_round_trip_and_same_seed_same_model(tmp_path: Path) -> None:
    cfg = FQEConfig(encoder=TINY_ENCODER, hidden=(16, 16), steps=6, n_action_samples=3, batch_size=8, log_every=2)
    model = fit_fqe(image_batches(1, GOAL_TASK_SPEC), GOAL_TASK_SPEC, linear_pi, 0.3, cfg)
    assert [h["step"] for h in model.history] == [2, 4, 6]
    again = fit_fqe(image_batches(1, GOAL_TASK_SPEC), GOAL_TASK_SPEC, linear_pi, 0.3, cfg)
    for k, v in model.nets.state_dict().items():
        assert torch.equal(v, again.nets.state_dict()[k]), k
    other = fit_fqe(
        image_batches(1, GOAL_TASK_SPEC), GOAL_TASK_SPEC, linear_pi, 0.3, FQEConfig(**{**cfg.__dict__, "seed": 1})
    )
    assert not torch.equal(model.nets.critic.out.weight, other.nets.critic.out.weight)

    model.save(tmp_path / "fqe")
    loaded = FQEModel.load(tmp_path / "fqe", pi=linear_pi)
    assert (loaded.cfg, loaded.spec, loaded.sigma, loaded.step) == (cfg, GOAL_TASK_SPEC, 0.3, 6)
    assert loaded.history == model.history
    b = next(image_batches(2, GOAL_TASK_SPEC))
    q, v = model.q_and_v(b.observations, b.goals, b.task_ids, b.actions)
    q2, v2 = loaded.q_and_v(b.observations, b.goals, b.task_ids, b.actions)
    assert q is not None and q2 is not None
    assert torch.equal(q, q2) and torch.equal(v, v2) and torch.isfinite(q).all() and torch.isfinite(v).all()
    assert torch.equal(q, loaded.q(b.observations, b.goals, b.task_ids, b.actions))
    assert torch.equal(v, loaded.v(b.observations, b.goals, b.task_ids))  # seeded: the same draws each call
    with pytest.raises(ValueError, match="needs the target policy"):
        FQEModel.load(tmp_path / "fqe").v(b.observations, b.goals, b.task_ids)


def test_config_and_input_errors_are_loud() -> None:
    with pytest.raises(ValueError, match="n_action_samples must be >= 1"):
        FQEConfig(n_action_samples=0)
    with pytest.raises(ValueError, match="target_every must be >= 0"):
        FQEConfig(target_every=-1)
    with pytest.raises(ValueError, match="gamma must be in"):
        FQEConfig(gamma=0.0)
    cfg = FQEConfig(encoder=TINY_ENCODER, hidden=(8,), steps=2, batch_size=4)
    with pytest.raises(ValueError, match="sigma"):
        fit_fqe(image_batches(0), IMAGE_SPEC, linear_pi, -0.1, cfg)
    with pytest.raises(ValueError, match="batch has 8 rows but FQEConfig.batch_size is 4"):
        fit_fqe(image_batches(0), IMAGE_SPEC, linear_pi, 0.1, cfg)
    with pytest.raises(ValueError, match=r"pi must return actions of shape \(B, A\) = \(8, 2\), got \(8, 3\)"):
        fit_fqe(
            image_batches(0),
            IMAGE_SPEC,
            lambda o, g, k: torch.zeros(8, 3),
            0.1,
            FQEConfig(**{**cfg.__dict__, "batch_size": 8}),
        )
    with pytest.raises(ValueError, match="ran out after 1 of 2"):
        fit_fqe(
            iter([next(image_batches(0))]), IMAGE_SPEC, linear_pi, 0.1, FQEConfig(**{**cfg.__dict__, "batch_size": 8})
        )


# ---------------------------------------------------------------------------- (6) a real sampler on a collected lake
@pytest.fixture(scope="module")
def tabletop_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("fqe") / "lake")
    collect(
        CollectConfig(
            task="tabletop/reach_red",
            episodes=3,
            lake=uri,
            policy="noisy",
            image_size=32,
            cameras=("front",),
            max_steps=15,
            progress=False,
        )
    )
    return uri


@pytest.mark.parametrize("conditioning", ["goal", "task"])
def test_real_sampler_with_images_goals_and_tasks(tabletop_lake: str, conditioning: str) -> None:
    cfg = FQEConfig(encoder=TINY_ENCODER, hidden=(16, 16), steps=4, n_action_samples=4, batch_size=16, log_every=2)
    relabel = (
        RelabelConfig(gamma=cfg.gamma)
        if conditioning == "goal"
        else RelabelConfig(future=0, final=0, negative=0, task=1.0, gamma=cfg.gamma)
    )
    task = TaskConfig(conditioning=conditioning, relabel=relabel)
    scfg = fqe_sampler_config(cfg, ObsConfig(cameras=("front",), augment_pad=2), task, prefetch=2)
    view = Lake.open(tabletop_lake).checkout()
    with Sampler(view, scfg, progress=False) as sampler:
        num_tasks = len(sampler.tasks) if conditioning == "task" else 0
        spec = ObservationSpec.from_sampler(sampler, num_tasks, sampler.statistics())
        policy_cfg = BCConfig(encoder=TINY_ENCODER, hidden=(16,))
        trained = TrainedPolicy(
            "bc", policy_cfg, spec, BC.build_policy(policy_cfg, spec).eval(), 0, torch.device("cpu")
        )
        model = fit_fqe(sampler, spec, deterministic_actions(trained), 0.2, cfg)
        b = next(sampler)
    assert spec.has_goal == (conditioning == "goal") and spec.cameras == ("front",)
    assert len(model.history) == 2 and all(np.isfinite(list(h.values())).all() for h in model.history)
    q, v = model.q_and_v(b.observations, b.goals, b.task_ids, b.actions)
    assert q is not None and q.shape == v.shape == (16,)
    assert torch.isfinite(q).all() and torch.isfinite(v).all()
