"""Ingest of MCAP files (ROS 2 and ROS 1 encodings) and ROS 1/2 bags written by the real writers:
round trips against known answers, splitting, time handling and every documented bad input."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from mcap.writer import CompressionType

from data_lake import Lake
from data_lake.ingest import IngestError, IngestRejected, Mapping, ingest
from tests.test_ingest_writers import (
    BASE_NS,
    Recording,
    Topic,
    standard_recording,
    times,
    write_bag1,
    write_bag2,
    write_mcap_ros1,
    write_mcap_ros2,
)

WRITERS = {
    "mcap-ros2": ("mcap", write_mcap_ros2, "run.mcap"),
    "mcap-ros1": ("mcap", write_mcap_ros1, "run.mcap"),
    "ros1": ("ros1", write_bag1, "run.bag"),
    "ros2": ("ros2", write_bag2, "run_bag2"),
    "ros2-mcap-storage": ("ros2", lambda p, r: write_bag2(p, r, storage="mcap"), "run_bag2_mcap"),
}


def mapping(fmt: str, **over: Any) -> Mapping:
    d: dict[str, Any] = {
        "format": fmt,
        "rate_hz": 10,
        "cameras": {"front": "/cam", "side": "/cam_png"},
        "state": [{"topic": "/joint_states", "field": "position"}, "/ee_pose"],
        "action": ["/cmd"],
        "reward": {"topic": "/reward"},
        "success": {"topic": "/success", "reduce": "last"},
        "task": {"topic": "/task"},
        "language": "stack the blocks",
        "robot": "testbot",
        "sync": {"max_staleness_s": 0.05},
    }
    d.update(over)
    return Mapping.from_dict(d, path="test-mapping.yaml")


def new_lake() -> Lake:
    return Lake.create(f"memory://ingest-{uuid.uuid4().hex}")


def only_error(exc: pytest.ExceptionInfo[IngestRejected]) -> Any:
    assert len(exc.value.notes) == 1, exc.value.notes
    return exc.value.notes[0]


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_round_trip_known_answers(tmp_path: Path, kind: str) -> None:
    """Every container: images, states (JointState + PoseStamped concatenated), actions (Twist),
    rewards, success, task and times equal the recording's values at the expected samples."""
    fmt, write, name = WRITERS[kind]
    rec = standard_recording()
    path = write(tmp_path / name, rec)
    lake = new_lake()
    rep = ingest([path], mapping(fmt), lake)
    assert rep.result is not None and rep.result.added == 1
    view = lake.checkout("main")
    ep = view.read_episode(view.episode_ids()[0])
    T = 19  # ticks from the late /cmd start (3 ms) to the last camera frame (1.9 s), 10 Hz
    k = np.arange(T)
    tp = rec.topics
    assert len(ep) == T
    np.testing.assert_array_equal(ep.steps["timestamp_ns"], BASE_NS + 3_000_000 + k * 100_000_000)
    np.testing.assert_array_equal(ep.steps["images/front"], tp["/cam"].values[k])
    np.testing.assert_array_equal(ep.steps["images/side"], tp["/cam_png"].values[k])  # PNG: lossless
    want_state = np.concatenate([tp["/joint_states"].values[5 * k], tp["/ee_pose"].values[2 * k]], 1)
    np.testing.assert_array_equal(ep.steps["state"], want_state.astype(np.float32))
    np.testing.assert_array_equal(ep.steps["action"], tp["/cmd"].values[k].astype(np.float32))
    np.testing.assert_array_equal(ep.steps["reward"], tp["/reward"].values[k].astype(np.float32))
    assert ep.success is True and bool(ep.steps["is_terminal"][-1]) is True
    assert (ep.task, ep.language, ep.robot) == ("stack blocks", "stack the blocks", "testbot")
    prov = ep.metadata["ingest"]
    assert prov["source"] == str(path) and len(prov["source_sha256"]) == 64
    assert prov["mapping_sha256"] == mapping(fmt).sha256 and prov["reader"] == fmt
    assert prov["time_range_ns"] == [int(ep.steps["timestamp_ns"][0]), int(ep.steps["timestamp_ns"][-1])]
    assert prov["state_layout"] == [
        {"source": "/joint_states[position]", "start": 0, "stop": 3},
        {"source": "/ee_pose", "start": 3, "stop": 10},
    ]
    js = prov["sync"]["/joint_states"]
    assert js["used"] == T and js["age_ms_max"] == pytest.approx(3.0) and js["stale_ticks"] == 0


