"""The contract every algorithm passes, for every mix of observations and conditioning.

One parametrized suite over ALGOS × {state, image} × {no goal, goal, task}: builds from config and
a spec, an update changes every parameter, outputs are finite, ``act`` gives actions in [-1, 1]
of the right shape, checkpoints round-trip (outputs identical, training resumes bitwise-equal),
and the same seed gives the same parameters. Batches come from the real sampler on a small
memory lake of synthetic 16x16 episodes.
"""

from __future__ import annotations

import dataclasses
import math
import uuid

import pytest
import torch

from data_lake import Lake
from data_lake.batch import Batch
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from data_lake.synthetic import synthetic_episode
from robot_rl import checkpoint
from robot_rl.algos import (
    ALGOS,
    ActionableModelsConfig,
    AlgoConfig,
    Algorithm,
    AWACConfig,
    BCConfig,
    BCQConfig,
    BEARConfig,
    BRACConfig,
    CalQLConfig,
    CEMConfig,
    COMBOConfig,
    CQLConfig,
    DTConfig,
    EDACConfig,
    IQLConfig,
    LSPIConfig,
    MOPOConfig,
    MOReLConfig,
    MTOptConfig,
    QTOptConfig,
    ReBRACConfig,
    REMConfig,
    SACConfig,
    SACNConfig,
    TD3BCConfig,
    TTConfig,
    UWACConfig,
)
from robot_rl.algos.model_based import ModelConfig
from robot_rl.models import DynamicsConfig
from robot_rl.nets import EncoderConfig, ObservationSpec, SpecError

ENCODER = EncoderConfig(feature_dim=8, conv_channels=4, task_embedding_dim=4)
TINY = {"encoder": ENCODER, "hidden": (16, 16), "seed": 7}
CEM = CEMConfig(samples=8, elites=2)  # QT-Opt family: a small CEM
# model-based: a small ensemble trained from the first batch, rollouts (2 steps) from the first update on
MODEL = {
    "dynamics": DynamicsConfig(ensemble_size=3, elites=2, hidden=(16, 16)),
    "model": ModelConfig(horizon=2, replay_size=32, warmup=0, elite_every=2),
}
CONFIGS: dict[str, tuple[str, AlgoConfig]] = {
    "bc": ("bc", BCConfig(**TINY)),
    "iql": ("iql", IQLConfig(**TINY)),
    "cql": ("cql", CQLConfig(**TINY, num_samples=3)),
    "cql-lagrange-maxbackup": ("cql", CQLConfig(**TINY, num_samples=3, lagrange=True, max_backup=True)),
    "calql": ("calql", CalQLConfig(**TINY, num_samples=3)),
    "awac": ("awac", AWACConfig(**TINY, num_v_samples=2)),
    "td3bc": ("td3bc", TD3BCConfig(**TINY)),  # policy_freq 2: the delayed actor path
    "sac": ("sac", SACConfig(**TINY)),
    "qtopt": ("qtopt", QTOptConfig(**TINY, cem=CEM)),
    "actionable_models": ("actionable_models", ActionableModelsConfig(**TINY, cem=CEM, num_negatives=2)),
    "actionable_models-expq-linear-gripper": (
        "actionable_models",
        ActionableModelsConfig(
            **TINY,
            cem=dataclasses.replace(CEM, discrete_gripper=True),
            q_output="linear",
            negative_sampling="exp_q",
            negative_candidates=4,
            num_negatives=2,
        ),
    ),
    "mt_opt": ("mt_opt", MTOptConfig(**TINY, cem=CEM, task_balanced_loss=True)),
    "sac_n": ("sac_n", SACNConfig(**TINY, num_critics=3)),
    "edac": ("edac", EDACConfig(**TINY, num_critics=3)),
    "rem": ("rem", REMConfig(**TINY, num_heads=3, cem=CEM)),
    "rebrac": ("rebrac", ReBRACConfig(**TINY)),  # policy_freq 2, LayerNorm critics
    # a transition Batch is read as windows of two steps (SequenceBatch.from_transitions)
    "dt": ("dt", DTConfig(**TINY, sequence_length=4, embed_dim=8, layers=1, heads=2, max_timestep=16)),
    "tt": (
        "tt",
        TTConfig(**TINY, sequence_length=3, bins=8, embed_dim=8, layers=1, heads=2, beam_width=2, horizon=2, top_k=4),
    ),
    "mopo": ("mopo", MOPOConfig(**TINY, **MODEL)),
    "morel": ("morel", MOReLConfig(**TINY, **MODEL)),
    "combo": ("combo", COMBOConfig(**TINY, **MODEL, num_samples=3)),
    "bcq": ("bcq", BCQConfig(**TINY, vae_hidden=(16, 16), num_samples=3, act_samples=4)),
    "bear": ("bear", BEARConfig(**TINY, vae_hidden=(16, 16), num_target_samples=3, num_mmd_samples=3)),
    "uwac": ("uwac", UWACConfig(**TINY, vae_hidden=(16, 16), num_target_samples=3, num_mmd_samples=3, mc_passes=3)),
    "brac": ("brac", BRACConfig(**TINY, num_div_samples=3)),  # BRAC-v, KL through a tanh-Gaussian π_b
    "brac-p-mmd-gaussian": (
        "brac",
        BRACConfig(**TINY, penalty="policy", divergence="mmd", behavior_distribution="gaussian", num_div_samples=3),
    ),
    "brac-w": ("brac", BRACConfig(**TINY, divergence="w", num_div_samples=3)),  # BRAC-v, c(s', a') at next_actions
    # one LSTD-Q solve per batch of 8 rows (every update solves, improves and measures the probe set);
    # reward_offset -1 (success − 1): a batch's sparse 0/1 rewards can all be 0, and then w = 0 exactly
    "lspi": (
        "lspi",
        LSPIConfig(**TINY, num_features=16, samples_per_iteration=8, probe_size=4, reward_offset=-1.0, cem=CEM),
    ),
    "lspi-grid": (
        "lspi",
        LSPIConfig(
            **TINY,
            num_features=16,
            samples_per_iteration=8,
            probe_size=4,
            reward_offset=-1.0,
            improvement="grid",
            grid_points=3,
        ),
    ),
}
OBS = ["state", "image"]
COND = ["none", "goal", "task"]
N_BATCHES = 6


