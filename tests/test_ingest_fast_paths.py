"""The ingest's fast paths read exactly what the slow, general ones read.

- MCAP: our chunk record splitter against the library's ``iter_messages`` on files written by
  the real writer (zstd, lz4 and uncompressed chunks; many small chunks; unmapped channels;
  two channels on one topic; chunks without message indexes).
- CDR vectors: ``CdrDecoder.vectors`` (one numpy view over a stream of same-layout messages)
  against decoding message by message, and its refusal of streams whose layout varies.
- Frames decoded on the thread pool: an undecodable frame or a size change deep inside an
  episode (beyond the first blocks) is reported at that frame.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcap.reader import SeekingReader
from mcap.writer import CompressionType, IndexType
from mcap.writer import Writer as McapWriter

from data_lake import Lake
from data_lake.ingest import IngestRejected, Mapping, ingest, mcap_reader, ros
from data_lake.ingest.driver import FRAME_BATCH
from data_lake.ingest.mapping import SourceSpec
from tests.test_ingest_writers import BASE_NS, TS2, Msgs, Recording, Topic, times, to_plain, write_mcap_ros2


# ---------------------------------------------------------------------------- MCAP chunks
def _write_raw_mcap(path: Path, compression: CompressionType, index_types: IndexType) -> None:
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        w = McapWriter(f, chunk_size=700, compression=compression, index_types=index_types)
        w.start(profile="", library="robot-rl tests")
        schema = w.register_schema("blob", "jsonschema", b"{}")
        a = w.register_channel("/a", "json", schema)
        b = w.register_channel("/b", "json", schema)
        a2 = w.register_channel("/a", "json", schema)  # a second publisher on /a
        skipped = w.register_channel("/not_mapped", "json", schema)
        for i in range(400):
            ch = [a, b, a2, skipped][i % 4]
            data = rng.integers(0, 256, int(rng.integers(0, 90)), dtype=np.uint8).tobytes()
            w.add_message(ch, log_time=BASE_NS + i * 1000 + (7 if ch == b else 0), data=data, publish_time=i)
        w.finish()


@pytest.mark.parametrize("compression", [CompressionType.ZSTD, CompressionType.LZ4, CompressionType.NONE])
@pytest.mark.parametrize("index_types", [IndexType.ALL, IndexType.CHUNK])
def test_chunk_splitter_reads_what_the_library_reads(
    tmp_path: Path, compression: CompressionType, index_types: IndexType
) -> None:
    path = tmp_path / "raw.mcap"
    _write_raw_mcap(path, compression, index_types)
    wanted = {"/a", "/b"}
    with open(path, "rb") as f:
        reader = SeekingReader(f, validate_crcs=True)
        summary = reader.get_summary()
        assert summary is not None and len(summary.chunk_indexes) > 10
        want: dict[str, list[tuple[int, bytes]]] = {t: [] for t in wanted}
        for _, channel, msg in reader.iter_messages(topics=sorted(wanted), log_time_order=False):
            want[channel.topic].append((msg.log_time, msg.data))
        topics = mcap_reader._Topics(wanted)
        mcap_reader._read_indexed(f, summary, topics, path)
    assert topics.count == 400 and topics.last_ns == BASE_NS + 399 * 1000
    for t in wanted:
        assert list(zip(topics.t[t], topics.raw[t], strict=True)) == want[t]
        assert len(want[t]) == (200 if t == "/a" else 100)


def test_chunk_splitter_rejects_a_record_that_runs_past_its_chunk() -> None:
    topics = mcap_reader._Topics({"/a"})
    record = bytes([0x05]) + (50).to_bytes(8, "little") + bytes(20)  # claims 50 bytes, has 20
    with pytest.raises(Exception, match="runs past the end"):
        mcap_reader._chunk_messages(record, {}, topics)


# ---------------------------------------------------------------------------- CDR vectors
def _joint_states(n: int, names: list[str], frame: str = "base", seed: int = 0) -> list[bytes]:
    m, rng = Msgs(ros1=False), np.random.default_rng(seed)
    out = []
    for k in range(n):
        msg = m.joint_state(BASE_NS + k * 10_000_000, rng.normal(size=len(names)), names)
        msg.header.frame_id = frame
        out.append(bytes(TS2.serialize_cdr(msg, "sensor_msgs/msg/JointState")))
    return out


def _one_by_one(raws: list[bytes], msgtype: str, spec: SourceSpec) -> np.ndarray:
    decode = ros.with_fast_path(msgtype, "cdr", lambda b: pytest.fail("library decoder used"))
    src = ros.MessageSource("/x", msgtype, np.arange(len(raws), dtype=np.int64), raws, decode)
    rows = [ros.select(ros.vector(src.msg(i), msgtype, spec), spec, src, i) for i in range(len(raws))]
    return np.asarray(rows, dtype=np.float64)


@pytest.mark.parametrize(
    "spec",
    [
        SourceSpec("/x"),
        SourceSpec("/x", field="velocity"),
        SourceSpec("/x", field="position", joints=("wrist", "elbow")),
        SourceSpec("/x", field="position", indices=(2, 0)),
    ],
    ids=["position", "velocity", "joints", "indices"],
)
def test_joint_state_views_equal_message_by_message(spec: SourceSpec) -> None:
    raws = _joint_states(50, ["shoulder", "elbow", "wrist"], frame="odd-frame")
    dec = ros.with_fast_path("sensor_msgs/msg/JointState", "cdr", lambda b: None)
    assert isinstance(dec, ros.CdrDecoder)
    fast = dec.vectors(raws, spec)
    assert fast is not None and fast.dtype == np.float64
    np.testing.assert_array_equal(fast, _one_by_one(raws, "sensor_msgs/msg/JointState", spec))


def test_multi_array_views_equal_message_by_message() -> None:
    m, rng = Msgs(ros1=False), np.random.default_rng(3)
    raws = [
        bytes(TS2.serialize_cdr(m.f32array(rng.normal(size=5)), "std_msgs/msg/Float32MultiArray")) for _ in range(40)
    ]
    dec = ros.with_fast_path("std_msgs/msg/Float32MultiArray", "cdr", lambda b: None)
    assert isinstance(dec, ros.CdrDecoder)
    fast = dec.vectors(raws, SourceSpec("/x"))
    assert fast is not None and fast.shape == (40, 5)
    np.testing.assert_array_equal(fast, _one_by_one(raws, "std_msgs/msg/Float32MultiArray", SourceSpec("/x")))


def test_streams_whose_layout_varies_are_left_to_the_message_decoder() -> None:
    dec = ros.with_fast_path("sensor_msgs/msg/JointState", "cdr", lambda b: None)
    assert isinstance(dec, ros.CdrDecoder)
    same_length_other_names = _joint_states(5, ["a", "b"]) + _joint_states(5, ["b", "a"], seed=1)
    longer_frame_id = _joint_states(5, ["a", "b"]) + _joint_states(5, ["a", "b"], frame="base_link")
    assert len({len(r) for r in same_length_other_names}) == 1  # only the bytes tell them apart
    for raws in (same_length_other_names, longer_frame_id):
        assert dec.vectors(raws, SourceSpec("/x")) is None
    assert dec.vectors(_joint_states(5, ["a", "b"]), SourceSpec("/x", field="nope")) is None
    assert dec.vectors(_joint_states(5, ["a", "b"]), SourceSpec("/x", joints=("c",))) is None
    big_endian = [b"\x00\x00" + r[2:] for r in _joint_states(5, ["a", "b"])]
    assert dec.vectors(big_endian, SourceSpec("/x")) is None


def test_ingest_with_varying_joint_layouts_still_reads_every_value(tmp_path: Path) -> None:
    """A recorder that renames its joints halfway: the per-message path gives the right values."""
    t = times(10, 3.0)
    names = [["a", "b"] if i < len(t) // 2 else ["bb", "a"] for i in range(len(t))]
    values = np.arange(len(t) * 2, dtype=np.float64).reshape(-1, 2)
    rec = Recording(
        {
            "/js": Topic("/js", "sensor_msgs/msg/JointState", t, list(range(len(t))),
                         lambda m, tt, i: m.joint_state(tt, values[i], names[i])),
            "/cmd": Topic("/cmd", "std_msgs/msg/Float32MultiArray", t, values, lambda m, tt, v: m.f32array(v)),
        }
    )  # fmt: skip
    path = write_mcap_ros2(tmp_path / "js.mcap", rec)
    mp = Mapping.from_dict(
        {"format": "mcap", "rate_hz": 10, "state": [{"topic": "/js", "joints": ["a"]}], "action": ["/cmd"]},
        path="m.yaml",
    )
    lake = Lake.create(f"memory://fast-{uuid.uuid4().hex}")
    ingest([path], mp, lake)
    (ep,) = list(lake.checkout("main").iter_episodes())
    want_a = np.where(np.arange(len(t)) < len(t) // 2, values[:, 0], values[:, 1])
    np.testing.assert_array_equal(ep.steps["state"][:, 0], want_a[: len(ep)].astype(np.float32))


# ---------------------------------------------------------------------------- frames on the pool
def _camera_recording(n: int, bad: dict[int, Any]) -> Recording:
    """A JPEG camera and an action stream at 10 Hz; frame k carries ``bad[k]`` when given."""
    t = times(10, n / 10)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)

    def build(m: Msgs, tt: int, k: int) -> Any:
        if k in bad and isinstance(bad[k], bytes):
            msg = m.compressed(tt, frames[k], "jpeg")
            return m.T["sensor_msgs/msg/CompressedImage"](
                header=msg.header, format="jpeg", data=np.frombuffer(bad[k], np.uint8)
            )
        return m.compressed(tt, bad.get(k, frames[k]), "jpeg")

    return Recording(
        {
            "/cam": Topic("/cam", "sensor_msgs/msg/CompressedImage", t, list(range(n)), build),
            "/cmd": Topic("/cmd", "std_msgs/msg/Float32MultiArray", t, rng.normal(size=(n, 2)),
                          lambda m, tt, v: m.f32array(v)),
        }
    )  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "code"),
    [(b"not a jpeg at all", "decode"), (np.zeros((7, 8, 3), np.uint8), "shape_change")],
    ids=["undecodable", "size-change"],
)
def test_a_bad_frame_deep_in_the_episode_is_named(tmp_path: Path, bad: Any, code: str) -> None:
    n, k = 3 * FRAME_BATCH + 20, 2 * FRAME_BATCH + 33  # the bad frame sits in the third block
    rec = _camera_recording(n, {k: bad})
    path = write_mcap_ros2(tmp_path / "cam.mcap", rec)
    mp = Mapping.from_dict(
        {"format": "mcap", "rate_hz": 10, "cameras": {"front": "/cam"}, "state": ["/cmd"], "action": ["/cmd"]},
        path="m.yaml",
    )
    lake = Lake.create(f"memory://fast-{uuid.uuid4().hex}")
    with pytest.raises(IngestRejected) as e:
        ingest([path], mp, lake)
    (note,) = e.value.notes
    assert note.code == code and note.where == "/cam"
    assert note.time_ns == int(rec.topics["/cam"].t[k]), (note.time_ns, rec.topics["/cam"].t[k])
    assert lake.branches() == ["main"] and len(lake.checkout("main").episode_ids()) == 0


def test_frames_decoded_on_the_pool_equal_opencv_in_order(tmp_path: Path) -> None:
    import cv2

    n = 2 * FRAME_BATCH + 5
    rec = _camera_recording(n, {})
    path = write_mcap_ros2(tmp_path / "cam.mcap", rec)
    mp = Mapping.from_dict(
        {"format": "mcap", "rate_hz": 10, "cameras": {"front": "/cam"}, "state": ["/cmd"], "action": ["/cmd"]},
        path="m.yaml",
    )
    lake = Lake.create(f"memory://fast-{uuid.uuid4().hex}")
    ingest([path], mp, lake)
    (ep,) = list(lake.checkout("main").iter_episodes())
    msgs = Msgs(ros1=False)
    for i in range(len(ep)):
        plain = to_plain(rec.topics["/cam"].build(msgs, 0, i))
        want = cv2.cvtColor(cv2.imdecode(np.frombuffer(plain["data"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(ep.steps["images/front"][i], want)


def test_a_later_cameras_bad_first_frame_does_not_hide_an_earlier_cameras_error(tmp_path: Path) -> None:
    """Frame errors are reported camera by camera, frame by frame: /cam's bad frame 5 comes
    before /cam2's bad frame 0 (the first frames are decoded before any block is checked)."""
    n = 40
    rec = _camera_recording(n, {5: b"broken"})
    rec2 = _camera_recording(n, {0: b"broken too"})
    cam2 = rec2.topics["/cam"]
    rec.topics["/cam2"] = Topic("/cam2", cam2.typename, cam2.t, cam2.values, cam2.build)
    path = write_mcap_ros2(tmp_path / "two.mcap", rec)
    mp = Mapping.from_dict(
        {
            "format": "mcap",
            "rate_hz": 10,
            "cameras": {"a": "/cam", "b": "/cam2"},
            "state": ["/cmd"],
            "action": ["/cmd"],
        },
        path="m.yaml",
    )
    with pytest.raises(IngestRejected) as e:
        ingest([path], mp, Lake.create(f"memory://fast-{uuid.uuid4().hex}"))
    (note,) = e.value.notes
    assert (note.code, note.where, note.time_ns) == ("decode", "/cam", int(rec.topics["/cam"].t[5]))


