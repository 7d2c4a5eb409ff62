"""The goal-relabeling sampler against brute-force references on small, hand-made episodes."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest
import torch

from data_lake import Episode, Lake
from data_lake.batch import COMMANDED, FINAL, FUTURE, GOAL_SOURCES, NEGATIVE, TASK
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig, SamplerError, random_shift
from data_lake.synthetic import synthetic_episode

GAMMA = 0.9


def tagged_episode(e: int, length: int, task: str = "a", terminal: bool = False, goal: bool = True) -> Episode:
    """state = (episode, step, ...), so every row can be traced back; images encode the same."""
    rng = np.random.default_rng(e)
    steps = np.arange(length, dtype=np.float32)
    state = np.stack([np.full(length, e, np.float32), steps, rng.normal(size=length).astype(np.float32)], 1)
    img = np.zeros((length, 8, 8, 3), np.uint8)
    img[..., 0] = e
    img[..., 1] = np.arange(length)[:, None, None]
    return Episode.make(
        images={"front": img},
        state=state,
        action=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
        reward=(rng.random(length) < 0.3).astype(np.float32),
        is_terminal=terminal,
        achieved_goal=np.stack([steps / 10, np.full(length, e, np.float32)], 1),
        goal_images={"front": np.full((8, 8, 3), 200, np.uint8)} if goal else None,
        goal_state=np.array([9.0, 9.0], np.float32) if goal else None,
        task=task,
        success=bool(e % 2),
    )


@pytest.fixture(scope="module")
def small_lake() -> Lake:
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    lake.append(
        [tagged_episode(e, 4 + e % 5, task="ab"[e % 2], terminal=e % 3 == 0, goal=e % 4 != 1) for e in range(12)]
    )
    lake.append([tagged_episode(e, 6, task="c") for e in range(12, 20)])
    return lake


def cfg(**relabel) -> SamplerConfig:
    aug = relabel.pop("augment_pad", 0)
    bs = relabel.pop("batch_size", 64)
    return SamplerConfig(batch_size=bs, relabel=RelabelConfig(gamma=GAMMA, **relabel), augment_pad=aug, seed=3)


def test_probabilities_must_sum_to_one() -> None:
    with pytest.raises(SamplerError, match=r"sum to 1.*'future': 0.5.*sum 0.9000"):
        RelabelConfig(future=0.5, final=0.1, negative=0.2, commanded=0.0, task=0.1)


def test_relabel_distribution_matches_probabilities(small_lake: Lake) -> None:
    probs = {"future": 0.3, "final": 0.1, "negative": 0.2, "commanded": 0.2, "task": 0.1, "current": 0.1}
    s = Sampler(small_lake.checkout(), cfg(**probs, batch_size=64), progress=False)
    counts = np.zeros(len(GOAL_SOURCES))
    n = 160
    for _ in range(n):
        counts += np.bincount(s.sample_host().goal_source.numpy(), minlength=len(GOAL_SOURCES))
    freq = counts / counts.sum()
    expected = np.array([probs[k] for k in GOAL_SOURCES])
    # 10,240 draws: a binomial standard error below 0.005; allow 4 sigma
    np.testing.assert_allclose(freq, expected, atol=0.02)


def test_rows_match_brute_force_reference(small_lake: Lake) -> None:
    view = small_lake.checkout()
    s = Sampler(view, cfg(future=0.4, final=0.2, negative=0.2, commanded=0.1, task=0.1, batch_size=96), progress=False)
    eps = {int(e.steps["state"][0, 0]): e for e in view.iter_episodes()}
    for _ in range(4):
        _check_rows(s.sample_host(), eps)


def _check_rows(b, eps: dict[int, Episode]) -> None:
    obs, nxt = b.observations.state.numpy(), b.next_observations.state.numpy()
    goal_img = b.goals.images["front"].numpy()
    for i in range(len(b)):
        e, t = int(obs[i, 0]), int(obs[i, 1])
        ep = eps[e]
        T = len(ep) - 1  # last step index
        assert t < T, "the last step is never a transition"
        assert (int(nxt[i, 0]), int(nxt[i, 1])) == (e, t + 1), "next observation crosses an episode boundary"
        np.testing.assert_array_equal(b.actions[i].numpy(), ep.steps["action"][t])
        src = int(b.goal_source[i])
        r, d, mc = float(b.rewards[i]), float(b.terminals[i]), float(b.mc_returns[i])
        if src in (FUTURE, FINAL):
            j = int(goal_img[i, 0, 0, 1])  # the goal image encodes its step
            assert goal_img[i, 0, 0, 0] == e and t < j <= T
            if src == FINAL:
                assert j == T
            assert r == d == float(t + 1 == j)
            assert mc == pytest.approx(GAMMA ** (j - t - 1))
        elif src == NEGATIVE:
            assert goal_img[i, 0, 0, 0] != e, "a negative goal came from its own episode"
            assert r == d == mc == 0
        else:
            assert r == ep.steps["reward"][t]
            assert d == float(ep.steps["is_terminal"][t + 1])
            ref = sum(GAMMA ** (k - t) * float(ep.steps["reward"][k]) for k in range(t, T))
            assert mc == pytest.approx(ref, rel=1e-5)
            if src == COMMANDED:
                assert "state" in ep.goal and (goal_img[i] == 200).all()
                np.testing.assert_array_equal(b.goals.state[i].numpy(), [9.0, 9.0])
            else:
                assert src == TASK and (goal_img[i] == 0).all()


def test_distance_reward_rule(small_lake: Lake) -> None:
    s = Sampler(
        small_lake.checkout(),
        cfg(future=1.0, final=0, negative=0, task=0, reward_rule="distance", epsilon=0.15, batch_size=96),
        progress=False,
    )
    b = s.sample_host()
    t = b.observations.state[:, 1].numpy()
    j = b.goals.images["front"][:, 0, 0, 1].numpy().astype(np.float32)
    # achieved_goal = (step / 10, e): within 0.15 means j - (t + 1) <= 1
    np.testing.assert_array_equal(b.rewards.numpy(), (np.abs((j - t - 1) / 10) < 0.15).astype(np.float32))


def test_uniform_future_and_geometric_truncation(small_lake: Lake) -> None:
    s = Sampler(
        small_lake.checkout(),
        cfg(future=1.0, final=0, negative=0, task=0, future_mode="uniform", batch_size=96),
        progress=False,
    )
    b = s.sample_host()
    t = b.observations.state[:, 1].numpy()
    j = b.goals.images["front"][:, 0, 0, 1].numpy()
    assert (j > t).all()
    assert len(np.unique(j - t)) > 2


def test_current_goals_are_the_row_itself_and_reached(small_lake: Lake) -> None:
    s = Sampler(small_lake.checkout(), cfg(current=1.0, future=0, final=0, negative=0, task=0), progress=False)
    b = s.sample_host()
    t = b.observations.state[:, 1].numpy()
    assert np.array_equal(b.goals.images["front"][:, 0, 0, 1].numpy(), t)  # the goal image is o_t
    e = b.observations.state[:, 0].numpy()
    assert np.allclose(b.goals.state.numpy(), np.stack([t / 10, e], 1))  # achieved_goal_t
    assert (b.rewards == 1).all() and (b.terminals == 1).all() and (b.mc_returns == 1).all()
    assert (b.goal_source == GOAL_SOURCES["current"]).all()


def test_actor_goals_future_uniform_come_from_the_rest_of_the_episode(small_lake: Lake) -> None:
    relabel = dict(current=0.2, future=0.5, negative=0.3, final=0, task=0, actor_goals="future_uniform")
    s = Sampler(small_lake.checkout(), cfg(**relabel, batch_size=256), progress=False)
    b = s.sample_host()
    assert b.actor_goals is not None
    t, e = b.observations.state[:, 1].numpy(), b.observations.state[:, 0].numpy()
    j = b.actor_goals.images["front"][:, 0, 0, 1].numpy()
    assert (b.actor_goals.images["front"][:, 0, 0, 0].numpy() == e).all()  # the row's own episode
    assert (j > t).all() and len(np.unique(j - t)) > 2
    assert np.allclose(b.actor_goals.state[:, 1].numpy(), e)
    # the value goals are unchanged by it: negatives still come from other episodes
    neg = b.goal_source.numpy() == NEGATIVE
    assert (b.goals.images["front"][neg, 0, 0, 0].numpy() != e[neg]).all()
    assert Sampler(small_lake.checkout(), cfg(), progress=False).sample_host().actor_goals is None
    with pytest.raises(SamplerError, match="actor_goals must be one of"):
        RelabelConfig(actor_goals="random")


def test_task_relabeling_uses_stored_labels(small_lake: Lake) -> None:
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    lake.append([tagged_episode(e, 6, task="ab"[e % 2]) for e in range(8)])
    # task "a" succeeds at step 3 of even episodes (stored label), never in odd ones
    with pytest.raises(SamplerError, match="lake label"):
        Sampler(lake.checkout(), cfg(p_task=0.5, batch_size=16), progress=False).sample_host()
    res = lake.label("a", lambda seg: (seg.steps["state"][:, 1] == 3) & (seg.steps["state"][:, 0] % 2 == 0))
    assert res.snapshot_id is not None and lake.log()[0].operation == "label"
    s = Sampler(
        lake.checkout(), cfg(p_task=1.0, future=0, final=0, negative=0, task=1.0, batch_size=40), progress=False
    )
    b = s.sample_host()
    st = b.observations.state.numpy()
    assert (b.task_ids.numpy() == s.tasks.index("a")).all()
    expected = ((st[:, 1] + 1 == 3) & (st[:, 0] % 2 == 0)).astype(np.float32)
    np.testing.assert_array_equal(b.rewards.numpy(), expected)
    np.testing.assert_array_equal(b.terminals.numpy(), expected)
    before_success = (st[:, 1] < 3) & (st[:, 0] % 2 == 0)
    np.testing.assert_allclose(b.mc_returns.numpy(), np.where(before_success, GAMMA ** (2 - st[:, 1]), 0), rtol=1e-6)
    # labels survive compaction and deletes
    lake.append([tagged_episode(100, 6, task="a")])
    lake.compact(target_steps=10**6)
    seg = lake.checkout().read_segment(lake.checkout().segment_names()[0])
    assert "a" not in seg.labels  # the new episode is unlabelled: the merged segment keeps no partial labels
    lake.label("a", lambda seg: seg.steps["state"][:, 1] == 3)
    lake.delete(episode_ids=[tagged_episode(0, 6, task="a").episode_id])
    seg = lake.checkout().read_segment(lake.checkout().segment_names()[0])
    assert seg.labels["a"].sum() == len(seg.episode_ends)


def test_task_balanced_sampling() -> None:
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    # task x: 6 successes (odd e) and 2 failures, long; task y: 2 short episodes
    lake.append([tagged_episode(e, 10, task="x") for e in (1, 3, 5, 7, 9, 11, 2, 4)])
    lake.append([tagged_episode(e, 4, task="y") for e in (20, 22)])
    rc = RelabelConfig(future=1, final=0, negative=0, task=0)
    s = Sampler(
        lake.checkout(), SamplerConfig(batch_size=64, task_balanced=True, augment_pad=0, relabel=rc), progress=False
    )
    b = [s.sample_host() for _ in range(60)]
    tasks = np.concatenate([x.task_ids.numpy() for x in b])
    np.testing.assert_allclose(np.bincount(tasks) / len(tasks), [0.5, 0.5], atol=0.03)
    e = np.concatenate([x.observations.state[:, 0].numpy() for x in b])[tasks == s.tasks.index("x")]
    assert np.mean(e % 2 == 1) == pytest.approx(0.5, abs=0.04)  # successes vs failures balanced
    plain = Sampler(lake.checkout(), SamplerConfig(batch_size=64, augment_pad=0, relabel=rc), progress=False)
    t2 = np.concatenate([plain.sample_host().task_ids.numpy() for _ in range(20)])
    assert np.mean(t2 == plain.tasks.index("x")) > 0.85  # unbalanced: proportional to transitions


def test_augmentation_shapes_and_determinism() -> None:
    x = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)
    a = random_shift(x, 4, torch.Generator().manual_seed(1))
    b = random_shift(x, 4, torch.Generator().manual_seed(1))
    c = random_shift(x, 4, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)
    # equals DrQ's reference: replicate-pad, then crop at the same offsets
    g = torch.Generator().manual_seed(7)
    off = torch.randint(0, 9, (2, 5), generator=g)
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2).float(), (4, 4, 4, 4), mode="replicate")
    ref = torch.stack([padded[i, :, off[0, i] : off[0, i] + 16, off[1, i] : off[1, i] + 16] for i in range(5)])
    out = random_shift(x, 4, torch.Generator().manual_seed(7))
    assert torch.equal(out.permute(0, 3, 1, 2).float(), ref)


def test_same_seed_same_batches_through_the_thread(small_lake: Lake) -> None:
    def draw() -> list[torch.Tensor]:
        with Sampler(small_lake.checkout(), cfg(augment_pad=2, batch_size=32), progress=False) as s:
            return [next(s).observations.images["front"] for _ in range(5)]

    for a, b in zip(draw(), draw(), strict=True):
        assert a.dtype == torch.float32 and a.shape == (32, 3, 8, 8) and 0 <= a.min() and a.max() <= 1
        assert torch.equal(a, b)


def test_streaming_visits_every_segment() -> None:
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    for k in range(6):
        lake.append([synthetic_episode(10 * k + i, length=5, size=8, task=f"t{k}") for i in range(3)])
    view = lake.checkout()
    s = Sampler(view, SamplerConfig(batch_size=8, streaming_segments=2, swap_every=3, augment_pad=0), progress=False)
    seen = set()
    for _ in range(3 * 8):
        seen |= set(s.sample_host().task_ids.tolist())
    s.close()
    assert seen == set(range(6))  # one task per segment: every segment was streamed in


def test_rank_shares_are_disjoint_and_cover() -> None:
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    lake.append([synthetic_episode(i, length=4, size=8) for i in range(30)])
    view = lake.checkout()
    shares = []
    for r in range(3):
        s = Sampler(view, SamplerConfig(batch_size=2, rank=r, world_size=3, augment_pad=0), progress=False)
        shares.append({round(float(x), 6) for x in s.pool.state[:, 0]})  # the red block's start: one per episode
    assert not (shares[0] & shares[1]) and not (shares[1] & shares[2]) and not (shares[0] & shares[2])
    full = Sampler(view, SamplerConfig(batch_size=2, augment_pad=0), progress=False)
    assert shares[0] | shares[1] | shares[2] == {round(float(x), 6) for x in full.pool.state[:, 0]}


def test_bad_input_errors(small_lake: Lake) -> None:
    empty = Lake.create(f"memory://{uuid.uuid4().hex}")
    with pytest.raises(SamplerError, match="holds no episodes"):
        Sampler(empty.checkout(), SamplerConfig(), progress=False)
    with pytest.raises(SamplerError, match=r"camera 'wrist' is not in the lake; it has \['front'\]"):
        Sampler(small_lake.checkout(), SamplerConfig(cameras=("wrist",)), progress=False)
    with pytest.raises(SamplerError, match="selected episode ids are not in snapshot"):
        Sampler(small_lake.checkout(), SamplerConfig(episode_ids=("0" * 64,)), progress=False)
    # rows are drawn with replacement: a batch larger than the data is allowed (small online replays)
    with Sampler(small_lake.checkout(), SamplerConfig(batch_size=5000, augment_pad=0), progress=False) as big:
        assert len(big.sample_host()) == 5000
    with pytest.raises(SamplerError, match="rank must be in"):
        SamplerConfig(rank=2, world_size=2)
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    lake.append([tagged_episode(e, 5, goal=False) for e in range(3)])
    with pytest.raises(SamplerError, match="no sampled episode stores a commanded goal"):
        Sampler(
            lake.checkout(), cfg(commanded=0.5, future=0.5, final=0, negative=0, task=0, batch_size=4), progress=False
        ).sample_host()


def test_statistics_are_the_moments_of_the_data_in_memory(small_lake: Lake) -> None:
    s = Sampler(small_lake.checkout(), cfg(future=1.0, final=0, negative=0, task=0), progress=False)
    view = small_lake.checkout()
    data = view.load(["state", "achieved_goal"], progress=False)
    stats = s.statistics(min_std=1e-3)
    np.testing.assert_allclose(stats["state_mean"], data.steps["state"].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["state_std"], data.steps["state"].std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["goal_state_mean"], data.steps["achieved_goal"].mean(0), rtol=1e-5, atol=1e-6)
    # a dimension that never varies gets the floor, never 0 (it would divide by 0)
    assert min(s.statistics(min_std=7.0)["state_std"]) == 7.0
    s.close()


def test_scene_state_is_appended_to_the_observation_state(small_lake: Lake) -> None:
    base = cfg(future=1.0, final=0, negative=0, task=0)
    s = Sampler(small_lake.checkout(), dataclasses.replace(base, scene_state=True), progress=False)
    assert s.scene_state_dim == 2
    b = s.sample_host()
    state, nxt = b.observations.state.numpy(), b.next_observations.state.numpy()
    assert state.shape[1] == 3 + 2
    # tagged episodes: state = (episode, step, noise), achieved_goal = (step / 10, episode)
    np.testing.assert_allclose(state[:, 3], state[:, 1] / 10, rtol=1e-6)
    np.testing.assert_array_equal(state[:, 4], state[:, 0])
    np.testing.assert_allclose(nxt[:, 3], nxt[:, 1] / 10, rtol=1e-6)
    s.close()
    only = Sampler(small_lake.checkout(), dataclasses.replace(base, scene_state=True, use_state=False), progress=False)
    assert only.sample_host().observations.state.shape[1] == 2
    only.close()
    bare = Lake.create(f"memory://{uuid.uuid4().hex}")
    ep = synthetic_episode(0, length=5, size=8)
    bare.append([ep.replace(steps={k: v for k, v in ep.steps.items() if k != "achieved_goal"})])
    with pytest.raises(SamplerError, match="achieved_goal"):
        Sampler(bare.checkout(), dataclasses.replace(base, scene_state=True), progress=False)
