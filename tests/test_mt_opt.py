"""MT-Opt's conservative option (``negative_actions``): the loss term by hand, and what it does to Q.

The rest of MT-Opt (task weights, the multi-task TD loss, encode-once acting) is in ``test_qtopt.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data_lake.batch import TASK
from robot_rl.algos import ALGOS, CEMConfig, MTOptConfig
from robot_rl.algos.base import Encoded, encode
from robot_rl.algos.mt_opt import multi_task_loss
from robot_rl.algos.qtopt import td_target
from robot_rl.nets import ObservationSpec
from tests.test_qtopt import A, TableCritic, gen, make_batch


def batch(task_ids: list[int], rewards: list[float], seed: int = 5) -> Encoded:
    """Task rows without goals, succeeding where ``rewards`` is 1 (terminal there)."""
    return make_batch(rewards, rewards, [TASK] * len(rewards), task_ids, seed=seed, goal_dim=0)


ONLINE = [[0.5, -1.0, 2.0, 0.0], [1.5, 0.0, -2.0, 1.0]]
TARGET = [[3.0, 1.0, 2.0, -1.0], [0.0, 2.0, 1.0, 0.5]]


@pytest.mark.parametrize("balanced", [False, True])
def test_negative_actions_add_the_weighted_push_to_zero(balanced: bool) -> None:
    """L = L_Q + α_neg·Σ_i Σ_b w_b·mean_j H(0, σ(f_i(s_b, ã_bj))); negatives scored with the data action."""
    enc = batch([0, 0, 0, 1], [1.0, 0.0, 0.0, 0.0])
    off = MTOptConfig(gamma=0.9, task_balanced_loss=balanced)
    on = MTOptConfig(gamma=0.9, task_balanced_loss=balanced, negative_actions=3, negative_weight=2.0)
    plain, _ = multi_task_loss(
        enc, nn.ModuleDict({"critic": TableCritic(ONLINE), "target_critic": TableCritic(TARGET)}), off, gen()
    )
    critic = TableCritic(ONLINE)
    loss, metrics = multi_task_loss(
        enc, nn.ModuleDict({"critic": critic, "target_critic": TableCritic(TARGET)}), on, gen()
    )
    w = torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2]) if balanced else torch.full((4,), 0.25)
    want_neg = (F.softplus(torch.tensor(ONLINE)) * w).sum()  # H(0, σ(f)) = softplus(f); f flat in the action
    assert metrics["mt_opt/negative_loss"].item() == pytest.approx(want_neg.item(), rel=1e-6)
    assert metrics["critic/td_loss"].item() == pytest.approx(plain.item(), rel=1e-6), "L_Q unchanged"
    assert loss.item() == pytest.approx(plain.item() + 2.0 * want_neg.item(), rel=1e-6)
    scored = critic.seen[-1]  # (B, 1 + J, A): the data action first, then the negatives
    assert scored.shape == (4, 4, A) and torch.equal(scored[:, 0], enc.batch.actions)
    far = (scored[:, 1:] - scored[:, :1]).abs().amax(-1)  # (B, J) L∞ distance to the data action
    assert (far >= on.negative_min_distance - 1e-6).all()


def test_negative_actions_off_is_the_plain_loss_and_scores_no_negatives() -> None:
    enc = batch([0, 1, 0, 1], [1.0, 0.0, 0.0, 1.0])
    cfg = MTOptConfig(gamma=0.9)
    critic = TableCritic(ONLINE)
    loss, metrics = multi_task_loss(
        enc, nn.ModuleDict({"critic": critic, "target_critic": TableCritic(TARGET)}), cfg, gen()
    )
    y = td_target(enc, nn.ModuleDict({"critic": TableCritic(ONLINE), "target_critic": TableCritic(TARGET)}), cfg, gen())
    want = sum(F.binary_cross_entropy_with_logits(torch.tensor(row), y) for row in ONLINE)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert "mt_opt/negative_loss" not in metrics
    assert all(a.dim() == 2 or a.shape[1] == 1 for a in critic.seen), "the data actions only, no negatives"


@pytest.mark.parametrize("bad", [{"negative_actions": -1}, {"negative_weight": -0.5}, {"negative_min_distance": 1.0}])
def test_negative_action_settings_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MTOptConfig(**bad)  # type: ignore[arg-type]


@pytest.fixture
def one_thread():
    """One intra-op thread (on 2 shared, busy cores the default was 20x slower here); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_negative_actions_rank_the_data_actions_above_the_rest_of_the_box(one_thread: None) -> None:
    """Offline rows that all succeed (y = 1): without negatives Q rises on every action, so CEM's argmax is
    anywhere; with them Q of the data actions stays high while Q of other actions is pushed toward 0."""
    torch.manual_seed(0)
    spec = ObservationSpec(action_dim=A, state_dim=3, num_tasks=2)
    enc = batch([0, 1] * 8, [1.0] * 16, seed=3)
    probe = torch.rand(16, 32, A, generator=gen(7)) * 2 - 1  # (B, 32, A) other actions of the same states
    q = {}
    for j in (0, 4):
        cem = CEMConfig(samples=8, elites=2, iterations=1)
        algo = ALGOS["mt_opt"](MTOptConfig(hidden=(32, 32), critic_lr=3e-3, negative_actions=j, cem=cem), spec)
        for _ in range(100):
            algo.update(enc.batch)
        with torch.no_grad():
            b = enc.batch
            features = encode(algo.nets.encoder, b, next_observations=False).features  # (B, F)
            q_data = torch.sigmoid(algo.nets.critic(features, b.actions)).mean().item()
            far = (probe - b.actions.unsqueeze(1)).abs().amax(-1) >= 0.3  # (B, 32) clearly other actions
            q[j] = q_data, torch.sigmoid(algo.nets.critic.q_values(features, probe))[:, far].mean().item()
    assert q[0][0] > 0.95 and q[0][0] - q[0][1] < 0.05, f"without negatives every action looks alike: {q[0]}"
    assert q[4][0] - q[4][1] > 0.3, f"with negatives the data actions rank above the rest: {q[4]}"
