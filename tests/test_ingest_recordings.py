"""Ingest of recordings as they come off a robot, written by the real writers (rosbags' ROS 2 bag
writer with MCAP storage and its default 1 MiB chunks, mcap-ros2-support): end-of-log flags,
recordings cut short (inside the only chunk, inside the second chunk), sync figures counted once,
flags without messages, and the CLI's JSON on a rejection."""

from __future__ import annotations

import io
import json
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader

from data_lake import Lake
from data_lake.ingest import IngestRejected, Mapping, ingest
from robot_rl.cli import main as cli
from tests.test_ingest_writers import BASE_NS, Recording, Topic, write_bag2, write_mcap_ros2

MS = 1_000_000


def recording(
    seconds: float, size: tuple[int, int] = (24, 32), seed: int = 0, flag_at_s: float | None = None
) -> Recording:
    """Raw rgb8 camera at 10 Hz and joint states at 100 Hz from BASE_NS; a success flag logged
    once, by default at ``seconds`` (after the last joint state, at ``seconds`` - 10 ms): the
    end-of-episode marker that ends the recording."""
    rng = np.random.default_rng(seed)
    cam_t = BASE_NS + np.arange(round(seconds * 10), dtype=np.int64) * 100 * MS
    js_t = BASE_NS + np.arange(round(seconds * 100), dtype=np.int64) * 10 * MS
    flag_t = BASE_NS + round((seconds if flag_at_s is None else flag_at_s) * 1e9)
    topics = [
        Topic("/cam", "sensor_msgs/msg/Image", cam_t, rng.integers(0, 256, (len(cam_t), *size, 3), dtype=np.uint8),
              lambda m, t, v: m.image(t, v)),
        Topic("/joint_states", "sensor_msgs/msg/JointState", js_t, rng.normal(size=(len(js_t), 3)),
              lambda m, t, v: m.joint_state(t, v)),
        Topic("/success", "std_msgs/msg/Bool", np.array([flag_t]), [True], lambda m, t, v: m.boolean(v)),
    ]  # fmt: skip
    return Recording({t.name: t for t in topics})


def mapping(fmt: str, **over: Any) -> Mapping:
    d: dict[str, Any] = {
        "format": fmt,
        "rate_hz": 10,
        "cameras": {"front": "/cam"},
        "state": ["/joint_states"],
        "action": [{"topic": "/joint_states", "field": "velocity"}],
        "success": {"topic": "/success", "reduce": "last"},
        "sync": {"max_staleness_s": 0.05},
    }
    d.update(over)
    return Mapping.from_dict(d, path="recordings.yaml")


def new_lake() -> Lake:
    return Lake.create(f"memory://recordings-{uuid.uuid4().hex}")


def episodes(lake: Lake) -> list[Any]:
    return sorted(lake.checkout("main").iter_episodes(), key=lambda e: int(e.steps["timestamp_ns"][0]))


def ros2_bag(tmp_path: Path, name: str, rec: Recording) -> tuple[Path, Path]:
    """A ROS 2 bag directory with MCAP storage (rosbags' writer) and its storage file."""
    bag = write_bag2(tmp_path / name, rec, storage="mcap")
    return bag, bag / f"{name}.mcap"


def records(data: bytes) -> list[tuple[int, int, int]]:
    """(opcode, offset, length) of the top-level records of a whole MCAP file."""
    out, o = [], 8
    while o + 9 <= len(data):
        op, length = struct.unpack_from("<BQ", data, o)
        out.append((op, o, length))
        if op == 0x02:  # footer
            break
        o += 9 + length
    return out


def chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every Chunk record."""
    return [(o, n) for op, o, n in records(data) if op == 0x06]


def cut_copy(bag: Path, dest: Path, nbytes: int) -> tuple[Path, Path]:
    """A copy of ``bag`` whose storage file keeps only its first ``nbytes`` (metadata.yaml as the
    recorder wrote it)."""
    dest.mkdir()
    shutil.copy(bag / "metadata.yaml", dest / "metadata.yaml")
    (storage,) = bag.glob("*.mcap")
    (dest / storage.name).write_bytes(storage.read_bytes()[:nbytes])
    return dest, dest / storage.name


# ---------------------------------------------------------------------------- 1. end-of-log flags
def test_flag_logged_after_the_last_sample_counts_with_split_file(tmp_path: Path) -> None:
    """success at 8.000 s, the last joint state at 7.990 s: the flag window of a split: file
    episode is the whole file, in the .mcap file and in the ROS 2 bag directory alike."""
    rec = recording(8.0)
    assert rec.topics["/joint_states"].t[-1] == BASE_NS + 7_990 * MS
    bag, storage = ros2_bag(tmp_path, "run", rec)
    for path, fmt in ((storage, "mcap"), (bag, "ros2")):
        lake = new_lake()
        rep = ingest([path], mapping(fmt), lake)
        (ep,) = episodes(lake)
        assert ep.success is True and bool(ep.steps["is_terminal"][-1]) is True, fmt
        assert rep.warnings == [], fmt
        assert ep.steps["timestamp_ns"][-1] == BASE_NS + 7_900 * MS  # the last camera frame


def two_recordings(shift_s: float = 5.0) -> Recording:
    """Two 2 s recordings in one file, the second ``shift_s`` after the first (3 s of silence)."""
    a, b = recording(2.0, seed=1), recording(2.0, seed=2)
    for tp in b.topics.values():
        tp.t = tp.t + round(shift_s * 1e9)
    both = Recording({})
    for name, ta in a.topics.items():
        tb = b.topics[name]
        vals = np.concatenate([ta.values, tb.values]) if isinstance(ta.values, np.ndarray) else [*ta.values, *tb.values]
        both.topics[name] = Topic(name, ta.typename, np.concatenate([ta.t, tb.t]), vals, ta.build)
    return both


def flags(t_ms: list[int], values: list[bool]) -> Topic:
    return Topic("/success", "std_msgs/msg/Bool", BASE_NS + np.array(t_ms) * MS, values, lambda m, t, v: m.boolean(v))


def test_gap_split_flag_window_runs_to_the_next_episode_and_the_end_of_the_file(tmp_path: Path) -> None:
    """``gap``: a window runs up to the first sample after the silence (a flag logged in the
    silence belongs to the episode before it), the last one to the end of the file."""
    rec = two_recordings()
    # 0.51 s after the first recording's last sample (in the silence); 10 ms after the second's
    rec.topics["/success"] = flags([2_500, 7_000], [True, False])
    path = write_mcap_ros2(tmp_path / "two.mcap", rec)
    lake = new_lake()
    rep = ingest([path], mapping("mcap", episodes={"split": "gap", "gap_s": 1.0}), lake)
    assert [e.success for e in episodes(lake)] == [True, False]
    assert not [w for w in rep.warnings if w.code == "missing_source"]


def test_marker_split_last_flag_window_runs_to_the_end_of_the_file(tmp_path: Path) -> None:
    """``marker``: [marker_i, marker_i+1), the last episode's window to the end of the file."""
    rec = two_recordings()
    rec.topics["/start"] = Topic(
        "/start", "std_msgs/msg/Bool", BASE_NS + np.array([0, 5_000]) * MS, [True, True], lambda m, t, v: m.boolean(v)
    )
    rec.topics["/success"] = flags([1_995, 7_000], [False, True])  # the last one after every sample
    path = write_mcap_ros2(tmp_path / "marker.mcap", rec)
    lake = new_lake()
    rep = ingest([path], mapping("mcap", episodes={"split": "marker", "marker": "/start"}), lake)
    assert [e.success for e in episodes(lake)] == [False, True]
    assert not [w for w in rep.warnings if w.code == "missing_source"]


# ---------------------------------------------------------------------------- 2. cut-off recordings
def test_cut_inside_the_only_chunk_is_truncated_with_nothing_recovered(tmp_path: Path) -> None:
    bag, storage = ros2_bag(tmp_path, "short", recording(8.0))
    data = storage.read_bytes()
    ((c0, n0),) = chunks(data)
    size = int(len(data) * 0.7)
    assert c0 < size < c0 + 9 + n0  # the cut is inside the only chunk
    cut_bag, cut = cut_copy(bag, tmp_path / "cut", size)
    for path, fmt in ((cut, "mcap"), (cut_bag, "ros2")):
        for on_truncated in ("recover", "reject"):
            with pytest.raises(IngestRejected) as exc:
                ingest([path], mapping(fmt, on_truncated=on_truncated), new_lake())
            (note,) = exc.value.notes
            assert note.code == "truncated", (fmt, note)
            assert f"byte {c0} of {size}" in note.details and "a Chunk record" in note.details
            assert "nothing was recoverable" in note.details and "no message was readable" in note.details
            assert "None" not in note.details


