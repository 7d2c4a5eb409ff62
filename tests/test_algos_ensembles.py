"""Loss terms of the ensemble algorithms on hand-made batches: SAC-N's minimum over N critics, EDAC's
gradient-diversity term, REM's random mixtures, and ReBRAC's penalized target and actor (plus the
sampler's next actions ReBRAC reads)."""

from __future__ import annotations

import dataclasses
import math
import uuid

import numpy as np
import pytest
import torch
from torch import nn

from data_lake import Episode, Lake
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from robot_rl.algos import ALGOS, EDACConfig, ReBRACConfig, REMConfig, SACNConfig, edac, rebrac, rem, sac, sac_n
from robot_rl.algos.base import Scalar
from robot_rl.algos.qtopt import CEMConfig
from robot_rl.nets import Critic, EncoderConfig, ObservationSpec
from tests.test_algos_losses import A, FixedActor, TableCritic, encoded, make_batch, rng


# ---------------------------------------------------------------------------- SAC-N
def test_sac_n_target_and_actor_take_the_minimum_over_all_n_critics() -> None:
    b = make_batch(rewards=[1.0, 0.0, 0.5], terminals=[0.0, 1.0, 0.0])
    target = [[3.0, 1.0, 2.0], [0.5, 4.0, 2.5], [2.0, 2.0, -1.0], [1.5, 0.2, 0.0], [4.0, 3.0, 3.0]]  # (N=5, B)
    online = [[1.0, 0.0, 0.0]] * 5
    nets = nn.ModuleDict(
        {
            "actor": FixedActor(log_prob=-2.0),
            "critic": TableCritic(online),
            "target_critic": TableCritic(target),
            "log_alpha": Scalar(math.log(0.5)),
        }
    )
    cfg = SACNConfig(num_critics=5, gamma=0.9)
    loss, m = sac_n.critic_loss(encoded(b), nets, cfg, rng())
    # min over the 5 target critics: (0.5, 0.2, −1); entropy bonus −0.5·(−2) = +1; row 1 is terminal
    y = torch.tensor([1.0 + 0.9 * (0.5 + 1.0), 0.0, 0.5 + 0.9 * (-1.0 + 1.0)])
    assert m["critic/td_target"].item() == pytest.approx(y.mean().item())
    want = sum((torch.tensor(q) - y).pow(2).mean() for q in online)  # Σ_i E[(Q_i − y)²], not halved
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    # the actor maximizes the minimum over the 5 online critics
    nets["critic"] = TableCritic(target)
    _, am = sac.actor_loss(encoded(b), nets, cfg, rng())
    assert am["actor/q"].item() == pytest.approx((0.5 + 0.2 - 1.0) / 3)


def test_sac_n_defaults_are_the_papers_ensemble() -> None:
    cfg = SACNConfig()
    assert (cfg.num_critics, cfg.hidden) == (10, (256, 256, 256))
    assert EDACConfig().eta == 1.0
    for cls in (SACNConfig, EDACConfig):
        with pytest.raises(ValueError, match="num_critics must be >= 2"):
            cls(num_critics=1)


# ---------------------------------------------------------------------------- EDAC
def linear_ensemble(action_weights: list[list[float]], feature_dim: int = 3) -> Critic:
    """Q_i(s, a) = w_f,i·f + w_a,i·a + b_i: ∇_a Q_i = w_a,i, the same at every (s, a)."""
    critic = Critic(feature_dim, A, hidden=(), n=len(action_weights))
    with torch.no_grad():
        critic.out.weight[:, feature_dim:, 0] = torch.tensor(action_weights)  # (N, A)
    return critic


def explicit_similarity(w: torch.Tensor) -> torch.Tensor:
    """1/(N − 1)·Σ_{i≠j} ⟨w_i/‖w_i‖, w_j/‖w_j‖⟩ written out pair by pair."""
    n = len(w)
    unit = [w[i] / (w[i].norm() + 1e-10) for i in range(n)]
    return sum(unit[i] @ unit[j] for i in range(n) for j in range(n) if i != j) / (n - 1)


