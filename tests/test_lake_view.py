"""`robot-rl lake view` and `robot-rl eval rrd=...`: Rerun files read back with the Rerun SDK
(``rerun.chunk.RrdReader``) hold every episode's camera frames, state/action/reward series, label sets
with their source, provenance and goal images; a sampled batch as rows; evaluation rollouts. Lakes are
real local lakes (a tiny tabletop collection, 16x16 images; hand-made episodes with goal images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rerun.chunk import RrdReader

from data_lake import Episode, Lake
from robot_rl.cli import main

TASK = "tabletop/reach_red"


def read_rrd(path: Path) -> dict[str, dict[str, Any]]:
    """entity path -> {"rows": temporal rows, "static": static rows, "columns": set, "texts": [...],
    "widths": set of Scalars widths, "timelines": set}."""
    out: dict[str, dict[str, Any]] = {}
    for chunk in RrdReader(path).stream().to_chunks():
        e = out.setdefault(
            chunk.entity_path,
            {"rows": 0, "static": 0, "columns": set(), "texts": [], "widths": set(), "timelines": set()},
        )
        batch = chunk.to_record_batch()
        e["static" if chunk.is_static else "rows"] += chunk.num_rows
        e["columns"] |= set(batch.schema.names)
        e["timelines"] |= set(chunk.timeline_names)
        if "TextDocument:text" in batch.schema.names:
            e["texts"] += [t for row in batch.column("TextDocument:text").to_pylist() if row for t in row]
        if "Scalars:scalars" in batch.schema.names:
            e["widths"] |= {len(row) for row in batch.column("Scalars:scalars").to_pylist() if row is not None}
    return out


def logged_episodes(ents: dict[str, dict[str, Any]]) -> set[str]:
    return {p.split("/")[2] for p in ents if p.startswith("/episodes/")}


@pytest.fixture(scope="module")
def lake_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two tabletop episodes (goal images, sim labels, user labels on one) and one hand-made episode
    of another task on another lake-free path: see ``made_uri``."""
    from tasks.collect import CollectConfig, collect
    from tasks.label import detector_over_states

    uri = str(tmp_path_factory.mktemp("view") / "lake")
    cfg = CollectConfig(
        task=TASK, episodes=2, lake=uri, policy="noisy", cameras=("front",), image_size=16, max_steps=8, progress=False
    )
    collect(cfg)
    lake = Lake.open(uri)
    lake.label(TASK, detector_over_states(TASK), progress=False)
    first = lake.checkout("main").episodes()[0].episode_id
    lake.annotate(TASK, [(first, 2, True), (first, 3, False)], source="user")
    return uri