@pytest.fixture(scope="module")
def lake() -> Lake:
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    tasks = ("synthetic/push", "synthetic/pick")
    lake.append([synthetic_episode(s, length=10, size=16, task=tasks[s % 2]) for s in range(6)])
    return lake


@pytest.fixture(scope="module")
def batches(lake: Lake) -> dict[tuple[str, str], tuple[list[Batch], int]]:
    """Device batches per (observation, conditioning) variant, and the number of tasks to condition on."""
    out = {}
    for obs in OBS:
        for cond in COND:
            relabel = RelabelConfig() if cond == "goal" else RelabelConfig(future=0, final=0, negative=0, task=1.0)
            cfg = SamplerConfig(
                batch_size=8,
                cameras=() if obs == "state" else ("front",),
                use_state=obs == "state",
                relabel=relabel,
                augment_pad=1,
                prefetch=1,
                seed=1,
            )
            with Sampler(lake.checkout(), cfg, progress=False) as sampler:
                out[obs, cond] = [next(sampler) for _ in range(N_BATCHES)], len(sampler.tasks) if cond == "task" else 0
    return out


def build(key: str, batch: Batch, num_tasks: int, seed: int | None = None) -> Algorithm:
    name, cfg = CONFIGS[key]
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    return ALGOS[name](cfg, ObservationSpec.from_batch(batch, num_tasks))


def params(algo: Algorithm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in algo.nets.state_dict().items()}


def act(algo: Algorithm, batch: Batch, deterministic: bool = True) -> torch.Tensor:
    return algo.act(batch.observations, batch.goals, batch.task_ids, deterministic=deterministic)


CASES = [(k, o, c) for k in CONFIGS for o in OBS for c in COND]
IDS = [f"{k}-{o}-{c}" for k, o, c in CASES]


