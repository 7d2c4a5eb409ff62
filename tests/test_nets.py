"""Encoders and heads: shapes, the batched ensemble against separate layers, tanh-Gaussian densities."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from data_lake.batch import Observation
from robot_rl.nets import (
    Critic,
    DeterministicActor,
    EncoderConfig,
    EnsembleLinear,
    Gaussian,
    GaussianActor,
    ObservationEncoder,
    ObservationSpec,
    SpecError,
    TanhGaussian,
    TanhGaussianActor,
    ValueNetwork,
    make_actor,
)
from robot_rl.nets.encoders import NORM_CLIP

B = 5


def obs(cams: dict[str, int], state_dim: int = 0, seed: int = 0) -> Observation:
    g = torch.Generator().manual_seed(seed)
    images = {c: torch.rand(B, 3, s, s, generator=g) for c, s in cams.items()}
    return Observation(images, torch.randn(B, state_dim, generator=g) if state_dim else None)


def spec(cams: dict[str, int], state_dim=0, goal_cams=None, goal_state=0, num_tasks=0, has_goal=None):
    goal_cams = goal_cams or {}
    return ObservationSpec(
        action_dim=3,
        cameras=tuple(sorted(cams)),
        image_sizes=tuple((cams[c], cams[c]) for c in sorted(cams)),
        state_dim=state_dim,
        has_goal=bool(goal_cams or goal_state) if has_goal is None else has_goal,
        goal_cameras=tuple(sorted(goal_cams)),
        goal_image_sizes=tuple((goal_cams[c], goal_cams[c]) for c in sorted(goal_cams)),
        goal_state_dim=goal_state,
        num_tasks=num_tasks,
    )


@pytest.mark.parametrize("trunk", ["conv", "resnet18"])
def test_single_camera_with_state(trunk: str) -> None:
    cfg = EncoderConfig(trunk=trunk, feature_dim=20, state_hidden=8)
    enc = ObservationEncoder(spec({"front": 32}, state_dim=4), cfg)
    (f,) = enc([obs({"front": 32}, 4)])
    assert f.shape == (B, 20 + 8) == (B, enc.out_dim)
    assert torch.isfinite(f).all()
    if trunk == "resnet18":
        norms = [m for m in enc.modules() if isinstance(m, nn.GroupNorm | nn.BatchNorm2d)]
        assert norms and all(isinstance(m, nn.GroupNorm) for m in norms)


@pytest.mark.parametrize("share", [True, False])
def test_multiple_cameras_shared_or_not(share: bool) -> None:
    cfg = EncoderConfig(feature_dim=16, share_cameras=share, task_embedding_dim=0)
    enc = ObservationEncoder(spec({"front": 16, "wrist": 16}, state_dim=2), cfg)
    assert len(enc.trunks) == (1 if share else 2)
    o, o2 = obs({"front": 16, "wrist": 16}, 2), obs({"front": 16, "wrist": 16}, 2, seed=1)
    f, f2 = enc([o, o2])
    assert f.shape == f2.shape == (B, 2 * 16 + 2)
    # encoding two observations together equals encoding each alone
    torch.testing.assert_close(f2, enc([o2])[0])
    # camera order: front first, then wrist, then state
    torch.testing.assert_close(f[:, 32:], o.state)


def test_conv_trunk_is_sized_for_the_image() -> None:
    from robot_rl.nets.encoders import ConvTrunk, conv_strides_for

    assert conv_strides_for((32, 32), 4) == (2, 1, 1, 1)  # DrQ's encoder at the size it was made for
    assert conv_strides_for((64, 64), 4) == (2, 2, 1, 1)
    assert conv_strides_for((128, 128), 4) == (2, 2, 2, 1)
    assert conv_strides_for((256, 256), 2) == (2, 2)
    strides = [m.stride[0] for m in ConvTrunk(3, (64, 64), EncoderConfig()).convs if isinstance(m, nn.Conv2d)]
    assert strides == [2, 2, 1, 1]
    explicit = ConvTrunk(3, (64, 64), EncoderConfig(conv_strides=(2, 1, 1, 1)))
    assert explicit.projection[0].in_features == 32 * 25 * 25
    assert ConvTrunk(3, (64, 64), EncoderConfig()).projection[0].in_features == 32 * 11 * 11
    with pytest.raises(ValueError, match="one stride >= 1 per conv layer"):
        EncoderConfig(conv_strides=(2, 1))


def test_unequal_sizes_need_separate_trunks() -> None:
    with pytest.raises(SpecError, match="share_cameras=False"):
        ObservationEncoder(spec({"front": 16, "wrist": 20}), EncoderConfig())
    enc = ObservationEncoder(spec({"front": 16, "wrist": 20}), EncoderConfig(share_cameras=False, feature_dim=8))
    assert enc([obs({"front": 16, "wrist": 20})])[0].shape == (B, 16)


def test_early_fusion_stacks_goal_channels() -> None:
    cfg = EncoderConfig(feature_dim=12, goal_fusion="early")
    enc = ObservationEncoder(spec({"front": 16}, 3, goal_cams={"front": 16}, goal_state=2), cfg)
    assert enc.trunks["shared"].convs[0].in_channels == 6
    o, o2, g = obs({"front": 16}, 3), obs({"front": 16}, 3, seed=1), obs({"front": 16}, 2, seed=2)
    f, f2 = enc([o, o2], g)
    assert f.shape == f2.shape == (B, 12 + 3 + 2)
    torch.testing.assert_close(f[:, -2:], g.state)
    g_other = obs({"front": 16}, 2, seed=3)
    assert not torch.allclose(enc([o], g_other)[0][:, :12], f[:, :12]), "the goal image must change the features"
    with pytest.raises(SpecError, match="goal_fusion='late'"):
        ObservationEncoder(spec({"front": 16}, goal_cams={"wrist": 16}), cfg)


def test_late_fusion_encodes_goal_with_the_shared_trunk() -> None:
    cfg = EncoderConfig(feature_dim=12, goal_fusion="late")
    enc = ObservationEncoder(spec({"front": 16}, 3, goal_cams={"front": 16}), cfg)
    o, g = obs({"front": 16}, 3), obs({"front": 16}, seed=2)
    (f,) = enc([o], g)
    assert f.shape == (B, 12 + 3 + 12) == (B, enc.out_dim)
    torch.testing.assert_close(f[:, 15:], enc.trunks["shared"](g.images["front"]))
    torch.testing.assert_close(f[:, :12], enc.trunks["shared"](o.images["front"]))


def test_task_embedding_and_missing_inputs_fail_loudly() -> None:
    cfg = EncoderConfig(feature_dim=8, task_embedding_dim=4)
    enc = ObservationEncoder(spec({}, 3, num_tasks=5), cfg)
    o = obs({}, 3)
    (f,) = enc([o], task_ids=torch.tensor([0, 1, 2, 3, 4]))
    assert f.shape == (B, 3 + 4)
    torch.testing.assert_close(f[:, 3:], enc.task_embedding.weight)
    with pytest.raises(SpecError, match="task_ids is None"):
        enc([o])
    with pytest.raises(SpecError, match="cameras"):
        enc([obs({"front": 16}, 3)], task_ids=torch.zeros(B, dtype=torch.long))
    with pytest.raises(SpecError, match="no goal was given"):
        ObservationEncoder(spec({}, 3, goal_state=2), cfg)([o])


def test_ensemble_equals_separate_linear_heads() -> None:
    torch.manual_seed(0)
    n, i, o = 3, 7, 4
    ens = EnsembleLinear(n, i, o)
    x = torch.randn(n, B, i)
    out = ens(x)  # (N, B, out)
    for k in range(n):
        lin = nn.Linear(i, o)
        with torch.no_grad():
            lin.weight.copy_(ens.weight[k].T)
            lin.bias.copy_(ens.bias[k, 0])
        torch.testing.assert_close(out[k], lin(x[k]))
    # a whole critic: member k equals an MLP built from member k's weights
    critic = Critic(6, 2, (8, 8), n=4)
    feats, acts = torch.randn(B, 6), torch.rand(B, 2) * 2 - 1
    q = critic(feats, acts)
    assert q.shape == (4, B)
    for k in range(4):
        h = torch.cat([feats, acts], -1)
        for layer in critic.hidden:
            h = torch.relu(h @ layer.weight[k] + layer.bias[k])
        torch.testing.assert_close(q[k], (h @ critic.out.weight[k] + critic.out.bias[k]).squeeze(-1))


def test_cached_embedding_q_values_equal_per_action_evaluation() -> None:
    torch.manual_seed(0)
    critic = Critic(6, 2, (16,), n=2)
    feats, acts = torch.randn(B, 6), torch.rand(B, 7, 2) * 2 - 1
    q = critic.q_values(feats, acts)
    assert q.shape == (2, B, 7)
    for m in range(7):
        torch.testing.assert_close(q[:, :, m], critic(feats, acts[:, m]))


def test_scoring_only_the_first_members_equals_the_full_ensemble() -> None:
    torch.manual_seed(0)
    critic = Critic(6, 2, (16, 16), n=3)
    feats, acts = torch.randn(B, 6), torch.rand(B, 7, 2) * 2 - 1
    full = critic.q_values(feats, acts)
    torch.testing.assert_close(critic.q_values(feats, acts, members=1), full[:1])
    torch.testing.assert_close(critic.q_values(feats, acts, members=2), full[:2])
    torch.testing.assert_close(critic(feats, acts[:, 0], members=1), full[:1, :, 0])


def test_gaussian_head_has_a_finite_density_at_saturated_actions() -> None:
    """Regression (docs/learning.md): scripted data sits at exactly ±1, where the tanh-squashed density
    needs atanh(1 − 1e-6); its log-Jacobian then dominated GC-BC's loss. The Gaussian head's density is the
    plain normal density of the action, finite there, with bounded gradients."""
    mean = torch.tensor([[0.9, -0.2]], requires_grad=True)
    log_std = torch.tensor([[-1.0, -1.0]])
    a = torch.tensor([[1.0, -1.0]])
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)
    lp = Gaussian(mean, log_std).log_prob(a)
    torch.testing.assert_close(lp, ref)
    lp.sum().backward()
    assert mean.grad.abs().max() < 100
    squashed = TanhGaussian(torch.atanh(torch.tensor([[0.9, -0.2]])), log_std).log_prob(a)
    assert abs(squashed.item()) > 20 * abs(lp.item()), "the squashed density at ±1 is what swamped the loss"
    # samples are clipped to the box and carry the density of the unclipped draw
    g = torch.Generator().manual_seed(0)
    acts, dens = Gaussian(mean.detach().expand(4, 2), torch.zeros(4, 2)).sample(num=100, generator=g)
    assert acts.shape == (4, 100, 2) and dens.shape == (4, 100) and acts.abs().max() <= 1
    assert (acts.abs() == 1).any(), "std 1 around 0.9 must clip some draws"


def test_make_actor_by_name() -> None:
    feats = torch.randn(B, 6)
    assert isinstance(make_actor("gaussian", 6, 3, (16,)), GaussianActor)
    assert isinstance(make_actor("gaussian", 6, 3, (16,))(feats), Gaussian)
    assert isinstance(make_actor("tanh_gaussian", 6, 3, (16,))(feats), TanhGaussian)
    assert make_actor("gaussian", 6, 3, (16,))(feats).mode().abs().max() <= 1
    with pytest.raises(ValueError, match="actor_distribution must be one of"):
        make_actor("beta", 6, 3, (16,))


def test_state_and_goal_state_are_normalized_with_the_spec_statistics() -> None:
    base = spec({}, state_dim=2, goal_state=3)
    stats = {
        "state_mean": (1.0, -2.0),
        "state_std": (0.5, 4.0),
        "goal_state_mean": (0.0, 0.1, 0.2),
        "goal_state_std": (0.01, 0.02, 0.03),
    }
    normed = base.with_statistics(stats)
    assert ObservationSpec.from_json(normed.to_json()) == normed, "the statistics travel in the spec's JSON"
    enc = ObservationEncoder(normed, EncoderConfig())
    raw = ObservationEncoder(base, EncoderConfig())
    o = Observation({}, torch.tensor([[2.0, 2.0]]))
    goal = Observation({}, torch.tensor([[0.01, 0.1, 0.2]]))
    (f,) = enc([o], goal)
    torch.testing.assert_close(f, torch.tensor([[2.0, 1.0, 1.0, 0.0, 0.0]]))
    (r,) = raw([o], goal)
    torch.testing.assert_close(r, torch.tensor([[2.0, 2.0, 0.01, 0.1, 0.2]]))
    far = Observation({}, torch.tensor([[1e6, -2.0]]))
    assert enc([far], goal)[0][0, 0].item() == NORM_CLIP
    assert not any(k.endswith(("mean", "std")) for k in enc.state_dict()), "statistics are not parameters"
    with pytest.raises(SpecError, match="state_mean and state_std need 2 values"):
        base.with_statistics({**stats, "state_mean": (1.0,)})
    with pytest.raises(SpecError, match="must be > 0"):
        base.with_statistics({**stats, "goal_state_std": (0.0, 1.0, 1.0)})
    with pytest.raises(SpecError, match="scene_state_dim"):
        ObservationSpec(action_dim=3, state_dim=2, scene_state_dim=3)


def test_goal_delta_features_are_goal_minus_observation() -> None:
    sp = dataclasses.replace(spec({"front": 16}, state_dim=5, goal_cams={"front": 16}, goal_state=3), scene_state_dim=3)
    enc = ObservationEncoder(sp, EncoderConfig(feature_dim=4, conv_channels=4, conv_layers=2, goal_delta=True))
    plain = ObservationEncoder(sp, EncoderConfig(feature_dim=4, conv_channels=4, conv_layers=2))
    assert enc.out_dim == plain.out_dim + 4 + 3
    o, goal = obs({"front": 16}, 5, seed=1), obs({"front": 16}, 3, seed=2)
    (f,) = enc([o], goal)
    D = 4
    phi_s, state = f[:, :D], f[:, D : D + 5]
    phi_g, g_state = f[:, D + 5 : 2 * D + 5], f[:, 2 * D + 5 : 2 * D + 8]
    torch.testing.assert_close(f[:, 2 * D + 8 : 3 * D + 8], phi_g - phi_s)
    torch.testing.assert_close(f[:, 3 * D + 8 :], g_state - state[:, 2:])  # the scene is the state's last 3
    # the same image as goal and observation: the image delta is exactly zero
    (same,) = enc([Observation(goal.images, o.state)], goal)
    assert same[:, 2 * D + 8 : 3 * D + 8].abs().max() == 0


def test_tanh_gaussian_log_prob_matches_change_of_variables() -> None:
    mean, log_std = torch.tensor([[0.3]]), torch.tensor([[-0.2]])
    dist = TanhGaussian(mean, log_std)
    # the density integrates to 1 over (-1, 1) and matches the torch.distributions reference
    a = torch.linspace(-0.9999, 0.9999, 200_001)[:, None]
    d = TanhGaussian(mean.expand(len(a), 1), log_std.expand(len(a), 1))
    density = d.log_prob(a).exp()
    assert torch.trapezoid(density, a[:, 0]).item() == pytest.approx(1.0, abs=1e-3)
    ref = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean[0], log_std[0].exp()), [torch.distributions.TanhTransform()]
    )
    x = torch.tensor([[-0.95], [-0.3], [0.0], [0.5], [0.99]])
    torch.testing.assert_close(TanhGaussian(mean.expand(5, 1), log_std.expand(5, 1)).log_prob(x), ref.log_prob(x)[:, 0])
    # sampled log-probs equal log_prob of the sampled actions; samples lie in [-1, 1]
    g = torch.Generator().manual_seed(0)
    acts, lp = dist.sample(num=50, generator=g)
    assert acts.shape == (1, 50, 1) and lp.shape == (1, 50)
    assert acts.abs().max() <= 1
    torch.testing.assert_close(
        lp[0], TanhGaussian(mean.expand(50, 1), log_std.expand(50, 1)).log_prob(acts[0]), atol=1e-4, rtol=1e-4
    )
    assert dist.mode().item() == pytest.approx(math.tanh(0.3))


def test_actors_and_value_shapes_and_reparameterization() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor(6, 3, (16,))
    feats = torch.randn(B, 6)
    a, lp = actor(feats).sample()
    assert a.shape == (B, 3) and lp.shape == (B,)
    a.sum().backward()
    assert actor.net[0].weight.grad is not None, "samples are reparameterized"
    det = DeterministicActor(6, 3, (16,))
    assert det(feats).shape == (B, 3) and det(feats).abs().max() <= 1
    assert ValueNetwork(6, (16,))(feats).shape == (B,)