def test_jpeg_cameras_equal_opencv_decoding_and_fields_select(tmp_path: Path) -> None:
    """JPEG frames equal OpenCV's decoding of the same bytes (BGR -> RGB); JointState joints are
    picked by name, velocity by field, and vector elements by index."""
    rec = standard_recording()
    rec.topics["/cam_png"].build = lambda m, t, v: m.compressed(t, v, "jpeg")
    path = write_mcap_ros2(tmp_path / "j.mcap", rec)
    m = mapping(
        "mcap",
        state=[{"topic": "/joint_states", "joints": ["j2", "j0"]}, {"topic": "/joint_states", "field": "velocity"}],
        action=[{"topic": "/cmd", "indices": [5, 0]}],
    )
    lake = new_lake()
    ingest([path], m, lake)
    ep = next(iter(lake.checkout("main").iter_episodes()))
    k = np.arange(len(ep))
    for i in k[:3]:
        _, buf = cv2.imencode(".jpg", np.ascontiguousarray(rec.topics["/cam_png"].values[i][..., ::-1]))
        want = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(ep.steps["images/side"][i], want)
    js = rec.topics["/joint_states"].values[5 * k]
    np.testing.assert_array_equal(ep.steps["state"], np.concatenate([js[:, [2, 0]], js * 10], 1).astype(np.float32))
    np.testing.assert_array_equal(ep.steps["action"], rec.topics["/cmd"].values[k][:, [5, 0]].astype(np.float32))


def test_header_time_and_depth_and_resize(tmp_path: Path) -> None:
    """sync.time: header uses header.stamp (here 7 ms before the log time); 16UC1 depth stays
    uint16; image_size resizes with the crop policy."""
    rec = standard_recording(size=(8, 12))
    depth = np.random.default_rng(3).integers(0, 60000, (20, 8, 12), dtype=np.uint16)
    rec.topics["/depth"] = Topic(
        "/depth", "sensor_msgs/msg/Image", rec.topics["/cam"].t, depth, lambda m, t, v: m.image(t, v, "16UC1")
    )
    for tp in rec.topics.values():  # log 7 ms after the stamp
        tp.t = tp.t + 7_000_000
        build = tp.build
        tp.build = lambda m, t, v, b=build: b(m, t - 7_000_000, v)
    path = write_bag2(tmp_path / "hdr", rec)
    m = mapping(
        "ros2",
        cameras={"front": "/cam"},
        depth={"front": "/depth"},
        state=["/ee_pose"],
        action=[{"topic": "/joint_states", "field": "velocity"}],
        reward=0.0,
        image_size=[4, 4],
        sync={"time": "header", "max_staleness_s": 0.05},
    )
    lake = new_lake()
    ingest([path], m, lake)
    ep = next(iter(lake.checkout("main").iter_episodes()))
    assert ep.steps["timestamp_ns"][0] == BASE_NS  # header times: the stamps, not the log times
    assert ep.steps["images/front"].shape[1:] == (4, 4, 3)
    assert ep.steps["depth/front"].dtype == np.uint16 and ep.steps["depth/front"].shape[1:] == (4, 4)
    # crop: (8, 12) scaled by 0.5 to (4, 6), centre columns 1..4 kept; nearest for depth
    want = cv2.resize(depth[0], (6, 4), interpolation=cv2.INTER_NEAREST)[:, 1:5]
    np.testing.assert_array_equal(ep.steps["depth/front"][0], want)