def test_resized_frames_in_one_frame_blocks_equal_fit_and_a_dtype_change_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large frames go to the pool in small blocks (here: one frame each) and are resized frame by
    frame; the result equals images.fit of each decoded frame."""
    import cv2

    from data_lake.ingest import driver, images

    monkeypatch.setattr(driver, "FRAMES_IN_FLIGHT_BYTES", 1)
    n = 30
    rec = _camera_recording(n, {})
    path = write_mcap_ros2(tmp_path / "cam.mcap", rec)
    mp = Mapping.from_dict(
        {"format": "mcap", "rate_hz": 10, "cameras": {"front": "/cam"}, "state": ["/cmd"], "action": ["/cmd"],
         "image_size": [4, 4], "resize": "pad"},
        path="m.yaml",
    )  # fmt: skip
    lake = Lake.create(f"memory://fast-{uuid.uuid4().hex}")
    ingest([path], mp, lake)
    (ep,) = list(lake.checkout("main").iter_episodes())
    msgs = Msgs(ros1=False)
    for i in range(len(ep)):
        data = to_plain(rec.topics["/cam"].build(msgs, 0, i))["data"]
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(ep.steps["images/front"][i], images.fit(rgb[None], (4, 4), "pad")[0])


def test_available_cores_without_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows have no os.sched_getaffinity: the pools are sized from os.cpu_count."""
    import os

    from data_lake import parallel

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert parallel.available_cores() == 3


