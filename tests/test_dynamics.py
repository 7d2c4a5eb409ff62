"""The dynamics ensemble (robot_rl.models.dynamics): fit on known linear systems, uncertainty off the
data's support, elites, determinism, rollouts, the replay of synthetic transitions, lake extraction, errors."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
import torch

from data_lake import Lake
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from data_lake.synthetic import synthetic_episode
from robot_rl.models import (
    DynamicsConfig,
    DynamicsEnsemble,
    ModelReplay,
    Transitions,
    fit_dynamics,
    rollout,
    transitions_from_sampler,
)
from robot_rl.models.dynamics import holdout_losses
from robot_rl.nets import EncoderConfig, ObservationEncoder, ObservationSpec

torch.set_num_threads(1)

D, A, N, SIGMA = 3, 2, 3000, 0.1
A_MAT = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.7]])
B_MAT = torch.tensor([[0.5, 0.0], [0.0, 0.5], [0.3, -0.3]])
C_VEC = torch.tensor([1.0, -1.0, 0.5])
CFG = DynamicsConfig(ensemble_size=5, elites=3, hidden=(64, 64), batch_size=128, lr=3e-3, max_steps=3000)


def linear_data(seed: int, heteroscedastic: bool = False) -> tuple[torch.Tensor, ...]:
    """x' = A x + B a + σ(x) ε, r = c·x + 0.1 ε' on x, a uniform in [-1, 1]; σ = 0.1, or 0.02 + 0.1‖x‖."""
    g = torch.Generator().manual_seed(seed)
    x, a = torch.rand(N, D, generator=g) * 2 - 1, torch.rand(N, A, generator=g) * 2 - 1
    sigma = 0.02 + 0.1 * x.norm(dim=1, keepdim=True) if heteroscedastic else SIGMA
    x_next = x @ A_MAT.T + a @ B_MAT.T + sigma * torch.randn(N, D, generator=g)
    r = x @ C_VEC + SIGMA * torch.randn(N, generator=g)
    return x, a, r, x_next


@pytest.fixture(scope="module")
def fitted():
    x, a, r, x_next = linear_data(0)
    model = DynamicsEnsemble(D, A, CFG)
    report = fit_dynamics(model, x, a, r, x_next, CFG)
    return model, report, (x, a, r, x_next)


def probes(seed: int, radius: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """500 (x, a): on the support (radius None), or x at distance ``radius`` (the data's x lie within √3)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(500, A, generator=g) * 2 - 1
    if radius is None:
        return torch.rand(500, D, generator=g) * 2 - 1, a
    u = torch.randn(500, D, generator=g)
    return radius * u / u.norm(dim=1, keepdim=True), a


def test_fit_recovers_a_linear_system(fitted) -> None:
    model, report, _ = fitted
    entropy = 0.5 * math.log(2 * math.pi * math.e * SIGMA**2)  # NLL per dimension of the true model: -0.88
    assert abs(report.elite_nll - entropy) < 0.1, (report.elite_nll, entropy)
    x, a = probes(1, None)
    step = model.step(x, a, torch.Generator().manual_seed(0), deterministic=True)
    assert (step.next_x - (x @ A_MAT.T + a @ B_MAT.T)).abs().mean() < 0.03
    assert (step.reward - x @ C_VEC).abs().mean() < 0.05
    mean, logvar = model(x, a)  # data units: σ ≈ 0.1 on every output
    assert mean.shape == logvar.shape == (CFG.ensemble_size, 500, D + 1)
    assert torch.exp(0.5 * logvar[model.elite_idx]).median().item() == pytest.approx(SIGMA, rel=0.25)
    assert report.stopped_early and report.steps < CFG.max_steps


def test_disagreement_grows_off_the_support(fitted) -> None:
    model, _, _ = fitted
    gen = torch.Generator().manual_seed(0)
    on = model.step(*probes(1, None), gen)
    off = model.step(*probes(2, 4.0), gen)
    assert off.disagreement.median() > 3 * on.disagreement.median()


def test_both_uncertainties_grow_off_the_support_when_the_noise_grows() -> None:
    """With noise growing with ‖x‖, the learned σ extrapolates the trend (MOPO's u) and the members
    disagree (MOReL's). With constant noise σ shrinks off the support instead (module docstring)."""
    x, a, r, x_next = linear_data(3, heteroscedastic=True)
    model = DynamicsEnsemble(D, A, CFG)
    fit_dynamics(model, x, a, r, x_next, CFG)
    gen = torch.Generator().manual_seed(0)
    on = model.step(*probes(1, None), gen)
    off = model.step(*probes(2, 4.0), gen)
    assert off.max_std_norm.median() > 1.8 * on.max_std_norm.median()
    assert off.disagreement.median() > 3 * on.disagreement.median()


def test_elites_are_the_members_with_the_lowest_holdout_loss(fitted) -> None:
    model, report, (x, a, r, x_next) = fitted
    hold = torch.randperm(N, generator=torch.Generator().manual_seed(CFG.seed))[: int(N * CFG.holdout_fraction)]
    y = torch.cat([x_next - x, r[:, None]], 1)
    _, nll = holdout_losses(model, x[hold], a[hold], y[hold])  # the restored members, recomputed
    assert np.allclose(nll.numpy(), report.holdout_nll, atol=1e-5)
    elites = set(model.elite_idx.tolist())
    assert elites == set(report.elites) and len(elites) == CFG.elites
    assert max(nll[i] for i in elites) <= min(nll[i] for i in range(CFG.ensemble_size) if i not in elites)
    step = model.step(*probes(1, None), torch.Generator().manual_seed(0))
    assert set(step.member.tolist()) == elites  # rows draw elites only (500 rows: each elite drawn)
    assert set(model.step(*probes(1, None), members="all").member.tolist()) == set(range(CFG.ensemble_size))


def test_the_fitted_model_round_trips_through_its_state_dict(fitted) -> None:
    """Normalization statistics and elites are buffers: a loaded model steps exactly as the fitted one."""
    model, _, _ = fitted
    loaded = DynamicsEnsemble(D, A, CFG)
    loaded.load_state_dict(model.state_dict())
    assert torch.equal(loaded.elite_idx, model.elite_idx) and bool(loaded.fitted)
    x, a = probes(1, None)
    s1, s2 = (m.step(x, a, torch.Generator().manual_seed(3)) for m in (model, loaded))
    assert all(torch.equal(getattr(s1, k), getattr(s2, k)) for k in ("next_x", "reward", "max_std_norm", "member"))


def test_same_seed_same_model() -> None:
    x, a, r, x_next = linear_data(5)
    cfg = DynamicsConfig(ensemble_size=3, elites=2, hidden=(32,), max_steps=60, seed=7)
    models, reports = [], []
    for _ in range(2):
        models.append(DynamicsEnsemble(D, A, cfg))
        reports.append(fit_dynamics(models[-1], x, a, r, x_next, cfg))
    for (k, v), w in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert reports[0].holdout_nll == reports[1].holdout_nll and reports[0].steps == 60
    other = DynamicsEnsemble(D, A, DynamicsConfig(ensemble_size=3, elites=2, hidden=(32,), seed=8))
    assert not torch.equal(other.layers[0].weight, models[0].layers[0].weight)


def test_rollout_shapes_terminals_and_reward_fn(fitted) -> None:
    model, _, _ = fitted
    B, G, H = 64, 2, 5
    x0, g = probes(1, None)[0][:B], torch.randn(B, G)
    seen = []

    def policy(features: torch.Tensor) -> torch.Tensor:
        seen.append(features.shape)
        return torch.tanh(features[:, :A])

    def terminal_fn(x, a, x_next):
        return x_next[:, 0] > 0.3

    out = rollout(model, x0, g, policy, H, torch.Generator().manual_seed(0), terminal_fn=terminal_fn)
    assert all(s[1] == D + G for s in seen)
    counts = torch.bincount(out.step, minlength=H)
    for h in range(1, len(seen)):  # a row is stepped again exactly when it did not end
        assert counts[h] == counts[h - 1] - out.terminals[out.step == h - 1].sum()
    assert counts[0] == B and out.terminals.sum() > 0
    assert torch.equal(out.terminals.bool(), out.next_x[:, 0] > 0.3)
    assert out.x.shape == out.next_x.shape == (len(out), D) and out.g.shape == (len(out), G)
    assert out.actions.shape == (len(out), A) and out.rewards.shape == out.max_std_norm.shape == (len(out),)
    assert torch.equal(out.g[: counts[0]], g)
    ones = rollout(model, x0, None, policy, 2, reward_fn=lambda x, a, xn, g: torch.ones(len(x)))
    assert torch.equal(ones.rewards, torch.ones(2 * B)) and ones.g is None and ones.terminals.sum() == 0


def transitions(n: int, start: int, g_dim: int = 2) -> Transitions:
    v = torch.arange(start, start + n, dtype=torch.float32)
    return Transitions(
        x=v[:, None].repeat(1, D),
        g=v[:, None].repeat(1, g_dim),
        actions=v[:, None].repeat(1, A),
        rewards=v,
        next_x=v[:, None].repeat(1, D) + 1,
        terminals=(v % 2 == 0).float(),
        max_std_norm=v,
        disagreement=v,
        step=v.long(),
    )


def test_model_replay_wraps_and_resumes_exactly() -> None:
    replay = ModelReplay(10, D, A, goal_dim=2)
    replay.add(transitions(7, 0))
    replay.add(transitions(7, 7))
    assert len(replay) == 10 and replay.ptr == 4
    assert sorted(replay.data["rewards"].tolist()) == list(range(4, 14))  # the oldest 4 rows overwritten
    replay.add(transitions(25, 100))  # more than the capacity: the newest 10 rows
    assert sorted(replay.data["rewards"].tolist()) == list(range(115, 125))
    sample = replay.sample(32, torch.Generator().manual_seed(0))
    assert torch.equal(sample.x[:, 0], sample.rewards) and torch.equal(sample.next_x[:, 0], sample.rewards + 1)
    restored = ModelReplay(10, D, A, goal_dim=2)
    restored.load_state_dict(replay.state_dict())
    again = restored.sample(32, torch.Generator().manual_seed(0))
    assert all(torch.equal(getattr(sample, k), getattr(again, k)) for k in ModelReplay.KEYS)
    replay.add(transitions(3, 200))
    restored.add(transitions(3, 200))
    assert all(torch.equal(replay.data[k], restored.data[k]) for k in ModelReplay.KEYS)
    with pytest.raises(ValueError, match="capacity"):
        ModelReplay(5, D, A, goal_dim=2).load_state_dict(replay.state_dict())
    with pytest.raises(ValueError, match="g of dim 0"):
        ModelReplay(10, D, A).add(transitions(3, 0))
    with pytest.raises(ValueError, match="empty"):
        ModelReplay(10, D, A).sample(1)


def test_transitions_from_a_lake_snapshot() -> None:
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    lake.append([synthetic_episode(s, length=10, size=16, task="synthetic/push") for s in range(4)])
    cfg = SamplerConfig(batch_size=8, cameras=(), relabel=RelabelConfig(), augment_pad=0)
    with Sampler(lake.checkout(), cfg, progress=False) as sampler:
        spec = ObservationSpec.from_sampler(sampler, statistics=sampler.statistics())
        encoder = ObservationEncoder(spec, EncoderConfig()).requires_grad_(False)
        data = transitions_from_sampler(sampler, encoder, batch_size=16)
        pool = sampler.pool
    t = pool.valid
    assert len(data) == len(t) == 4 * 9  # every transition once, none across an episode's end
    mean, std = torch.tensor(spec.state_mean), torch.tensor(spec.state_std)
    assert torch.allclose(data.x, (torch.from_numpy(pool.state[t]) - mean) / std, atol=1e-5)
    assert torch.allclose(data.next_x, (torch.from_numpy(pool.state[t + 1]) - mean) / std, atol=1e-5)
    assert torch.equal(data.actions, torch.from_numpy(pool.action[t]))
    assert torch.equal(data.rewards, torch.from_numpy(pool.reward[t]))
    assert data.g is not None and data.g.shape == (len(t), spec.goal_state_dim)
    model = DynamicsEnsemble(
        data.x.shape[1], A + 2, DynamicsConfig(ensemble_size=2, elites=1, hidden=(16,), max_steps=5)
    )
    assert fit_dynamics(model, data.x, data.actions, data.rewards, data.next_x).steps == 5


def test_bad_inputs_fail_loudly(fitted) -> None:
    model, _, (x, a, r, x_next) = fitted
    with pytest.raises(ValueError, match="elites must be in"):
        DynamicsConfig(ensemble_size=3, elites=4)
    with pytest.raises(ValueError, match="holdout_metric"):
        DynamicsConfig(holdout_metric="mae")
    with pytest.raises(ValueError, match="holdout_fraction"):
        DynamicsConfig(holdout_fraction=1.0)
    fresh = DynamicsEnsemble(D, A, CFG)
    bad = x.clone()
    bad[17, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x has 1 non-finite values \(NaN/inf\), first in row 17"):
        fit_dynamics(fresh, bad, a, r, x_next, CFG)
    with pytest.raises(ValueError, match=r"a must be \(B, 2\) actions, got \(3000, 3\)"):
        fit_dynamics(fresh, x, x, r, x_next, CFG)
    with pytest.raises(ValueError, match="x_next must be"):
        fit_dynamics(fresh, x, a, r, x_next[:, :2], CFG)
    with pytest.raises(ValueError, match="fit with the config the model was built with"):
        fit_dynamics(fresh, x, a, r, x_next, DynamicsConfig(ensemble_size=2, elites=1))
    with pytest.raises(RuntimeError, match="call fit_dynamics first"):
        fresh.step(x[:4], a[:4])
    with pytest.raises(ValueError, match="x has 4 rows, a has 3"):
        model.step(x[:4], a[:3])
    with pytest.raises(ValueError, match="members must be"):
        model.step(x[:4], a[:4], members="best")
    with pytest.raises(ValueError, match="the policy returned"):
        rollout(model, x[:4], None, lambda f: torch.zeros(4, 5), 2)
