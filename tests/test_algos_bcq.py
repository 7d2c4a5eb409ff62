"""BCQ's loss terms and acting, and the shared conditional VAE, on hand-made batches with known values.

Stub VAEs return known candidate actions and stub critics known Q-values per (member, row, sample), so
the soft clipped double-Q target, the VAE loss and the argmax policy can be computed by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robot_rl.algos import bcq
from robot_rl.algos.base import Encoded
from robot_rl.algos.bcq import BCQConfig, BCQPolicy, Perturbation
from robot_rl.nets import ConditionalVAE, Critic, gaussian_kl, vae_loss
from tests.test_algos_losses import A, encoded, make_batch, rng


class ListVAE(nn.Module):
    """decode -> the given candidates (B, n, A) (or their first, without ``num``); forward -> known values."""

    def __init__(self, candidates: torch.Tensor):
        super().__init__()
        self.candidates = candidates  # (B, n, A)
        self.w = nn.Parameter(torch.zeros(()))

    def decode(self, embedding, z=None, generator=None, num=None):
        if num is None:
            return self.candidates[:, 0]  # (B, A)
        assert num == self.candidates.shape[1]
        return self.candidates  # (B, n, A)


class Identity(nn.Module):
    """ξ = 0: the candidates are not perturbed."""

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return actions


class IndexCritic(nn.Module):
    """Q_j(s_b, a) = table[j, b, round(a_0)]: the candidate's index is stored in its first coordinate."""

    def __init__(self, table: list[list[list[float]]]):
        super().__init__()
        self.table = torch.tensor(table)  # (N, B, n)
        self.n = self.table.shape[0]
        self.w = nn.Parameter(torch.zeros(()))

    def q_values(self, features: torch.Tensor, actions: torch.Tensor, members: int | None = None) -> torch.Tensor:
        idx = actions[..., 0].round().long()  # (B, M)
        q = self.table.gather(2, idx.unsqueeze(0).expand(self.n, -1, -1))  # (N, B, M)
        return q if members is None else q[:members]

    def forward(self, features: torch.Tensor, actions: torch.Tensor, members: int | None = None) -> torch.Tensor:
        return self.q_values(features, actions.unsqueeze(1), members).squeeze(-1)  # (N, B)


def indexed_candidates(B: int, n: int) -> torch.Tensor:
    """Candidate i of every row has a_0 = i (and a_1 = −i, so rows are told apart from their index only)."""
    i = torch.arange(n, dtype=torch.float32)
    return torch.stack([i, -i], dim=-1).unsqueeze(0).expand(B, n, A).clone()  # (B, n, A)