def test_mcap_topic_decoded_with_the_channel_of_its_first_message(tmp_path: Path) -> None:
    """Two channels on one topic with two schemas; the first listed never publishes: the topic is
    decoded with the schema of the channel its messages came on."""
    import struct

    from data_lake.ingest.mapping import Mapping as M

    path = tmp_path / "two_channels.mcap"
    with open(path, "wb") as f:
        w = McapWriter(f)
        w.start(profile="ros2", library="robot-rl tests")
        text = w.register_schema("std_msgs/msg/String", "ros2msg", b"string data")
        number = w.register_schema("std_msgs/msg/Float64", "ros2msg", b"float64 data")
        w.register_channel("/x", "cdr", text)  # listed first, never used
        ch = w.register_channel("/x", "cdr", number)
        for k in range(20):
            t = BASE_NS + k * 100_000_000
            w.add_message(ch, log_time=t, data=b"\x00\x01\x00\x00" + struct.pack("<d", k), publish_time=t)
        w.finish()
    mp = M.from_dict({"format": "mcap", "rate_hz": 10, "state": ["/x"], "action": ["/x"]}, path="m.yaml")
    (unit,) = list(mcap_reader.read(path, mp))
    src = unit.sources["/x"]
    assert src.msgtype == "std_msgs/msg/Float64"
    assert src.values(SourceSpec("/x"), "vector", np.arange(3)).ravel().tolist() == [0.0, 1.0, 2.0]


