"""ROS messages (from MCAP files and ROS 1/2 bags) as values: images, vectors, text, markers.

Supported message types (ROS 1 and ROS 2 names alike; ``pkg/msg/Type`` == ``pkg/Type``):

    sensor_msgs/Image              camera (rgb8, bgr8, mono8) or depth (16UC1, 32FC1)
    sensor_msgs/CompressedImage    camera (jpeg, png) or depth (16-bit png)
    sensor_msgs/JointState         field: position (default) | velocity | effort; joints: [names]
    geometry_msgs/Pose(Stamped)    [x, y, z, qx, qy, qz, qw]; field: position | orientation
    geometry_msgs/Twist(Stamped)   [vx, vy, vz, wx, wy, wz]; field: linear | angular
    geometry_msgs/Point, Vector3, Quaternion (and their Stamped forms)
    std_msgs/Float32, Float64, Bool, Int*, UInt*   one value
    std_msgs/*MultiArray           ``data`` as a vector
    std_msgs/String                text (task, language)
    any other type                 with ``field: a.b.c`` naming a numeric field or array

Messages are decoded lazily, only at the samples the resampler picks. The libraries decode
(``mcap-ros2-support`` / ``mcap-ros1-support`` for MCAP, ``rosbags`` for bags); for the hot CDR
types (CompressedImage, JointState, Float32/64MultiArray) a small struct-based decoder reads the
same bytes several times faster (checked against the library decoders in the tests).
"""

from __future__ import annotations

import struct
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from data_lake.ingest import images
from data_lake.ingest.errors import IngestError
from data_lake.ingest.mapping import SourceSpec
from data_lake.ingest.streams import Source, select, stack_frames, stack_vectors

Decoder = Callable[[bytes], Any]


def norm_type(msgtype: str) -> str:
    """``sensor_msgs/msg/Image`` and ``sensor_msgs/Image`` both become ``sensor_msgs/Image``."""
    parts = msgtype.split("/")
    return f"{parts[0]}/{parts[-1]}" if len(parts) >= 2 else msgtype


