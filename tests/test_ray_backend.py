"""``backend=ray``: collection and evaluation on Ray actors, against the process backend and the
local evaluation loop. One local Ray cluster (2 CPUs) serves the module; the collections and
evaluations join it as they would join a user's cluster."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_lake import Lake
from tasks import ray_backend
from tasks.collect import CollectConfig, CollectResult, collect, ray_worker_prefix

BASE = dict(
    task="tabletop/reach_red",
    episodes=8,
    image_size=32,
    cameras=("front",),
    max_steps=30,
    batch_episodes=3,
    progress=False,
    workers=2,
)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    with ray_backend.session(None, 2):
        yield


def _ids(uri: str) -> list[str]:
    return Lake.open(uri).checkout("main").episode_ids()  # lake order: the order of the commits


def test_ray_collection_is_the_process_collection_and_survives_a_killed_worker(
    tmp_path: Path, ray_cluster: None
) -> None:
    """The same episodes in the same order as ``backend=process``, with worker 0 SIGKILLed while it
    has episodes in flight: Ray restarts it, its episodes are redone, none is lost or stored twice."""
    collect(CollectConfig(lake=str(tmp_path / "process"), **BASE))  # type: ignore[arg-type]
    want = _ids(str(tmp_path / "process"))
    assert len(want) == 8

    done: list[CollectResult] = []
    run = threading.Thread(
        target=lambda: done.append(collect(CollectConfig(lake=str(tmp_path / "ray"), backend="ray", **BASE)))  # type: ignore[arg-type]
    )
    run.start()
    deadline = time.monotonic() + 120
    while True:
        try:
            pids = ray_backend.worker_pids(ray_worker_prefix(), 2)
            break
        except ValueError:  # the actors are not created yet
            assert time.monotonic() < deadline, "the collection's Ray actors never appeared"
            time.sleep(0.05)
    os.kill(pids[0], signal.SIGKILL)  # worker 0 has episodes 0 and 2 in flight (items go round-robin)
    run.join(timeout=300)
    assert not run.is_alive() and done, "the collection did not finish"
    assert done[0].added == 8 and done[0].skipped == 0
    assert _ids(str(tmp_path / "ray")) == want
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # the worker really died: its episodes came from its restarted actor


def test_ray_collection_resumes_what_an_interrupted_run_left(tmp_path: Path, ray_cluster: None) -> None:
    """A run whose driver stopped after 4 episodes, resumed with ``backend=ray``: the 4 missing
    episodes are added, and the lake equals an uninterrupted run's."""
    uri = str(tmp_path / "resumed")
    collect(CollectConfig(lake=uri, **{**BASE, "episodes": 4}))  # type: ignore[arg-type]
    res = collect(CollectConfig(lake=uri, backend="ray", **BASE))  # type: ignore[arg-type]
    assert (res.added, res.skipped) == (4, 4)
    collect(CollectConfig(lake=str(tmp_path / "whole"), **BASE))  # type: ignore[arg-type]
    assert sorted(_ids(uri)) == sorted(_ids(str(tmp_path / "whole")))


def test_ray_collection_resumes_after_its_driver_is_killed(tmp_path: Path, ray_cluster: None) -> None:
    """``robot-rl collect backend=ray`` as its own process, joined to a running cluster, SIGKILLed once
    its first commits have landed (its actors are still rolling out): the cluster drops the dead
    driver's actors, and the same command run again adds exactly the missing episodes. The lake then
    verifies and equals an uninterrupted run's, each episode once."""
    import ray

    uri = str(tmp_path / "lake")
    args = [
        "collect",
        "task=tabletop/reach_red",
        "episodes=12",
        "image_size=32",
        "cameras=[front]",
        "max_steps=30",
        "batch_episodes=2",
        "workers=2",
        "progress=false",
        "backend=ray",
        f"ray_address={ray.get_runtime_context().gcs_address}",
        f"lake={uri}",
    ]
    code = "import sys; from robot_rl.cli import main; sys.exit(main(sys.argv[1:]))"
    driver = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    landed = 0
    while landed < 2:  # the first commit (2 episodes) is in; 10 are still to come
        assert driver.poll() is None, f"the driver ended before it was killed: {driver.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no commit landed in 180 s"
        time.sleep(0.05)
        try:
            landed = len(_ids(uri))
        except Exception:  # the lake or its branch is still being created
            landed = 0
    driver.kill()  # SIGKILL: no cleanup runs in the driver
    driver.communicate(timeout=60)
    partial = _ids(uri)
    assert 2 <= len(partial) < 12, len(partial)

    rerun = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ids = _ids(uri)
    assert len(ids) == len(set(ids)) == 12
    assert ids[: len(partial)] == partial  # what had landed stays, in place
    assert Lake.open(uri).verify().ok
    collect(CollectConfig(lake=str(tmp_path / "whole"), **{**BASE, "episodes": 12, "batch_episodes": 2}))  # type: ignore[arg-type]
    assert sorted(ids) == sorted(_ids(str(tmp_path / "whole")))


def test_ray_evaluation_is_the_local_evaluation(tmp_path: Path, ray_cluster: None) -> None:
    """A checkpoint evaluated on 2 Ray actors (each loads it) gives the local loop's episodes:
    the same seeds, successes, lengths and final distances, in the same order, and the video."""
    from robot_rl import checkpoint
    from robot_rl.evaluate import EvalConfig, evaluate, policy_act
    from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain

    uri = str(tmp_path / "lake")
    collect(CollectConfig(lake=uri, **{**BASE, "episodes": 3, "workers": 1}))  # type: ignore[arg-type]
    run = tmp_path / "bc"
    pretrain(
        PretrainConfig(
            algo="bc",
            algo_cfg={"hidden": [16, 16]},
            lake=LakeConfig(uri, "main"),
            obs=ObsConfig(cameras=(), use_state=True, scene_state=True, augment_pad=0),
            task=TaskConfig(),
            steps=3,
            batch_size=8,
            run_dir=str(run),
            progress=False,
        )
    )
    algo, _ = checkpoint.load_policy(run / "policy")
    cfg = EvalConfig(
        tasks=("tabletop/reach_red", "tabletop/push_red_to_pad"),
        episodes=5,
        num_envs=2,
        max_steps=25,
        video_episodes=3,
        video_format="gif",
        progress=False,
    )
    local = evaluate(policy_act(algo, True, cfg.seed), algo.spec, cfg, out_dir=tmp_path / "local", name="e")
    on_ray = evaluate(
        policy_act(algo, True, cfg.seed),
        algo.spec,
        dataclasses.replace(cfg, backend="ray", workers=2),
        out_dir=tmp_path / "ray",
        name="e",
        checkpoint=run / "policy",
    )
    keys = ("task", "episode", "seed", "success", "steps", "final_distance")
    assert len(on_ray.episodes) == 10
    assert [[e[k] for k in keys] for e in on_ray.episodes] == [[e[k] for k in keys] for e in local.episodes]
    assert on_ray.summary == local.summary
    assert (tmp_path / "ray" / "e.gif").stat().st_size > 1000

    with pytest.raises(ValueError, match="checkpoint"):
        evaluate(policy_act(algo, True, cfg.seed), algo.spec, dataclasses.replace(cfg, backend="ray"))


def test_backend_names_are_checked() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        CollectConfig(task="tabletop/reach_red", episodes=1, backend="dask")
    from robot_rl.evaluate import EvalConfig

    with pytest.raises(ValueError, match="backend must be 'local' or 'ray'"):
        EvalConfig(tasks=("tabletop/reach_red",), backend="threads")