def test_edac_similarity_of_known_action_gradients() -> None:
    critic = linear_ensemble([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])  # unit: (1, 0), (0, 1), (1, 1)/√2
    f, a = torch.randn(4, 3), torch.rand(4, A) * 2 - 1
    q, grads = edac.action_gradients(critic, f, a)
    torch.testing.assert_close(q, critic(f, a))
    torch.testing.assert_close(grads, critic.out.weight[:, 3:, 0].detach().unsqueeze(1).expand(3, 4, A))
    # pairs: ⟨ĝ1, ĝ2⟩ = 0, ⟨ĝ1, ĝ3⟩ = ⟨ĝ2, ĝ3⟩ = 1/√2; each counted twice, divided by N − 1 = 2
    es = edac.ensemble_similarity(grads)
    assert es.item() == pytest.approx(math.sqrt(2), rel=1e-6)
    # its gradient in the critic's parameters is autograd's on the explicit formula
    got = torch.autograd.grad(es, critic.out.weight)[0]
    want = torch.autograd.grad(explicit_similarity(critic.out.weight[:, 3:, 0]), critic.out.weight)[0]
    torch.testing.assert_close(got, want)
    assert got[:, 3:].abs().sum() > 0 and got[:, :3].abs().sum() == 0  # only the action weights matter