def test_cut_inside_the_second_chunk_keeps_the_first(tmp_path: Path) -> None:
    """A 40 s recording in two 1 MiB chunks, cut inside the second: the first chunk's messages
    become the episode; the flag logged at the end is unknown (a warning); the warning names the
    byte where the second chunk starts and the last message read."""
    rec = recording(40.0)
    bag, storage = ros2_bag(tmp_path, "long", rec)
    data = storage.read_bytes()
    (c0, _), (c1, n1) = chunks(data)
    size = c1 + n1 // 2
    cut_bag, cut = cut_copy(bag, tmp_path / "cut", size)
    with open(storage, "rb") as f:  # what the first chunk holds, by the library
        first = [m for _, _, m in make_reader(f).iter_messages(log_time_order=False)][: chunk_message_count(data, c0)]
    cams = sorted(m.log_time for m in first if m.channel_id == channel_id(data, "/cam"))
    states = sorted(m.log_time for m in first if m.channel_id == channel_id(data, "/joint_states"))
    ticks = (min(cams[-1], states[-1]) - BASE_NS) // (100 * MS) + 1
    assert len(cams) > 100 and ticks == len(cams)
    for path, fmt in ((cut, "mcap"), (cut_bag, "ros2")):
        lake = new_lake()
        rep = ingest([path], mapping(fmt), lake)
        (ep,) = episodes(lake)
        assert len(ep) == ticks and ep.success is None, fmt
        np.testing.assert_array_equal(ep.steps["images/front"], rec.topics["/cam"].values[:ticks])
        codes = [w.code for w in rep.warnings]
        assert codes == ["summary_missing", "truncated", "missing_source"], (fmt, rep.warnings)
        trunc = rep.warnings[1]
        assert trunc.source == str(cut) and trunc.time_ns == max(m.log_time for m in first)
        assert f"byte {c1} of {size}" in trunc.details and f"{len(first)} messages were read" in trunc.details
        assert f"of which the file holds {size - c1 - 9}" in trunc.details
        flag = rep.warnings[2]
        assert flag.where == "/success" and "left unknown" in flag.details
        assert ep.metadata["ingest"]["warnings"][1]["code"] == "truncated"
        with pytest.raises(IngestRejected) as exc:
            ingest([path], mapping(fmt, on_truncated="reject"), new_lake())
        (note,) = exc.value.notes
        assert note.code == "truncated" and f"byte {c1} of {size}" in note.details and "None" not in note.details
    # a step topic with no message before the break: truncated, naming the topic
    late = recording(40.0)
    late.topics["/late"] = Topic("/late", "std_msgs/msg/Float64", np.array([BASE_NS + 39 * 10**9]), [1.0],
                                 lambda m, t, v: m.float64(v))  # fmt: skip
    bag2, storage2 = ros2_bag(tmp_path, "late", late)
    data2 = storage2.read_bytes()
    (_, _), (d1, m1) = chunks(data2)[:2]
    _, cut2 = cut_copy(bag2, tmp_path / "cut2", d1 + m1 // 2)
    with pytest.raises(IngestRejected) as exc:
        ingest([cut2], mapping("mcap", reward={"topic": "/late"}), new_lake())
    (note,) = exc.value.notes
    assert (note.code, note.where) == ("truncated", "/late") and f"byte {d1} of" in note.details


def test_bag_directory_without_metadata_says_how_to_recover(tmp_path: Path) -> None:
    """A killed recorder leaves the storage but no metadata.yaml: the refusal says what to do."""
    bag, _ = ros2_bag(tmp_path, "killed", recording(2.0))
    (bag / "metadata.yaml").unlink()
    with pytest.raises(IngestRejected) as exc:
        ingest([bag], mapping("ros2"), new_lake())
    (note,) = exc.value.notes
    assert note.code == "wrong_format" and "no metadata.yaml" in note.details
    assert "ros2 bag reindex" in note.details and "--format mcap" in note.details


def chunk_message_count(data: bytes, offset: int) -> int:
    """Messages inside the chunk at ``offset`` (uncompressed, as rosbags writes them)."""
    _, length = struct.unpack_from("<BQ", data, offset)
    body = data[offset + 9 : offset + 9 + length]
    (clen,) = struct.unpack_from("<I", body, 28)
    o = 28 + 4 + clen + 8
    inner, n, k = body[o:], 0, 0
    while k < len(inner):
        op, ln = struct.unpack_from("<BQ", inner, k)
        n += op == 0x05
        k += 9 + ln
    return n


def channel_id(data: bytes, topic: str) -> int:
    summary = make_reader(io.BytesIO(data)).get_summary()
    assert summary is not None
    return next(c.id for c in summary.channels.values() if c.topic == topic)


def test_flag_topic_without_messages_is_unknown_not_an_error(tmp_path: Path) -> None:
    """The documented rule, in whole files too: a flag topic with no message leaves the flag
    unknown (a warning); a step topic with none, or a topic not in the file, is an error."""
    rec = recording(3.0)
    rec.topics["/success"].t, rec.topics["/success"].values = np.zeros(0, np.int64), []
    bag = tmp_path / "noflag"
    from rosbags.rosbag2 import StoragePlugin
    from rosbags.rosbag2 import Writer as Bag2Writer

    from tests.test_ingest_writers import TS2

    with Bag2Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {n: w.add_connection(n, tp.typename, typestore=TS2) for n, tp in rec.topics.items()}
        conns["/idle"] = w.add_connection("/idle", "std_msgs/msg/Float64", typestore=TS2)
        for t, topic, typename, msg in rec.messages(ros1=False):
            w.write(conns[topic], t, TS2.serialize_cdr(msg, typename))
    for path, fmt in ((bag / "noflag.mcap", "mcap"), (bag, "ros2")):
        lake = new_lake()
        rep = ingest([path], mapping(fmt), lake)
        (ep,) = episodes(lake)
        assert ep.success is None, fmt
        assert [(w.code, w.where) for w in rep.warnings] == [("missing_source", "/success")], fmt
        with pytest.raises(IngestRejected) as exc:
            ingest([path], mapping(fmt, reward={"topic": "/idle"}), new_lake())
        (note,) = exc.value.notes
        assert (note.code, note.where) == ("missing_source", "/idle") and "has no messages" in note.details
        with pytest.raises(IngestRejected) as exc:
            ingest([path], mapping(fmt, success={"topic": "/nope"}), new_lake())
        (note,) = exc.value.notes
        assert (note.code, note.where) == ("missing_source", "/nope") and "not in the" in note.details


# ---------------------------------------------------------------------------- 3. sync figures
def test_stale_ticks_are_counted_once_when_an_episode_splits(tmp_path: Path) -> None:
    """One camera frame missing: one tick is dropped (the gap warning says 1) and the episode
    splits in two; the pieces' stale_ticks add up to 1, and so does the summary."""
    rec = recording(4.0)
    cam = rec.topics["/cam"]
    keep = np.arange(len(cam.t)) != 20  # the frame at 2.0 s
    cam.t, cam.values = cam.t[keep], cam.values[keep]
    path = write_mcap_ros2(tmp_path / "drop.mcap", rec)
    lake = new_lake()
    rep = ingest([path], mapping("mcap"), lake)
    eps = episodes(lake)
    assert rep.episodes == 2 and len(eps) == 2
    (gap,) = [w for w in rep.warnings if w.code == "gap"]
    assert gap.where == "/cam" and gap.details.startswith("1 ticks dropped")
    assert rep.sync["/cam"]["stale_ticks"] == 1  # not once per piece
    per_episode = [e.metadata["ingest"]["sync"]["/cam"]["stale_ticks"] for e in eps]
    assert sum(per_episode) == 1
    assert rep.sync["/cam"]["stale_ticks"] == 1 and rep.sync["/joint_states"]["stale_ticks"] == 0
    # the mean age is over every tick: episodes weighted by their length
    ages = [e.metadata["ingest"]["sync"]["/joint_states"]["age_ms_mean"] for e in eps]
    want = sum(a * len(e) for a, e in zip(ages, eps, strict=True)) / sum(len(e) for e in eps)
    assert rep.sync["/cam"]["ticks"] == sum(len(e) for e in eps)
    assert rep.sync["/joint_states"]["age_ms_mean"] == pytest.approx(want, abs=1e-3)


# ---------------------------------------------------------------------------- 4. the CLI
def test_cli_json_rejection_prints_the_problems_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = recording(3.0)
    del rec.topics["/joint_states"]
    bad = write_mcap_ros2(tmp_path / "bad.mcap", rec)
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump(MAPPING))
    lake = tmp_path / "lake"
    assert cli(["lake", "init", str(lake)]) == 0
    capsys.readouterr()
    assert cli(["lake", "ingest", "--lake", str(lake), "--mapping", str(m), "--json", str(bad)]) == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["ok"] is False and "ingest rejected" in doc["error"]
    assert [(p["code"], p["where"], Path(p["source"]).name) for p in doc["problems"]] == [
        ("missing_source", "/joint_states", "bad.mcap")
    ]
    assert err.startswith("error: ingest rejected")  # the error line still goes to stderr
    good = write_mcap_ros2(tmp_path / "good.mcap", recording(3.0))
    assert cli(["lake", "ingest", "--lake", str(lake), "--mapping", str(m), "--json", str(good)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["added"] == 1
    assert (
        cli(["lake", "ingest", "--lake", str(lake), "--mapping", str(tmp_path / "none.yaml"), "--json", str(good)]) == 2
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["problems"][0]["code"] == "mapping"


MAPPING = {
    "format": "mcap",
    "rate_hz": 10,
    "cameras": {"front": "/cam"},
    "state": ["/joint_states"],
    "action": [{"topic": "/joint_states", "field": "velocity"}],
    "success": {"topic": "/success"},
    "sync": {"max_staleness_s": 0.05},
}