def test_mcap_channel_whose_schema_is_missing_is_corrupt(tmp_path: Path) -> None:
    from data_lake.ingest import IngestError
    from data_lake.ingest.mapping import Mapping as M

    path = tmp_path / "no_schema.mcap"
    with open(path, "wb") as f:
        w = McapWriter(f)
        w.start(profile="ros2", library="robot-rl tests")
        ch = w.register_channel("/x", "cdr", 42)  # schema 42 was never written
        for k in range(5):
            w.add_message(ch, log_time=BASE_NS + k, data=b"\x00\x01\x00\x00" + bytes(8), publish_time=0)
        w.finish()
    mp = M.from_dict({"format": "mcap", "rate_hz": 10, "state": ["/x"], "action": ["/x"]}, path="m.yaml")
    with pytest.raises(IngestError) as e:
        list(mcap_reader.read(path, mp))
    assert e.value.note.code == "corrupt" and "schema 42" in e.value.note.details


def test_lean_frame_loop_equals_the_general_path_and_its_errors() -> None:
    """``MessageSource.frames_into`` (CDR CompressedImage, straight into the rows) gives the
    frames ``frames`` gives, falling back frame by frame for big-endian CDR, grey and PNG frames,
    and raises the general path's error for an undecodable frame or a size change."""
    import cv2

    from data_lake.ingest.errors import IngestError
    from data_lake.ingest.streams import stack_frames

    rng = np.random.default_rng(0)
    m = Msgs(ros1=False)
    typename = "sensor_msgs/msg/CompressedImage"
    raws = []
    for i in range(40):
        rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
        msg = m.compressed(BASE_NS + i, rgb, "jpeg" if i % 3 else "png")
        if i == 7:  # a grey JPEG: replicated to three channels either way
            _, buf = cv2.imencode(".jpg", rgb[..., 0])
            msg = m.T[typename](header=msg.header, format="jpeg", data=buf.ravel())
        raws.append(bytes(TS2.serialize_cdr(msg, typename, little_endian=i != 11)))
    decode = ros.with_fast_path(typename, "cdr", lambda b: TS2.deserialize_cdr(b, typename))
    src = ros.MessageSource("/cam", typename, BASE_NS + np.arange(40), raws, decode)
    spec = SourceSpec("/cam")
    idx = np.arange(40)
    want = stack_frames(src.frames(spec, "image", idx), src, idx)
    got = np.zeros_like(want)
    src.frames_into(spec, "image", idx, got)
    np.testing.assert_array_equal(got, want)

    def error(raws_: list[bytes]) -> tuple[str, str, int | None, str]:
        s = ros.MessageSource("/cam", typename, BASE_NS + np.arange(len(raws_)), raws_, decode)
        with pytest.raises(IngestError) as e:
            s.frames_into(spec, "image", np.arange(len(raws_)), np.zeros_like(want[: len(raws_)]))
        with pytest.raises(IngestError) as g:
            stack_frames(s.frames(spec, "image", np.arange(len(raws_))), s, np.arange(len(raws_)), out=want.copy())
        assert str(e.value) == str(g.value)
        return e.value.code, e.value.note.where, e.value.note.time_ns, str(e.value)

    bad = m.T[typename](header=m.header(0), format="jpeg", data=np.frombuffer(b"not a jpeg", np.uint8))
    small = m.compressed(0, rng.integers(0, 256, (5, 10, 3), dtype=np.uint8), "png")
    for k, msg, code in ((20, bad, "decode"), (30, small, "shape_change")):
        broken = [*raws[:k], bytes(TS2.serialize_cdr(msg, typename)), *raws[k + 1 :]]
        assert error(broken)[:3] == (code, "/cam", BASE_NS + k)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "unchunked"])
