"""QT-Opt, Actionable Models and MT-Opt: CEM on known objectives and each loss term on hand-made batches.

Stub critics with a known output per (member, row) make every target and loss computable by hand.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data_lake.batch import FINAL, FUTURE, NEGATIVE, TASK, Batch, Observation
from robot_rl.algos import ALGOS, ActionableModelsConfig, CEMConfig, MTOptConfig, QTOptConfig
from robot_rl.algos.actionable_models import goal_reaching_loss, negative_actions, uniform_negatives
from robot_rl.algos.base import Encoded
from robot_rl.algos.mt_opt import multi_task_loss, task_weights
from robot_rl.algos.qtopt import cem, critic_loss, td_target
from robot_rl.nets import ObservationSpec

A = 2


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- CEM
def quadratic(center: torch.Tensor, weight: torch.Tensor):
    """Q(a) = −Σ_j w_j·(a_j − c_j)², concave, per row: actions (B, N, A) -> (B, N)."""
    return lambda a: -(weight * (a - center.unsqueeze(1)).pow(2)).sum(-1)


# (config, tolerance on every row's max coordinate error, on the median row's): the paper's N = 64, M = 6,
# I = 2 is a coarse search (corners are hard in 2 iterations); a longer CEM is precise everywhere
CEM_CASES = [(CEMConfig(), 1.0, 0.15), (CEMConfig(samples=128, elites=8, iterations=6), 0.05, 0.02)]


@pytest.mark.parametrize(("cfg", "tol", "median_tol"), CEM_CASES)
def test_cem_finds_the_maximizer_of_a_concave_quadratic_batched_within_bounds(
    cfg: CEMConfig, tol: float, median_tol: float
) -> None:
    B, A3 = 64, 3
    center = torch.rand(B, A3, generator=gen(1)) * 1.6 - 0.8  # maximizers inside the box
    center[:16, 0] = 2.5  # outside: the constrained maximizer is on the face a_0 = 1
    center[16:24] = -3.0  # outside in every dimension: the corner (−1, −1, −1)
    weight = torch.tensor([1.0, 3.0, 0.5])
    res = cem(quadratic(center, weight), B, A3, cfg, gen(2))
    best = center.clamp(-1, 1)  # separable: the box maximizer clips each coordinate
    assert res.action.shape == (B, A3) and res.action.abs().max() <= 1.0
    error = (res.action - best).abs().amax(1)  # (B,)
    assert error.max() < tol and error.median() < median_tol, error
    torch.testing.assert_close(res.score, quadratic(center, weight)(res.action.unsqueeze(1))[:, 0])
    assert res.mean.abs().max() <= 1.0 and (res.std >= cfg.min_std).all()
    explore = res.sample(cfg, gen(3))
    assert explore.shape == (B, A3) and explore.abs().max() <= 1.0 and not torch.equal(explore, res.action)


def test_cem_chooses_the_discrete_gripper_per_row() -> None:
    B = 32
    side = torch.where(torch.arange(B) % 2 == 0, 1.0, -1.0)  # rows want gripper +1 / −1
    center = torch.full((B, 2), 0.3)

    def score(a: torch.Tensor) -> torch.Tensor:  # (B, N, 3)
        return quadratic(center, torch.ones(2))(a[..., :2]) + side.unsqueeze(1) * a[..., 2]

    cfg = CEMConfig(discrete_gripper=True)
    res = cem(score, B, 3, cfg, gen())
    assert torch.equal(res.action[:, 2], side)
    assert res.gripper_p is not None and torch.equal(res.gripper_p, (side > 0).float())
    assert set(res.sample(cfg, gen()).flatten()[2::3].tolist()) <= {-1.0, 1.0}
    assert (res.action[:, :2] - 0.3).abs().max() < 0.15


# ---------------------------------------------------------------------------- hand-made batches
class TableCritic(nn.Module):
    """f_i(s, a) = values[i, b] + slope·a_0; records the actions it scores."""

    def __init__(self, values: list[list[float]], slope: float = 0.0):
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))  # (N, B)
        self.n, self.slope = len(values), slope
        self.seen: list[torch.Tensor] = []

    def forward(self, features: torch.Tensor, actions: torch.Tensor, members: int | None = None) -> torch.Tensor:
        self.seen.append(actions.detach().clone())
        return (self.values + self.slope * actions[:, 0])[:members]  # (N, B)

    def q_values(self, features: torch.Tensor, actions: torch.Tensor, members: int | None = None) -> torch.Tensor:
        self.seen.append(actions.detach().clone())
        return (self.values.unsqueeze(-1) + self.slope * actions[..., 0])[:members]  # (N, B, M)


def make_batch(
    rewards: list[float],
    terminals: list[float],
    sources: list[int],
    task_ids: list[int] | None = None,
    seed: int = 5,
    goal_dim: int = 2,
) -> Encoded:
    """Rows with random states (B, 3), actions and (``goal_dim`` > 0) goals; features = the states."""
    B = len(rewards)
    g = gen(seed)
    obs, next_obs = Observation({}, torch.randn(B, 3, generator=g)), Observation({}, torch.randn(B, 3, generator=g))
    actions = torch.rand(B, A, generator=g) * 2 - 1
    batch = Batch(
        observations=obs,
        actions=actions,
        rewards=torch.tensor(rewards),
        terminals=torch.tensor(terminals),
        next_observations=next_obs,
        goals=Observation({}, torch.randn(B, goal_dim, generator=g)) if goal_dim else None,
        task_ids=torch.tensor(task_ids or [0] * B),
        mc_returns=torch.zeros(B),
        goal_source=torch.tensor(sources),
    )
    return Encoded(batch, obs.state, next_obs.state)


def nets(online: list[list[float]], target: list[list[float]], slope: float = 0.0) -> nn.ModuleDict:
    return nn.ModuleDict({"critic": TableCritic(online, slope), "target_critic": TableCritic(target, slope)})


# rows: reaches the goal, a later hindsight goal, another episode's goal, a task row
ROWS = {"rewards": [1.0, 0.0, 0.0, 0.0], "terminals": [1.0, 0.0, 0.0, 0.0], "sources": [FUTURE, FINAL, NEGATIVE, TASK]}
ONLINE = [[0.5, -1.0, 2.0, 0.0], [1.5, 0.0, -2.0, 1.0]]
TARGET = [[3.0, 1.0, 2.0, -1.0], [0.0, 2.0, 1.0, 0.5]]


def test_td_target_is_one_at_the_reaching_step_and_clipped_double_q_elsewhere() -> None:
    enc = make_batch(**ROWS)
    cfg = QTOptConfig(gamma=0.9)
    y = td_target(enc, nets(ONLINE, TARGET), cfg, gen())
    v = torch.sigmoid(torch.tensor(TARGET)).min(0).values  # min over the two targets (Q flat in a)
    torch.testing.assert_close(y, torch.tensor([1.0, 0.9 * v[1], 0.9 * v[2], 0.9 * v[3]]))
    y_linear = td_target(enc, nets(ONLINE, TARGET), QTOptConfig(gamma=0.9, q_output="linear"), gen())
    torch.testing.assert_close(y_linear, torch.tensor([1.0, 0.9 * 1.0, 0.9 * 1.0, 0.9 * -1.0]))


def test_mc_lower_bound_raises_targets_to_the_data_return_only_where_it_is_higher() -> None:
    """Regression (docs/learning.md): without it a goal 60 steps ahead waits 60 rounds of bootstrapping."""
    enc = make_batch(**ROWS)
    mc = torch.tensor([1.0, 0.9**5, 0.0, 0.99])
    enc = Encoded(dataclasses.replace(enc.batch, mc_returns=mc), enc.features, enc.next_features)
    plain = td_target(enc, nets(ONLINE, TARGET), QTOptConfig(gamma=0.9), gen())
    bounded = td_target(enc, nets(ONLINE, TARGET), QTOptConfig(gamma=0.9, mc_lower_bound=True), gen())
    torch.testing.assert_close(bounded, torch.maximum(plain, mc))
    assert bounded[3] > plain[3] and bounded[2] == plain[2], "raised where G is higher, untouched where it is 0"


def test_target_evaluates_both_targets_at_the_cem_action_of_the_first() -> None:
    enc = make_batch(**ROWS)
    n = nets(ONLINE, TARGET, slope=1.0)  # f̄_i increases with a_0: CEM picks a_0 ≈ 1
    y = td_target(enc, n, QTOptConfig(gamma=1.0, q_output="linear"), gen())
    a0 = n.target_critic.seen[-1][:, 0]  # the action both targets were evaluated at
    assert (a0 > 0.8).all()
    torch.testing.assert_close(y[1:], (torch.tensor(TARGET) + a0).min(0).values[1:])


def test_qtopt_critic_loss_is_cross_entropy_summed_over_critics() -> None:
    enc = make_batch(**ROWS)
    cfg = QTOptConfig(gamma=0.9)
    loss, _ = critic_loss(enc, nets(ONLINE, TARGET), cfg, gen())
    y = td_target(enc, nets(ONLINE, TARGET), cfg, gen())
    want = sum(F.binary_cross_entropy_with_logits(torch.tensor(row), y) for row in ONLINE)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("chaining", [1.0, 0.0])
def test_goal_chaining_targets_are_bootstrapped_not_zero(chaining: float) -> None:
    enc = make_batch(**ROWS)
    cfg = ActionableModelsConfig(gamma=0.9, chaining_fraction=chaining, negative_weight=0.0)
    _, metrics = goal_reaching_loss(enc, nets(ONLINE, TARGET), cfg, gen())
    v = torch.sigmoid(torch.tensor(TARGET)).min(0).values
    y = torch.tensor([1.0, 0.9 * v[1], 0.9 * v[2] * chaining, 0.9 * v[3]])  # row 2: γ·V̄(s', g), or 0
    assert 0.9 * v[2] > 0.3  # so the two cases differ clearly
    want = sum(F.binary_cross_entropy_with_logits(torch.tensor(row), y) for row in ONLINE)
    assert metrics["critic/td_loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert metrics["critic/td_target"].item() == pytest.approx(y.mean().item(), rel=1e-6)
    assert metrics["am/chain_rate"].item() == pytest.approx(chaining / 4)


@pytest.mark.parametrize("q_output", ["sigmoid", "linear"])
def test_negative_actions_are_pushed_to_zero(q_output: str) -> None:
    enc = make_batch(**ROWS)
    cfg = ActionableModelsConfig(q_output=q_output, num_negatives=3, negative_weight=2.0)
    n = nets(ONLINE, TARGET)
    loss, metrics = goal_reaching_loss(enc, n, cfg, gen())
    f = torch.tensor(ONLINE)  # (N, B): the same for every action
    per_member = F.softplus(f) if q_output == "sigmoid" else 0.5 * f.pow(2)  # H(0, σ(f)) = softplus(f)
    want_neg = per_member.mean(1).sum()
    assert metrics["am/negative_loss"].item() == pytest.approx(want_neg.item(), rel=1e-6)
    assert loss.item() == pytest.approx(metrics["critic/td_loss"].item() + 2.0 * want_neg.item(), rel=1e-6)
    loss.backward()
    scored = n.critic.seen[-1]  # (B, 1 + K, A): the data action first, then the negatives
    assert torch.equal(scored[:, 0], enc.batch.actions) and scored.shape == (4, 4, A)
    assert n.critic.values.grad is not None and (n.critic.values.grad.abs() > 0).all()


def test_negatives_are_never_the_data_action() -> None:
    data = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 0.95], [0.3, -0.999], [1.2, -1.5]])  # incl. out of box
    for delta in (0.1, 0.5, 0.9):
        neg = uniform_negatives(data, 4000, CEMConfig(), delta, gen())  # (B, n, A)
        assert neg.abs().max() <= 1.0
        dist = (neg - data.clamp(-1, 1).unsqueeze(1)).abs().amax(-1)  # L∞
        assert dist.min() >= delta - 1e-6, (delta, dist.min())
    # without the margin the draws are plain uniform: some would fall within 0.1 of the data action
    plain = uniform_negatives(data, 4000, CEMConfig(), 0.0, gen())
    assert ((plain - data.clamp(-1, 1).unsqueeze(1)).abs().amax(-1) < 0.1).any()
    # discrete gripper: ±1 in the last dimension, still away from the data action
    grip = torch.tensor([[0.2, 1.0], [-0.5, -1.0]])
    neg = uniform_negatives(grip, 4000, CEMConfig(discrete_gripper=True), 0.3, gen())
    assert set(neg[..., 1].unique().tolist()) == {-1.0, 1.0}
    assert (neg - grip.unsqueeze(1)).abs().amax(-1).min() >= 0.3
    only_gripper = uniform_negatives(torch.tensor([[1.0], [-1.0]]), 50, CEMConfig(discrete_gripper=True), 0.1, gen())
    assert torch.equal(only_gripper[:, :, 0], torch.tensor([[-1.0], [1.0]]).expand(2, 50))


def test_exp_q_negatives_prefer_actions_the_critic_ranks_high() -> None:
    enc = make_batch(**ROWS)
    n = nets(ONLINE, TARGET, slope=5.0)  # f rises with a_0
    kw = {"num_negatives": 256, "negative_candidates": 64}
    hard = negative_actions(enc, n.critic, ActionableModelsConfig(negative_sampling="exp_q", **kw), gen())
    flat = negative_actions(enc, n.critic, ActionableModelsConfig(**kw), gen())
    assert hard.shape == flat.shape == (4, 256, A)
    assert hard[..., 0].mean() > 0.5 and abs(flat[..., 0].mean()) < 0.15
    dist = (hard - enc.batch.actions.unsqueeze(1)).abs().amax(-1)
    assert dist.min() >= 0.1 - 1e-6


# ---------------------------------------------------------------------------- MT-Opt
def test_task_weights_give_each_task_in_the_batch_an_equal_share() -> None:
    w, k = task_weights(torch.tensor([0, 0, 0, 1, 3, 3]))
    torch.testing.assert_close(w, torch.tensor([1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6]))
    assert k.item() == pytest.approx(3.0) and w.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("balanced", [False, True])
def test_mt_opt_loss_weights_rows_by_task(balanced: bool) -> None:
    enc = make_batch(**ROWS, task_ids=[0, 0, 0, 1])
    cfg = MTOptConfig(gamma=0.9, task_balanced_loss=balanced)
    loss, metrics = multi_task_loss(enc, nets(ONLINE, TARGET), cfg, gen())
    y = td_target(enc, nets(ONLINE, TARGET), cfg, gen())
    per_row = sum(F.binary_cross_entropy_with_logits(torch.tensor(row), y, reduction="none") for row in ONLINE)
    w = torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2]) if balanced else torch.full((4,), 0.25)
    assert loss.item() == pytest.approx((w * per_row).sum().item(), rel=1e-6)
    assert metrics["mt_opt/tasks_in_batch"].item() == pytest.approx(2.0)


# ---------------------------------------------------------------------------- encode once
def test_cem_acting_encodes_each_image_once() -> None:
    B = 5
    obs = Observation({"front": torch.rand(B, 3, 16, 16, generator=gen())}, None)
    spec = ObservationSpec(action_dim=A, cameras=("front",), image_sizes=((16, 16),), num_tasks=2)
    algo = ALGOS["mt_opt"](MTOptConfig(hidden=(16,), cem=CEMConfig(samples=32, elites=4, iterations=3)), spec)
    rows: list[int] = []
    algo.nets.encoder.trunks["shared"].register_forward_hook(lambda m, args, out: rows.append(len(args[0])))
    tasks = torch.tensor([0, 1, 0, 1, 1])
    a = algo.act(obs, None, tasks)
    assert rows == [B], "one trunk pass over the B images for all 3 x 32 CEM samples"
    assert a.shape == (B, A) and a.abs().max() <= 1
    assert torch.equal(algo.policy(obs, None, tasks, True, gen()), algo.policy(obs, None, tasks, True, gen()))
    assert not torch.equal(algo.act(obs, None, tasks, False), algo.act(obs, None, tasks, False))
    assert math.isfinite(a.sum().item())


def test_saved_cem_policy_acts_like_the_algorithm(tmp_path) -> None:
    from robot_rl import checkpoint

    B = 4
    spec = ObservationSpec(action_dim=A, state_dim=3, has_goal=True, goal_state_dim=2)
    algo = ALGOS["actionable_models"](ActionableModelsConfig(hidden=(16,), cem=CEMConfig(samples=8, elites=2)), spec)
    enc = make_batch(**ROWS)
    algo.update(enc.batch)
    checkpoint.save_policy(tmp_path / "policy", algo)
    loaded, _ = checkpoint.load_policy(tmp_path / "policy")
    obs, goal = enc.batch.observations, enc.batch.goals
    for deterministic in (True, False):
        want = algo.policy(obs, goal, None, deterministic, gen(9))
        assert want.shape == (B, A)
        assert torch.equal(loaded.policy(obs, goal, None, deterministic, gen(9)), want)
    assert set(algo.policy.state_dict()) == {k for k in algo.nets.state_dict() if not k.startswith("target_")}


def test_sigmoid_q_loss_clips_targets_above_one() -> None:
    """A reward of 1 on a row that does not end the episode gives y = 1 + γ·Q' > 1; the cross-entropy
    against it would fall without bound as the logit grows (the MT-Opt run of benchmarks/detectors.py
    reached a TD loss of −2·10⁶ that way). Clipped, the loss is a cross-entropy against 1."""
    from robot_rl.algos.qtopt import q_loss

    cfg = QTOptConfig()
    logits = torch.tensor([[0.0, 5.0, 20.0]])  # (N=1, B=3)
    above = q_loss(logits, torch.tensor([1.7, 1.7, 1.7]), cfg)
    at_one = q_loss(logits, torch.ones(3), cfg)
    assert torch.allclose(above, at_one)
    assert (above >= 0).all() and above[0, 2] < above[0, 1] < above[0, 0]  # minimized as sigmoid(f) -> 1
    below = q_loss(logits, torch.full((3,), -0.5), cfg)
    assert torch.allclose(below, q_loss(logits, torch.zeros(3), cfg))
    linear = dataclasses.replace(cfg, q_output="linear")
    unclipped = q_loss(logits, torch.full((3,), 1.7), linear)
    assert torch.allclose(unclipped, 0.5 * (logits - 1.7) ** 2)  # unbounded Q: no clip