def test_edac_action_gradients_are_per_critic_in_a_deep_ensemble() -> None:
    torch.manual_seed(0)
    critic = Critic(3, A, (8, 8), n=4, layer_norm=True)
    f = torch.randn(5, 3, requires_grad=True)
    a = torch.rand(5, A) * 2 - 1
    q, grads = edac.action_gradients(critic, f, a)
    explicit = []
    for i in range(4):  # one member at a time: ∇_a Q_i by plain autograd
        ai = a.clone().requires_grad_()
        explicit.append(torch.autograd.grad(critic(f, ai)[i].sum(), ai, create_graph=True)[0])
    want = torch.stack(explicit)  # (N, B, A)
    torch.testing.assert_close(grads, want)
    torch.testing.assert_close(q, critic(f, a))
    params = [*critic.parameters(), f]
    got = torch.autograd.grad(edac.ensemble_similarity(grads), params, allow_unused=True, materialize_grads=True)
    unit = want / (want.norm(dim=-1, keepdim=True) + 1e-10)
    gram = torch.einsum("iba,jba->bij", unit, unit)  # (B, N, N), the reference's masked Gram matrix
    ref = (gram * (1 - torch.eye(4))).sum((1, 2)).mean() / 3
    expected = torch.autograd.grad(ref, params, allow_unused=True, materialize_grads=True)
    for g, w in zip(got, expected, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_edac_critic_loss_is_sac_n_plus_eta_times_similarity() -> None:
    b = make_batch(rewards=[0.0, 1.0, 0.0], terminals=[0.0, 1.0, 0.0], actions=torch.rand(3, A))
    spec = ObservationSpec.from_batch(b)
    cfg = EDACConfig(hidden=(16,), num_critics=3, eta=2.5, encoder=EncoderConfig(state_hidden=8), seed=1)
    algo = ALGOS["edac"](cfg, spec)
    from robot_rl.algos.base import encode

    loss, m = edac.critic_loss(encode(algo.nets.encoder, b), algo.nets, cfg, rng())
    plain, pm = sac_n.critic_loss(encode(algo.nets.encoder, b), algo.nets, cfg, rng())
    assert pm["critic/td_loss"].item() == pytest.approx(m["critic/td_loss"].item(), rel=1e-5)
    assert loss.item() == pytest.approx(plain.item() + 2.5 * m["edac/similarity"].item(), rel=1e-5)
    assert -1.0 <= m["edac/similarity"].item() <= 3 * 2 / 2  # (N·(N−1) pairs in [−1, 1]) / (N − 1)


# ---------------------------------------------------------------------------- REM
def test_rem_mixture_weights_lie_on_the_simplex_and_are_drawn_per_batch() -> None:
    g = rng()
    draws = torch.stack([rem.mixture_weights(5, g) for _ in range(200)])  # (200, K)
    assert draws.shape == (200, 5)
    assert (draws >= 0).all()
    torch.testing.assert_close(draws.sum(1), torch.ones(200))
    assert len({tuple(d.tolist()) for d in draws}) == 200, "a fresh α for every batch"
    torch.testing.assert_close(draws.mean(0), torch.full((5,), 0.2), atol=0.02, rtol=0)  # exchangeable heads
    torch.testing.assert_close(rem.mixture_weights(5, rng()), rem.mixture_weights(5, rng()))  # from the generator


def test_rem_loss_mixes_online_and_target_heads_with_the_same_alpha() -> None:
    b = make_batch(rewards=[1.0, 0.0, 0.5], terminals=[0.0, 1.0, 0.0])
    online = [[0.5, 2.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 3.0]]  # (K=3, B): constant in the action
    target = [[2.0, 5.0, 1.0], [0.0, 5.0, -1.0], [4.0, 5.0, 2.0]]
    nets = nn.ModuleDict({"critic": TableCritic(online), "target_critic": TableCritic(target)})
    cfg = REMConfig(num_heads=3, gamma=0.9, cem=CEMConfig(samples=8, elites=2))
    loss, m = rem.critic_loss(encoded(b), nets, cfg, rng())
    alpha = rem.mixture_weights(3, rng())  # the loss draws α first from the same generator
    q_alpha = alpha @ torch.tensor(online)  # (B,)
    y = torch.tensor([1.0, 0.0, 0.5]) + 0.9 * torch.tensor([1.0, 0.0, 1.0]) * (alpha @ torch.tensor(target))
    assert m["critic/td_target"].item() == pytest.approx(y.mean().item(), rel=1e-6)
    assert m["critic/q_data"].item() == pytest.approx(q_alpha.mean().item(), rel=1e-6)
    err = q_alpha - y
    huber = torch.where(err.abs() < 1, 0.5 * err**2, err.abs() - 0.5).mean()
    assert loss.item() == pytest.approx(huber.item(), rel=1e-6)
    loss.backward()
    d_huber = err.clamp(-1, 1) / 3  # (B,)
    torch.testing.assert_close(nets.critic.values.grad, alpha[:, None] * d_huber[None, :])
    assert m["rem/alpha_max"].item() == pytest.approx(alpha.max().item())


def test_rem_target_maximizes_the_mixture_over_actions() -> None:
    b = make_batch(rewards=[0.0, 0.0], terminals=[0.0, 0.0])
    # Q̄_k = v_k + 2·a_0: the mixture's max over a ∈ [-1, 1]^A is Σ α_k v_k + 2 at a_0 = 1
    target = TableCritic([[1.0, 0.0], [3.0, -1.0]], slope=2.0)
    nets = nn.ModuleDict({"critic": TableCritic([[0.0, 0.0], [0.0, 0.0]]), "target_critic": target})
    cfg = REMConfig(num_heads=2, gamma=1.0, target_cem=CEMConfig(samples=64, elites=6, iterations=3))
    alpha = rem.mixture_weights(2, rng())
    y = rem.td_target(encoded(b), nets, cfg, alpha, rng())
    best = alpha @ torch.tensor([[1.0, 0.0], [3.0, -1.0]]) + 2.0
    assert (y <= best + 1e-6).all() and (y > best - 0.05).all()


class SlopeHeads(nn.Module):
    """Q_k(s, a) = slope_k·a_0 for every state."""

    def __init__(self, slopes: list[float]):
        super().__init__()
        self.slopes = torch.tensor(slopes)  # (K,)

    def q_values(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.slopes.view(-1, 1, 1) * actions[..., 0]  # (K, B, M)


def test_rem_acts_on_the_mean_of_its_heads() -> None:
    b = make_batch(rewards=[0.0] * 4, terminals=[0.0] * 4)
    encoder = ALGOS["rem"](REMConfig(hidden=(8,), num_heads=3), ObservationSpec.from_batch(b)).nets.encoder
    # Q_1 rises with a_0, the mean (slope −2/3) falls: the mean's argmax is at a_0 = −1
    policy = rem.REMPolicy(encoder, SlopeHeads([1.0, -3.0, 0.0]), CEMConfig(samples=32, elites=4))
    a = policy.act_on(torch.zeros(4, 3), deterministic=True, generator=rng())  # (B, A)
    assert (a[:, 0] < -0.8).all()


def test_rem_q_estimate_is_the_mean_of_its_heads() -> None:
    from robot_rl.algos.base import encode

    b = make_batch(rewards=[0.0] * 4, terminals=[0.0] * 4, actions=torch.rand(4, A))
    algo = ALGOS["rem"](REMConfig(hidden=(8,), num_heads=3), ObservationSpec.from_batch(b))
    q = algo.nets.critic(encode(algo.nets.encoder, b, next_observations=False).features, b.actions)  # (K, B)
    torch.testing.assert_close(algo.q_estimate(b), q.mean(0).detach())


# ---------------------------------------------------------------------------- ReBRAC
class ConstantActor(nn.Module):
    """μ(s) = action for every row (a target actor whose smoothed action is known when σ = 0)."""

    def __init__(self, action: list[float]):
        super().__init__()
        self.action = nn.Parameter(torch.tensor(action))

    def forward(self, features: torch.Tensor):
        from robot_rl.nets import Deterministic

        return Deterministic(self.action.expand(features.shape[0], -1), 0.1)


def test_rebrac_target_subtracts_the_behavior_penalty_at_the_next_action() -> None:
    next_actions = torch.tensor([[0.5, 0.0], [1.0, 1.0], [0.0, -0.2]])
    b = dataclasses.replace(make_batch(rewards=[1.0, 0.0, 0.5], terminals=[0.0, 1.0, 0.0]), next_actions=next_actions)
    target = [[2.0, 1.0, 0.0], [1.0, 3.0, -1.0]]  # min over members: (1, 1, −1)
    nets = nn.ModuleDict(
        {
            "target_actor": ConstantActor([0.2, 0.0]),
            "target_critic": TableCritic(target),
            "critic": TableCritic([[0.0] * 3, [1.0] * 3]),
        }
    )
    cfg = ReBRACConfig(gamma=0.9, beta_critic=0.5, policy_noise=0.0)  # ã' = π̄(s') = (0.2, 0)
    loss, m = rebrac.critic_loss(encoded(b), nets, cfg, rng())
    penalty = (torch.tensor([0.2, 0.0]) - next_actions).pow(2).sum(-1)  # (0.09, 1.64, 0.04)
    y = torch.tensor([1.0, 0.0, 0.5]) + 0.9 * torch.tensor([1.0, 0.0, 1.0]) * (
        torch.tensor([1.0, 1.0, -1.0]) - 0.5 * penalty
    )
    assert m["critic/td_target"].item() == pytest.approx(y.mean().item(), rel=1e-6)
    assert m["rebrac/critic_penalty"].item() == pytest.approx(penalty.mean().item(), rel=1e-6)
    want = (torch.zeros(3) - y).pow(2).mean() + (torch.ones(3) - y).pow(2).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    _, plain = rebrac.critic_loss(encoded(b), nets, dataclasses.replace(cfg, beta_critic=0.0), rng())
    assert plain["critic/td_target"].item() == pytest.approx(
        (torch.tensor([1.0, 0.0, 0.5]) + 0.9 * torch.tensor([1.0, 0.0, -1.0])).mean().item()
    )
    with pytest.raises(ValueError, match="next actions"):
        rebrac.critic_loss(encoded(dataclasses.replace(b, next_actions=None)), nets, cfg, rng())


def test_rebrac_actor_is_beta_bc_minus_normalized_min_q() -> None:
    actions = torch.tensor([[0.5, 0.0], [1.0, -1.0]])
    b = make_batch(rewards=[0.0, 0.0], terminals=[0.0, 0.0], actions=actions)
    critic = TableCritic([[2.0, 4.0], [3.0, -6.0]], slope=1.0)  # min over members at a_0 = 0.3: (2.3, −5.7)
    nets = nn.ModuleDict({"critic": critic, "actor": ConstantActor([0.3, 0.1])})
    loss, m = rebrac.actor_loss(encoded(b), nets, ReBRACConfig(beta_actor=0.5))
    pi = torch.tensor([0.3, 0.1])
    q = torch.tensor([2.3, -5.7])
    bc = (pi - actions).pow(2).sum(-1)  # summed over action dims, as the reference
    lmbda = 1.0 / q.abs().mean()
    assert m["actor/lambda"].item() == pytest.approx(lmbda.item(), rel=1e-6)
    assert loss.item() == pytest.approx((0.5 * bc - lmbda * q).mean().item(), rel=1e-6)
    loss.backward()
    # d/dπ_0: β·mean(2(π_0 − a_0)) − λ·slope; λ carries no gradient
    want0 = 0.5 * (2 * (0.3 - actions[:, 0])).mean() - lmbda
    assert nets.actor.action.grad[0].item() == pytest.approx(want0.item(), rel=1e-5)


def test_sampler_gives_the_datas_next_action() -> None:
    """a'_D is the action stored at t + 1; into an episode's last step (which stores none) it repeats a_t."""
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    episodes = []
    for e in range(3):
        T = 5 + e
        t = np.arange(T, dtype=np.float32)
        episodes.append(
            Episode.make(
                images={},
                state=np.stack([t, np.full(T, e, np.float32)], 1),
                action=np.stack([t / 10, np.full(T, e / 10, np.float32)], 1),
                reward=np.zeros(T, np.float32),
                task="synthetic/steps",
            )
        )
    lake.append(episodes)
    relabel = RelabelConfig(future=0, final=0, negative=0, task=1.0)
    with Sampler(
        lake.checkout(), SamplerConfig(batch_size=64, cameras=(), relabel=relabel, seed=0), progress=False
    ) as s:
        batch = next(s)
    t, e = batch.observations.state[:, 0], batch.observations.state[:, 1]
    last = t + 1 == 4 + e  # transitions into the episode's last step (T − 1 = 4 + e)
    assert last.any() and (~last).any()
    want_t = torch.where(last, t, t + 1)
    torch.testing.assert_close(batch.next_actions, torch.stack([want_t / 10, e / 10], 1))
    torch.testing.assert_close(batch.actions, torch.stack([t / 10, e / 10], 1))
