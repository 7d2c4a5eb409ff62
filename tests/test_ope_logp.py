"""Logged action probabilities: the censored Gaussian (numpy and torch), what the scripted policies record,
what collect writes into the lake (``action_logp``), and the field's round trip through the lake."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import tasks
from data_lake import Episode, Lake
from data_lake.validate import EpisodeValidationError
from robot_rl.ope.dataset import load_logged
from robot_rl.ope.target import ScriptedTarget, censored_gaussian_log_prob
from tasks.collect import CollectConfig, collect, collect_episode
from tasks.core import Policy, censored_gaussian_logp, uniform_logp

TASK = "tabletop/reach_red"
SMALL = {"image_size": 16, "cameras": ("front",), "max_steps": 15, "progress": False}


def test_censored_gaussian_matches_monte_carlo_and_integrates_to_one() -> None:
    rng = np.random.default_rng(0)
    for m, s in ((0.7, 0.3), (-0.2, 0.5), (1.0, 0.2)):
        draws = np.clip(m + s * rng.standard_normal(400_000), -1, 1)
        for bound in (1.0, -1.0):
            p = math.exp(censored_gaussian_logp(np.array([bound]), np.array([m]), s))
            frac = float((draws == bound).mean())
            se = math.sqrt(max(p * (1 - p), 1e-12) / len(draws))
            assert abs(p - frac) < 5 * se + 1e-6, (m, s, bound, p, frac)
        # the interior density integrates to 1 - (both masses)
        grid = np.linspace(-1, 1, 200_001)[1:-1]
        dens = np.exp(censored_gaussian_logp(grid[:, None], np.array([m]), s))
        masses = sum(math.exp(censored_gaussian_logp(np.array([b]), np.array([m]), s)) for b in (1.0, -1.0))
        assert np.trapezoid(dens, grid) == pytest.approx(1 - masses, abs=1e-4)
    # components add up; far tails stay finite and accurate (against torch's log_ndtr), across the series switch
    a, mean = np.array([0.3, 1.0, -1.0]), np.array([0.1, 0.5, -0.4])
    parts = [censored_gaussian_logp(a[j : j + 1], mean[j : j + 1], 0.3) for j in range(3)]
    assert censored_gaussian_logp(a, mean, 0.3) == pytest.approx(sum(parts))
    far = np.linspace(-5.0, -2.0, 31)  # (m - 1)/σ from -60 to -30 with σ = 0.1
    got = censored_gaussian_logp(np.ones((31, 1)), far[:, None], 0.1)
    want = torch.special.log_ndtr(torch.from_numpy((far - 1.0) / 0.1)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match="std > 0"):
        censored_gaussian_logp(a, mean, 0.0)
    with pytest.raises(ValueError, match="outside"):
        censored_gaussian_logp(np.array([1.5]), np.array([0.0]), 0.3)


def test_torch_and_numpy_censored_gaussian_agree() -> None:
    rng = np.random.default_rng(1)
    mean = rng.uniform(-1.5, 1.5, (64, 4))
    actions = np.clip(mean + 0.4 * rng.standard_normal((64, 4)), -1, 1)
    actions[::5, 0], actions[1::7, 2] = 1.0, -1.0  # bounds in every row pattern
    std = rng.uniform(0.05, 0.6, (64, 4))
    ref = censored_gaussian_logp(actions, mean, std)
    got = censored_gaussian_log_prob(torch.from_numpy(actions), torch.from_numpy(mean), torch.from_numpy(std))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)
    assert ((actions == 1.0) | (actions == -1.0)).any(axis=1).sum() > 10


def test_policies_record_the_log_probability_of_their_actions() -> None:
    task = tasks.get(TASK)
    env = task.make_env(image_size=16)
    env.render_images = False
    env.reset(seed=3)
    noisy = task.scripted_policy(0.3, np.random.default_rng(0))
    expert = task.expert()
    for _ in range(5):
        mean = np.asarray(expert(env), np.float64)  # reach's expert is a function of the state
        action = noisy.act(env)
        assert noisy.logps[-1] == pytest.approx(float(censored_gaussian_logp(action, mean, 0.3)), abs=1e-12)
        env.step(action)
    assert len(noisy.logps) == 5 and noisy.stochastic
    rand = task.random_policy(np.random.default_rng(0))
    rand.act(env), rand.act(env)
    assert rand.logps == [uniform_logp(4)] * 2 == [-4 * math.log(2)] * 2
    deterministic = Policy(task.expert(), 0.0, np.random.default_rng(0))
    deterministic.act(env)
    assert deterministic.logps == [] and not deterministic.stochastic
    env.reset(seed=4)  # a new episode starts a new record
    noisy.act(env)
    assert len(noisy.logps) == 1
    env.close()


def test_collect_writes_action_logp_that_replays_and_round_trips(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    noisy = CollectConfig(task=TASK, episodes=2, lake=uri, policy="noisy", seed=1, **SMALL)
    collect(noisy)
    collect(CollectConfig(task=TASK, episodes=1, lake=uri, policy="random", seed=2, **SMALL))
    collect(CollectConfig(task=TASK, episodes=1, lake=uri, policy="expert", seed=3, **SMALL))  # no density: none
    lake = Lake.open(uri)
    view = lake.checkout()
    assert view.schema is not None and view.schema["step"]["action_logp"] == {"dtype": "float32", "shape": []}
    eps = {r.metadata["policy"] + str(r.metadata["index"]): view.read_episode(r.episode_id) for r in view.episodes()}
    for ep in eps.values():
        if ep.metadata["policy"] == "expert":
            assert "action_logp" not in ep.steps
            continue
        lp = ep.steps["action_logp"]
        assert lp.dtype == np.float32 and lp.shape == (len(ep),) and lp[-1] == 0 and np.isfinite(lp).all()
    np.testing.assert_array_equal(eps["random0"].steps["action_logp"][:-1], np.float32(-4 * math.log(2)))
    # the logged log μ equals the censored Gaussian of the actions around the expert replayed on the stored states
    data = load_logged(uri, "main", episodes=[eps[k].episode_id for k in ("noisy0", "noisy1")])
    replayed, means = ScriptedTarget(TASK, 0.3).score_logged(data)
    np.testing.assert_allclose(replayed, data.logged_logp, atol=2e-5)
    assert np.abs(data.actions - means).max() > 0.1, "noise was added"
    # the same episode re-collected has the same bytes, so re-running the run adds nothing
    again = collect_episode(noisy, 1)
    np.testing.assert_array_equal(again.steps["action_logp"], eps["noisy1"].steps["action_logp"])
    res = collect(noisy)
    assert (res.added, res.skipped) == (0, 2)
    # the field survives verify, export and a reload of the exported file
    assert lake.verify().ok
    paths = lake.export(tmp_path / "out")
    loaded = {p.stem: Episode.load(p) for p in paths}
    np.testing.assert_array_equal(
        loaded[eps["noisy0"].episode_id].steps["action_logp"], eps["noisy0"].steps["action_logp"]
    )
    assert "action_logp" not in loaded[eps["expert0"].episode_id].steps
    assert all(e.episode_id == k for k, e in loaded.items())


def test_a_zero_probability_logged_action_is_rejected(tmp_path: Path) -> None:
    ep = collect_episode(CollectConfig(task=TASK, episodes=1, lake=str(tmp_path / "l"), policy="noisy", **SMALL), 0)
    lp = ep.steps["action_logp"].copy()
    lp[4] = -np.inf
    bad = ep.replace(steps={**ep.steps, "action_logp": lp})
    with pytest.raises(EpisodeValidationError, match=r"action_logp at step 4: value -inf is not finite.*positive"):
        Lake.create(tmp_path / "lake").append([bad])
