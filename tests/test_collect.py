"""Parallel collection into a real lake: counts, metadata, determinism, resume without duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_lake import Lake
from robot_rl.cli import main as cli
from tasks.collect import CollectConfig, code_version, collect, collect_episode, episode_seeds

TASK = "tabletop/reach_red"


def test_two_workers_count_metadata_determinism_and_resume(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    cfg = CollectConfig(task=TASK, episodes=4, lake=uri, workers=2, batch_episodes=2, seed=5, progress=False)
    res = collect(cfg)
    assert res.added == 4 and len(res.commits) == 2 and res.skipped == 0
    lake = Lake.open(uri)
    view = lake.checkout()
    recs = view.episodes()
    assert [r.metadata["index"] for r in recs] == [0, 1, 2, 3]
    assert all(r.task == TASK and r.metadata["collect_seed"] == 5 and r.metadata["policy"] == "expert" for r in recs)
    assert lake.log()[0].message.startswith(f"collect {TASK}: 2 episodes, policy=expert noise=0.0 seed=5 indices 2-3")
    # episodes from worker processes equal the same episodes rolled out here
    ep0 = view.read_episode(recs[0].episode_id)
    again = collect_episode(cfg, 0)
    assert again.episode_id == recs[0].episode_id
    np.testing.assert_array_equal(again.steps["images/front"], ep0.steps["images/front"])
    assert ep0.success and ep0.goal.keys() == {"images/front", "images/wrist", "state"}
    assert ep0.steps["sim_state"].dtype == np.float64 and lake.verify().ok
    # an interrupted run (only 2 of 6 done) resumes: the 4 already there are skipped, 2 added
    more = collect(CollectConfig(task=TASK, episodes=6, lake=uri, workers=1, batch_episodes=4, seed=5, progress=False))
    assert (more.added, more.skipped) == (2, 4)
    assert sorted(r.metadata["index"] for r in lake.checkout().episodes()) == list(range(6))
    # another seed gives other episodes
    other = collect(CollectConfig(task=TASK, episodes=1, lake=uri, seed=6, progress=False))
    assert other.added == 1 and len(lake.checkout()) == 7


def test_noise_and_random_policies_differ(tmp_path: Path) -> None:
    base = {"task": TASK, "episodes": 1, "lake": str(tmp_path / "l"), "progress": False}
    expert = collect_episode(CollectConfig(**base), 0)
    noisy = collect_episode(CollectConfig(**base, policy="noisy"), 0)
    rand = collect_episode(CollectConfig(**base, policy="random"), 0)
    assert np.abs(noisy.steps["action"] - expert.steps["action"]).max() > 0.05
    assert not np.array_equal(rand.steps["action"], expert.steps["action"])
    # same reset: the first frame is identical whatever the policy
    np.testing.assert_array_equal(noisy.steps["images/front"][0], expert.steps["images/front"][0])


def test_cli_collect_errors_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["collect", "task=nope", f"lake={tmp_path / 'l'}"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'nope'" in err and TASK in err
    assert cli(["collect", "episodes=1"]) == 2
    assert "missing required setting 'task'" in capsys.readouterr().err
    assert (
        cli(["collect", f"task={TASK}", "episodes=1", f"lake={tmp_path / 'l'}", "progress=false", "cameras=[front]"])
        == 0
    )
    assert "1 episodes added" in capsys.readouterr().out
    (rec,) = Lake.open(tmp_path / "l").checkout().episodes()
    assert rec.metadata["cameras"] == ["front"]
    assert cli(["collect", "--list-tasks"]) == 0
    assert TASK in capsys.readouterr().out


def test_episode_seeds_and_actions_follow_the_seed_sequence(tmp_path: Path) -> None:
    """Episode i of a run seeded s: env reset seed and policy noise from SeedSequence([s, i]), the scripted
    policy acting once per step on the env (a hand-written loop gives the same actions and states)."""
    import tasks

    cfg = CollectConfig(task=TASK, episodes=2, lake=str(tmp_path / "l"), policy="noisy", seed=5, max_steps=12)
    ep = collect_episode(cfg, 1)
    env_seed, policy_seed = np.random.SeedSequence([5, 1]).generate_state(2)
    assert episode_seeds(5, 1) == (int(env_seed), int(policy_seed)) and ep.metadata["env_seed"] == env_seed
    task = tasks.get(TASK)
    env = task.make_env(cfg.image_size, task.cameras)
    obs, _ = env.reset(seed=int(env_seed))
    policy = task.scripted_policy(0.3, np.random.default_rng(policy_seed))
    actions, states = [], [obs["state"]]
    for _ in range(12):
        actions.append(policy.act(env))
        obs, *_ = env.step(actions[-1])
        states.append(obs["state"])
    env.close()
    assert len(ep) == 13 and not ep.steps["action"][-1].any(), "12 actions, then the last observation"
    np.testing.assert_array_equal(ep.steps["action"][:-1], np.stack(actions))
    np.testing.assert_array_equal(ep.steps["state"], np.stack(states))


def test_code_version_names_the_package_version() -> None:
    import tomllib

    import robot_rl
    from data_lake.version import __version__

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert __version__ == robot_rl.__version__ == project["version"]
    assert code_version().startswith(f"robot-rl {__version__}")