def test_every_algorithm_is_covered() -> None:
    assert {name for name, _ in CONFIGS.values()} == set(ALGOS)


@pytest.mark.parametrize(("key", "obs", "cond"), CASES, ids=IDS)
def test_update_changes_parameters_and_outputs_are_finite(key: str, obs: str, cond: str, batches) -> None:
    data, num_tasks = batches[obs, cond]
    algo = build(key, data[0], num_tasks)
    assert (algo.spec.has_goal, algo.spec.num_tasks > 0) == (cond == "goal", cond == "task")
    assert bool(algo.spec.cameras) == (obs == "image")
    before = params(algo)
    metrics = algo.update(data[0])
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    assert all("/" in k for k in metrics)
    after = params(algo)
    frozen = getattr(algo, "frozen_state", ())  # state an algorithm never updates by design (LSPI's frozen encoder)
    unchanged = [k for k in before if torch.equal(before[k], after[k]) and not k.startswith(frozen)]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(frozen)), "frozen state changed"
    assert all(torch.isfinite(v).all() for v in after.values())
    for b in data[1:3]:
        assert all(math.isfinite(v) for v in algo.update(b).values())
    assert algo.step == 3


@pytest.mark.parametrize(("key", "obs", "cond"), CASES, ids=IDS)
def test_act_gives_bounded_actions_of_the_right_shape(key: str, obs: str, cond: str, batches) -> None:
    data, num_tasks = batches[obs, cond]
    algo = build(key, data[0], num_tasks)
    algo.update(data[0])
    for deterministic in (True, False):
        a = act(algo, data[1], deterministic)
        assert a.shape == data[1].actions.shape
        assert torch.isfinite(a).all() and a.abs().max() <= 1.0
    assert not torch.equal(act(algo, data[1], False), act(algo, data[1], False)), "stochastic actions must vary"


@pytest.mark.parametrize(("key", "obs", "cond"), CASES, ids=IDS)
def test_checkpoint_round_trip_and_bitwise_resume(key: str, obs: str, cond: str, batches, tmp_path) -> None:
    data, num_tasks = batches[obs, cond]
    algo = build(key, data[0], num_tasks)
    for b in data[:2]:
        algo.update(b)
    checkpoint.save(tmp_path / "ckpt", algo, extra={"sampler_batches": 2})
    restored, extra = checkpoint.load_algorithm(tmp_path / "ckpt")
    assert extra == {"sampler_batches": 2} and restored.step == algo.step == 2
    assert restored.cfg == algo.cfg and restored.spec == algo.spec
    assert torch.equal(act(restored, data[2]), act(algo, data[2]))
    for name, opt in algo.optimizers.items():
        ref, got = opt.state_dict(), restored.optimizers[name].state_dict()
        assert ref["param_groups"] == got["param_groups"]
        for idx, entry in ref["state"].items():
            for k, v in entry.items():
                assert torch.equal(v, got["state"][idx][k]), (name, idx, k)
    # resume: both continue on the same batches and stay bitwise-equal (stochastic act included)
    for b in data[2:]:
        assert algo.update(b) == restored.update(b)
    assert torch.equal(act(restored, data[0], False), act(algo, data[0], False))
    p, q = params(algo), params(restored)
    assert all(torch.equal(p[k], q[k]) for k in p)


@pytest.mark.parametrize(("key", "obs", "cond"), CASES, ids=IDS)
def test_same_seed_same_result(key: str, obs: str, cond: str, batches) -> None:
    data, num_tasks = batches[obs, cond]
    runs = []
    for seed in (3, 3, 4):
        algo = build(key, data[0], num_tasks, seed=seed)
        for b in data[:3]:
            algo.update(b)
        runs.append(params(algo))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0]), "a different seed must differ"


def test_mismatched_batches_fail_loudly(batches) -> None:
    goal_data, _ = batches["image", "goal"]
    plain_data, _ = batches["image", "none"]
    algo = build("iql", goal_data[0], 0)
    with pytest.raises(SpecError, match="no goal was given"):
        algo.update(plain_data[0])
    state_data, _ = batches["state", "none"]
    with pytest.raises(SpecError, match="cameras"):
        build("bc", plain_data[0], 0).update(state_data[0])
    with pytest.raises(TypeError, match="needs a IQLConfig"):
        ALGOS["iql"](CONFIGS["bc"][1], algo.spec)


