"""`robot-rl finetune`: mixed replay ratio, reward budget, the auxiliary goal-reaching loss, flywheel
commits on a finetune/<run> branch, evaluation curves, and exact resume.

A real local lake of tabletop episodes (collected with the scripted policy at 32x32, one camera);
online episodes are rolled out in MuJoCo by the learner. Networks are tiny and read states (and
goal states) so each run takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data_lake import Lake
from data_lake.sampler import RelabelConfig
from robot_rl.finetune import AuxConfig, FinetuneConfig, Finetuner, batch_split, finetune
from robot_rl.pretrain import LakeConfig, ObsConfig

TASK = "tabletop/reach_red"
TINY = {"hidden": [16, 16], "num_samples": 2, "encoder": {"feature_dim": 8, "conv_channels": 4, "conv_layers": 2}}


@pytest.fixture(scope="module")
def lake_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tasks.collect import CollectConfig, collect

    uri = str(tmp_path_factory.mktemp("ft") / "lake")
    for task, n in ((TASK, 4), ("tabletop/play", 2)):
        collect(
            CollectConfig(
                task=task,
                episodes=n,
                lake=uri,
                policy="noisy",
                image_size=32,
                cameras=("front",),
                max_steps=20,
                progress=False,
            )
        )
    Lake.open(uri).tag("v1")
    return uri


def config(lake_uri: str, run: Path, **kw: object) -> FinetuneConfig:
    base = {
        "task": TASK,
        "algo": "cql",
        "algo_cfg": TINY,
        "lake": LakeConfig(lake_uri, "tag:v1"),
        "obs": ObsConfig(cameras=(), use_state=True, augment_pad=0),
        "online_steps": 30,
        "batch_size": 16,
        "utd": 0.2,
        "commit_every": 1,
        "eval_every": 0,
        "eval_episodes": 2,
        "eval_envs": 2,
        "max_steps": 10,
        "run_dir": str(run),
        "progress": False,
        "prefetch": 1,
    }
    return FinetuneConfig(**{**base, **kw})  # type: ignore[arg-type]


def rows_of(states: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(np.round(r, 5)) for r in states.cpu().numpy().tolist()}


def episode_states(lake_uri: str, ref: str, ids: list[str]) -> set[tuple[float, ...]]:
    view = Lake.open(lake_uri).checkout(ref)
    out: set[tuple[float, ...]] = set()
    for i in ids:
        out |= rows_of(torch.from_numpy(view.read_episode(i).steps["state"]))
    return out


def test_batch_split() -> None:
    cfg = FinetuneConfig(task=TASK, algo="cql", algo_cfg={}, batch_size=100, online_ratio=0.25)
    assert batch_split(cfg, 50, 500) == (25, 75)
    assert batch_split(cfg, 0, 500) == (0, 100) and batch_split(cfg, 50, 0) == (100, 0)
    prop = FinetuneConfig(task=TASK, algo="cql", algo_cfg={}, batch_size=100, online_ratio=None)
    assert batch_split(prop, 100, 300) == (25, 75)


def test_mixed_batches_and_reward_budget(lake_uri: str, tmp_path: Path) -> None:
    ft = Finetuner(config(lake_uri, tmp_path / "mix", online_ratio=0.25, reward_budget=1))
    try:
        assert len(ft.revealed) == 1 and len(Lake.open(lake_uri).checkout("v1").episodes(TASK)) == 4
        ft.lake.branch(ft.branch, f"snapshot:{ft.view.snapshot_id}")
        ft.collect_episode()
        ft.commit()
        assert ft.split == (4, 12)
        batch = ft.next_batch()
        assert len(batch) == 16 and batch.goals is not None
        online = episode_states(lake_uri, f"branch:{ft.branch}", ft.online_ids)
        revealed = episode_states(lake_uri, "v1", ft.revealed)
        hidden = episode_states(lake_uri, "v1", [r.episode_id for r in ft.view.episodes(TASK)]) - revealed
        first, rest = rows_of(batch.observations.state[:4]), rows_of(batch.observations.state[4:])
        assert first <= online, "the first rows come from online episodes"
        assert rest <= revealed and not (rest & hidden), "offline rows only from the revealed episode"
    finally:
        ft.close()
    ft0 = Finetuner(config(lake_uri, tmp_path / "none", reward_budget=0))
    try:
        ft0.lake.branch(ft0.branch, f"snapshot:{ft0.view.snapshot_id}")
        ft0.collect_episode()
        ft0.commit()
        assert ft0.revealed == [] and ft0.split == (16, 0) and ft0.offline is None
    finally:
        ft0.close()


def test_flywheel_commits_curves_and_checkpoints(lake_uri: str, tmp_path: Path) -> None:
    run = finetune(config(lake_uri, tmp_path / "fly", eval_every=15))
    lake = Lake.open(lake_uri)
    branch = "finetune/fly"
    assert branch in lake.branches()
    log = lake.log(branch)
    mine = [c for c in log if c.message.startswith("finetune fly:")]
    assert mine and all(c.metadata.get("run") == "fly" for c in mine)
    base = len(lake.checkout("v1").episodes())
    eps = lake.checkout(branch).episodes()
    online = [r for r in eps if r.metadata.get("run") == "fly"]
    assert len(eps) == base + len(online) and online and all(r.task == TASK for r in online)
    assert len(lake.checkout("main").episodes()) == base, "main is untouched"
    curve = json.loads((run / "curve.json").read_text())
    assert curve[0]["env_step"] == 0 and curve[-1]["env_step"] >= 30 and (run / "curve.png").stat().st_size > 1000
    for row in curve:
        ev = json.loads(Path(row["eval_json"]).read_text())
        assert ev["success_rate"] == row["success_rate"]
    state = json.loads((run / "checkpoints" / "latest" / "state.json").read_text())
    assert state["extra"]["counters"]["updates"] == int(0.2 * state["extra"]["counters"]["env_steps"])


QTOPT_TINY = {"hidden": [16, 16], "encoder": TINY["encoder"], "cem": {"samples": 8, "elites": 2}}


@pytest.mark.parametrize(("algo", "algo_cfg"), [("cql", TINY), ("qtopt", QTOPT_TINY)], ids=["cql", "qtopt-cem"])
def test_resume_continues_exactly(lake_uri: str, tmp_path: Path, algo: str, algo_cfg: dict) -> None:
    """Stop after 20 env steps and resume to 40 == 40 in one go (the extra evaluation at the stop, which
    samples CEM candidates, must not disturb the training RNG)."""
    kw = {"algo": algo, "algo_cfg": algo_cfg}
    ra, rb = tmp_path / f"{algo}-a", tmp_path / f"{algo}-b"  # run names are branch names in the shared lake
    finetune(config(lake_uri, ra, online_steps=40, **kw))
    finetune(config(lake_uri, rb, online_steps=20, **kw))
    finetune(config(lake_uri, rb, online_steps=40, resume=True, **kw))
    a = load_file(str(ra / "checkpoints" / "latest" / "tensors.safetensors"))
    b = load_file(str(rb / "checkpoints" / "latest" / "tensors.safetensors"))
    sa = json.loads((ra / "checkpoints" / "latest" / "state.json").read_text())["extra"]["counters"]
    sb = json.loads((rb / "checkpoints" / "latest" / "state.json").read_text())["extra"]["counters"]
    assert sa == sb and sa["updates"] > 0
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_auxiliary_goal_reaching_loss(lake_uri: str, tmp_path: Path) -> None:
    """ξ > 0 adds L_g through the shared encoder (its heads train, its metrics appear); ξ = 0 has none."""
    aux = AuxConfig(xi=0.5, batch_size=8, relabel=RelabelConfig())
    ft = Finetuner(config(lake_uri, tmp_path / "aux", aux=aux))
    try:
        assert any(k.startswith("aux_") for k in ft.algo.nets)
        ft.lake.branch(ft.branch, f"snapshot:{ft.view.snapshot_id}")
        ft.collect_episode()
        ft.commit()
        before = {k: v.clone() for k, v in ft.algo.nets.state_dict().items() if k.startswith("aux_")}
        metrics = ft.algo.update(ft.next_batch())
        assert "aux/L_g" in metrics and np.isfinite(metrics["aux/L_g"])
        after = ft.algo.nets.state_dict()
        trained = [k for k in before if not k.startswith("aux_target_") and not torch.equal(before[k], after[k])]
        assert trained, "the goal-reaching heads must train"
    finally:
        ft.close()
    plain = Finetuner(config(lake_uri, tmp_path / "plain"))
    try:
        assert not any(k.startswith("aux_") for k in plain.algo.nets) and plain.algo.auxiliary is None
    finally:
        plain.close()


def test_auxiliary_loss_refuses_a_discount_unlike_its_heads(lake_uri: str, tmp_path: Path) -> None:
    """Regression (issue 13): L_g's Monte-Carlo returns are discounted with aux.relabel.gamma; a value
    unlike the goal-reaching head's gamma made its lower bound wrong without a word."""
    aux = AuxConfig(xi=0.5, batch_size=8, relabel=RelabelConfig(gamma=0.9))
    with pytest.raises(ValueError, match=r"aux.relabel.gamma=0.9 .* gamma is 0.99"):
        Finetuner(config(lake_uri, tmp_path / "aux", aux=aux))
