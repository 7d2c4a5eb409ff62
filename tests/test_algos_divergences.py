"""Loss terms of BEAR, UWAC and BRAC and their shared divergences (``robot_rl/algos/divergences.py``) on
hand-made batches: the sampled MMD against closed forms, BRAC's KL against ``torch.distributions``, the
Wasserstein dual's gradient penalty on a linear critic, the Lagrange multiplier's direction, BEAR's
soft clipped target, UWAC's uncertainty weights and MC-dropout passes, BRAC's value penalty.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import distributions as D
from torch import nn

from robot_rl.algos import BEARConfig, BRACConfig, UWACConfig, bear, brac, divergences, uwac
from robot_rl.algos.base import Scalar, make_optimizer
from robot_rl.nets import Critic, Gaussian, TanhGaussian
from tests.test_algos_losses import A, encoded, make_batch, rng

E1 = math.exp(-1.0)


# ---------------------------------------------------------------------------- MMD
@pytest.mark.parametrize("kernel", ["gaussian", "laplacian"])
def test_mmd_matches_a_hand_computed_case(kernel: str) -> None:
    """X = {0, 1}, Y = {0, 2} on a line, σ = 0.5: k = exp(−d²) (Gaussian) or exp(−|d|) (Laplacian).

    Gaussian: mean k_xx = (2 + 2e⁻¹)/4, k_yy = (2 + 2e⁻⁴)/4, k_xy = (1 + e⁻⁴ + 2e⁻¹)/4;
    Laplacian: k_xx = (2 + 2e⁻¹)/4, k_yy = (2 + 2e⁻²)/4, k_xy = (1 + e⁻² + 2e⁻¹)/4; both MMD² = (1 − e⁻¹)/2.
    """
    x = torch.tensor([[[0.0], [1.0]]])  # (B=1, N=2, A=1)
    y = torch.tensor([[[0.0], [2.0]]])  # (1, 2, 1)
    expected = torch.tensor([(1.0 - E1) / 2.0])
    torch.testing.assert_close(divergences.mmd(x, y, kernel, sigma=0.5), expected)
    torch.testing.assert_close(divergences.mmd(x, y, kernel, sigma=0.5, sqrt=True), (expected + 1e-6).sqrt())


def test_kernels_sum_over_action_dimensions() -> None:
    x, y = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[1.0, -2.0]]])  # (1, 1, 2)
    torch.testing.assert_close(divergences.kernel_matrix(x, y, "laplacian", 1.0), torch.tensor([[[math.exp(-1.5)]]]))
    torch.testing.assert_close(divergences.kernel_matrix(x, y, "gaussian", 1.0), torch.tensor([[[math.exp(-2.5)]]]))


def test_mmd_is_zero_for_identical_sets_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, A, generator=g)  # (B, N, A)
    y = torch.cat([x[:1], x[1:] + 1.0])  # state 0 identical, states 1-2 shifted
    for kernel in divergences.KERNELS:
        m = divergences.mmd(x, y, kernel, sigma=1.0)  # (3,)
        assert m[0].abs() < 1e-6 and (m[1:] > 1e-2).all(), m


# ---------------------------------------------------------------------------- KL through π_b
def torch_tanh_normal(mean: torch.Tensor, log_std: torch.Tensor) -> D.Distribution:
    return D.Independent(D.TransformedDistribution(D.Normal(mean, log_std.exp()), [D.TanhTransform()]), 1)


def test_kl_estimate_equals_torch_log_densities_on_fixed_samples() -> None:
    g = torch.Generator().manual_seed(1)
    mean_pi, log_std_pi = 0.3 * torch.randn(4, A, generator=g), torch.full((4, A), -1.0)
    mean_b, log_std_b = 0.3 * torch.randn(4, A, generator=g), torch.full((4, A), -0.7)
    pi, pi_b = torch_tanh_normal(mean_pi, log_std_pi), torch_tanh_normal(mean_b, log_std_b)
    u = mean_pi.unsqueeze(1) + log_std_pi.exp().unsqueeze(1) * torch.randn(4, 6, A, generator=g)  # (B, n, A)
    actions = torch.tanh(u)  # (B, n, A) ~ π, fixed
    assert actions.abs().max() < 1 - divergences.CLIP_EPS
    log_pi = pi.log_prob(actions.transpose(0, 1)).T  # (B, n)
    expected = (log_pi - pi_b.log_prob(actions.transpose(0, 1)).T).mean(1)  # (B,)
    got = divergences.kl_divergence(log_pi, TanhGaussian(mean_b, log_std_b), actions)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_kl_estimate_converges_to_the_closed_form() -> None:
    """tanh is invertible, so KL between two tanh-Gaussians is the KL between their Gaussians."""
    mean_pi, log_std_pi = torch.tensor([[0.2, -0.1]]), torch.tensor([[-1.0, -0.5]])
    mean_b, log_std_b = torch.tensor([[0.0, 0.1]]), torch.tensor([[-0.8, -0.6]])
    actions, log_pi = TanhGaussian(mean_pi, log_std_pi).sample(20000, torch.Generator().manual_seed(0))
    got = divergences.kl_divergence(log_pi, TanhGaussian(mean_b, log_std_b), actions)  # (1,)
    closed = D.kl_divergence(D.Normal(mean_pi, log_std_pi.exp()), D.Normal(mean_b, log_std_b.exp())).sum(-1)
    torch.testing.assert_close(got, closed, rtol=0.05, atol=0.01)


def test_gaussian_behavior_density_of_n_samples() -> None:
    mean, log_std = torch.tensor([[0.5, -0.5]]), torch.tensor([[-1.0, 0.0]])
    actions = torch.tensor([[[0.4, -0.2], [1.0, -1.0]]])  # (1, 2, A): ±1 clipped to ±0.999
    expected = D.Normal(mean, log_std.exp()).log_prob(actions.clamp(-0.999, 0.999)).sum(-1)  # (1, 2)
    torch.testing.assert_close(divergences.log_prob_n(Gaussian(mean, log_std), actions), expected)


def test_behavior_loss_is_the_negative_log_likelihood_of_clipped_actions() -> None:
    class FixedBehavior(nn.Module):
        def forward(self, features: torch.Tensor) -> Gaussian:
            return Gaussian(torch.zeros(len(features), A), torch.zeros(len(features), A))

    actions = torch.tensor([[0.0, 1.0], [0.5, -0.5]])
    loss, metrics = divergences.behavior_loss(FixedBehavior(), torch.zeros(2, 3), actions)
    expected = -D.Normal(0.0, 1.0).log_prob(actions.clamp(-0.999, 0.999)).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["behavior/nll"] == loss


# ---------------------------------------------------------------------------- Wasserstein dual
class LinearCritic(nn.Module):
    """c(s, a) = w·a (N = 1): ∇_a c = w everywhere."""

    def __init__(self, w: list[float]):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return (actions @ self.w).unsqueeze(0)  # (1, B)

    def q_values(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return (actions @ self.w).unsqueeze(0)  # (1, B, M)


@pytest.mark.parametrize(("w", "penalty"), [([0.6, 0.8], 0.0), ([3.0, 4.0], 16.0)])  # ‖w‖ = 1, 5
def test_dual_critic_loss_is_the_wasserstein_dual_with_a_one_sided_gradient_penalty(w, penalty) -> None:
    c = LinearCritic(w)
    a_p, a_b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [0.5, 0.5]])
    dual = divergences.wasserstein_dual(c, torch.zeros(2, 3), a_p, a_b)
    torch.testing.assert_close(dual, (a_p - a_b) @ torch.tensor(w))
    loss, metrics = divergences.dual_critic_loss(c, torch.zeros(2, 3), a_p, a_b, gp_weight=5.0, generator=rng())
    torch.testing.assert_close(metrics["dual/gp"], torch.tensor(penalty), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, -dual.mean() + 5.0 * penalty, atol=1e-4, rtol=1e-5)
    loss.backward()  # the penalty's gradient reaches the critic (double backward)
    assert c.w.grad is not None and torch.isfinite(c.w.grad).all()


def test_dual_critic_has_no_output_bias() -> None:
    c = divergences.dual_critic(3, A, (8,))
    assert "out.bias" not in c.state_dict() and "out.bias" not in dict(c.named_parameters())
    assert torch.equal(c.out.bias, torch.zeros(1, 1, 1))
    assert c(torch.ones(2, 3), torch.zeros(2, A)).shape == (1, 2)


# ---------------------------------------------------------------------------- Lagrange multiplier (BEAR)
@pytest.mark.parametrize(("mmd", "direction"), [(0.3, 1.0), (0.01, -1.0)])
def test_lagrange_multiplier_rises_while_mmd_exceeds_epsilon(mmd: float, direction: float) -> None:
    cfg = BEARConfig(epsilon=0.05)
    nets = nn.ModuleDict({"log_alpha": Scalar(0.0)})
    opt = make_optimizer([nets.log_alpha], cfg.alpha_lr)
    loss = bear.alpha_loss(torch.full((4,), mmd), nets, cfg)
    torch.testing.assert_close(loss, torch.tensor(-(mmd - 0.05)))  # −α·(MMD − ε) at α = 1
    loss.backward()
    opt.step()
    assert direction * nets.log_alpha().item() > 0
    divergences.clip_log_alpha(nets.log_alpha.value, -5.0, 5e-4)  # one Adam step moves log α by ±1e-3
    assert nets.log_alpha().item() == pytest.approx(5e-4 if direction > 0 else -1e-3, rel=1e-3)


def test_bear_actor_loss_is_minus_q_plus_alpha_times_mmd_excess() -> None:
    nets = nn.ModuleDict({"log_alpha": Scalar(math.log(2.0))})
    cfg = BEARConfig(epsilon=0.1)
    q = torch.tensor([[1.0, 3.0], [0.0, 2.0]])  # (B, n)
    mmd = torch.tensor([0.3, 0.1])
    loss, metrics = bear.constrained_actor_loss(q, mmd, nets, cfg, q_start=1.0)
    torch.testing.assert_close(loss, torch.tensor(((-2.0 + 2 * 0.2) + (-1.0 + 0.0)) / 2))
    warm, _ = bear.constrained_actor_loss(q, mmd, nets, cfg, q_start=0.0)  # warm-up: the MMD term alone
    torch.testing.assert_close(warm, torch.tensor(0.2))
    assert metrics["bear/alpha"].item() == pytest.approx(2.0)


# ---------------------------------------------------------------------------- BEAR target
class SampleDist:
    """m samples per state with a_0 = 0, 1/m, ..., (m − 1)/m; mean 0, log std 0."""

    def __init__(self, B: int):
        self.B, self.mean, self.log_std = B, torch.zeros(B, A), torch.zeros(B, A)

    def sample(self, num: int | None = None, generator: torch.Generator | None = None):
        num = num or 1
        a = torch.zeros(self.B, num, A)
        a[..., 0] = torch.arange(num) / num
        return a, torch.zeros(self.B, num)


class SampleActor(nn.Module):
    def forward(self, features: torch.Tensor) -> SampleDist:
        return SampleDist(len(features))


class TableCritic(nn.Module):
    """Q_j(s, a) = values[j, b] + a_0, on cached features (B, F) and actions (B, M, A)."""

    def __init__(self, values: list[list[float]]):
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))  # (N, B)
        self.n = len(values)

    def q_values(self, features: torch.Tensor, actions: torch.Tensor, generator=None) -> torch.Tensor:
        return self.values.unsqueeze(-1) + actions[..., 0]  # (N, B, M)

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.q_values(features, actions.unsqueeze(1))[..., 0]  # (N, B)


def test_bear_target_is_the_soft_clipped_max_over_policy_samples() -> None:
    b = make_batch(rewards=[1.0, 0.0, 0.5], terminals=[0.0, 0.0, 1.0])
    nets = nn.ModuleDict(
        {
            "actor": SampleActor(),
            "critic": TableCritic([[2.0, 0.0, 1.0], [2.0, 0.0, 1.0]]),
            "target_critic": TableCritic([[1.0, 0.0, 5.0], [3.0, 2.0, 5.0]]),
        }
    )
    cfg = BEARConfig(gamma=0.9, lmbda=0.75, num_target_samples=4)
    loss, metrics = bear.critic_loss(encoded(b), nets, cfg, rng())
    # soft value 0.75·min + 0.25·max, plus the best a_0 = 0.75: row 0: 1.5 + .75, row 1: 0.5 + .75, row 2 terminal
    y = torch.tensor([1.0 + 0.9 * 2.25, 0.9 * 1.25, 0.5])
    torch.testing.assert_close(metrics["critic/td_target"], y.mean())
    q = torch.tensor([2.0, 0.0, 1.0])  # the data actions are 0: Q = values
    torch.testing.assert_close(loss, 2 * (q - y).pow(2).mean())


# ---------------------------------------------------------------------------- UWAC
def test_uwac_weights_shrink_with_variance() -> None:
    cfg = UWACConfig(beta=0.5, max_weight=1.0)
    var = torch.tensor([0.0, 0.25, 0.5, 1.0, 4.0])
    w = uwac.uncertainty_weight(var, cfg)
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 1.0, 0.5, 0.125]))
    assert (w[1:] <= w[:-1]).all()


class SpreadCritic(TableCritic):
    """TableCritic whose T dropout passes are values ± spread[b] (alternating): Var = spread²·T/(T − 1)."""

    def __init__(self, values: list[list[float]], spread: list[float]):
        super().__init__(values)
        self.spread = torch.tensor(spread)  # (B,)

    def mc_q_values(self, features, actions, passes: int, generator) -> torch.Tensor:
        sign = torch.tensor([(-1.0) ** t for t in range(passes)])  # (T,)
        q = self.q_values(features, actions)  # (N, B, M)
        return q.unsqueeze(-1) + self.spread.view(1, -1, 1, 1) * sign  # (N, B, M, T)


def test_uwac_critic_loss_down_weights_rows_with_uncertain_targets() -> None:
    b = make_batch(rewards=[0.0, 0.0, 1.0], terminals=[0.0, 0.0, 1.0])
    spread = [0.0, 1.0, 3.0]  # T = 2: Var = 2·spread² per member, Σ over 2 members: 4·spread²
    nets = nn.ModuleDict(
        {
            "actor": SampleActor(),
            "critic": TableCritic([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]),
            "target_critic": SpreadCritic([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], spread),
        }
    )
    cfg = UWACConfig(gamma=1.0, lmbda=1.0, num_target_samples=2, mc_passes=2, beta=2.0, max_weight=1.0)
    loss, metrics = uwac.critic_loss(encoded(b), nets, cfg, rng())
    # y = r + max_i a_0 = 0.5 for rows 0-1, 1 (terminal) for row 2; weights clip(2 / (4·spread²), 0, 1);
    # the terminal row bootstraps nothing, so its uncertainty is ignored (weight 1)
    y = torch.tensor([0.5, 0.5, 1.0])
    w = torch.tensor([1.0, 0.5, 1.0])
    torch.testing.assert_close(loss, 2 * (w * (torch.tensor([1.0, 1.0, 0.0]) - y).pow(2)).mean())
    torch.testing.assert_close(metrics["uwac/critic_weight"], w.mean())


def test_uwac_actor_weights_the_q_term_by_its_variance() -> None:
    nets = nn.ModuleDict(
        {
            "critic": SpreadCritic([[1.0, 1.0], [2.0, 2.0]], [0.0, 1.0]),
            "log_alpha": Scalar(math.log(1e-9)),  # no MMD pressure
        }
    )
    features, actions = torch.zeros(2, 3), torch.zeros(2, 1, A)
    cfg = UWACConfig(mc_passes=2, beta=2.0, max_weight=1.0, epsilon=0.0)
    var = uwac.mc_variance(nets.critic, features, actions, 2, rng()).sum(0)  # (B, 1): 0 and 4
    torch.testing.assert_close(var, torch.tensor([[0.0], [4.0]]))
    w = uwac.uncertainty_weight(var, cfg)
    loss, _ = bear.constrained_actor_loss(w * torch.tensor([[1.0], [1.0]]), torch.zeros(2), nets, cfg, 1.0)
    torch.testing.assert_close(loss, torch.tensor(-(1.0 + 0.5) / 2))


def test_dropout_critic_is_deterministic_without_a_generator_and_passes_share_masks_across_rows() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        critic = uwac.DropoutCritic(3, A, (16, 16), n=2, layer_norm=False, dropout=0.5)
    plain = Critic(3, A, (16, 16), 2)
    plain.load_state_dict(critic.state_dict())
    f, a = torch.randn(4, 3), torch.rand(4, 5, A)
    torch.testing.assert_close(critic.q_values(f, a), plain.q_values(f, a))
    # one training pass: a mask per row (identical rows differ); MC passes: one network per pass (identical rows agree)
    same_f, same_a = f[:1].expand(4, 3), a[:1].expand(4, 5, A)
    train = critic.q_values(same_f, same_a, generator=rng())  # (N, B, M)
    assert not torch.allclose(train[:, 0], train[:, 1])
    passes = critic.mc_q_values(same_f, same_a, 6, rng())  # (N, B, M, T)
    torch.testing.assert_close(passes[:, 0], passes[:, 1])
    assert passes.var(-1).min() > 0


# ---------------------------------------------------------------------------- BRAC
class FixedPolicy(nn.Module):
    """π(·|s) whose samples are zeros with log π = −1 (any n)."""

    def forward(self, features: torch.Tensor):
        B = len(features)

        class Dist:
            def sample(self, num=None, generator=None):
                shape = (B, A) if num is None else (B, num, A)
                return torch.zeros(shape), torch.full(shape[:-1], -1.0)

        return Dist()


class StandardBehavior(nn.Module):
    def forward(self, features: torch.Tensor) -> Gaussian:
        return Gaussian(torch.zeros(len(features), A), torch.zeros(len(features), A))


def test_brac_value_penalty_subtracts_alpha_times_the_next_state_divergence() -> None:
    b = make_batch(rewards=[1.0, 0.0], terminals=[0.0, 1.0])
    nets = nn.ModuleDict(
        {
            "actor": FixedPolicy(),
            "behavior": StandardBehavior(),
            "critic": TableCritic([[0.0, 0.0], [0.0, 0.0]]),
            "target_critic": TableCritic([[1.0, 2.0], [3.0, 4.0]]),
        }
    )
    cfg = BRACConfig(gamma=0.9, alpha=0.5, penalty="value", divergence="kl", num_div_samples=3)
    kl = -1.0 + math.log(2 * math.pi)  # log π − log N(0; 0, I) in 2 dimensions
    _, m_v = brac.critic_loss(encoded(b), nets, cfg, rng())
    _, m_p = brac.critic_loss(encoded(b), nets, dataclasses.replace(cfg, penalty="policy"), rng())
    torch.testing.assert_close(m_v["brac/next_divergence"], torch.tensor(kl))
    y_p = torch.tensor([1.0 + 0.9 * 1.0, 0.0])  # λ = 1: the min over the ensemble; row 1 terminal
    y_v = y_p - torch.tensor([0.9 * 0.5 * kl, 0.0])
    torch.testing.assert_close(m_p["critic/td_target"], y_p.mean())
    torch.testing.assert_close(m_v["critic/td_target"], y_v.mean())


def test_brac_actor_loss_is_alpha_divergence_minus_q() -> None:
    b = make_batch(rewards=[0.0, 0.0], terminals=[0.0, 0.0])
    nets = nn.ModuleDict(
        {"actor": FixedPolicy(), "behavior": StandardBehavior(), "critic": TableCritic([[1.0, 2.0], [3.0, 0.0]])}
    )
    cfg = BRACConfig(alpha=0.5, lmbda=0.75, num_div_samples=2)
    loss, metrics = brac.actor_loss(encoded(b), nets, cfg, rng())
    kl = -1.0 + math.log(2 * math.pi)
    torch.testing.assert_close(metrics["brac/divergence"], torch.tensor(kl))
    q = torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 0 + 0.25 * 2])  # ens_λ per row
    torch.testing.assert_close(loss, (0.5 * kl - q).mean())
    warm, _ = brac.actor_loss(encoded(b), nets, cfg, rng(), q_start=0.0)
    torch.testing.assert_close(warm, torch.tensor(0.5 * kl))


def test_brac_value_penalty_with_the_wasserstein_dual_reads_the_next_actions() -> None:
    b = make_batch(rewards=[0.0, 0.0], terminals=[0.0, 0.0])
    nets = nn.ModuleDict(
        {
            "actor": FixedPolicy(),  # samples a' = 0
            "dual": LinearCritic([1.0, 2.0]),
            "critic": TableCritic([[0.0, 0.0], [0.0, 0.0]]),
            "target_critic": TableCritic([[0.0, 0.0], [0.0, 0.0]]),
        }
    )
    cfg = BRACConfig(gamma=1.0, alpha=1.0, divergence="w", num_div_samples=2)
    with pytest.raises(ValueError, match="next_actions"):
        brac.critic_loss(encoded(b), nets, cfg, rng())
    b = dataclasses.replace(b, next_actions=torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    _, metrics = brac.critic_loss(encoded(b), nets, cfg, rng())
    # D(s') = c(s', 0) − c(s', a'_D) = −w·a'_D = [−1, 2];  y = −α·D(s')
    torch.testing.assert_close(metrics["brac/next_divergence"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["critic/td_target"], torch.tensor(-0.5))