@pytest.fixture(scope="module")
def made_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Hand-made episodes: two cameras, a goal image, ingest provenance; tasks t/a (2) and t/b (1)."""
    uri = str(tmp_path_factory.mktemp("made") / "lake")
    rng = np.random.default_rng(0)
    eps = []
    for i, (task, T) in enumerate([("t/a", 5), ("t/a", 7), ("t/b", 4)]):
        eps.append(
            Episode.make(
                images={c: rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8) for c in ("front", "wrist")},
                state=rng.normal(size=(T, 3)).astype(np.float32),
                action=rng.normal(size=(T, 2)).astype(np.float32),
                reward=np.zeros(T, np.float32),
                timestamp_ns=1_700_000_000_000_000_000 + np.arange(T, dtype=np.int64) * 50_000_000,
                goal_images={"front": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)},
                task=task,
                language=f"do {task} #{i}",
                source="test",
                metadata={"ingest": {"source": f"/logs/run{i}.mcap", "time_range_ns": [0, T]}},
            )
        )
    Lake.create(uri).append(eps)
    return uri


def view(uri: str, *args: str) -> int:
    return main(["lake", "view", "--lake", uri, *args])


def test_save_logs_frames_series_labels_provenance_and_goals(lake_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "all.rrd"
    assert view(lake_uri, "--save", str(out)) == 0
    ents = read_rrd(out)
    lv = Lake.open(lake_uri).checkout("main")
    records = lv.episodes()
    assert logged_episodes(ents) == {r.episode_id[:12] for r in records}
    for r in records:
        ep = lv.read_episode(r.episode_id)
        root = f"/episodes/{r.episode_id[:12]}"
        cam = ents[f"{root}/cameras/front"]
        assert cam["rows"] == len(ep) and "Image:buffer" in cam["columns"] and {"step", "time"} <= cam["timelines"]
        assert ents[f"{root}/state"]["rows"] == len(ep) and ents[f"{root}/state"]["widths"] == {8}
        assert ents[f"{root}/action"]["rows"] == len(ep) and ents[f"{root}/action"]["widths"] == {4}
        assert ents[f"{root}/reward"]["rows"] == len(ep)
        sim = ents[f"{root}/labels/sim/{TASK}/success"]
        assert sim["rows"] == len(ep) and "sim" in ents[f"{root}/labels/sim/{TASK}/provenance"]["texts"][0]
        assert ents[f"{root}/goal/front"]["static"] == 1  # the commanded goal image beside the frames
        info = ents[f"{root}/info"]["texts"][0]
        assert TASK in info and r.episode_id in info
        assert '"collect_seed"' in ents[f"{root}/provenance"]["texts"][0]
    user = f"/episodes/{records[0].episode_id[:12]}/labels/user/{TASK}/success"
    assert ents[user]["rows"] == records[0].length
    assert f"/episodes/{records[1].episode_id[:12]}/labels/user/{TASK}/success" in ents  # same segment: unlabelled


def test_hand_made_episodes_keep_cameras_time_language_and_ingest_provenance(made_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "made.rrd"
    assert view(made_uri, "--task", "t/a", "--save", str(out)) == 0
    ents = read_rrd(out)
    records = Lake.open(made_uri).checkout("main").episodes("t/a")
    assert logged_episodes(ents) == {r.episode_id[:12] for r in records}
    for r in records:
        root = f"/episodes/{r.episode_id[:12]}"
        for cam in ("front", "wrist"):
            assert ents[f"{root}/cameras/{cam}"]["rows"] == r.length
        assert ents[f"{root}/goal/front"]["static"] == 1 and f"{root}/goal/wrist" not in ents
        assert ents[f"{root}/state"]["widths"] == {3} and ents[f"{root}/action"]["widths"] == {2}
        assert not any(p.startswith(f"{root}/labels") for p in ents)
        assert r.language is not None and r.language in ents[f"{root}/info"]["texts"][0]
        prov = ents[f"{root}/provenance"]["texts"][0]
        assert r.metadata["ingest"]["source"] in prov and "time_range_ns" in prov


def test_task_limit_and_ids_select_the_episodes(made_uri: str, tmp_path: Path) -> None:
    records = Lake.open(made_uri).checkout("main").episodes()
    short = [r.episode_id[:12] for r in records]
    cases = {
        ("--task", "t/b"): {short[2]},
        ("--limit", "2"): set(short[:2]),
        (records[2].episode_id, short[0][:8]): {short[0], short[2]},  # a full id and a unique prefix
    }
    for k, (args, want) in enumerate(cases.items()):
        out = tmp_path / f"sel{k}.rrd"
        assert view(made_uri, *args, "--save", str(out)) == 0
        assert logged_episodes(read_rrd(out)) == want, args


def test_unknown_ids_empty_tasks_and_no_display_are_one_error_line(
    made_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for args, needle in [
        (("deadbeef0000", "--save", str(tmp_path / "x.rrd")), "episode deadbeef0000 is not in main"),
        (("--task", "t/none", "--save", str(tmp_path / "y.rrd")), "no episodes of task 't/none'"),
    ]:
        assert view(made_uri, *args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert view(made_uri) == 2  # no viewer can open: it says so instead of hanging
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--save" in err[0] and "display" in err[0]
    assert not (tmp_path / "x.rrd").exists()


def test_batch_is_logged_as_rows(lake_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "batch.rrd"
    assert view(lake_uri, "--batch", "--batch-size", "6", "--segments", "0", "--save", str(out), "--json") == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 6
    ents = read_rrd(out)
    for part in ("observations", "next_observations", "goals"):
        assert ents[f"/batch/{part}/front"]["rows"] == 6 and ents[f"/batch/{part}/front"]["timelines"] == {"row"}
    assert ents["/batch/observations/state"]["widths"] == {8}
    for key in ("reward", "mc_return", "goal_source", "action", "info"):
        assert ents[f"/batch/{key}"]["rows"] == 6, key
    from data_lake.batch import GOAL_SOURCES

    sources = {json.loads(t.split("\n", 1)[1].rsplit("```", 1)[0])["goal_source"] for t in ents["/batch/info"]["texts"]}
    assert sources and sources <= set(GOAL_SOURCES)


def test_eval_rrd_saves_the_rollout_frames(lake_uri: str, tmp_path: Path) -> None:
    from robot_rl.eval_cmd import run_eval
    from robot_rl.pretrain import LakeConfig, ObsConfig, PretrainConfig, TaskConfig, pretrain

    run = tmp_path / "bc"
    encoder = {"feature_dim": 8, "conv_channels": 4, "conv_layers": 2}
    pretrain(
        PretrainConfig(
            algo="bc",
            algo_cfg={"encoder": encoder, "hidden": [16, 16]},
            lake=LakeConfig(lake_uri, "main"),
            obs=ObsConfig(cameras=("front",), use_state=True, augment_pad=0),
            task=TaskConfig(),
            steps=1,
            batch_size=4,
            run_dir=str(run),
            prefetch=1,
            progress=False,
        )
    )
    rrd = tmp_path / "eval" / "rollouts.rrd"
    settings = ["episodes=2", "num_envs=2", "max_steps=5", "video_episodes=0", "progress=false", "rrd_episodes=2"]
    assert run_eval([f"ckpt={run}/policy", f"task={TASK}", f"out={tmp_path / 'eval'}", f"rrd={rrd}", *settings]) == 0
    ents = read_rrd(rrd)
    (summary,) = (tmp_path / "eval").glob("eval_*.json")
    results = json.loads(summary.read_text())["episode_results"]
    for i, res in enumerate(results):
        root = f"/eval/{TASK}/episode_{i}"
        assert ents[f"{root}/cameras/front"]["rows"] == res["steps"] + 1  # T + 1 observations
        assert ents[f"{root}/action"]["rows"] == res["steps"] and ents[f"{root}/action"]["widths"] == {4}
        assert ents[f"{root}/reward"]["rows"] == res["steps"] and ents[f"{root}/goal/front"]["static"] == 1
        assert json.loads(ents[f"{root}/info"]["texts"][0].split("\n", 1)[1].rsplit("```", 1)[0])["seed"] == res["seed"]
