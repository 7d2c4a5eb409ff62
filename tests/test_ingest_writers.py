"""Fixture writers for the ingest tests (real writers: mcap, rosbags, h5py, pyarrow, PyAV), and
checks that our fast CDR decoders read exactly what the library decoders read.

Every fixture is built from a :class:`Recording`: per-topic timestamps and the values the
messages carry, so tests compare what the lake holds with known answers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import pytest
from mcap.writer import Writer as McapWriter
from mcap_ros2.decoder import DecoderFactory as Ros2Decoders
from mcap_ros2.writer import Writer as Ros2McapWriter
from rosbags.rosbag1 import Writer as Bag1Writer
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Bag2Writer
from rosbags.typesys import Stores, get_typestore

from data_lake.ingest import ros

TS2 = get_typestore(Stores.ROS2_HUMBLE)
TS1 = get_typestore(Stores.ROS1_NOETIC)
BASE_NS = 1_700_000_000 * 10**9
JOINTS = ["j0", "j1", "j2"]


def ros1_name(typename: str) -> str:
    return typename.replace("/msg/", "/")


class Msgs:
    """Builds rosbags message objects for one ROS version."""

    def __init__(self, ros1: bool):
        self.ts, self.ros1 = (TS1 if ros1 else TS2), ros1
        self.T = self.ts.types

    def header(self, t: int, frame: str = "base") -> Any:
        stamp = self.T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9)
        if self.ros1:
            return self.T["std_msgs/msg/Header"](seq=0, stamp=stamp, frame_id=frame)
        return self.T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)

    def image(self, t: int, rgb: np.ndarray, encoding: str = "rgb8") -> Any:
        if encoding == "bgr8":
            data = rgb[..., ::-1]
        elif encoding in ("mono8", "16UC1", "32FC1"):
            data = rgb
        else:
            data = rgb
        data = np.ascontiguousarray(data)
        h, w = data.shape[:2]
        step = data.nbytes // h
        return self.T["sensor_msgs/msg/Image"](
            header=self.header(t),
            height=h,
            width=w,
            encoding=encoding,
            is_bigendian=0,
            step=step,
            data=data.view(np.uint8).ravel(),
        )

    def compressed(self, t: int, rgb: np.ndarray, fmt: str = "png") -> Any:
        ok, buf = cv2.imencode(".png" if fmt == "png" else ".jpg", np.ascontiguousarray(rgb[..., ::-1]))
        assert ok
        return self.T["sensor_msgs/msg/CompressedImage"](header=self.header(t), format=fmt, data=buf.ravel())

    def joint_state(self, t: int, pos: np.ndarray, names: list[str] | None = None) -> Any:
        return self.T["sensor_msgs/msg/JointState"](
            header=self.header(t),
            name=list(names or JOINTS),
            position=np.asarray(pos, np.float64),
            velocity=np.asarray(pos, np.float64) * 10,
            effort=np.zeros(0, np.float64),
        )

    def pose_stamped(self, t: int, p: np.ndarray) -> Any:
        P = self.T
        pose = P["geometry_msgs/msg/Pose"](
            position=P["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
            orientation=P["geometry_msgs/msg/Quaternion"](x=p[3], y=p[4], z=p[5], w=p[6]),
        )
        return P["geometry_msgs/msg/PoseStamped"](header=self.header(t), pose=pose)

    def twist(self, v: np.ndarray) -> Any:
        V = self.T["geometry_msgs/msg/Vector3"]
        return self.T["geometry_msgs/msg/Twist"](linear=V(x=v[0], y=v[1], z=v[2]), angular=V(x=v[3], y=v[4], z=v[5]))

    def float64(self, v: float) -> Any:
        return self.T["std_msgs/msg/Float64"](data=float(v))

    def boolean(self, v: bool) -> Any:
        return self.T["std_msgs/msg/Bool"](data=bool(v))

    def string(self, s: str) -> Any:
        return self.T["std_msgs/msg/String"](data=s)

    def f32array(self, v: np.ndarray) -> Any:
        layout = self.T["std_msgs/msg/MultiArrayLayout"](
            dim=[self.T["std_msgs/msg/MultiArrayDimension"](label="x", size=len(v), stride=len(v))], data_offset=0
        )
        return self.T["std_msgs/msg/Float32MultiArray"](layout=layout, data=np.asarray(v, np.float32))


@dataclasses.dataclass
class Topic:
    name: str
    typename: str
    t: np.ndarray  # int64 (N,) log times
    values: np.ndarray | list[Any]  # what each message carries (ground truth)
    build: Callable[[Msgs, int, Any], Any]  # (msgs, t, value) -> message


@dataclasses.dataclass
class Recording:
    topics: dict[str, Topic]

    def messages(self, ros1: bool) -> list[tuple[int, str, str, Any]]:
        """(time, topic, typename, message) in log-time order."""
        m = Msgs(ros1)
        out = [
            (int(tp.t[i]), tp.name, tp.typename, tp.build(m, int(tp.t[i]), tp.values[i]))
            for tp in self.topics.values()
            for i in range(len(tp.t))
        ]
        return sorted(out, key=lambda x: (x[0], x[1]))


def times(rate_hz: float, seconds: float, offset_ms: float = 0.0) -> np.ndarray:
    n = round(seconds * rate_hz)
    return BASE_NS + int(offset_ms * 1e6) + np.round(np.arange(n) * 1e9 / rate_hz).astype(np.int64)


def standard_recording(seconds: float = 2.0, size: tuple[int, int] = (8, 12), seed: int = 0) -> Recording:
    """Camera (raw rgb8) and a PNG camera at 10 Hz, joint states at 50 Hz, a pose at 20 Hz, a
    twist command at 10 Hz starting 3 ms late, a reward at 10 Hz, success once at the end and the
    task once at the start. At a 10 Hz target: tick k takes cam k, joint state 5k, pose 2k."""
    rng = np.random.default_rng(seed)
    h, w = size
    cam_t = times(10, seconds)
    js_t = times(50, seconds)
    pose_t = times(20, seconds)
    cmd_t = times(10, seconds, offset_ms=3)
    topics = [
        Topic("/cam", "sensor_msgs/msg/Image", cam_t, rng.integers(0, 256, (len(cam_t), h, w, 3), dtype=np.uint8),
              lambda m, t, v: m.image(t, v)),
        Topic("/cam_png", "sensor_msgs/msg/CompressedImage", cam_t,
              rng.integers(0, 256, (len(cam_t), h, w, 3), dtype=np.uint8), lambda m, t, v: m.compressed(t, v)),
        Topic("/joint_states", "sensor_msgs/msg/JointState", js_t,
              np.stack([np.arange(len(js_t)) * k for k in (1.0, 2.0, 3.0)], 1), lambda m, t, v: m.joint_state(t, v)),
        Topic("/ee_pose", "geometry_msgs/msg/PoseStamped", pose_t, rng.normal(size=(len(pose_t), 7)),
              lambda m, t, v: m.pose_stamped(t, v)),
        Topic("/cmd", "geometry_msgs/msg/Twist", cmd_t, rng.normal(size=(len(cmd_t), 6)),
              lambda m, t, v: m.twist(v)),
        Topic("/reward", "std_msgs/msg/Float64", cam_t, rng.random(len(cam_t)), lambda m, t, v: m.float64(v)),
        Topic("/success", "std_msgs/msg/Bool", np.array([cam_t[-1] + 50_000_000]), [True],
              lambda m, t, v: m.boolean(v)),
        Topic("/task", "std_msgs/msg/String", np.array([BASE_NS]), ["stack blocks"], lambda m, t, v: m.string(v)),
    ]  # fmt: skip
    return Recording({t.name: t for t in topics})


# ---------------------------------------------------------------------------- container writers
def to_plain(msg: Any) -> Any:
    """A rosbags message as dicts, lists and bytes (what mcap-ros2-support's writer takes)."""
    if dataclasses.is_dataclass(msg):
        return {f.name: to_plain(getattr(msg, f.name)) for f in dataclasses.fields(msg)}
    if isinstance(msg, np.ndarray):
        return msg.tobytes() if msg.dtype == np.uint8 else msg.tolist()
    if isinstance(msg, list):
        return [to_plain(x) for x in msg]
    return msg


def write_mcap_ros2(path: Path, rec: Recording, *, chunk_size: int = 1 << 20) -> Path:
    """MCAP with CDR messages, written by mcap-ros2-support's Writer."""
    with open(path, "wb") as f:
        w = Ros2McapWriter(f, chunk_size=chunk_size)
        schemas: dict[str, Any] = {}
        for t, topic, typename, msg in rec.messages(ros1=False):
            if typename not in schemas:
                schemas[typename] = w.register_msgdef(typename, TS2.generate_msgdef(typename, ros_version=2)[0])
            w.write_message(topic, schemas[typename], to_plain(msg), log_time=t, publish_time=t)
        w.finish()
    return path


def write_mcap_ros1(path: Path, rec: Recording) -> Path:
    """MCAP with ROS 1 messages: the mcap Writer with ros1msg schemas, rosbags serializing."""
    with open(path, "wb") as f:
        w = McapWriter(f)
        w.start(profile="ros1", library="robot-rl tests")
        schemas: dict[str, int] = {}
        channels: dict[str, int] = {}
        for t, topic, typename, msg in rec.messages(ros1=True):
            if typename not in schemas:
                text = TS1.generate_msgdef(typename, ros_version=1)[0]
                schemas[typename] = w.register_schema(ros1_name(typename), "ros1msg", text.encode())
            if topic not in channels:
                channels[topic] = w.register_channel(topic, "ros1", schemas[typename])
            data = bytes(TS1.serialize_ros1(msg, typename))
            w.add_message(channels[topic], log_time=t, data=data, publish_time=t)
        w.finish()
    return path


def write_bag1(path: Path, rec: Recording) -> Path:
    with Bag1Writer(path) as w:
        conns: dict[str, Any] = {}
        for t, topic, typename, msg in rec.messages(ros1=True):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, typename, typestore=TS1)
            w.write(conns[topic], t, TS1.serialize_ros1(msg, typename))
    return path