POLICY_CASES = [(k, o, c) for k in CONFIGS for o, c in (("image", "goal"), ("state", "task"))]


@pytest.mark.parametrize(("key", "obs", "cond"), POLICY_CASES, ids=[f"{k}-{o}-{c}" for k, o, c in POLICY_CASES])
def test_load_policy_builds_only_the_acting_networks(
    key: str, obs: str, cond: str, batches, tmp_path, monkeypatch
) -> None:
    """``load_policy`` (from a checkpoint or a saved policy) builds the encoder and the actor (the critic,
    for CEM policies) and nothing else: no algorithm, no value or second critic, no target, no optimizer;
    it acts exactly as the algorithm's policy."""
    from robot_rl.algos import BaseAlgorithm, CEMPolicy
    from robot_rl.nets import Critic, ValueNetwork

    data, num_tasks = batches[obs, cond]
    algo = build(key, data[0], num_tasks)
    algo.update(data[0])
    checkpoint.save(tmp_path / "ckpt", algo)
    checkpoint.save_policy(tmp_path / "policy", algo)
    built: list[str] = []
    for cls in (Critic, ValueNetwork, torch.optim.Adam, BaseAlgorithm):
        init = cls.__init__
        monkeypatch.setattr(
            cls, "__init__", lambda self, *a, _i=init, _n=cls.__name__, **k: built.append(_n) or _i(self, *a, **k)
        )
    # policies that score actions with the critic build it: CEM, BCQ's argmax over sampled candidates
    cem = isinstance(algo.policy, CEMPolicy) or hasattr(algo.policy, "critic")
    b = data[1]
    for where in ("ckpt", "policy"):
        built.clear()
        loaded, _ = checkpoint.load_policy(tmp_path / where)
        assert built == (["Critic"] if cem else []), f"{where}: built {built}"
        modules = {type(m).__name__ for m in loaded.policy.modules()}
        assert ("Critic" in modules) == cem and "ValueNetwork" not in modules
        assert set(loaded.policy.state_dict()) == set(algo.policy.state_dict())
        assert (loaded.name, loaded.step, loaded.cfg, loaded.spec) == (algo.name, 1, algo.cfg, algo.spec)
        for deterministic in (True, False):
            want = algo.policy(b.observations, b.goals, b.task_ids, deterministic, torch.Generator().manual_seed(5))
            got = loaded.act(b.observations, b.goals, b.task_ids, deterministic, torch.Generator().manual_seed(5))
            assert torch.equal(got, want)


@pytest.mark.parametrize("key", ["iql", "actionable_models"])
def test_load_pretrained_holds_the_saved_networks(key: str, batches, tmp_path) -> None:
    """Finetuning's source: every network of a checkpoint (auxiliary heads left out), or the acting
    networks of a saved policy, in a freshly built algorithm (no optimizer state)."""
    data, _ = batches["image", "goal"]
    algo = build(key, data[0], 0)
    algo.update(data[0])
    algo.attach_auxiliary({"aux_head": torch.nn.Linear(2, 2)})
    checkpoint.save(tmp_path / "ckpt", algo)
    checkpoint.save_policy(tmp_path / "policy", algo)
    from_ckpt, _ = checkpoint.load_pretrained(tmp_path / "ckpt")
    saved = {k: v for k, v in params(algo).items() if not k.startswith("aux_")}
    assert params(from_ckpt).keys() == saved.keys() and all(torch.equal(params(from_ckpt)[k], saved[k]) for k in saved)
    assert from_ckpt.step == 1 and all(not opt.state for opt in from_ckpt.optimizers.values())
    from_policy, _ = checkpoint.load_pretrained(tmp_path / "policy")
    acting = from_policy.policy.state_dict()
    assert all(torch.equal(v, algo.policy.state_dict()[k]) for k, v in acting.items())
