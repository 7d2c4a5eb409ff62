"""`robot-rl pretrain` and `robot-rl eval`: exact resume, data-parallel ranks in sync, run directories,
Hydra composition, evaluation summaries and videos, clear errors.

Lakes are real local Icechunk repositories (synthetic episodes; a small real tabletop collection
for evaluation in MuJoCo). The data-parallel check launches 2 CPU processes with torchrun (gloo).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data_lake import Lake
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from data_lake.synthetic import synthetic_episode
from robot_rl import checkpoint
from robot_rl.evaluate import EvalConfig, evaluate, wilson_interval
from robot_rl.hydra_utils import compose
from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, config_from_dict, pretrain

ROOT = Path(__file__).resolve().parent.parent
TINY_ALGO = {
    "encoder": {"feature_dim": 8, "conv_channels": 4, "conv_layers": 2},
    "hidden": [16, 16],
    "num_samples": 3,
}


@pytest.fixture(scope="module")
def lake_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("lake") / "lake")
    lake = Lake.create(uri)
    lake.append([synthetic_episode(s, length=12, size=16, task=("t/a", "t/b")[s % 2]) for s in range(8)])
    lake.tag("v1")
    return uri


def config(lake_uri: str, run_dir: Path, steps: int, **kw: object) -> PretrainConfig:
    base = {
        "algo": "cql",
        "algo_cfg": TINY_ALGO,
        "lake": LakeConfig(lake_uri, "tag:v1"),
        "obs": ObsConfig(cameras=("front",), use_state=True, augment_pad=2),
        "task": TaskConfig(conditioning="goal", relabel=RelabelConfig()),
        "steps": steps,
        "batch_size": 8,
        "run_dir": str(run_dir),
        "log_every": 3,
        "save_every": 100,
        "prefetch": 2,
        "progress": False,
    }
    return PretrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "latest" / "tensors.safetensors"))


def test_sampler_state_round_trip_is_exact(lake_uri: str) -> None:
    """Batches after load_state_dict equal those the original sampler draws next (prefetch thread on)."""
    cfg = SamplerConfig(batch_size=8, augment_pad=2, prefetch=3, seed=5)
    view = Lake.open(lake_uri).checkout("tag:v1")
    with Sampler(view, cfg, progress=False) as a:
        for _ in range(4):
            next(a)
        state = json.loads(json.dumps(a.state_dict()))  # it must survive JSON
        expected = [next(a) for _ in range(3)]
    with Sampler(view, cfg, progress=False) as b:
        b.load_state_dict(state)
        got = [next(b) for _ in range(3)]
    for x, y in zip(expected, got, strict=True):
        assert torch.equal(x.actions, y.actions) and torch.equal(
            x.observations.images["front"], y.observations.images["front"]
        )
        assert torch.equal(x.goals.images["front"], y.goals.images["front"])
    with (
        Sampler(view, dataclasses.replace(cfg, world_size=2), progress=False) as c,
        pytest.raises(ValueError, match="rank"),
    ):
        c.load_state_dict(state)


def test_resume_is_bitwise_exact(lake_uri: str, tmp_path: Path) -> None:
    """N+M updates in one run == N updates, stop, resume=true for M more (parameters and optimizer state)."""
    pretrain(config(lake_uri, tmp_path / "straight", steps=10))
    pretrain(config(lake_uri, tmp_path / "resumed", steps=6))
    first = tensors(tmp_path / "resumed")
    pretrain(config(lake_uri, tmp_path / "resumed", steps=10, resume=True))
    a, b = tensors(tmp_path / "straight"), tensors(tmp_path / "resumed")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert not all(torch.equal(first[k], b[k]) for k in first), "the resumed run must have trained"
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "latest" / "state.json").read_text())
    assert state["step"] == 10 and state["extra"]["samplers"][0]["batches"] == 10
    run = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert run["lake"]["snapshot_id"] == Lake.open(lake_uri).resolve("tag:v1")
    assert len(run["git"]["commit"] or "0" * 40) == 40
    assert list((tmp_path / "resumed" / "tb").iterdir()), "TensorBoard events are written"


def test_run_directory_guards(lake_uri: str, tmp_path: Path) -> None:
    pretrain(config(lake_uri, tmp_path / "r", steps=2))
    with pytest.raises(FileExistsError, match="resume=true"):
        pretrain(config(lake_uri, tmp_path / "r", steps=4))
    with pytest.raises(ValueError, match="batch_size"):
        pretrain(config(lake_uri, tmp_path / "r", steps=4, batch_size=4, resume=True))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain(config(lake_uri, tmp_path / "fresh", steps=4, resume=True))
    with pytest.raises(ValueError, match="unknown algo 'nope'"):
        config(lake_uri, tmp_path / "x", steps=1, algo="nope").algo_config()


def test_hydra_composition_builds_typed_configs() -> None:
    d = compose("pretrain", ["algo=iql", "obs=state", "task=multi_task", "lake.uri=/x", "steps=7", "algo.beta=2.0"])
    cfg = config_from_dict(d)
    assert (cfg.algo, cfg.steps, cfg.lake.uri, cfg.obs.cameras, cfg.task.conditioning) == ("iql", 7, "/x", (), "task")
    algo_cfg = cfg.algo_config()
    assert algo_cfg.beta == 2.0 and algo_cfg.seed == cfg.seed
    with pytest.raises(ValueError, match="draws no goals"):
        config_from_dict(compose("pretrain", ["task=multi_task", "task.relabel.future=0.5", "task.relabel.task=0.5"]))
    # collect's plain `task` key does not collide with pretrain's task/ group
    assert compose("collect", ["task=tabletop/reach_red"])["task"] == "tabletop/reach_red"


def test_data_parallel_ranks_stay_in_sync(lake_uri: str, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (gloo): each rank samples its own share; parameters stay identical."""
    run = tmp_path / "ddp"
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=localhost:0",
        "-m",
        "robot_rl.pretrain",
        "algo=iql",
        "obs=state",
        "task=single_task",
        "obs.scene_state=true",
        f"lake.uri={lake_uri}",
        "lake.ref=tag:v1",
        "steps=6",
        "batch_size=8",
        "save_every=3",
        f"run_dir={run}",
        "progress=false",
        "algo.hidden=[16,16]",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = json.loads((run / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and [r["step"] for r in ranks["ranks"]] == [6, 6]
    assert ranks["ranks"][0]["digest"] == ranks["ranks"][1]["digest"]
    state = json.loads((run / "checkpoints" / "latest" / "state.json").read_text())
    samplers = state["extra"]["samplers"]
    assert [s["rank"] for s in samplers] == [0, 1] and samplers[0]["numpy_rng"] != samplers[1]["numpy_rng"]
    # the two shares partition the episodes
    view = Lake.open(lake_uri).checkout("tag:v1")
    shares = []
    for rank in (0, 1):
        s = Sampler(view, SamplerConfig(batch_size=2, rank=rank, world_size=2, cameras=()), progress=False)
        shares.append(s.pool.n_episodes)
        s.close()
    assert sum(shares) == len(view.episodes()) and all(shares)
    assert json.loads((run / "run.json").read_text())["world_size"] == 2


@pytest.fixture(scope="module")
def tabletop_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tasks.collect import CollectConfig, collect

    uri = str(tmp_path_factory.mktemp("tabletop") / "lake")
    collect(
        CollectConfig(
            task="tabletop/reach_red",
            episodes=3,
            lake=uri,
            policy="noisy",
            image_size=32,
            cameras=("front",),
            progress=False,
        )
    )
    return uri


def tabletop_config(lake: str, run: Path, algo: str, steps: int, **kw: object) -> PretrainConfig:
    """A tiny ``algo`` on the tabletop lake's main branch (images and state)."""
    tiny = {"encoder": TINY_ALGO["encoder"], "hidden": [16, 16]}
    return config(lake, run, steps=steps, algo=algo, algo_cfg=tiny, lake=LakeConfig(lake, "main"), **kw)


def test_pretrain_evaluates_in_the_simulator_and_eval_cli_agrees(tabletop_lake: str, tmp_path: Path) -> None:
    run = tmp_path / "bc"
    cfg = tabletop_config(
        tabletop_lake,
        run,
        "bc",
        steps=4,
        task=TaskConfig(eval_tasks=("tabletop/reach_red",)),
        eval_every=2,
        eval_episodes=2,
        eval_envs=2,
    )
    pretrain(cfg)
    rows = (run / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("step,success_rate") and len(rows) == 3  # steps 2 and 4
    summary = json.loads((run / "eval" / "step_0000004.json").read_text())
    assert summary["episodes"] == 2 and 0 <= summary["success_rate"] <= 1
    assert summary["success_ci95"][0] <= summary["success_rate"] <= summary["success_ci95"][1]
    assert Path(summary["video"]).stat().st_size > 1000
    assert (run / "checkpoints" / "best" / "state.json").exists()
    policy, meta = checkpoint.load_policy(run / "policy")
    assert meta["lake"]["snapshot_id"] == Lake.open(tabletop_lake).resolve("main")
    assert policy.step == 4

    from robot_rl.eval_cmd import run_eval

    out = tmp_path / "eval"
    run_eval(
        [
            f"ckpt={run}/policy",
            "task=tabletop/reach_red",
            "episodes=3",
            f"out={out}",
            "progress=false",
            "video_format=gif",
            "video_episodes=2",
        ]
    )
    got = json.loads((out / "eval_0000004.json").read_text())
    assert got["episodes"] == 3 and len(got["episode_results"]) == 3
    wins = sum(e["success"] for e in got["episode_results"])
    assert got["success_rate"] == wins / 3 and got["per_task"]["tabletop/reach_red"]["success_rate"] == wins / 3
    assert (out / "eval_0000004.gif").stat().st_size > 1000


def test_greedy_policy_is_cem_over_the_checkpoints_own_critic(tabletop_lake: str, tmp_path: Path) -> None:
    """``eval act=cem``: an actor-critic checkpoint acts by CEM over its trained critic, not a fresh one."""
    from robot_rl.algos import ALGOS
    from robot_rl.algos.base import encode
    from robot_rl.algos.qtopt import CEMConfig, cem_on_critic
    from robot_rl.eval_cmd import run_eval

    run = tmp_path / "iql"
    cfg = tabletop_config(tabletop_lake, run, "iql", steps=3)
    pretrain(cfg)
    ckpt = run / "checkpoints" / "latest"
    cem = CEMConfig(samples=16, elites=4, iterations=2)
    greedy, meta = checkpoint.load_greedy_policy(ckpt, cem)
    assert greedy.name == "iql+cem" and greedy.step == 3 and meta["tasks"] == ["tabletop/reach_red"]
    algo, _ = checkpoint.load_algorithm(ckpt)
    with Sampler(Lake.open(tabletop_lake).checkout("main"), cfg.sampler_config(), progress=False) as sampler:
        batch = next(sampler)
    obs, goals = batch.observations, batch.goals
    got = greedy.act(obs, goals, None, True, torch.Generator().manual_seed(7))  # (B, A)
    with torch.no_grad():
        features = encode(algo.nets.encoder, batch, next_observations=False).features
        want = cem_on_critic(features, algo.nets.critic, got.shape[1], cem, torch.Generator().manual_seed(7)).action
        fresh = ALGOS["iql"](algo.cfg, algo.spec)  # same architecture, untrained weights
        fresh_features = encode(fresh.nets.encoder, batch, next_observations=False).features
        other = cem_on_critic(fresh_features, fresh.nets.critic, got.shape[1], cem, torch.Generator().manual_seed(7))
    assert got.shape == (len(batch), 4) and got.abs().max() <= 1
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, other.action)  # the trained critic, not a freshly built one

    with pytest.raises(checkpoint.CheckpointError, match="exported policy"):
        checkpoint.load_greedy_policy(run / "policy")
    bc = tmp_path / "bc"
    pretrain(dataclasses.replace(cfg, run_dir=str(bc), algo="bc"))
    with pytest.raises(checkpoint.CheckpointError, match=r"bc has no Q\(s, a\) critic"):
        checkpoint.load_greedy_policy(bc / "checkpoints" / "latest")

    out = tmp_path / "eval"
    common = [f"ckpt={ckpt}", "task=tabletop/reach_red", "episodes=2", f"out={out}", "progress=false"]
    run_eval([*common, "video_episodes=0", "act=cem", "cem.samples=16", "cem.elites=4"])
    got_eval = json.loads((out / "eval_0000003_cem.json").read_text())
    assert got_eval["episodes"] == 2 and 0 <= got_eval["success_rate"] <= 1
    with pytest.raises(ValueError, match=r"act must be one of \('policy', 'cem'\), got 'argmax'"):
        run_eval([*common, "act=argmax"])
    with pytest.raises(ValueError, match="act=cem evaluates with backend=local"):
        run_eval([*common, "act=cem", "backend=ray"])


def test_state_only_pretraining_observes_the_scene_with_normalized_inputs(tabletop_lake: str, tmp_path: Path) -> None:
    run = tmp_path / "bc-state"
    cfg = config(
        tabletop_lake,
        run,
        steps=3,
        algo="bc",
        algo_cfg={"hidden": [16, 16]},
        lake=LakeConfig(tabletop_lake, "main"),
        obs=ObsConfig(cameras=(), use_state=True, scene_state=True, augment_pad=0),
        task=TaskConfig(eval_tasks=("tabletop/reach_red",)),
        eval_episodes=2,
        eval_envs=2,
    )
    pretrain(cfg)
    policy, _ = checkpoint.load_policy(run / "policy")
    spec = policy.spec
    assert (spec.state_dim, spec.scene_state_dim, spec.proprio_dim, spec.goal_state_dim) == (20, 12, 8, 12)
    data = Lake.open(tabletop_lake).checkout("main").load(["state", "achieved_goal"], progress=False)
    want = np.concatenate([data.steps["state"], data.steps["achieved_goal"]], 1).mean(0)
    np.testing.assert_allclose(spec.state_mean, want, rtol=1e-4, atol=1e-6)
    assert len(spec.goal_state_mean) == 12 and min(spec.goal_state_std) > 0
    summary = json.loads((run / "eval" / "step_0000003.json").read_text())
    for e in summary["episode_results"]:
        assert e["start_distance"] > 0 and e["final_distance"] >= 0
    assert summary["mean_final_distance"] == pytest.approx(
        np.mean([e["final_distance"] for e in summary["episode_results"]])
    )
    unnormalized = tmp_path / "bc-raw"
    pretrain(dataclasses.replace(cfg, run_dir=str(unnormalized), obs=dataclasses.replace(cfg.obs, normalize=False)))
    raw, _ = checkpoint.load_policy(unnormalized / "policy")
    assert raw.spec.state_mean == () and raw.spec.goal_state_mean == ()


def test_single_task_from_proprioception_alone_is_refused(tabletop_lake: str, tmp_path: Path) -> None:
    """Regression (issue 13): task=single_task obs=state dropped the goal and the scene silently."""
    none = TaskConfig(conditioning="none", relabel=RelabelConfig(future=0, final=0, negative=0, task=1.0))
    blind = config(
        tabletop_lake,
        tmp_path / "blind",
        steps=2,
        algo="iql",
        algo_cfg={"hidden": [16, 16]},
        lake=LakeConfig(tabletop_lake, "main"),
        obs=ObsConfig(cameras=(), use_state=True, augment_pad=0),
        task=none,
    )
    with pytest.raises(ValueError, match=r"task.conditioning=goal .*obs.scene_state=true.*obs=image"):
        pretrain(blind)
    assert not (tmp_path / "blind" / "checkpoints").exists()
    seeing = dataclasses.replace(
        blind, run_dir=str(tmp_path / "scene"), obs=dataclasses.replace(blind.obs, scene_state=True)
    )
    assert (pretrain(seeing) / "checkpoints" / "latest" / "state.json").exists()


def test_random_policy_evaluation_and_wilson_interval() -> None:
    from robot_rl.nets import ObservationSpec

    spec = ObservationSpec(action_dim=4, cameras=("front",), image_sizes=((32, 32),), state_dim=0)
    res = evaluate(
        None,
        spec,
        EvalConfig(
            tasks=("tabletop/reach_red",), episodes=2, num_envs=2, max_steps=5, video_episodes=0, progress=False
        ),
    )
    assert res.summary["episodes"] == 2 and all(e["steps"] <= 5 for e in res.episodes)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert np.isfinite(res.summary["mean_return"])


def test_every_algorithm_has_a_complete_config_group_file() -> None:
    """configs/algo/<name>.yaml lists every config field (regenerate: python -m robot_rl.algo_configs)."""
    from robot_rl.algos import ALGOS
    from robot_rl.hydra_utils import dataclass_defaults

    for name, cls in ALGOS.items():
        d = compose("pretrain", [f"algo={name}"])["algo"]
        assert d.pop("name") == name
        assert set(d) == set(dataclass_defaults(cls.config_class)) - {"seed"}, name
        config_from_dict(compose("pretrain", [f"algo={name}"])).algo_config()  # builds


def test_every_named_variant_builds_its_algorithm_with_its_settings() -> None:
    """``algo=gciql_ogbench``, ``algo=tt_cpu``: the file names its algorithm, lists every field, and the
    built config carries the variant's overrides."""
    from robot_rl.algo_configs import VARIANTS
    from robot_rl.algos import ALGOS
    from robot_rl.hydra_utils import dataclass_defaults

    for variant, (name, overrides, _) in VARIANTS.items():
        d = compose("pretrain", [f"algo={variant}"])["algo"]
        assert d.pop("name") == name, variant
        assert set(d) == set(dataclass_defaults(ALGOS[name].config_class)) - {"seed"}, variant
        built = config_from_dict(compose("pretrain", [f"algo={variant}"])).algo_config()
        assert isinstance(built, ALGOS[name].config_class)
        for k, v in overrides.items():
            got = getattr(built, k)
            assert (list(got) if isinstance(got, tuple) else got) == v, (variant, k, got, v)