# ---------------------------------------------------------------------------- the soft clipped double-Q target
def test_soft_clipped_target_weights_min_and_max_then_takes_the_best_sample() -> None:
    # two critics, two rows, three samples of G(s')
    table = [
        [[1.0, 4.0, 2.0], [0.0, 1.0, 5.0]],  # Q̄_1
        [[3.0, 0.0, 2.0], [2.0, 1.0, -1.0]],  # Q̄_2
    ]
    b = make_batch(rewards=[1.0, 0.5], terminals=[0.0, 0.0])
    nets = nn.ModuleDict(
        {"vae": ListVAE(indexed_candidates(2, 3)), "target_actor": Identity(), "target_critic": IndexCritic(table)}
    )
    nets["critic"] = IndexCritic([[[0.0, 0.0, 0.0]] * 2, [[0.0, 0.0, 0.0]] * 2])
    cfg = BCQConfig(gamma=0.9, lmbda=0.75, num_samples=3)
    # row 0: min (1, 0, 2), max (3, 4, 2) -> 0.75·min + 0.25·max = (1.5, 1.0, 2.0) -> max 2.0
    # row 1: min (0, 1, −1), max (2, 1, 5) -> (0.5, 1.0, 0.5) -> max 1.0 (not sample 2, whose max_j is 5)
    want = torch.tensor([1.0 + 0.9 * 2.0, 0.5 + 0.9 * 1.0])
    torch.testing.assert_close(bcq.soft_clipped_value(torch.tensor(table), 0.75), torch.tensor([2.0, 1.0]))
    _, metrics = bcq.critic_loss(encoded(b), nets, cfg, rng())
    torch.testing.assert_close(metrics["critic/td_target"], want.mean())
    # λ = 1 is the clipped double-Q (min), λ = 0 the max over critics
    torch.testing.assert_close(bcq.soft_clipped_value(torch.tensor(table), 1.0), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(bcq.soft_clipped_value(torch.tensor(table), 0.0), torch.tensor([4.0, 5.0]))


def test_critic_loss_is_squared_error_summed_over_critics_and_terminals_cut_the_bootstrap() -> None:
    table = [[[2.0, 1.0], [2.0, 1.0]], [[2.0, 1.0], [2.0, 1.0]]]  # target value 2 for both rows
    b = make_batch(rewards=[1.0, 0.0], terminals=[0.0, 1.0])
    critic = IndexCritic([[[0.5, 0.0], [3.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])  # data action a_0 = 0
    nets = nn.ModuleDict(
        {"vae": ListVAE(indexed_candidates(2, 2)), "target_actor": Identity(), "target_critic": IndexCritic(table)}
    )
    nets["critic"] = critic
    loss, _ = bcq.critic_loss(encoded(b), nets, BCQConfig(gamma=0.5, num_samples=2), rng())
    y = torch.tensor([1.0 + 0.5 * 2.0, 0.0])  # row 1 is terminal
    q = torch.tensor([[0.5, 3.0], [1.0, 0.0]])  # (N, B)
    torch.testing.assert_close(loss, (q - y).pow(2).mean(1).sum())


# ---------------------------------------------------------------------------- acting
def test_policy_returns_the_candidate_with_the_highest_q1() -> None:
    B, n = 3, 4
    table = [
        [[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 9.0]],  # Q_1: best 1, 0, 3
        [[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0], [9.0, 0.0, 0.0, 0.0]],  # Q_2 must not decide
    ]
    cands = indexed_candidates(B, n)
    policy = BCQPolicy(nn.Identity(), ListVAE(cands), Identity(), IndexCritic(table), n)  # type: ignore[arg-type]
    a = policy.act_on(torch.zeros(B, 5), deterministic=True, generator=rng())
    torch.testing.assert_close(a, cands[torch.arange(B), torch.tensor([1, 0, 3])])


def test_real_policy_argmax_over_sampled_perturbed_candidates() -> None:
    """With real networks: the action equals the best of the candidates drawn from the same generator."""
    cfg = BCQConfig(hidden=(16,), vae_hidden=(16,), act_samples=7)
    spec_f, B = 5, 4
    vae = ConditionalVAE(spec_f, A, None, cfg.vae_hidden)
    actor = Perturbation(spec_f, A, cfg.hidden, cfg.phi)
    critic = Critic(spec_f, A, cfg.hidden, 2)
    policy = BCQPolicy(nn.Identity(), vae, actor, critic, cfg.act_samples)  # type: ignore[arg-type]
    f = torch.randn(B, spec_f)
    a = policy.act_on(f, True, torch.Generator().manual_seed(3))
    cands = bcq.candidates(f, vae, actor, 7, torch.Generator().manual_seed(3))  # (B, 7, A)
    q1 = torch.stack([critic(f, cands[:, i])[0] for i in range(7)], 1)  # (B, 7), one candidate at a time
    torch.testing.assert_close(a, cands[torch.arange(B), q1.argmax(1)])
    assert policy.act_on(f, False, rng()).shape == (B, A)


def test_perturbation_stays_within_phi_and_the_box() -> None:
    xi = Perturbation(3, A, (8,), phi=0.05)
    with torch.no_grad():
        xi.net.layers[-1].bias.fill_(100.0)  # saturate tanh: ξ = +Φ
    f = torch.randn(6, 3)
    a = torch.tensor([[0.0, 0.5], [0.99, -1.0], [-1.0, 0.2], [0.3, 0.3], [1.0, 1.0], [-0.5, 0.97]])
    out = xi(f, a)
    torch.testing.assert_close(out, (a + 0.05).clamp(-1, 1))
    assert xi(f, a.unsqueeze(1).expand(6, 4, A)).shape == (6, 4, A)


def test_actor_loss_maximizes_q1_of_the_perturbed_sample_and_trains_only_xi() -> None:
    b = make_batch(rewards=[0.0, 0.0], terminals=[0.0, 0.0])
    cfg = BCQConfig(hidden=(8,), vae_hidden=(8,))
    vae, actor = ConditionalVAE(3, A, None, (8,)), Perturbation(3, A, (8,), cfg.phi)
    nets = nn.ModuleDict({"vae": vae, "actor": actor, "critic": Critic(3, A, (8,), 2)})
    enc = Encoded(b, b.observations.state.requires_grad_(True), None)
    loss, metrics = bcq.actor_loss(enc, nets, cfg, torch.Generator().manual_seed(1))
    sampled = vae.decode(enc.features.detach(), generator=torch.Generator().manual_seed(1))
    q1 = nets.critic(enc.features, actor(enc.features, sampled))[0]
    torch.testing.assert_close(loss, -q1.mean())
    assert metrics["actor/perturbation"] <= cfg.phi + 1e-6
    loss.backward()
    assert all(p.grad is not None for p in actor.parameters())
    assert all(p.grad is None for p in vae.parameters()) and enc.features.grad is None


# ---------------------------------------------------------------------------- the conditional VAE
def test_gaussian_kl_matches_the_closed_form() -> None:
    mean = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.0, 0.0]])
    std = torch.tensor([[1.0, 1.0, 0.5], [2.0, math.e, 1.0]])
    # KL(N(μ, σ) ‖ N(0, 1)) = log(1/σ) + (σ² + μ²)/2 − 1/2
    want = torch.log(1 / std) + (std.pow(2) + mean.pow(2)) / 2 - 0.5
    torch.testing.assert_close(gaussian_kl(mean, std), want)
    torch.testing.assert_close(gaussian_kl(mean, std)[0, :2], torch.tensor([0.0, 0.5]))  # N(0, 1); μ = 1
    torch.testing.assert_close(gaussian_kl(mean, std)[1, 1], torch.tensor((math.e**2 - 3) / 2))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std), torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mean, std), ref)


