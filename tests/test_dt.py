"""Decision Transformer: causal attention, sequence windows, the stateful policy and a learning check.

The learning check trains from states on the point-mass world of ``test_algos_learning.py`` (half
expert, half uniform-random episodes; task reward: 1 on reaching the goal) with K-step windows from
the real ``SequenceSampler`` and acts with the policy's context window conditioned on R̂ = 1 (the
data's best normalized return); it must beat random actions by the same margin as the other checks.
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest
import torch

from data_lake import Episode, Lake
from data_lake.batch import Observation
from data_lake.sampler import RelabelConfig, SamplerConfig, SamplerError
from data_lake.sequences import SequenceBatch, SequenceSampler
from robot_rl import checkpoint
from robot_rl.algos import DT, DTConfig
from robot_rl.nets import EncoderConfig, ObservationSpec
from robot_rl.nets.transformer import CausalTransformer
from tests.test_algos_learning import MARGIN, episode, evaluate, random_success, train_on_windows

torch.set_num_threads(1)
TASK_ONLY = RelabelConfig(future=0, final=0, negative=0, task=1.0)


# ---------------------------------------------------------------------------- causal attention
@pytest.mark.parametrize("padded", [False, True])
def test_no_token_attends_to_a_future_token(padded: bool) -> None:
    torch.manual_seed(0)
    net = CausalTransformer(dim=8, layers=2, heads=2, max_tokens=12).eval()
    tokens = torch.randn(3, 12, 8)
    valid = None
    if padded:  # left padding of 0, 2 and 5 tokens
        valid = torch.arange(12)[None] >= torch.tensor([0, 2, 5])[:, None]
    with torch.no_grad():
        out = net(tokens, valid)
        for p in range(11):
            future = tokens.clone()
            future[:, p + 1 :] = torch.randn(3, 11 - p, 8) * 10
            changed = net(future, valid)
            assert torch.equal(changed[:, : p + 1], out[:, : p + 1]), p  # exactly: zero attention weight
            assert not torch.equal(changed[:, p + 1 :], out[:, p + 1 :])


def test_padding_tokens_are_never_attended_to() -> None:
    torch.manual_seed(0)
    net = CausalTransformer(dim=8, layers=2, heads=2, max_tokens=9).eval()
    tokens = torch.randn(2, 9, 8)
    valid = torch.arange(9)[None] >= torch.tensor([3, 0])[:, None]  # row 0: 3 padding tokens
    other = tokens.clone()
    other[0, :3] = torch.randn(3, 8)
    with torch.no_grad():
        a, b = net(tokens, valid), net(other, valid)
    assert torch.equal(a[0, 3:], b[0, 3:]) and torch.equal(a[1], b[1])


def small_dt(spec: ObservationSpec, K: int = 4, **kw) -> DT:
    cfg = DTConfig(
        encoder=EncoderConfig(feature_dim=8, conv_channels=4, task_embedding_dim=4),
        hidden=(16,),
        sequence_length=K,
        embed_dim=16,
        layers=2,
        heads=2,
        max_timestep=32,
        seed=3,
        **kw,
    )
    return DT(cfg, spec)


def test_action_k_depends_on_the_past_and_present_only() -> None:
    """π(a_k | h_k) is unchanged by anything at steps > k and by a_k itself; it changes with s_k and R̂_k."""
    spec = ObservationSpec(action_dim=2, state_dim=3)
    actor = small_dt(spec, K=5).nets.actor.eval()
    g = torch.Generator().manual_seed(0)
    x, c, a = torch.randn(2, 5, 3, generator=g), torch.rand(2, 5, 1, generator=g), torch.randn(2, 5, 2, generator=g)
    t, m = torch.arange(5).expand(2, 5), torch.ones(2, 5)
    with torch.no_grad():
        ref = actor(x, c, a, t, m).mean
        for k in range(4):
            x2, c2, a2 = x.clone(), c.clone(), a.clone()
            x2[:, k + 1 :], c2[:, k + 1 :], a2[:, k:] = 5.0, 5.0, 5.0  # future steps, and a_k itself
            got = actor(x2, c2, a2, t, m).mean
            assert torch.equal(got[:, : k + 1], ref[:, : k + 1]), k
        x3 = x.clone()
        x3[:, 2] += 1.0
        assert not torch.equal(actor(x3, c, a, t, m).mean[:, 2], ref[:, 2])
        c3 = c.clone()
        c3[:, 2] += 1.0
        assert not torch.equal(actor(x, c3, a, t, m).mean[:, 2], ref[:, 2])


# ---------------------------------------------------------------------------- sequence windows
def tagged_episode(ep: int, length: int, task: str) -> Episode:
    """state = (episode tag, step index, 0); reward 1 from step 3 on (the last step's is unused)."""
    steps = np.arange(length, dtype=np.float32)
    reward = (steps >= 3).astype(np.float32)
    reward[-1] = 0.0
    return Episode.make(
        images={},
        state=np.stack([np.full(length, ep, np.float32), steps, np.zeros(length, np.float32)], 1),
        action=np.stack([steps / 10, -steps / 10], 1).astype(np.float32),
        reward=reward,
        task=task,
    )


@pytest.fixture(scope="module")
def tagged_lake() -> Lake:
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    # task "a": episode returns 0 (length 3), 3 (6), 7 (10); task "b": 1 (4) and 5 (8)
    lake.append(
        [tagged_episode(e, n, t) for e, (n, t) in enumerate([(3, "a"), (6, "a"), (10, "a"), (4, "b"), (8, "b")])]
    )
    return lake


def scfg(batch_size: int = 64, **kw) -> SamplerConfig:
    return SamplerConfig(batch_size=batch_size, relabel=TASK_ONLY, augment_pad=0, prefetch=1, seed=0, **kw)


def test_windows_stay_in_one_episode_with_left_padding_and_return_to_go(tagged_lake: Lake) -> None:
    K = 6
    with SequenceSampler(tagged_lake.checkout(), scfg(), K, progress=False) as sampler:
        tasks = sampler.tasks
        batch = sampler.sample_host()
    assert isinstance(batch, SequenceBatch) and batch.context == K and len(batch) == 64
    lengths = {0: 3, 1: 6, 2: 10, 3: 4, 4: 8}
    best = {"a": 6.0, "b": 4.0}  # per-task return scale: the task's largest episode return
    state = batch.observations.state.view(64, K, 3)
    for b in range(64):
        m = batch.mask[b].bool()
        n = int(m.sum())
        assert n >= 1 and m[K - n :].all() and not m[: K - n].any(), "padding is on the left"
        tag = state[b, m, 0]
        ep = int(tag[0])
        assert (tag == ep).all(), "a window never crosses an episode boundary"
        steps = state[b, m, 1].long()
        assert torch.equal(steps, batch.timesteps[b, m]) and torch.equal(steps, steps[0] + torch.arange(n))
        assert int(steps[-1]) <= lengths[ep] - 2, "a window ends at a transition step (not the last step)"
        scale = best[tasks[int(batch.task_ids[b])]]
        assert float(batch.return_scale[b]) == scale
        want = torch.tensor([max(0, lengths[ep] - 1 - max(3, int(s))) for s in steps], dtype=torch.float32) / scale
        torch.testing.assert_close(batch.returns_to_go[b, m], want)
        torch.testing.assert_close(batch.actions[b, m, 0], steps.float() / 10)
        assert not batch.actions[b, ~m].any() and not batch.returns_to_go[b, ~m].any()
        assert not batch.timesteps[b, ~m].any() and not batch.rewards[b, ~m].any()


def test_discounted_return_to_go(tagged_lake: Lake) -> None:
    """discount=γ (the Trajectory Transformer's R̂): R̂_t = Σ_k γ^k r_{t+k}, scaled by the task's best R̂_0."""
    g, lengths = 0.5, {0: 3, 1: 6, 2: 10, 3: 4, 4: 8}  # rewards 1 at steps 3 .. L − 2 (see tagged_episode)

    def rtg(L: int, s: int) -> float:
        return sum(g ** (k - s) for k in range(max(3, s), L - 1))

    best = {"a": max(rtg(L, 0) for L in (3, 6, 10)), "b": max(rtg(L, 0) for L in (4, 8))}
    with SequenceSampler(tagged_lake.checkout(), scfg(), 4, progress=False, discount=g) as sampler:
        tasks, batch = sampler.tasks, sampler.sample_host()
    state = batch.observations.state.view(64, 4, 3)
    for b in range(64):
        m = batch.mask[b].bool()
        ep, steps = int(state[b, m, 0][0]), state[b, m, 1].long()
        scale = best[tasks[int(batch.task_ids[b])]]
        assert float(batch.return_scale[b]) == pytest.approx(scale)
        want = torch.tensor([rtg(lengths[ep], int(t)) / scale for t in steps], dtype=torch.float32)
        torch.testing.assert_close(batch.returns_to_go[b, m], want)
    with pytest.raises(SamplerError, match=r"discount must be in \(0, 1\], got 0"):
        SequenceSampler(tagged_lake.checkout(), scfg(), 4, progress=False, discount=0.0)


def test_sequence_sampler_resumes_exactly(tagged_lake: Lake) -> None:
    cfg = scfg(batch_size=8)
    with SequenceSampler(tagged_lake.checkout(), cfg, 4, progress=False) as s:
        [next(s) for _ in range(2)]
        state = s.state_dict()
        want = next(s)
    with SequenceSampler(tagged_lake.checkout(), cfg, 4, progress=False) as s:
        s.load_state_dict(state)
        got = next(s)
    for f in ("actions", "returns_to_go", "timesteps", "mask", "task_ids"):
        assert torch.equal(getattr(got, f), getattr(want, f)), f
    assert torch.equal(got.observations.state, want.observations.state)


def test_goal_windows_carry_the_episodes_final_observation(tagged_lake: Lake) -> None:
    cfg = dataclasses.replace(scfg(batch_size=16), relabel=RelabelConfig(future=0, final=1.0, negative=0, task=0))
    with SequenceSampler(tagged_lake.checkout(), cfg, 3, progress=False) as sampler:
        batch = sampler.sample_host()
    assert batch.goals is not None and batch.goals.state is not None
    ep = batch.observations.state.view(16, 3, 3)[:, -1, 0]
    assert torch.equal(batch.goals.state[:, 0], ep)  # the same episode
    last = torch.tensor([{0: 2, 1: 5, 2: 9, 3: 3, 4: 7}[int(e)] for e in ep], dtype=torch.float32)
    assert torch.equal(batch.goals.state[:, 1], last)  # its final step


# ---------------------------------------------------------------------------- the algorithm and its policy
@pytest.mark.parametrize("cond", ["none", "task"])
def test_update_on_windows_resumes_bitwise_and_the_policy_keeps_a_context(tagged_lake: Lake, tmp_path, cond) -> None:
    with SequenceSampler(tagged_lake.checkout(), scfg(batch_size=8), 4, progress=False) as s:
        spec = ObservationSpec.from_batch(s.example_batch(), len(s.tasks) if cond == "task" else 0)
        batches = [next(s) for _ in range(4)]
    algo = small_dt(spec)
    before = {k: v.clone() for k, v in algo.nets.state_dict().items()}
    algo.update(batches[0])
    assert all(not torch.equal(before[k], v) for k, v in algo.nets.state_dict().items())
    assert (algo.nets.actor.return_scale > 1).all()  # the data's scales (4 and 6) were recorded
    algo.update(batches[1])
    checkpoint.save(tmp_path / "ckpt", algo)
    restored, _ = checkpoint.load_algorithm(tmp_path / "ckpt")
    for b in batches[2:]:
        assert algo.update(b) == restored.update(b)
    # the policy: a window of the episode so far, R̂ lowered by the rewards the env gives
    obs = Observation({}, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    task_ids = torch.zeros(2, dtype=torch.long) if cond == "task" else None
    policy = algo.policy
    first = policy(obs, None, task_ids)
    assert torch.equal(first, algo.act(obs, None, task_ids))  # no episode: a one-step window
    policy.reset_context(2)
    assert torch.equal(policy(obs, None, task_ids), first)
    rtg = policy.context["rtg"].clone()
    policy.observe_rewards(np.array([1.0, 0.0]), task_ids)
    scale = float(algo.nets.actor.return_scale[0])
    torch.testing.assert_close(policy.context["rtg"], rtg - torch.tensor([1.0 / scale, 0.0]))
    second = policy(obs, None, task_ids)
    assert policy.context["features"].shape[1] == 2 and torch.equal(policy.context["timesteps"][0], torch.arange(2))
    assert not torch.equal(second, first), "the second step sees the first"
    for _ in range(6):
        policy(obs, None, task_ids)
    assert policy.context["features"].shape[1] == 4  # the last K steps


# ---------------------------------------------------------------------------- learning check
def test_dt_learns_to_reach_from_states() -> None:
    """Success 0.94-0.97 vs random 0.03 (seeds 0, 1) after 700 updates (K = 5), about 22 s on 1 loaded core."""
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    lake.append([episode(s, "expert" if s % 2 else "random", images=False) for s in range(200)])
    cfg = DTConfig(
        hidden=(64,), sequence_length=5, embed_dim=32, layers=1, heads=2, max_timestep=32, actor_lr=1e-3, gamma=0.9
    )
    algo, metrics, elapsed = train_on_windows(lake, "dt", cfg, 700)
    policy = algo.policy
    policy.reset_context(200)  # evaluate's 200 envs: episodes end at success, so R̂ stays at the target
    success = evaluate(lambda obs: policy(obs, None, None).numpy())
    baseline = random_success()
    print(f"dt: success {success:.2f} vs random {baseline:.2f} in {elapsed:.1f}s, {metrics}")
    assert success >= baseline + MARGIN, (success, baseline, metrics)
