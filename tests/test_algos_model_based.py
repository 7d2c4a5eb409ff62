"""MOPO, MOReL and COMBO on hand-made models and batches with known values.

A dynamics ensemble whose output layer is set by hand (zero weights, chosen biases) predicts known
means and variances: MOPO's penalty must be λ·max_i ‖σ_i‖, MOReL's HALT must fire exactly above its
threshold. COMBO's conservative term is checked against a hand computation on a linear critic. The
shared plumbing (``model_based.py``) must carry g unchanged along rollouts and mix real and model rows
by ``real_ratio``. The contract suite (``test_algos_contract.py``) covers resume and determinism.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from data_lake.batch import Batch, Observation
from robot_rl.algos import COMBOConfig, MOPOConfig, MOReLConfig, combo
from robot_rl.algos.base import Encoded, Scalar
from robot_rl.algos.model_based import ModelConfig, feature_batch, split_dims
from robot_rl.algos.mopo import MOPO, penalized_reward
from robot_rl.algos.morel import halt
from robot_rl.models import DynamicsConfig, DynamicsEnsemble, ModelStep
from robot_rl.nets import EncoderConfig, ObservationSpec

WIDE = {"min_logvar": -20.0, "max_logvar": 20.0}  # soft bounds far away: the log-variance is what the bias says


def hand_model(mean_bias: list[list[float]], logvar: list[float]) -> DynamicsEnsemble:
    """K members on x (2,), a (1,): constant mean ``mean_bias[k]`` of (Δx, r), log-variance ``logvar[k]``."""
    K = len(mean_bias)
    model = DynamicsEnsemble(2, 1, DynamicsConfig(ensemble_size=K, elites=K, hidden=(4,), **WIDE))
    with torch.no_grad():
        model.out.weight.zero_()
        bias = torch.tensor([[*m, *[lv] * 3] for m, lv in zip(mean_bias, logvar, strict=True)])  # (K, 6)
        model.out.bias.copy_(bias.unsqueeze(1))
        model.fitted.fill_(True)  # identity normalization
    return model


def test_mopo_penalty_is_lambda_times_the_largest_std_norm() -> None:
    logvar = [-2.0, 0.5, -1.0]
    model = hand_model([[0.1, 0.0, 0.5]] * 3, logvar)  # every member: Δx = (0.1, 0), r = 0.5
    x, a = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(5, 1)
    step = model.step(x, a, torch.Generator().manual_seed(1), deterministic=True)
    u = math.sqrt(3) * math.exp(max(logvar) / 2)  # ‖σ‖₂ over the 3 outputs of the widest member
    torch.testing.assert_close(step.max_std_norm, torch.full((5,), u))
    torch.testing.assert_close(penalized_reward(step, 0.7), torch.full((5,), 0.5 - 0.7 * u))
    torch.testing.assert_close(penalized_reward(step, 0.0), step.reward)


def morel_step(disagreement: list[float], reward: list[float]) -> ModelStep:
    B = len(reward)
    return ModelStep(
        next_x=torch.zeros(B, 2),
        reward=torch.tensor(reward),
        max_std_norm=torch.zeros(B),
        disagreement=torch.tensor(disagreement),
        member=torch.zeros(B, dtype=torch.long),
    )


def test_morel_halts_exactly_above_the_threshold() -> None:
    s = morel_step([0.05, 0.3, 0.2, 0.9], [0.5, 0.5, 1.0, 0.0])
    reward, done = halt(s, torch.tensor(0.2), halt_reward=2.0)
    assert done.tolist() == [False, True, False, True]
    assert reward.tolist() == [0.5, -2.0, 1.0, -2.0]


def test_morel_disagreement_of_a_hand_model_decides_the_halt() -> None:
    model = hand_model([[0.0, 0.0, 1.0], [0.1, 0.0, 1.0], [0.3, 0.0, 1.0]], [-4.0] * 3)  # means 0.3 apart at most
    s = model.step(torch.zeros(3, 2), torch.zeros(3, 1), torch.Generator().manual_seed(0), deterministic=True)
    torch.testing.assert_close(s.disagreement, torch.full((3,), 0.3))
    assert halt(s, 0.25, 1.0)[1].all() and not halt(s, 0.35, 1.0)[1].any()
    torch.testing.assert_close(halt(s, 0.25, 1.0)[0], torch.full((3,), -1.0))
    torch.testing.assert_close(halt(s, 0.35, 1.0)[0], s.reward)


class LinearCritic(nn.Module):
    """Q_i(s, a) = k_i·s_0 (no action dependence): every term of COMBO's loss is computable by hand."""

    def __init__(self, k: list[float]):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))  # (N,)

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.k[:, None] * features[None, :, 0]  # (N, B)

    def q_values(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self(features, actions[:, 0]).unsqueeze(-1).expand(-1, -1, actions.shape[1])  # (N, B, M)


class ZeroDist:
    """Every sample is the action 0 with log-density 0 (density 1): no importance correction."""

    def __init__(self, B: int, A: int):
        self.B, self.A = B, A

    def sample(self, num: int | None = None, generator: torch.Generator | None = None):
        shape = (self.B, self.A) if num is None else (self.B, num, self.A)
        return torch.zeros(shape), torch.zeros(shape[:-1])


class ZeroActor(nn.Module):
    def forward(self, features: torch.Tensor) -> ZeroDist:
        return ZeroDist(features.shape[0], 2)


def test_combo_pushes_down_on_model_rows_and_up_on_real_rows() -> None:
    A, M, beta = 2, 3, 0.5
    k = [1.0, 2.0]
    s = torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # rows 0-1 real, rows 2-3 from the model
    r = torch.tensor([0.0, 1.0, 0.5, 0.0])
    batch = feature_batch(s, torch.zeros(4, A), r, torch.ones(4), s + 1)  # terminal: y = r
    nets = nn.ModuleDict(
        {"actor": ZeroActor(), "critic": LinearCritic(k), "target_critic": LinearCritic(k), "log_alpha": Scalar(0.0)}
    )
    cfg = COMBOConfig(num_samples=M, cql_alpha=beta, backup_entropy=False)
    loss, metrics = combo.critic_loss(Encoded(batch, s, s + 1), 2, nets, cfg, torch.Generator().manual_seed(0))
    # log Σ exp Q at a model state: M uniform actions (density 2^−A) and 2M policy actions (density 1)
    lse_offset = math.log((M * 2**A + 2 * M) / (3 * M))
    td = sum(0.5 * ((ki * s[:, 0] - r) ** 2).mean() for ki in k)
    gaps = [ki * (3.5 - 1.5) + lse_offset for ki in k]  # push-down mean of k·s over rows 2-3, push-up over 0-1
    torch.testing.assert_close(loss, td + beta * sum(gaps))
    torch.testing.assert_close(metrics["cql/gap"], torch.tensor(sum(gaps) / 2))
    # the push-down term moves the model rows' Q down, the push-up term the real rows' Q up
    gap, _ = combo.conservative_gap(
        torch.tensor([[[3.0, 3.0, 3.0]]]), torch.zeros(1, 3), torch.tensor([[1.0]]), temperature=1.0
    )
    torch.testing.assert_close(gap, torch.tensor([3.0 + math.log(3.0) - math.log(3.0) - 1.0]))


def test_combo_without_model_rows_pushes_down_on_the_real_rows() -> None:
    s = torch.tensor([[1.0], [3.0]])
    batch = feature_batch(s, torch.zeros(2, 2), torch.zeros(2), torch.ones(2), s)
    nets = nn.ModuleDict(
        {
            "actor": ZeroActor(),
            "critic": LinearCritic([1.0]),
            "target_critic": LinearCritic([1.0]),
            "log_alpha": Scalar(0.0),
        }
    )
    cfg = COMBOConfig(num_samples=2, cql_alpha=1.0, backup_entropy=False)
    _, metrics = combo.critic_loss(Encoded(batch, s, s), 2, nets, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(metrics["cql/gap"], torch.tensor(math.log((2 * 4 + 4) / 6)))  # same rows: Q cancels


def goal_batch(B: int, seed: int = 0) -> Batch:
    """State (B, 3) with a goal state (B, 2); actions in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(B, 3, generator=g)
    goal = Observation({}, torch.rand(B, 2, generator=g))
    a = torch.rand(B, 2, generator=g) * 2 - 1
    return Batch(
        observations=Observation({}, s),
        actions=a,
        rewards=(torch.rand(B, generator=g) < 0.3).float(),
        terminals=torch.zeros(B),
        next_observations=Observation({}, s + 0.1 * torch.cat([a, a[:, :1]], 1)),
        goals=goal,
        task_ids=torch.zeros(B, dtype=torch.long),
        mc_returns=torch.zeros(B),
        goal_source=torch.zeros(B, dtype=torch.long),
    )


TINY_MB = {
    "encoder": EncoderConfig(feature_dim=8),
    "hidden": (16, 16),
    "dynamics": DynamicsConfig(ensemble_size=3, elites=2, hidden=(16,)),
    "model": ModelConfig(horizon=2, warmup=1, real_ratio=0.25, replay_size=64, elite_every=2),
}


def test_rollouts_carry_the_goal_and_batches_mix_by_real_ratio() -> None:
    batch = goal_batch(8)
    algo = MOPO(MOPOConfig(**TINY_MB), ObservationSpec.from_batch(batch))
    encoder = algo.nets.encoder
    obs_dim, cond_dim = split_dims(encoder)
    g = encoder.goal_features(batch.goals, batch.task_ids)  # (B, 2): the normalized goal state
    assert (obs_dim, cond_dim) == (3, 2) and g.shape == (8, 2)
    algo.update(batch)  # warmup: the model trains, no rollout, all rows real
    assert algo.real_rows == 8 and len(algo.world.replay.buffer) == 0
    metrics = algo.update(batch)
    replay = algo.world.replay.buffer
    n = len(replay)
    assert n == 16 and metrics["model/rollout_length"] == 2  # 8 starts × 2 steps, none terminal
    for key in ("x", "next_x"):
        torch.testing.assert_close(replay.data[key][:n, obs_dim:], g.repeat(2, 1))  # g unchanged along rollouts
    torch.testing.assert_close(replay.data["x"][8:16], replay.data["next_x"][:8])  # step 2 starts where step 1 ended
    assert algo.real_rows == math.ceil(0.25 * 8) and metrics["model/real_rows"] == 0.25


def test_terminal_reward_ends_model_rows() -> None:
    batch = dataclasses.replace(goal_batch(8), rewards=torch.ones(8))
    model = dataclasses.replace(TINY_MB["model"], warmup=0, terminal_reward=-1e6)  # every predicted reward ends
    algo = MOPO(MOPOConfig(**{**TINY_MB, "model": model}), ObservationSpec.from_batch(batch))
    metrics = algo.update(batch)
    replay = algo.world.replay.buffer
    assert len(replay) == 8 and metrics["model/rollout_length"] == 1
    assert replay.data["terminals"][:8].eq(1).all()


def test_configs_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="real_ratio"):
        ModelConfig(real_ratio=0.0)
    with pytest.raises(ValueError, match="2 elites"):
        MOReLConfig(dynamics=DynamicsConfig(ensemble_size=3, elites=1))
    with pytest.raises(ValueError, match="penalty_coef"):
        MOPOConfig(penalty_coef=-1.0)
    with pytest.raises(ValueError, match="frozen"):
        MOPO(MOPOConfig(**TINY_MB), ObservationSpec.from_batch(goal_batch(4))).attach_auxiliary(
            {"aux_x": nn.Linear(1, 1)}
        )