def test_vae_loss_is_reconstruction_plus_half_kl() -> None:
    class KnownVAE(nn.Module):
        def forward(self, embedding, action, generator=None):
            recon = torch.tensor([[0.5, 0.0], [1.0, -1.0]])
            return recon, torch.tensor([[1.0], [0.0]]), torch.tensor([[1.0], [math.e]])

    actions = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    loss, metrics = vae_loss(KnownVAE(), torch.zeros(2, 3), actions)  # type: ignore[arg-type]
    recon = (0.25 + 0 + 0 + 4) / 4  # mean over rows and action dimensions
    kl = (0.5 + (math.e**2 - 3) / 2) / 2  # mean over rows and latent dimensions
    torch.testing.assert_close(metrics["vae/recon"], torch.tensor(recon))
    torch.testing.assert_close(metrics["vae/kl"], torch.tensor(kl))
    torch.testing.assert_close(loss, torch.tensor(recon + 0.5 * kl))
    loss2, _ = vae_loss(KnownVAE(), torch.zeros(2, 3), actions, kl_weight=1.0)  # type: ignore[arg-type]
    torch.testing.assert_close(loss2, torch.tensor(recon + kl))


def test_vae_decode_clips_the_latent_and_reuses_the_embedding() -> None:
    vae = ConditionalVAE(4, A, latent_dim=3, hidden=(8,))
    seen: list[torch.Tensor] = []
    inner = vae.decoder.forward
    vae.decoder.forward = lambda e, z: seen.append(z) or inner(e, z)  # type: ignore[method-assign]
    e = torch.randn(5, 4)
    a = vae.decode(e, generator=torch.Generator().manual_seed(0), num=200)
    assert a.shape == (5, 200, A) and a.abs().max() <= 1
    z = seen[-1]
    assert z.shape == (5, 200, 3) and z.abs().max() <= 0.5 and (z.abs() == 0.5).any()  # N(0, 1) clipped
    # the split first layer equals the concatenated one on repeated embeddings
    z0 = torch.randn(5, 7, 3)
    first = vae.decoder.layers[0]
    rows = torch.cat([e.unsqueeze(1).expand(5, 7, 4), z0], -1)  # (B, M, E + L)
    want = torch.tanh(vae.decoder.layers[1](torch.relu(first(rows))))
    torch.testing.assert_close(vae.decode(e, z0), want)
    assert vae.decode(e).shape == (5, A)
    with pytest.raises(ValueError, match="num"):
        vae.decode(e, z0, num=3)


def test_vae_learns_to_reconstruct_actions_of_each_state() -> None:
    """A few hundred steps on two states with distinct actions: reconstructions and samples move to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: spin-waiting OpenMP workers on a loaded machine cost 10x
    try:
        recon, sample_error = _fit_two_states()
    finally:
        torch.set_num_threads(threads)
    assert recon < 0.01 and sample_error < 0.1, (recon, sample_error)


def _fit_two_states() -> tuple[float, float]:
    torch.manual_seed(0)
    vae = ConditionalVAE(2, A, hidden=(32, 32))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(32, 1)  # (64, 2)
    actions = torch.tensor([[0.6, -0.4], [-0.5, 0.7]]).repeat(32, 1)  # (64, A)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss, metrics = vae_loss(vae, e, actions, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        samples = vae.decode(e[:2], generator=g, num=50)  # (2, 50, A)
    return float(metrics["vae/recon"]), float((samples - actions[:2].unsqueeze(1)).abs().mean())


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="lmbda"):
        BCQConfig(lmbda=1.5)
    with pytest.raises(ValueError, match="num_samples"):
        BCQConfig(num_samples=0)
    with pytest.raises(ValueError, match="latent_dim"):
        BCQConfig(latent_dim=0)