def write_bag2(path: Path, rec: Recording, storage: str = "sqlite3") -> Path:
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Bag2Writer(path, version=9, storage_plugin=plugin) as w:
        conns: dict[str, Any] = {}
        for t, topic, typename, msg in rec.messages(ros1=False):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, typename, typestore=TS2)
            w.write(conns[topic], t, TS2.serialize_cdr(msg, typename))
    return path


def write_robomimic(path: Path, demos: dict[str, dict[str, np.ndarray]], env_name: str = "Lift") -> Path:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": env_name, "type": 1, "env_kwargs": {}})
        for name, arrays in demos.items():
            g = data.create_group(name)
            for k, v in arrays.items():
                g.create_dataset(k, data=v)
            g.attrs["num_samples"] = len(arrays["actions"])
        data.attrs["total"] = sum(len(d["actions"]) for d in demos.values())
    return path


def robomimic_demo(n: int, seed: int, size: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rewards = np.zeros(n)
    rewards[-1] = 1.0
    dones = np.zeros(n, dtype=np.int64)
    dones[-1] = 1
    return {
        "obs/agentview_image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "obs/robot0_eef_pos": rng.normal(size=(n, 3)),
        "obs/robot0_gripper_qpos": rng.normal(size=(n, 2)),
        "actions": rng.uniform(-1, 1, (n, 7)),
        "rewards": rewards,
        "dones": dones,
        "states": rng.normal(size=(n, 10)),
    }


def write_aloha(
    path: Path, n: int, seed: int, *, compress: bool, cams: tuple[str, ...] = ("cam_high", "cam_low")
) -> dict:
    """An ALOHA episode file; returns the ground truth (images as stored before compression)."""
    rng = np.random.default_rng(seed)
    truth: dict[str, Any] = {"qpos": rng.normal(size=(n, 14)), "action": rng.normal(size=(n, 14)), "images": {}}
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = False
        f.attrs["compress"] = compress
        obs = f.create_group("observations")
        imgs = obs.create_group("images")
        for c in cams:
            frames = np.zeros((n, 12, 16, 3), np.uint8)
            frames[:, :, :, 0] = rng.integers(0, 256, (n, 1, 1))  # flat colours survive JPEG
            frames[:, :, :, 1] = 30
            frames[:, :, :, 2] = 200
            truth["images"][c] = frames
            if compress:
                enc = [cv2.imencode(".jpg", fr, [int(cv2.IMWRITE_JPEG_QUALITY), 95])[1].ravel() for fr in frames]
                padded = max(len(e) for e in enc) + 7
                ds = imgs.create_dataset(c, (n, padded), dtype="uint8")
                for i, e in enumerate(enc):
                    ds[i, : len(e)] = e
            else:
                imgs.create_dataset(c, data=frames)
        obs.create_dataset("qpos", data=truth["qpos"])
        obs.create_dataset("qvel", data=np.zeros((n, 14)))
        f.create_dataset("action", data=truth["action"])
        if compress:
            f.create_dataset("compress_len", data=np.zeros((len(cams), n)))
    return truth


def write_minari(root: Path, episodes: list[dict[str, np.ndarray]], env_id: str = "DoesNotExist-v9") -> Path:
    """A Minari dataset directory (HDF5 storage) with ``data/metadata.json``."""
    data = root / "data"
    data.mkdir(parents=True)
    (data / "metadata.json").write_text(
        json.dumps(
            {
                "dataset_id": "test/fake-v0",
                "data_format": "hdf5",
                "env_spec": json.dumps({"id": env_id, "entry_point": "nowhere:Nothing"}),
                "total_episodes": len(episodes),
                "minari_version": "0.5.3",
            }
        )
    )
    with h5py.File(data / "main_data.hdf5", "w") as f:
        for i, ep in enumerate(episodes):
            g = f.create_group(f"episode_{i}")
            g.attrs["id"] = i
            g.attrs["total_steps"] = len(ep["actions"])
            g.attrs["seed"] = 100 + i
            for k, v in ep.items():
                g.create_dataset(k, data=v)
    return root


def minari_episode(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    term = np.zeros(n, bool)
    term[-1] = True
    return {
        "observations": rng.normal(size=(n + 1, 4)),
        "actions": rng.normal(size=(n, 2)),
        "rewards": rng.random(n),
        "terminations": term,
        "truncations": np.zeros(n, bool),
    }


# ---------------------------------------------------------------------------- tests of the writers' bytes
def _arr(v: Any) -> np.ndarray:
    return np.frombuffer(v, np.uint8) if isinstance(v, bytes) else np.asarray(v)


@pytest.mark.parametrize("typename", sorted(t.replace("/", "/msg/") for t in ros.FAST_CDR))
def test_fast_cdr_decoders_match_the_library(tmp_path: Path, typename: str) -> None:
    """Our struct decoders read the same values as mcap-ros2-support from the same CDR bytes,
    including odd-length strings (alignment), empty arrays and frame ids of every length mod 4."""
    m = Msgs(ros1=False)
    rng = np.random.default_rng(1)
    samples = []
    for k in range(6):
        t = BASE_NS + k
        if typename.endswith("CompressedImage"):
            msg = m.compressed(t, rng.integers(0, 256, (3, 5, 3), dtype=np.uint8))
            msg.header.frame_id = "x" * k
            msg.format = "png" + " " * k
        elif typename.endswith("JointState"):
            names = ["a" * (i + k) for i in range(k % 4)]
            msg = m.joint_state(t, rng.normal(size=len(names)), names)
            msg.header.frame_id = "f" * k
        else:
            dt = np.float64 if "64" in typename else np.float32
            layout = m.T["std_msgs/msg/MultiArrayLayout"](
                dim=[m.T["std_msgs/msg/MultiArrayDimension"](label="l" * i, size=i, stride=k) for i in range(k % 3)],
                data_offset=k,
            )
            msg = m.T[typename](layout=layout, data=rng.normal(size=k).astype(dt))
        samples.append(bytes(TS2.serialize_cdr(msg, typename)))
    schema_text = TS2.generate_msgdef(typename, ros_version=2)[0]
    from mcap.records import Schema

    lib = Ros2Decoders().decoder_for("cdr", Schema(id=1, name=typename, encoding="ros2msg", data=schema_text.encode()))
    fast = ros.with_fast_path(typename, "cdr", lambda b: pytest.fail("fell back to the library"))
    for data in samples:
        a, b = lib(data), fast(data)
        for field in ("format", "data", "name", "position", "velocity", "effort"):
            if hasattr(a, field):
                va, vb = getattr(a, field), getattr(b, field)
                if isinstance(va, (str, list)) and not isinstance(va, bytes):
                    assert list(va) == list(vb) if isinstance(va, list) else va == vb, field
                else:
                    np.testing.assert_array_equal(_arr(va), _arr(vb), field)
        if hasattr(a, "header"):
            assert ros.stamp_ns(a) == ros.stamp_ns(b)
            assert a.header.frame_id == b.header.frame_id


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """A lossless H.264 (libx264rgb, qp 0) MP4, so decoded frames equal the written ones."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=fps, options={"qp": "0"})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def lerobot_episode(n: int, seed: int, task: str, size: tuple[int, int] = (8, 12)) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "observation.state": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
        "next.reward": rng.random(n).astype(np.float32),
        "observation.images.top": rng.integers(0, 256, (n, *size, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (n, *size, 3), dtype=np.uint8),
        "task": task,
    }


def write_lerobot(root: Path, episodes: list[dict[str, Any]], *, version: str, fps: int = 10) -> Path:
    """A LeRobot dataset: ``observation.images.top`` as video, ``observation.images.wrist`` as a
    PNG image column (v2.1 only), state, action and reward as Parquet columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    h, w = episodes[0]["observation.images.top"].shape[1:3]
    v3 = version.startswith("v3")
    tasks = sorted({e["task"] for e in episodes})
    features: dict[str, Any] = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "observation.images.top": {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channel"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    if not v3:
        features["observation.images.wrist"] = {"dtype": "image", "shape": [h, w, 3], "names": None}
    info = {
        "codebase_version": version,
        "robot_type": "so100",
        "fps": fps,
        "chunks_size": 1000,
        "total_episodes": len(episodes),
        "features": features,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
        if v3
        else "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        if v3
        else "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    tables, ep_rows, index = [], [], 0
    video_t = 0.0
    for e_i, ep in enumerate(episodes):
        n = len(ep["action"])
        cols: dict[str, Any] = {
            "observation.state": pa.array(list(ep["observation.state"]), pa.list_(pa.float32())),
            "action": pa.array(list(ep["action"]), pa.list_(pa.float32())),
            "next.reward": pa.array(ep["next.reward"]),
            "timestamp": pa.array((np.arange(n) / fps).astype(np.float32)),
            "frame_index": pa.array(np.arange(n)),
            "episode_index": pa.array(np.full(n, e_i)),
            "index": pa.array(np.arange(index, index + n)),
            "task_index": pa.array(np.full(n, tasks.index(ep["task"]))),
        }
        if not v3:
            pngs = [
                cv2.imencode(".png", np.ascontiguousarray(f[..., ::-1]))[1].tobytes()
                for f in ep["observation.images.wrist"]
            ]
            cols["observation.images.wrist"] = pa.array(
                [{"bytes": b, "path": None} for b in pngs], pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            )
        table = pa.table(cols)
        if v3:
            tables.append(table)
            ep_rows.append(
                {
                    "episode_index": e_i,
                    "tasks": [ep["task"]],
                    "length": n,
                    "data/chunk_index": 0,
                    "data/file_index": 0,
                    "dataset_from_index": index,
                    "dataset_to_index": index + n,
                    "videos/observation.images.top/chunk_index": 0,
                    "videos/observation.images.top/file_index": 0,
                    "videos/observation.images.top/from_timestamp": video_t,
                    "videos/observation.images.top/to_timestamp": video_t + n / fps,
                }
            )
            video_t += n / fps
        else:
            p = root / f"data/chunk-000/episode_{e_i:06d}.parquet"
            p.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, p)
            write_video(
                root / f"videos/chunk-000/observation.images.top/episode_{e_i:06d}.mp4",
                ep["observation.images.top"],
                fps,
            )
            ep_rows.append({"episode_index": e_i, "tasks": [ep["task"]], "length": n})
        index += n
    if v3:
        p = root / "data/chunk-000/file-000.parquet"
        p.parent.mkdir(parents=True)
        pq.write_table(pa.concat_tables(tables), p)
        write_video(
            root / "videos/observation.images.top/chunk-000/file-000.mp4",
            np.concatenate([e["observation.images.top"] for e in episodes]),
            fps,
        )
        (root / "meta/episodes/chunk-000").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(ep_rows), root / "meta/episodes/chunk-000/file-000.parquet")
        pq.write_table(
            pa.table({"task_index": list(range(len(tasks))), "__index_level_0__": tasks}), root / "meta/tasks.parquet"
        )
    else:
        (root / "meta/episodes.jsonl").write_text("\n".join(json.dumps(r) for r in ep_rows))
        (root / "meta/tasks.jsonl").write_text(
            "\n".join(json.dumps({"task_index": i, "task": t}) for i, t in enumerate(tasks))
        )
    return root
