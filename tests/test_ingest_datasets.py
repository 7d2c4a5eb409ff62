"""Ingest of robomimic and ALOHA HDF5 files, LeRobot v2.1/v3.0 datasets and Minari datasets,
written with h5py, pyarrow and PyAV: round trips, ordering, security refusals and bad files."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import pytest

from data_lake import Lake
from data_lake.ingest import IngestRejected, Mapping, ingest
from tests.test_ingest_writers import (
    lerobot_episode,
    minari_episode,
    robomimic_demo,
    standard_recording,
    write_aloha,
    write_lerobot,
    write_mcap_ros2,
    write_minari,
    write_robomimic,
)


def new_lake() -> Lake:
    return Lake.create(f"memory://ingest-{uuid.uuid4().hex}")


def episodes(lake: Lake) -> list[Any]:
    return list(lake.checkout("main").iter_episodes())


def only_error(exc: pytest.ExceptionInfo[IngestRejected]) -> Any:
    assert len(exc.value.notes) == 1, exc.value.notes
    return exc.value.notes[0]


ROBOMIMIC = {
    "format": "robomimic",
    "rate_hz": 20,
    "cameras": {"agentview": {"key": "obs/agentview_image"}},
    "state": [{"key": "obs/robot0_eef_pos"}, {"key": "obs/robot0_gripper_qpos"}],
    "action": [{"key": "actions"}],
    "reward": {"key": "rewards"},
    "success": {"key": "rewards", "reduce": "any"},
    "terminal": {"key": "dones", "reduce": "last"},
    "task": "lift",
}


# ---------------------------------------------------------------------------- robomimic
def test_robomimic_round_trip_in_numeric_demo_order(tmp_path: Path) -> None:
    demos = {
        name: robomimic_demo(n, seed) for name, n, seed in (("demo_10", 5, 10), ("demo_2", 6, 2), ("demo_1", 4, 1))
    }
    path = write_robomimic(tmp_path / "low_dim.hdf5", demos)
    lake = new_lake()
    rep = ingest([path], Mapping.from_dict(ROBOMIMIC), lake)
    assert rep.result is not None and rep.result.added == 3
    recs = lake.checkout("main").episodes()
    assert [r.metadata["ingest"]["info"]["demo"] for r in recs] == ["demo_1", "demo_2", "demo_10"]
    assert recs[0].metadata["ingest"]["info"]["env_name"] == "Lift"
    for rec in recs:
        d = demos[rec.metadata["ingest"]["info"]["demo"]]
        ep = lake.checkout("main").read_episode(rec.episode_id)
        np.testing.assert_array_equal(ep.steps["images/agentview"], d["obs/agentview_image"])
        want = np.concatenate([d["obs/robot0_eef_pos"], d["obs/robot0_gripper_qpos"]], 1).astype(np.float32)
        np.testing.assert_array_equal(ep.steps["state"], want)
        np.testing.assert_array_equal(ep.steps["action"], d["actions"].astype(np.float32))
        np.testing.assert_array_equal(ep.steps["reward"], d["rewards"].astype(np.float32))
        np.testing.assert_array_equal(ep.steps["timestamp_ns"], np.arange(len(ep)) * 50_000_000)
        assert ep.success is True and bool(ep.steps["is_terminal"][-1]) and ep.task == "lift"


def test_robomimic_filter_key_and_resampling_to_a_lower_rate(tmp_path: Path) -> None:
    demos = {f"demo_{i}": robomimic_demo(8, i) for i in range(3)}
    path = write_robomimic(tmp_path / "d.hdf5", demos)
    with h5py.File(path, "a") as f:
        f.create_dataset("mask/valid", data=np.array([b"demo_0", b"demo_2"]))
    m = Mapping.from_dict({**ROBOMIMIC, "rate_hz": 10, "source_rate_hz": 20, "filter_key": "valid"})
    lake = new_lake()
    ingest([path], m, lake)
    eps = episodes(lake)
    assert sorted(e.metadata["ingest"]["info"]["demo"] for e in eps) == ["demo_0", "demo_2"]
    for e in eps:  # 20 Hz -> 10 Hz: every other step (the latest at or before each tick)
        d = demos[e.metadata["ingest"]["info"]["demo"]]
        np.testing.assert_array_equal(e.steps["action"], d["actions"][::2].astype(np.float32))


@pytest.mark.parametrize("kind", ["external_link", "external_storage", "virtual"])
def test_hdf5_external_data_is_refused(tmp_path: Path, kind: str) -> None:
    path = write_robomimic(tmp_path / "x.hdf5", {"demo_0": robomimic_demo(4, 0)})
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f.create_dataset("secret", data=np.arange(4.0))
    (tmp_path / "raw.bin").write_bytes(bytes(32))
    with h5py.File(path, "a") as f:
        g = f["data/demo_0/obs"]
        if kind == "external_link":
            g["leak"] = h5py.ExternalLink(str(other), "/secret")
        elif kind == "external_storage":
            g.create_dataset("leak", shape=(4,), dtype="f8", external=[(str(tmp_path / "raw.bin"), 0, 32)])
        else:
            layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(other), "secret", shape=(4,))
            g.create_virtual_dataset("leak", layout)
    with pytest.raises(IngestRejected) as exc:
        ingest([path], Mapping.from_dict(ROBOMIMIC), new_lake())
    note = only_error(exc)
    assert (note.code, note.where, note.source) == ("hdf5_external", "data/demo_0/obs/leak", str(path))
    assert "refused" in note.details


def test_truncated_hdf5_and_wrong_format_and_missing_key(tmp_path: Path) -> None:
    path = write_robomimic(tmp_path / "t.hdf5", {"demo_0": robomimic_demo(50, 0, size=16)})
    data = path.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestRejected) as exc:
        ingest([cut], Mapping.from_dict(ROBOMIMIC), new_lake())
    note = only_error(exc)
    assert note.code == "truncated" and note.source == str(cut)

    mcap = write_mcap_ros2(tmp_path / "a.mcap", standard_recording())
    with pytest.raises(IngestRejected) as exc:
        ingest([mcap], Mapping.from_dict(ROBOMIMIC), new_lake())
    note = only_error(exc)
    assert note.code == "wrong_format" and "looks like mcap" in note.details

    with pytest.raises(IngestRejected) as exc:
        ingest([path], Mapping.from_dict({**ROBOMIMIC, "action": [{"key": "actionz"}]}), new_lake())
    note = only_error(exc)
    assert (note.code, note.where, note.source) == ("missing_source", "actionz", f"{path}#demo_0")
    assert "'actions'" in note.details  # lists what is there


def test_nan_in_one_demo_is_quarantined_with_skip_invalid(tmp_path: Path) -> None:
    bad = robomimic_demo(6, 1)
    bad["actions"][3, 2] = np.inf
    path = write_robomimic(tmp_path / "d.hdf5", {"demo_0": robomimic_demo(6, 0), "demo_1": bad})
    with pytest.raises(IngestRejected) as exc:
        ingest([path], Mapping.from_dict(ROBOMIMIC), new_lake())
    note = only_error(exc)
    assert (note.code, note.where, note.step, note.source) == ("non_finite", "actions", 3, f"{path}#demo_1")
    lake = new_lake()
    rep = ingest([path], Mapping.from_dict(ROBOMIMIC), lake, skip_invalid=True)
    assert rep.result is not None and rep.result.added == 1 and [q.code for q in rep.quarantined] == ["non_finite"]


# ---------------------------------------------------------------------------- ALOHA
@pytest.mark.parametrize("compress", [False, True])
def test_aloha_round_trip(tmp_path: Path, compress: bool) -> None:
    truth = write_aloha(tmp_path / "episode_0.hdf5", 6, 0, compress=compress)
    m = Mapping.from_dict(
        {
            "format": "aloha",
            "rate_hz": 50,
            "cameras": {"high": "observations/images/cam_high", "low": "observations/images/cam_low"},
            "state": ["observations/qpos"],
            "action": ["action"],
            "task": "transfer_cube",
        }
    )
    lake = new_lake()
    ingest([tmp_path], m, lake)  # a directory of episode files
    (ep,) = episodes(lake)
    np.testing.assert_array_equal(ep.steps["state"], truth["qpos"].astype(np.float32))
    np.testing.assert_array_equal(ep.steps["action"], truth["action"].astype(np.float32))
    for cam, key in (("high", "cam_high"), ("low", "cam_low")):
        frames = truth["images"][key]
        if compress:  # ALOHA's own round trip: cv2.imencode of the stored array, cv2.imdecode back
            enc = [cv2.imencode(".jpg", f, [int(cv2.IMWRITE_JPEG_QUALITY), 95])[1] for f in frames]
            frames = np.stack([cv2.imdecode(b, cv2.IMREAD_COLOR) for b in enc])
        np.testing.assert_array_equal(ep.steps[f"images/{cam}"], frames)
    assert ep.metadata["ingest"]["info"]["compress"] is compress


# ---------------------------------------------------------------------------- LeRobot
@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_round_trip(tmp_path: Path, version: str) -> None:
    eps_in = [lerobot_episode(5, 0, "pick"), lerobot_episode(7, 1, "place")]
    root = write_lerobot(tmp_path / "ds", eps_in, version=version)
    cams = {"top": "observation.images.top"}
    if version == "v2.1":
        cams["wrist"] = "observation.images.wrist"
    m = Mapping.from_dict(
        {
            "format": "lerobot",
            "rate_hz": 10,
            "cameras": cams,
            "state": ["observation.state"],
            "action": ["action"],
            "reward": "next.reward",
            "task": {"key": "task"},
            "language": {"key": "task"},
        }
    )
    lake = new_lake()
    rep = ingest([root], m, lake)
    assert rep.result is not None and rep.result.added == 2
    got = sorted(episodes(lake), key=lambda e: e.metadata["ingest"]["info"]["episode_index"])
    for e, want in zip(got, eps_in, strict=True):
        assert len(e) == len(want["action"])
        np.testing.assert_array_equal(e.steps["images/top"], want["observation.images.top"])  # lossless video
        if version == "v2.1":
            np.testing.assert_array_equal(e.steps["images/wrist"], want["observation.images.wrist"])
        np.testing.assert_array_equal(e.steps["state"], want["observation.state"])
        np.testing.assert_array_equal(e.steps["action"], want["action"])
        np.testing.assert_array_equal(e.steps["reward"], want["next.reward"])
        assert e.task == want["task"] == e.language
        assert e.metadata["ingest"]["info"]["codebase_version"] == version
    assert "lerobot" not in sys.modules


def test_lerobot_truncated_parquet_names_the_file(tmp_path: Path) -> None:
    root = write_lerobot(tmp_path / "ds", [lerobot_episode(5, 0, "pick")], version="v2.1")
    p = root / "data/chunk-000/episode_000000.parquet"
    p.write_bytes(p.read_bytes()[:-20])
    m = Mapping.from_dict({"format": "lerobot", "rate_hz": 10, "state": ["observation.state"], "action": ["action"]})
    with pytest.raises(IngestRejected) as exc:
        ingest([root], m, new_lake())
    note = only_error(exc)
    assert note.code in ("truncated", "corrupt") and "episode_000000.parquet" in note.details


# ---------------------------------------------------------------------------- Minari
def test_minari_round_trip_without_importing_the_environment(tmp_path: Path) -> None:
    eps_in = [minari_episode(5, 0), minari_episode(3, 1)]
    root = write_minari(tmp_path / "fake-v0", eps_in, env_id="NoSuchEnv-v0")
    m = Mapping.from_dict(
        {
            "format": "minari",
            "rate_hz": 30,
            "state": ["observations"],
            "action": ["actions"],
            "reward": "rewards",
            "terminal": {"key": "terminations", "reduce": "last"},
            "success": {"key": "terminations", "reduce": "any"},
            "task": "fake",
        }
    )
    had_gym = "gymnasium" in sys.modules
    lake = new_lake()
    ingest([root], m, lake)
    got = sorted(episodes(lake), key=lambda e: e.metadata["ingest"]["info"]["episode"])
    for e, want in zip(got, eps_in, strict=True):
        n = len(want["actions"])
        np.testing.assert_array_equal(e.steps["state"], want["observations"][:n].astype(np.float32))
        np.testing.assert_array_equal(e.steps["action"], want["actions"].astype(np.float32))
        np.testing.assert_array_equal(e.steps["reward"], want["rewards"].astype(np.float32))
        assert bool(e.steps["is_terminal"][-1]) and e.success is True
    info = got[0].metadata["ingest"]["info"]
    assert info["env_id"] == "NoSuchEnv-v0" and info["dataset_id"] == "test/fake-v0" and info["seed"] == 100
    if not had_gym:
        assert "gymnasium" not in sys.modules