# ---------------------------------------------------------------------------- splitting
def test_marker_topic_splits_episodes(tmp_path: Path) -> None:
    rec = standard_recording()
    rec.topics["/start"] = Topic(
        "/start", "std_msgs/msg/Bool", np.array([BASE_NS, BASE_NS + 950_000_000]), [True, True],
        lambda m, t, v: m.boolean(v),
    )  # fmt: skip
    path = write_mcap_ros2(tmp_path / "m.mcap", rec)
    lake = new_lake()
    rep = ingest([path], mapping("mcap", episodes={"split": "marker", "marker": "/start"}), lake)
    eps = list(lake.checkout("main").iter_episodes())
    assert rep.episodes == 2 and len(eps) == 2
    first, second = sorted(eps, key=lambda e: e.steps["timestamp_ns"][0])
    assert first.steps["timestamp_ns"][-1] < BASE_NS + 950_000_000 <= second.steps["timestamp_ns"][0]
    # the second episode starts at its first /cmd sample after the marker: 1.003 s
    assert second.steps["timestamp_ns"][0] == BASE_NS + 1_003_000_000
    # /success is published once, after the last frame: the first episode's success is unknown
    assert (first.success, second.success) == (None, True)
    assert [w["code"] for w in first.metadata["ingest"]["warnings"]] == ["missing_source"]


def test_silence_splits_episodes_with_split_gap(tmp_path: Path) -> None:
    a, b = standard_recording(seed=1), standard_recording(seed=2)
    shift = 5 * 10**9  # 3 s of silence after 2 s of recording
    for tp in b.topics.values():
        tp.t = tp.t + shift
    both = Recording({})
    for name in a.topics:
        ta, tb = a.topics[name], b.topics[name]
        vals = np.concatenate([ta.values, tb.values]) if isinstance(ta.values, np.ndarray) else [*ta.values, *tb.values]
        both.topics[name] = Topic(name, ta.typename, np.concatenate([ta.t, tb.t]), vals, ta.build)
    path = write_bag1(tmp_path / "two.bag", both)
    lake = new_lake()
    rep = ingest([path], mapping("ros1", episodes={"split": "gap", "gap_s": 1.0}), lake)
    assert rep.episodes == 2
    eps = sorted(lake.checkout("main").iter_episodes(), key=lambda e: e.steps["timestamp_ns"][0])
    np.testing.assert_array_equal(eps[1].steps["images/front"][0], b.topics["/cam"].values[0])
    # each /success comes 50 ms after its recording's last frame, still inside that episode's window
    assert eps[0].success is True and eps[1].success is True
    assert all(e.metadata["ingest"]["pieces"] == 2 for e in eps)


def test_camera_dropout_splits_or_rejects(tmp_path: Path) -> None:
    rec = standard_recording()
    cam = rec.topics["/cam"]
    keep = (cam.t < BASE_NS + 700_000_000) | (cam.t >= BASE_NS + 1_200_000_000)  # 0.5 s without frames
    cam.t, cam.values = cam.t[keep], cam.values[keep]
    path = write_mcap_ros2(tmp_path / "gap.mcap", rec)
    lake = new_lake()
    rep = ingest([path], mapping("mcap"), lake)
    assert rep.episodes == 2 and rep.result is not None and rep.result.added == 2
    assert any(w.code == "gap" and w.where == "/cam" for w in rep.warnings)
    with pytest.raises(IngestRejected) as exc:
        ingest([path], mapping("mcap", sync={"max_staleness_s": 0.05, "on_gap": "reject"}), new_lake())
    note = only_error(exc)
    assert (note.code, note.where, note.source) == ("gap", "/cam", str(path))
    assert "max_staleness_s is 0.05" in note.details and note.time_ns == BASE_NS + 703_000_000


def test_backwards_timestamps_are_reported_and_can_be_dropped(tmp_path: Path) -> None:
    rec = standard_recording()
    js = rec.topics["/joint_states"]
    js.t = js.t.copy()
    js.t[40] = js.t[38] - 1_000_000  # a clock jump back
    path = tmp_path / "back.mcap"
    # write in arrival order (not sorted by time) so the jump is in the file as recorded
    from mcap_ros2.writer import Writer

    from tests.test_ingest_writers import TS2, Msgs, to_plain

    m = Msgs(ros1=False)
    with open(path, "wb") as f:
        w = Writer(f)
        schemas: dict[str, Any] = {}
        for tp in rec.topics.values():
            for i in range(len(tp.t)):
                if tp.typename not in schemas:
                    schemas[tp.typename] = w.register_msgdef(
                        tp.typename, TS2.generate_msgdef(tp.typename, ros_version=2)[0]
                    )
                msg = to_plain(tp.build(m, int(tp.t[i]), tp.values[i]))
                w.write_message(tp.name, schemas[tp.typename], msg, log_time=int(tp.t[i]))
        w.finish()
    with pytest.raises(IngestRejected) as exc:
        ingest([path], mapping("mcap"), new_lake())
    note = only_error(exc)
    assert (note.code, note.where) == ("time_backwards", "/joint_states")
    assert "sample 40" in note.details and "older than an earlier sample" in note.details
    lake = new_lake()
    rep = ingest([path], mapping("mcap", sync={"max_staleness_s": 0.05, "on_backwards": "drop"}), lake)
    assert rep.result is not None and rep.result.added == 1
    assert [w.code for w in rep.warnings] == ["time_backwards"]