def test_front_to_back_reading_reads_what_the_library_reads(tmp_path: Path, chunked: bool) -> None:
    """Without a summary the data section is read record by record (``_read_stream``): the same
    messages as the library's stream reader; a flipped byte is ``corrupt`` (the chunk's CRC or
    the data section's); zeros where records should be (space never written) are where the file
    breaks."""
    import struct

    from mcap.records import Channel, Message
    from mcap.stream_reader import StreamReader

    from data_lake.ingest.errors import IngestError

    path = tmp_path / "nosummary.mcap"
    rng = np.random.default_rng(1)
    with open(path, "wb") as f:
        w = McapWriter(
            f, chunk_size=700, compression=CompressionType.ZSTD, index_types=IndexType.NONE, repeat_channels=False,
            repeat_schemas=False, use_chunking=chunked, use_statistics=False, use_summary_offsets=False,
            enable_data_crcs=True,
        )  # fmt: skip
        w.start(profile="", library="robot-rl tests")
        schema = w.register_schema("blob", "jsonschema", b"{}")
        chans = [w.register_channel(t, "json", schema) for t in ("/a", "/b", "/not_mapped")]
        for i in range(300):
            data = rng.integers(0, 256, int(rng.integers(0, 90)), dtype=np.uint8).tobytes()
            w.add_message(chans[i % 3], log_time=BASE_NS + i * 1000, data=data, publish_time=i)
        w.finish()
    want: dict[str, list[tuple[int, bytes]]] = {"/a": [], "/b": []}
    topic_of: dict[int, str] = {}
    with open(path, "rb") as f:
        for rec in StreamReader(f, validate_crcs=True).records:
            if isinstance(rec, Channel):
                topic_of[rec.id] = rec.topic
            elif isinstance(rec, Message) and topic_of[rec.channel_id] in want:
                want[topic_of[rec.channel_id]].append((rec.log_time, rec.data))
    topics = mcap_reader._Topics({"/a", "/b"})
    with open(path, "rb") as f:
        assert mcap_reader._read_stream(f, topics, path) is None
    assert topics.count == 300 and topics.all_topics == {"/a", "/b", "/not_mapped"}
    for t in want:
        assert list(zip(topics.t[t], topics.raw[t], strict=True)) == want[t] and len(want[t]) == 100

    data = path.read_bytes()
    o, ends = 8, []
    while o < len(data):
        op, length = struct.unpack_from("<BQ", data, o)
        ends.append((op, o))
        if op == 0x0F:  # DataEnd
            break
        o += 9 + length
    data_end = ends[-1][1]
    flipped = bytearray(data)
    flipped[data_end // 2] ^= 0x55
    path.write_bytes(bytes(flipped))
    with open(path, "rb") as f, pytest.raises(IngestError) as e:
        mcap_reader._read_stream(f, mcap_reader._Topics({"/a", "/b"}), path)
    assert e.value.code == "corrupt"

    path.write_bytes(data[:data_end] + bytes(4096))  # the recorder's preallocated space, never written
    with open(path, "rb") as f:
        brk = mcap_reader._read_stream(f, mcap_reader._Topics({"/a"}), path)
    assert brk is not None and (brk.offset, brk.size) == (data_end, data_end + 4096) and "zero bytes" in brk.what


# ---------------------------------------------------------------------------- JPEG decoding
def _jpegs() -> dict[str, bytes]:
    """JPEGs as cameras and tools write them: OpenCV at three chroma subsamplings and qualities,
    progressive, with restart markers, grey, an odd size; Pillow's CMYK; and a PNG."""
    import io

    import cv2
    from PIL import Image

    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    smooth = cv2.GaussianBlur(base, (7, 7), 3)
    out: dict[str, bytes] = {}
    for sub, flag in (("444", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444), ("422", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422)):
        out[f"cv2-{sub}"] = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, flag])[1].tobytes()
    for q in (30, 75, 95):
        out[f"cv2-420-q{q}"] = cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()
    out["progressive"] = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    out["restarts"] = cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])[1].tobytes()
    out["grey"] = cv2.imencode(".jpg", smooth[..., 0])[1].tobytes()
    out["odd-size"] = cv2.imencode(".jpg", base[:37, :51])[1].tobytes()
    cmyk = io.BytesIO()
    Image.fromarray(smooth).convert("CMYK").save(cmyk, format="JPEG")
    out["cmyk"] = cmyk.getvalue()
    out["png"] = cv2.imencode(".png", base)[1].tobytes()
    return out


