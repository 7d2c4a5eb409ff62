"""Loss terms of the SAC-family algorithms and TD3+BC on hand-made batches with known values.

Stub critics and actors make every quantity computable by hand: the tests check Cal-QL's bound,
SAC's soft backup, AWAC's clipped advantage weights, TD3+BC's λ normalization, target policy
smoothing and delayed policy updates.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from data_lake.batch import Batch, Observation
from robot_rl.algos import ALGOS, AWACConfig, CalQLConfig, CQLConfig, SACConfig, TD3BCConfig, awac, cql, sac, td3bc
from robot_rl.algos.base import Encoded, Scalar
from robot_rl.nets import DeterministicActor, EncoderConfig, NoisyDeterministicActor, ObservationSpec

A = 2  # action dim


def make_batch(
    rewards: list[float],
    terminals: list[float],
    mc_returns: list[float] | None = None,
    actions: torch.Tensor | None = None,
) -> Batch:
    """A state-only batch (B = len(rewards)), state dim 3, no goals."""
    B = len(rewards)
    g = torch.Generator().manual_seed(0)
    return Batch(
        observations=Observation({}, torch.randn(B, 3, generator=g)),
        actions=torch.zeros(B, A) if actions is None else actions,
        rewards=torch.tensor(rewards),
        terminals=torch.tensor(terminals),
        next_observations=Observation({}, torch.randn(B, 3, generator=g)),
        goals=None,
        task_ids=torch.zeros(B, dtype=torch.long),
        mc_returns=torch.tensor(mc_returns if mc_returns is not None else [0.0] * B),
        goal_source=torch.zeros(B, dtype=torch.long),
    )


class TableCritic(nn.Module):
    """Q_i(s, a) = values[i, b] + slope·a_0: a known value per (member, row), optionally rising with a_0."""

    def __init__(self, values: list[list[float]], slope: float = 0.0):
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))  # (N, B)
        self.n, self.slope = len(values), slope
        self.seen: list[torch.Tensor] = []  # actions it was called with

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.seen.append(actions.detach().clone())
        return self.values + self.slope * actions[:, 0]  # (N, B)

    def q_values(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.seen.append(actions.detach().clone())
        return self.values.unsqueeze(-1) + self.slope * actions[..., 0]  # (N, B, M)


class FixedDist:
    """Samples are ``action`` with log-prob ``log_prob``; log π(a) = −Σ(a − μ)² with a learnable μ."""

    def __init__(self, B: int, action: float, log_prob: float, mu: torch.Tensor):
        self.B, self.action, self.lp, self.mu = B, action, log_prob, mu

    def sample(self, num: int | None = None, generator: torch.Generator | None = None):
        shape = (self.B, A) if num is None else (self.B, num, A)
        return torch.full(shape, self.action), torch.full(shape[:-1], self.lp)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return -(actions - self.mu).pow(2).sum(-1)  # (B,)

    def mode(self) -> torch.Tensor:
        return self.mu.expand(self.B, A)


class FixedActor(nn.Module):
    def __init__(self, action: float = 0.0, log_prob: float = 0.0):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(A))
        self.action, self.log_prob = action, log_prob

    def forward(self, features: torch.Tensor) -> FixedDist:
        return FixedDist(features.shape[0], self.action, self.log_prob, self.mu)


def encoded(batch: Batch) -> Encoded:
    return Encoded(batch, batch.observations.state, batch.next_observations.state)


def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ---------------------------------------------------------------------------- SAC backup
def test_soft_backup_on_a_known_case() -> None:
    b = make_batch(rewards=[1.0, 0.0, 0.5], terminals=[0.0, 1.0, 0.0])
    nets = nn.ModuleDict(
        {"actor": FixedActor(log_prob=-2.0), "target_critic": TableCritic([[1.0, 2.0, -1.0], [3.0, 0.5, 4.0]])}
    )
    y, _ = sac.soft_td_target(encoded(b), nets, 0.9, rng(), alpha=torch.tensor(0.5))
    # min over critics [1, 0.5, -1]; entropy bonus −0.5·(−2) = +1; row 1 is terminal
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 2.0, 0.0, 0.5 + 0.9 * 0.0]))
    y_no_entropy, _ = sac.soft_td_target(encoded(b), nets, 0.9, rng(), alpha=None)
    torch.testing.assert_close(y_no_entropy, torch.tensor([1.0 + 0.9, 0.0, 0.5 - 0.9]))


def test_max_backup_takes_the_best_sampled_action() -> None:
    b = make_batch(rewards=[0.0, 0.0], terminals=[0.0, 0.0])

    class SpreadDist(FixedDist):  # M samples with a_0 = 0, 1/M, ..., (M − 1)/M
        def sample(self, num: int | None = None, generator: torch.Generator | None = None):
            assert num is not None
            a = torch.linspace(0, 1, num + 1)[:-1].view(1, num, 1).expand(self.B, num, A)  # (B, M, A)
            return a, torch.zeros(self.B, num)

    class Spread(FixedActor):
        def forward(self, features: torch.Tensor) -> FixedDist:
            return SpreadDist(features.shape[0], 0.0, 0.0, self.mu)

    nets = nn.ModuleDict({"actor": Spread(), "target_critic": TableCritic([[0.0, 1.0], [0.5, 1.0]], slope=2.0)})
    y, _ = sac.soft_td_target(encoded(b), nets, 1.0, rng(), max_backup_samples=4)
    # max over a_0 ∈ {0, .25, .5, .75} of min_i (v_i + 2·a_0) = min(v) + 1.5
    torch.testing.assert_close(y, torch.tensor([1.5, 2.5]))


def test_sac_critic_loss_is_half_squared_error_summed_over_critics() -> None:
    b = make_batch(rewards=[1.0, 0.0], terminals=[1.0, 1.0])  # y = r
    nets = nn.ModuleDict(
        {
            "actor": FixedActor(),
            "critic": TableCritic([[2.0, 0.0], [1.0, 3.0]]),
            "target_critic": TableCritic([[0.0, 0.0], [0.0, 0.0]]),
            "log_alpha": Scalar(0.0),
        }
    )
    loss, metrics = sac.critic_loss(encoded(b), nets, SACConfig(), rng())
    # critic 0: errors (1, 0) -> ½·mean = 0.25; critic 1: errors (0, 3) -> ½·4.5 = 2.25
    assert loss.item() == pytest.approx(2.5)
    assert metrics["critic/td_target"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------- CQL / Cal-QL
def cql_nets(q: list[list[float]]) -> nn.ModuleDict:
    return nn.ModuleDict(
        {
            "actor": FixedActor(action=0.0, log_prob=0.0),  # π proposals: density 1, so no IS correction
            "critic": TableCritic(q),
            "target_critic": TableCritic(q),
            "log_alpha": Scalar(0.0),
        }
    )


def expected_logsumexp(q: torch.Tensor, q_policy: torch.Tensor, M: int) -> torch.Tensor:
    """T = 1: log[(M·exp(q − A·log ½) + 2M·exp(q_policy)) / 3M] per (member, row)."""
    uniform = math.log(M) + q - A * math.log(0.5)
    policy = math.log(2 * M) + q_policy
    return torch.logaddexp(uniform, policy) - math.log(3 * M)


def test_calql_bound_raises_policy_q_to_mc_return_where_lower_only() -> None:
    q = [[0.0, 2.0, -1.0], [0.5, 3.0, 0.2]]  # (N, B): Q is the same for every action of a row
    mc = [1.0, 0.5, -3.0]  # row 0: Q below the bound (raised); rows 1, 2: above (left alone)
    b = make_batch(rewards=[0.0] * 3, terminals=[1.0] * 3, mc_returns=mc)
    cfg = CalQLConfig(num_samples=4, backup_entropy=False)
    qt, bound = torch.tensor(q), torch.tensor(mc)
    _, plain = cql.critic_loss(encoded(b), cql_nets(q), cfg, rng())
    _, calibrated = cql.critic_loss(encoded(b), cql_nets(q), cfg, rng(), q_lower_bound=bound)

    torch.testing.assert_close(plain["cql/logsumexp"], expected_logsumexp(qt, qt, 4).mean())
    raised = torch.maximum(qt, bound)  # (N, B): only row 0 changes
    assert torch.equal(raised[:, 1:], qt[:, 1:]) and (raised[:, 0] > qt[:, 0]).all()
    torch.testing.assert_close(calibrated["cql/logsumexp"], expected_logsumexp(qt, raised, 4).mean())
    assert calibrated["calql/bound_rate"].item() == pytest.approx(2 / 6)  # 2 of 6 (member, row) pairs
    assert "calql/bound_rate" not in plain
    assert calibrated["cql/gap"] > plain["cql/gap"]


def test_calql_bound_blocks_the_push_down_gradient_on_bounded_values() -> None:
    q = [[0.0, 2.0], [0.0, 2.0]]
    b = make_batch(rewards=[0.0, 0.0], terminals=[1.0, 1.0], mc_returns=[5.0, 5.0])  # every Q is bounded
    nets = cql_nets(q)
    cfg = CalQLConfig(num_samples=2, backup_entropy=False, cql_alpha=1.0)
    loss, _ = cql.critic_loss(encoded(b), nets, cfg, rng(), q_lower_bound=b.mc_returns)
    loss.backward()
    grad_bounded = nets.critic.values.grad.clone()
    nets.critic.values.grad = None
    loss, _ = cql.critic_loss(encoded(b), nets, cfg, rng())
    loss.backward()
    # bounded: the log-sum-exp only sees the uniform proposals, so its push-down on Q is weaker
    assert (grad_bounded < nets.critic.values.grad).all()


def test_calql_without_calibration_is_cql(small_batch: Batch) -> None:
    spec = ObservationSpec.from_batch(small_batch)
    tiny = {"hidden": (16,), "num_samples": 2, "seed": 3}
    runs = []
    for name, cfg in (("cql", CQLConfig(**tiny)), ("calql", CalQLConfig(**tiny, calibrate=False))):
        algo = ALGOS[name](cfg, spec)
        algo.update(small_batch)
        runs.append(algo.nets.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    calibrated = ALGOS["calql"](CalQLConfig(**tiny), spec)
    metrics = calibrated.update(small_batch)
    assert 0.0 <= metrics["calql/bound_rate"] <= 1.0
    assert not all(torch.equal(runs[0][k], v) for k, v in calibrated.nets.state_dict().items())


@pytest.fixture
def small_batch() -> Batch:
    b = make_batch(rewards=[0.0, 1.0, 0.0, 0.0], terminals=[0.0, 1.0, 0.0, 0.0], mc_returns=[50.0, 1.0, 20.0, 30.0])
    return dataclasses.replace(b, actions=torch.rand(4, A, generator=torch.Generator().manual_seed(1)) * 2 - 1)


# ---------------------------------------------------------------------------- AWAC
def test_awac_weights_are_exp_advantage_clipped() -> None:
    cfg = AWACConfig(awac_lambda=2.0, max_weight=20.0)
    w = awac.advantage_weights(torch.tensor([-2.0, 0.0, 4.0, 100.0]), cfg)
    torch.testing.assert_close(w, torch.tensor([math.exp(-1.0), 1.0, math.exp(2.0), 20.0]))


def test_awac_actor_loss_weights_log_likelihood_by_the_advantage() -> None:
    # Q(s, a) = v_b + 10·a_0; data actions a_0 = (1, −0.1), policy samples a_0 = 0 -> A = (10, −1)
    actions = torch.tensor([[1.0, 0.0], [-0.1, 0.0]])
    b = make_batch(rewards=[0.0, 0.0], terminals=[0.0, 0.0], actions=actions)
    nets = nn.ModuleDict({"actor": FixedActor(action=0.0), "critic": TableCritic([[0.3, -0.2], [0.5, 0.1]], 10.0)})
    cfg = AWACConfig(awac_lambda=1.0, max_weight=20.0, num_v_samples=3)
    loss, metrics = awac.actor_loss(encoded(b), nets, cfg, rng())
    weight = torch.tensor([20.0, math.exp(-1.0)])  # exp(10) clipped to 20
    log_prob = -actions.pow(2).sum(-1)  # μ = 0
    assert loss.item() == pytest.approx(-(weight * log_prob).mean().item(), rel=1e-5)
    assert metrics["actor/advantage"].item() == pytest.approx(4.5, rel=1e-5)
    assert metrics["actor/weight_clipped"].item() == pytest.approx(0.5)
    loss.backward()
    assert nets.actor.mu.grad is not None and nets.critic.values.grad is None, "weights carry no critic gradient"


# ---------------------------------------------------------------------------- TD3+BC
def test_td3bc_lambda_normalizes_the_q_scale() -> None:
    actions = torch.tensor([[0.5, 0.0], [-0.5, 0.2], [0.0, 0.0]])
    b = make_batch(rewards=[0.0] * 3, terminals=[0.0] * 3, actions=actions)
    cfg = TD3BCConfig(alpha=2.5)
    grads = []
    for scale in (1.0, 10.0):
        torch.manual_seed(0)
        critic = TableCritic([[scale * 1.0, scale * 2.0, scale * -3.0], [0.0, 0.0, 0.0]], slope=scale)
        nets = nn.ModuleDict({"actor": NoisyDeterministicActor(3, A, (8,)), "critic": critic})
        loss, metrics = td3bc.actor_loss(encoded(b), nets, cfg)
        pi = nets.actor(b.observations.state).mode()  # (B, A)
        q = critic.values[0] + critic.slope * pi[:, 0]  # Q_1 (B,)
        lmbda = 2.5 / q.abs().mean()
        assert metrics["actor/lambda"].item() == pytest.approx(lmbda.item(), rel=1e-5)
        bc = (pi - actions).pow(2).mean()
        assert loss.item() == pytest.approx((-lmbda * q.mean() + bc).item(), rel=1e-5)
        assert metrics["actor/bc_loss"].item() == pytest.approx(bc.item(), rel=1e-5)
        actor_params = list(nets.actor.parameters())
        got = torch.autograd.grad(loss, actor_params)
        want = torch.autograd.grad(-lmbda.detach() * q.mean() + bc, actor_params)  # λ a constant
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)
        grads.append(torch.cat([g.flatten() for g in got]))
    # the actor gradient is nonzero and does not change with the scale of Q
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_td3bc_target_policy_smoothing_is_clipped() -> None:
    b = make_batch(rewards=[0.0] * 3, terminals=[0.0] * 3)
    torch.manual_seed(0)
    target_actor = NoisyDeterministicActor(3, A, (8,))
    target_critic = TableCritic([[0.0] * 3, [0.0] * 3])
    nets = nn.ModuleDict(
        {"target_actor": target_actor, "target_critic": target_critic, "critic": TableCritic([[0.0] * 3] * 2)}
    )
    cfg = TD3BCConfig(policy_noise=10.0, noise_clip=0.05)  # noise always saturates the clip
    td3bc.critic_loss(encoded(b), nets, cfg, rng())
    next_a = target_critic.seen[0]  # (B, A): what the target critic scored
    mu = target_actor(b.next_observations.state).mode().detach()
    deviation = (next_a - mu).abs()
    inside = mu.abs() < 0.95  # away from the action box, the clip of the noise decides
    assert torch.allclose(deviation[inside], torch.full_like(deviation[inside], 0.05), atol=1e-6)
    assert next_a.abs().max() <= 1.0


def test_td3bc_delays_policy_updates(small_batch: Batch) -> None:
    algo = ALGOS["td3bc"](TD3BCConfig(hidden=(16,), policy_freq=2), ObservationSpec.from_batch(small_batch))
    changed = []
    for _ in range(4):
        before = [p.detach().clone() for p in algo.nets.actor.parameters()]
        metrics = algo.update(small_batch)
        changed.append(not all(torch.equal(p, q) for p, q in zip(before, algo.nets.actor.parameters(), strict=True)))
        assert ("actor/lambda" in metrics) == changed[-1]
    assert changed == [True, False, True, False]


def test_deterministic_actor_explores_only_when_sampled() -> None:
    feats = torch.randn(5, 3)
    actor = NoisyDeterministicActor(3, A, (8,), exploration_noise=0.3)
    dist = actor(feats)
    torch.testing.assert_close(dist.mode(), DeterministicActor.forward(actor, feats))
    a, log_prob = dist.sample(generator=rng())
    assert log_prob is None and a.shape == (5, A) and a.abs().max() <= 1
    assert not torch.equal(a, dist.mode())
    assert dist.sample(7, rng())[0].shape == (5, 7, A)


# ---------------------------------------------------------------------------- the auxiliary-loss hook
@pytest.mark.parametrize("name", ["sac", "cql", "calql", "awac", "td3bc"])
def test_auxiliary_loss_joins_the_encoder_step(name: str, small_batch: Batch) -> None:
    cls = ALGOS[name]
    cfg = cls.config_class(hidden=(16,), encoder=EncoderConfig(state_hidden=8), seed=1)
    spec = ObservationSpec.from_batch(small_batch)
    plain, aux = cls(cfg, spec), cls(cfg, spec)

    def aux_term() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = sum(p.pow(2).sum() for p in aux.nets.encoder.parameters())  # pulls the encoder to 0
        return 100.0 * loss, {"aux/l2": loss.detach()}

    aux.auxiliary = aux_term
    plain.update(small_batch)
    metrics = aux.update(small_batch)
    assert metrics["aux/l2"] > 0
    p, q = plain.nets.encoder.state_dict(), aux.nets.encoder.state_dict()
    assert all(not torch.equal(p[k], q[k]) for k in p), "the auxiliary loss must reach every encoder parameter"
    assert all(torch.equal(plain.nets.actor.state_dict()[k], v) for k, v in aux.nets.actor.state_dict().items())


# ---------------------------------------------------------------------------- IQL (goal-conditioned)
class FixedValue(nn.Module):
    def __init__(self, values: list[float]):
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.values  # (B,)


def test_iql_actor_ignores_rows_whose_goal_comes_from_another_episode() -> None:
    from data_lake.batch import FINAL, FUTURE, NEGATIVE
    from robot_rl.algos import IQLConfig, iql

    b = make_batch([0.0] * 4, [0.0] * 4, actions=torch.tensor([[0.5, 0.0], [1.0, 1.0], [-1.0, 0.3], [0.2, 0.2]]))
    goal = Observation({}, torch.zeros(4, 2))
    b = dataclasses.replace(b, goals=goal, goal_source=torch.tensor([FUTURE, NEGATIVE, FINAL, NEGATIVE]))
    nets = nn.ModuleDict(
        {"target_critic": TableCritic([[0.0] * 4, [0.0] * 4]), "value": FixedValue([0.0] * 4), "actor": FixedActor()}
    )
    loss, _ = iql.actor_loss(encoded(b), nets, IQLConfig(beta=1.0))
    # advantages are 0, so weights are 1 on the two own-episode rows (rescaled to their mean) and 0 on negatives
    want = b.actions[[0, 2]].pow(2).sum(-1).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    plain = dataclasses.replace(b, goals=None)  # no goals: every row counts
    loss_all, _ = iql.actor_loss(encoded(plain), nets, IQLConfig(beta=1.0))
    assert loss_all.item() == pytest.approx(b.actions.pow(2).sum(-1).mean().item(), rel=1e-6)


def test_iql_mc_lower_bound_raises_the_q_target() -> None:
    from robot_rl.algos import IQLConfig, iql

    b = make_batch([0.0, 1.0, 0.0], [0.0, 1.0, 0.0], mc_returns=[0.8, 1.0, 0.0])
    nets = nn.ModuleDict({"critic": TableCritic([[0.0] * 3, [0.0] * 3]), "value": FixedValue([0.5, 0.5, 0.5])})
    _, plain = iql.critic_loss(encoded(b), nets, IQLConfig(gamma=0.9))
    _, bounded = iql.critic_loss(encoded(b), nets, IQLConfig(gamma=0.9, mc_lower_bound=True))
    # targets: plain (0.45, 1.0, 0.45); bounded (0.8, 1.0, 0.45)
    assert plain["critic/td_target"].item() == pytest.approx((0.45 + 1.0 + 0.45) / 3)
    assert bounded["critic/td_target"].item() == pytest.approx((0.8 + 1.0 + 0.45) / 3)


def test_iql_reward_offset_gives_ogbench_success_minus_one_targets() -> None:
    from robot_rl.algos import IQLConfig, iql

    b = make_batch([0.0, 1.0], [0.0, 1.0])  # a step that misses the goal, one that reaches it (terminal)
    nets = nn.ModuleDict({"critic": TableCritic([[0.0] * 2, [0.0] * 2]), "value": FixedValue([-10.0, -10.0])})
    _, m = iql.critic_loss(encoded(b), nets, IQLConfig(gamma=0.9, reward_offset=-1.0))
    # targets: -1 + 0.9 * (-10) = -10 and 1 - 1 = 0 (success ends it)
    assert m["critic/td_target"].item() == pytest.approx((-10.0 + 0.0) / 2)
    with pytest.raises(ValueError, match="mc_lower_bound"):
        IQLConfig(reward_offset=-1.0, mc_lower_bound=True)


def test_iql_ddpg_bc_actor_is_normalized_q_plus_alpha_bc() -> None:
    from robot_rl.algos import IQLConfig, iql

    actions = torch.tensor([[0.5, 0.0], [1.0, -1.0]])
    critic = TableCritic([[2.0, 4.0], [3.0, 5.0]], slope=1.0)  # min over members: (2, 4) + a_0
    nets = nn.ModuleDict({"critic": critic, "actor": FixedActor()})  # μ = 0 for every row
    features = torch.zeros(2, 3)
    loss, m = iql.ddpg_bc_actor_loss(features, actions, nets, IQLConfig(alpha=0.5))
    q = torch.tensor([2.0, 4.0])  # at μ = 0
    bc = 0.5 * 0.5 * actions.pow(2).sum(-1).mean()
    assert m["actor/q_loss"].item() == pytest.approx((-q.mean() / q.abs().mean()).item())
    assert m["actor/bc_loss"].item() == pytest.approx(bc.item())
    loss.backward()
    # d/dμ_0: -slope / E|Q| from the Q term, α·(μ − a) averaged for the BC term
    want0 = -1.0 / 3.0 + 0.5 * (0.0 - actions[:, 0]).mean().item()
    assert nets.actor.mu.grad[0].item() == pytest.approx(want0, rel=1e-5)


def test_layer_norm_critic_normalizes_every_hidden_layer() -> None:
    from robot_rl.nets import Critic

    torch.manual_seed(0)
    c = Critic(3, A, (8, 8), n=2, layer_norm=True)
    f, a = torch.randn(5, 3), torch.rand(5, A)
    q = c(f, a)
    assert q.shape == (2, 5)
    # the output depends on the first layer only through its normalized activations: scaling it changes nothing
    with torch.no_grad():
        c.hidden[0].weight.mul_(7.0)
        c.hidden[0].bias.mul_(7.0)
    assert torch.allclose(c(f, a), q, atol=1e-5)
    plain = Critic(3, A, (8, 8), n=2)
    assert not plain.layer_norm