# ---------------------------------------------------------------------------- bad input
def test_truncated_mcap_is_recovered_or_rejected(tmp_path: Path) -> None:
    path = write_mcap_ros2(tmp_path / "full.mcap", standard_recording(), chunk_size=2048)
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    lake = new_lake()
    rep = ingest([cut], mapping("mcap", success=None), lake)  # /success comes at the very end
    assert rep.result is not None and rep.result.added == 1
    codes = {w.code for w in rep.warnings}
    assert {"summary_missing", "truncated"} <= codes
    trunc = next(w for w in rep.warnings if w.code == "truncated")
    assert f"of {len(data) * 6 // 10}" in trunc.details or "byte" in trunc.details
    ep = next(iter(lake.checkout("main").iter_episodes()))
    assert 2 <= len(ep) < 19  # only what was read before the break
    assert ep.metadata["ingest"]["warnings"]
    with pytest.raises(IngestRejected) as exc:
        ingest([cut], mapping("mcap", success=None, on_truncated="reject"), new_lake())
    note = only_error(exc)
    assert note.code == "truncated" and note.source == str(cut) and "ends early" in note.details


def test_crc_mismatch_is_corrupt(tmp_path: Path) -> None:
    from mcap_ros2.writer import Writer

    rec = standard_recording()
    path = tmp_path / "crc.mcap"
    from tests.test_ingest_writers import TS2, Msgs, to_plain

    m = Msgs(ros1=False)
    with open(path, "wb") as f:
        w = Writer(f, compression=CompressionType.NONE)
        schemas: dict[str, Any] = {}
        for t, topic, typename, msg in rec.messages(ros1=False):
            if typename not in schemas:
                schemas[typename] = w.register_msgdef(typename, TS2.generate_msgdef(typename, ros_version=2)[0])
            w.write_message(topic, schemas[typename], to_plain(msg), log_time=t)
        w.finish()
    del m
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the (uncompressed) chunk
    path.write_bytes(bytes(data))
    with pytest.raises(IngestRejected) as exc:
        ingest([path], mapping("mcap"), new_lake())
    note = only_error(exc)
    assert note.code == "corrupt" and note.source == str(path)


def test_unindexed_ros1_bag_is_refused(tmp_path: Path) -> None:
    path = write_bag1(tmp_path / "r.bag", standard_recording())
    data = bytearray(path.read_bytes())
    i = data.index(b"index_pos=") + len(b"index_pos=")
    data[i : i + 8] = bytes(8)  # what a killed recorder leaves: index_pos = 0
    path.write_bytes(bytes(data))
    with pytest.raises(IngestRejected) as exc:
        ingest([path], mapping("ros1"), new_lake())
    note = only_error(exc)
    assert note.code == "unindexed" and "rosbag reindex" in note.details