SCALARS = {
    f"std_msgs/{t}"
    for t in ("Float32", "Float64", "Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64")
}
ARRAYS = {
    f"std_msgs/{t}MultiArray"
    for t in ("Float32", "Float64", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Byte")
}
VECTOR_TYPES = (
    SCALARS
    | ARRAYS
    | {f"geometry_msgs/{t}{s}" for t in ("Pose", "Twist", "Point", "Vector3", "Quaternion") for s in ("", "Stamped")}
    | {"sensor_msgs/JointState"}
)
IMAGE_TYPES = {"sensor_msgs/Image", "sensor_msgs/CompressedImage"}
FIELDS = {
    "sensor_msgs/JointState": ("position", "velocity", "effort"),
    "geometry_msgs/Pose": ("position", "orientation"),
    "geometry_msgs/PoseStamped": ("position", "orientation"),
    "geometry_msgs/Twist": ("linear", "angular"),
    "geometry_msgs/TwistStamped": ("linear", "angular"),
}


# ---------------------------------------------------------------------------- fast CDR decoders
_Msg = types.SimpleNamespace  # what the fast decoders return: a plain attribute bag


_U32 = struct.Struct("<I")
_HDR = struct.Struct("<iI")


def _string(d: bytes, o: int) -> tuple[str, int]:
    o += -(o - 4) % 4
    (n,) = _U32.unpack_from(d, o)
    return d[o + 4 : o + 4 + max(n - 1, 0)].decode(), o + 4 + n


def _header(d: bytes) -> tuple[_Msg, int]:
    sec, nsec = _HDR.unpack_from(d, 4)
    frame_id, o = _string(d, 12)
    return _Msg(stamp=_Msg(sec=sec, nanosec=nsec), frame_id=frame_id), o


def _f64_seq(d: bytes, o: int, dtype: str = "<f8", size: int = 8) -> tuple[np.ndarray, int]:
    o += -(o - 4) % 4
    (n,) = _U32.unpack_from(d, o)
    o += 4
    if n:
        o += -(o - 4) % size
    return np.frombuffer(d, dtype, n, o), o + size * n


def _cdr_compressed_image(d: bytes) -> _Msg:
    header, o = _header(d)
    fmt, o = _string(d, o)
    o += -(o - 4) % 4
    (n,) = _U32.unpack_from(d, o)
    return _Msg(header=header, format=fmt, data=d[o + 4 : o + 4 + n])


def _cdr_joint_state(d: bytes) -> _Msg:
    header, o = _header(d)
    o += -(o - 4) % 4
    (count,) = _U32.unpack_from(d, o)
    o += 4
    names = []
    unpack = _U32.unpack_from
    for _ in range(count):
        o += -(o - 4) % 4
        (n,) = unpack(d, o)
        names.append(d[o + 4 : o + 3 + n].decode())
        o += 4 + n
    pos, o = _f64_seq(d, o)
    vel, o = _f64_seq(d, o)
    eff, o = _f64_seq(d, o)
    return _Msg(header=header, name=names, position=pos, velocity=vel, effort=eff)


def _cdr_multi_array(dtype: str, size: int) -> Callable[[bytes], _Msg]:
    def decode(d: bytes) -> _Msg:
        o = 4
        (ndim,) = _U32.unpack_from(d, o)
        o += 4
        for _ in range(ndim):
            _, o = _string(d, o)
            o += -(o - 4) % 4 + 8  # size, stride
        o += -(o - 4) % 4 + 4  # data_offset
        data, _ = _f64_seq(d, o, dtype, size)
        return _Msg(data=data)

    return decode


FAST_CDR: dict[str, Callable[[bytes], _Msg]] = {
    "sensor_msgs/CompressedImage": _cdr_compressed_image,
    "sensor_msgs/JointState": _cdr_joint_state,
    "std_msgs/Float64MultiArray": _cdr_multi_array("<f8", 8),
    "std_msgs/Float32MultiArray": _cdr_multi_array("<f4", 4),
}


def with_fast_path(msgtype: str, encoding: str, library: Decoder) -> Decoder:
    """The fast decoder for little-endian CDR of a hot type, else the library's decoder."""
    fast = FAST_CDR.get(norm_type(msgtype)) if encoding == "cdr" else None
    if fast is None:
        return library

    def decode(data: bytes) -> Any:
        if bytes(data[:2]) != b"\x00\x01":  # not plain little-endian CDR
            return library(data)
        return fast(bytes(data))

    return decode


# ---------------------------------------------------------------------------- values from messages
def stamp_ns(msg: Any) -> int | None:
    """``header.stamp`` in ns (ROS 2 sec/nanosec or ROS 1 secs/nsecs), or None without a header."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    sec: Any = getattr(stamp, "sec", None)
    if sec is None:
        sec = getattr(stamp, "secs", 0)
    nsec: Any = getattr(stamp, "nanosec", None)
    if nsec is None:
        nsec = getattr(stamp, "nsecs", 0)
    return int(sec) * 1_000_000_000 + int(nsec)


def _xyz(v: Any, names: str = "xyz") -> list[float]:
    return [float(getattr(v, c)) for c in names]


def _path(msg: Any, path: str) -> Any:
    cur = msg
    for part in path.split("."):
        if not hasattr(cur, part):
            have = sorted(k for k in dir(cur) if not k.startswith("_"))[:20]
            raise KeyError(f"no field {part!r} in {path!r}; fields here: {have}")
        cur = getattr(cur, part)
    return cur


def _as_vector(v: Any) -> np.ndarray | None:
    if isinstance(v, (bool, int, float, np.number, np.bool_)):
        return np.array([float(v)])
    if isinstance(v, (bytes, bytearray, memoryview)):
        return np.frombuffer(v, np.uint8).astype(np.float64)
    if isinstance(v, (list, tuple, np.ndarray)):
        try:
            return np.asarray(v, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            return None
    if all(hasattr(v, c) for c in "xyzw"):
        return np.array(_xyz(v, "xyzw"))
    if all(hasattr(v, c) for c in "xyz"):
        return np.array(_xyz(v))
    return None


def vector(msg: Any, msgtype: str, spec: SourceSpec) -> np.ndarray:
    """One message as a 1-D float64 vector (before ``indices``). Raises KeyError/TypeError with a
    sentence the caller turns into an IngestError."""
    t = norm_type(msgtype)
    field = spec.field
    if t == "sensor_msgs/JointState":
        field = field or "position"
        if field not in FIELDS[t]:
            raise TypeError(f"JointState field must be one of {list(FIELDS[t])}, found {field!r}")
        vals = np.asarray(getattr(msg, field), dtype=np.float64)
        if spec.joints is not None:
            names = list(msg.name)
            missing = [j for j in spec.joints if j not in names]
            if missing:
                raise LookupError(f"joints {missing} are not in JointState.name {names}")
            if len(vals) != len(names):
                raise ValueError(f"JointState has {len(names)} names but {len(vals)} {field} values")
            vals = vals[[names.index(j) for j in spec.joints]]
        return vals
    if spec.joints is not None:
        raise TypeError(f"'joints' applies to sensor_msgs/JointState, not {t}")
    if t in ("geometry_msgs/PoseStamped", "geometry_msgs/TwistStamped") or (
        t.endswith("Stamped") and t.startswith("geometry_msgs/") and field is None
    ):
        inner = {"geometry_msgs/PoseStamped": "pose", "geometry_msgs/TwistStamped": "twist"}.get(t)
        if inner is None:  # PointStamped.point, Vector3Stamped.vector, QuaternionStamped.quaternion
            inner = next(k for k in ("point", "vector", "quaternion") if hasattr(msg, k))
        msg, t = getattr(msg, inner), t[: -len("Stamped")]
    if t == "geometry_msgs/Pose" and field in (None, "position", "orientation"):
        p = _xyz(msg.position)
        q = _xyz(msg.orientation, "xyzw")
        return np.array(p if field == "position" else q if field == "orientation" else p + q)
    if t == "geometry_msgs/Twist" and field in (None, "linear", "angular"):
        lin, ang = _xyz(msg.linear), _xyz(msg.angular)
        return np.array(lin if field == "linear" else ang if field == "angular" else lin + ang)
    if field is None:
        if t in SCALARS or t in ARRAYS:
            out = _as_vector(msg.data)
        elif t in ("geometry_msgs/Point", "geometry_msgs/Vector3", "geometry_msgs/Quaternion"):
            out = _as_vector(msg)
        else:
            raise TypeError(
                f"message type {msgtype} is not supported as a vector; supported: {sorted(VECTOR_TYPES)}, "
                "or name a numeric field with 'field: a.b.c'"
            )
    else:
        out = _as_vector(_path(msg, field))
        if out is None:
            raise TypeError(f"field {field!r} of {msgtype} is not a number or an array of numbers")
    assert out is not None
    return out


def text(msg: Any, msgtype: str, spec: SourceSpec) -> str:
    if spec.field:
        return str(_path(msg, spec.field))
    if norm_type(msgtype) == "std_msgs/String" or hasattr(msg, "data"):
        v = msg.data
        return v.decode() if isinstance(v, bytes) else str(v)
    raise TypeError(f"message type {msgtype} carries no text; use std_msgs/String or 'field: ...'")


def marker(msg: Any, msgtype: str) -> bool:
    """Whether a marker-topic sample starts an episode: any message, except a false/zero value."""
    if norm_type(msgtype) in SCALARS:
        return bool(msg.data)
    return True


def image(msg: Any, msgtype: str, *, depth: bool, where: str, time_ns: int) -> np.ndarray:
    t = norm_type(msgtype)
    if t == "sensor_msgs/CompressedImage":
        images.compressed_format(msg.format, where=where, time_ns=time_ns)
        return images.decode_bytes(msg.data, depth=depth, where=where, time_ns=time_ns)
    if t == "sensor_msgs/Image":
        return images.decode_raw(
            msg.data,
            msg.encoding,
            int(msg.height),
            int(msg.width),
            int(msg.step),
            bool(msg.is_bigendian),
            depth=depth,
            where=where,
            time_ns=time_ns,
        )
    raise IngestError(
        "unsupported_type",
        f"message type {msgtype} is not an image; expected sensor_msgs/Image or sensor_msgs/CompressedImage",
        where=where,
        time_ns=time_ns,
    )


class MessageSource(Source):
    """A topic's raw messages in arrival order, decoded on demand (and cached)."""

    def __init__(self, name: str, msgtype: str, t_ns: np.ndarray, raws: list[bytes], decode: Decoder):
        self.name, self.msgtype, self.t_ns = name, msgtype, t_ns
        self.raws, self._decode = raws, decode
        self._cache: dict[int, Any] = {}

    def msg(self, i: int) -> Any:
        m = self._cache.get(i)
        if m is None:
            try:
                m = self._decode(self.raws[i])
            except Exception as e:  # a library decoder: struct.error, ValueError, its own errors, ...
                raise self.error("corrupt", f"{self.msgtype} message {i} does not decode: {e}", i) from e
            self._cache[i] = m
        return m

    def drop_cache(self) -> None:
        self._cache.clear()

    def values(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Any:
        if role in ("image", "depth"):
            frames = [
                image(self.msg(int(i)), self.msgtype, depth=role == "depth", where=self.name, time_ns=int(self.t_ns[i]))
                for i in idx
            ]
            return stack_frames(frames, self, idx) if frames else np.zeros((0, 1, 1, 3), np.uint8)
        out: list[Any] = []
        for i in idx:
            m = self.msg(int(i))
            try:
                if role == "text":
                    out.append(text(m, self.msgtype, spec))
                elif role == "marker":
                    out.append(marker(m, self.msgtype))
                else:
                    out.append(select(vector(m, self.msgtype, spec), spec, self, int(i)))
            except (KeyError, LookupError, TypeError, ValueError, AttributeError) as e:
                code = "missing_source" if isinstance(e, LookupError) else "unsupported_type"
                msg = e.args[0] if e.args else str(e)
                raise self.error(code, f"{msg} ({self.msgtype})", int(i)) from e
        if role == "text":
            return out
        if role == "marker":
            return np.asarray(out, dtype=bool)
        return stack_vectors(out, self, idx)