def test_libjpeg_turbo_decoding_is_bit_identical_to_opencv() -> None:
    """``images.decode_jpeg_into`` (simplejpeg, straight into a row) and ``decode_bytes`` give
    exactly OpenCV's RGB pixels for every JPEG kind (CMYK included); a PNG, a frame of another
    size, a cut JPEG and bytes that are no image are refused (False) and left to OpenCV."""
    import cv2

    from data_lake.ingest import images
    from data_lake.ingest.errors import IngestError

    for name, buf in _jpegs().items():
        want = cv2.cvtColor(cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        got = images.decode_bytes(buf, depth=False, where="/cam", time_ns=0)
        np.testing.assert_array_equal(got, want, err_msg=name)
        row = np.zeros_like(want)
        taken = images.decode_jpeg_into(buf, row)
        assert taken == (name != "png"), name
        if taken:
            np.testing.assert_array_equal(row, want, err_msg=name)
        for shape in ((want.shape[0] - 1, want.shape[1], 3), (want.shape[0] + 8, want.shape[1], 3)):
            assert not images.decode_jpeg_into(buf, np.zeros(shape, np.uint8)), (name, shape)
    assert not images.decode_jpeg_into(b"\xff\xd8 not a jpeg", np.zeros((48, 64, 3), np.uint8))
    cut = _jpegs()["cv2-420-q75"][:200]
    with pytest.raises(IngestError) as e:
        images.decode_bytes(b"\xff\xd8 not a jpeg", depth=False, where="/cam", time_ns=5)
    assert e.value.code == "decode" and e.value.note.where == "/cam"
    assert images.decode_jpeg_into(cut, np.zeros((48, 64, 3), np.uint8)) is False


def test_streamed_content_hash_is_the_episode_id(tmp_path: Path) -> None:
    """The ingest hashes each camera's frames block by block while they decode
    (``ContentHasher``); the id it gives is ``content_hash`` of the stored episode, for several
    blocks and two cameras, and a re-ingest into another lake gets the same id."""
    from data_lake.episode import ContentHasher, content_hash

    n = 2 * FRAME_BATCH + 9
    rec = _camera_recording(n, {})
    path = write_mcap_ros2(tmp_path / "cam.mcap", rec)
    mp = Mapping.from_dict(
        {
            "format": "mcap",
            "rate_hz": 10,
            "cameras": {"front": "/cam", "back": "/cam"},
            "state": ["/cmd"],
            "action": ["/cmd"],
        },
        path="m.yaml",
    )
    ids = []
    for k in range(2):
        lake = Lake.create(f"memory://hash-{k}-{uuid.uuid4().hex}")
        ingest([path], mp, lake)
        (ep,) = list(lake.checkout("main").iter_episodes())
        (eid,) = lake.checkout("main").episode_ids()
        assert ep._content_id is None  # read back: hashed afresh
        assert eid == ep.episode_id == content_hash(ep.arrays(), ep.task, ep.language, ep.success, ep.robot)
        ids.append(eid)
    assert ids[0] == ids[1]

    h = ContentHasher()
    h.add("b", np.zeros(3))
    with pytest.raises(ValueError, match="sorted order"):
        h.add("a", np.zeros(3))