def test_missing_topic_wrong_format_and_bad_encodings(tmp_path: Path) -> None:
    path = write_mcap_ros2(tmp_path / "a.mcap", standard_recording())
    with pytest.raises(IngestRejected) as exc:
        ingest([path], mapping("mcap", action=["/nope"]), new_lake())
    note = only_error(exc)
    assert (note.code, note.where) == ("missing_source", "/nope") and "/joint_states" in note.details

    bag = write_bag1(tmp_path / "b.bag", standard_recording())
    with pytest.raises(IngestRejected) as exc:
        ingest([bag], mapping("mcap"), new_lake())
    note = only_error(exc)
    assert note.code == "wrong_format" and "looks like ros1" in note.details

    rec = standard_recording()
    rec.topics["/cam"].build = lambda m, t, v: m.image(t, v[..., 0], "bayer_rggb8")
    bad = write_bag2(tmp_path / "enc", rec)
    with pytest.raises(IngestRejected) as exc:
        ingest([bad], mapping("ros2"), new_lake())
    note = only_error(exc)
    assert (note.code, note.where) == ("unsupported_encoding", "/cam") and "bayer_rggb8" in note.details
    assert note.time_ns == BASE_NS

    rec = standard_recording()
    rec.topics["/cam_png"].build = lambda m, t, v: (lambda x: (setattr(x, "format", "tiff"), x)[1])(m.compressed(t, v))
    with pytest.raises(IngestRejected) as exc:
        ingest([write_mcap_ros2(tmp_path / "tiff.mcap", rec)], mapping("mcap"), new_lake())
    assert only_error(exc).code == "unsupported_encoding"


def test_nan_and_shape_change_name_topic_and_time(tmp_path: Path) -> None:
    rec = standard_recording()
    vals = rec.topics["/joint_states"].values.copy()
    vals[25, 1] = np.nan  # sample 25 = tick 5
    rec.topics["/joint_states"].values = vals
    path = write_mcap_ros2(tmp_path / "nan.mcap", rec)
    with pytest.raises(IngestRejected) as exc:
        ingest([path], mapping("mcap"), new_lake())
    note = only_error(exc)
    assert (note.code, note.where, note.step) == ("non_finite", "/joint_states[position]", 5)
    assert note.time_ns == rec.topics["/joint_states"].t[25]

    rec = standard_recording()
    js = rec.topics["/joint_states"]
    js.build = lambda m, t, v: m.joint_state(t, list(v) + [0.0] * (t >= BASE_NS + 10**9), joints_for(t))
    path = write_bag1(tmp_path / "shape.bag", rec)
    with pytest.raises(IngestRejected) as exc:
        ingest([path], mapping("ros1"), new_lake())
    note = only_error(exc)
    assert (note.code, note.where) == ("shape_change", "/joint_states")
    assert note.time_ns == BASE_NS + 10**9 and "4 values" in note.details


def joints_for(t: int) -> list[str]:
    return ["j0", "j1", "j2"] + (["j3"] if t >= BASE_NS + 10**9 else [])


def test_skip_invalid_quarantines_and_reingest_is_a_noop(tmp_path: Path) -> None:
    good = write_mcap_ros2(tmp_path / "good.mcap", standard_recording(seed=1))
    good2 = write_mcap_ros2(tmp_path / "good2.mcap", standard_recording(seed=2))
    rec = standard_recording(seed=3)
    del rec.topics["/cmd"]
    bad = write_mcap_ros2(tmp_path / "bad.mcap", rec)
    lake = new_lake()
    with pytest.raises(IngestRejected):
        ingest([good, bad], mapping("mcap"), lake)
    assert lake.checkout("main").episode_ids() == []  # nothing committed
    rep = ingest([good, bad], mapping("mcap"), lake, skip_invalid=True)
    assert rep.result is not None and rep.result.added == 1
    assert [(q.code, q.source, q.where) for q in rep.quarantined] == [("missing_source", str(bad), "/cmd")]
    snap = lake.resolve("main")
    again = ingest([good], mapping("mcap"), lake)
    assert again.skipped_files == [str(good)] and again.result is None and lake.resolve("main") == snap
    # a copy of the same file under another name: read, but its episode is already there
    copy = tmp_path / "copy.mcap"
    copy.write_bytes(good.read_bytes())
    rep = ingest([copy, good2], mapping("mcap"), lake)
    assert rep.skipped_files == [str(copy)]  # same bytes, same mapping
    assert rep.result is not None and rep.result.added == 1
    other = mapping("mcap", robot="testbot")  # the same mapping content hashes the same
    assert other.sha256 == mapping("mcap").sha256


def test_ingest_error_has_context() -> None:
    e = IngestError("gap", "stale", source="f.mcap", where="/cam", time_ns=5, step=2)
    assert str(e) == "[gap] f.mcap, /cam, step 2, time 5 ns: stale"


def test_times_helper() -> None:
    assert times(10, 0.3).tolist() == [BASE_NS, BASE_NS + 100_000_000, BASE_NS + 200_000_000]
