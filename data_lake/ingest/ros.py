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
same bytes several times faster (checked against the library decoders in the tests), and a
stream of JointState or MultiArray messages that all share one byte layout is read as one numpy
view (``CdrDecoder.vectors``).
"""

from __future__ import annotations

import struct
import types
from collections.abc import Callable, Iterator
from typing import Any

import cv2
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


def _seq(d: bytes, o: int, size: int) -> tuple[int, int, int]:
    """(offset of the data, count, end) of a CDR sequence of ``size``-byte numbers at ``o``."""
    o += -(o - 4) % 4
    (n,) = _U32.unpack_from(d, o)
    o += 4
    if n:
        o += -(o - 4) % size
    return o, n, o + size * n


def _cdr_compressed_payload(d: bytes) -> tuple[str, memoryview]:
    """A CompressedImage's format and data (a view, not a copy), skipping the header: the path
    every camera frame takes."""
    _, o = _string(d, 12)  # after the encapsulation (4) and the stamp (8): the frame id
    fmt, o = _string(d, o)
    o += -(o - 4) % 4
    (n,) = _U32.unpack_from(d, o)
    return fmt, memoryview(d)[o + 4 : o + 4 + n]


def _cdr_compressed_image(d: bytes) -> _Msg:
    header, _ = _header(d)
    fmt, data = _cdr_compressed_payload(d)
    return _Msg(header=header, format=fmt, data=bytes(data))


Layout = dict[str, tuple[int, int]]  # numeric array field -> (byte offset, count)


def _joint_state_layout(d: bytes) -> tuple[_Msg, list[str], Layout]:
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
    arrays: Layout = {}
    for field in FIELDS["sensor_msgs/JointState"]:
        start, n, o = _seq(d, o, 8)
        arrays[field] = (start, n)
    return header, names, arrays


def _cdr_joint_state(d: bytes) -> _Msg:
    header, names, arrays = _joint_state_layout(d)
    return _Msg(header=header, name=names, **{f: np.frombuffer(d, "<f8", n, o) for f, (o, n) in arrays.items()})


def _multi_array_layout(d: bytes, size: int) -> Layout:
    o = 4
    (ndim,) = _U32.unpack_from(d, o)
    o += 4
    for _ in range(ndim):
        _, o = _string(d, o)
        o += -(o - 4) % 4 + 8  # size, stride
    o += -(o - 4) % 4 + 4  # data_offset
    start, n, _ = _seq(d, o, size)
    return {"data": (start, n)}


def _cdr_multi_array(dtype: str, size: int) -> Callable[[bytes], _Msg]:
    def decode(d: bytes) -> _Msg:
        o, n = _multi_array_layout(d, size)["data"]
        return _Msg(data=np.frombuffer(d, dtype, n, o))

    return decode


FAST_CDR: dict[str, Callable[[bytes], _Msg]] = {
    "sensor_msgs/CompressedImage": _cdr_compressed_image,
    "sensor_msgs/JointState": _cdr_joint_state,
    "std_msgs/Float64MultiArray": _cdr_multi_array("<f8", 8),
    "std_msgs/Float32MultiArray": _cdr_multi_array("<f4", 4),
}
# vector types whose numeric arrays can be gathered for many messages at once:
# (layout of one message, the arrays' dtype, whether bytes 4-12 are a header stamp)
LAYOUTS: dict[str, tuple[Callable[[bytes], tuple[list[str] | None, Layout]], str, bool]] = {
    "sensor_msgs/JointState": (lambda d: _joint_state_layout(d)[1:], "<f8", True),
    "std_msgs/Float64MultiArray": (lambda d: (None, _multi_array_layout(d, 8)), "<f8", False),
    "std_msgs/Float32MultiArray": (lambda d: (None, _multi_array_layout(d, 4)), "<f4", False),
}
_LE_CDR = b"\x00\x01"


class CdrDecoder:
    """Little-endian CDR of a hot type (``FAST_CDR``), decoded by a small struct-based parser;
    other encodings of the same type go to the library's decoder."""

    def __init__(self, msgtype: str, library: Decoder):
        self.type, self.library = norm_type(msgtype), library
        self.fast = FAST_CDR[self.type]

    def __call__(self, data: bytes) -> Any:
        if bytes(data[:2]) != _LE_CDR:  # not plain little-endian CDR
            return self.library(data)
        return self.fast(bytes(data))

    def vectors(self, raws: list[bytes], spec: SourceSpec) -> np.ndarray | None:
        """``vector`` of every message at once, float64 (n, D), when all of them share the first
        one's byte layout: the same length and the same bytes everywhere but in the header stamp
        and the numeric arrays (same frame id, joint names and array lengths: a recorder
        publishing one fixed-size message). Then each field sits at one offset in every message
        and is read for all of them as one strided numpy view. Anything else (other layouts, other
        fields, lengths that vary, any error) gives None, and the caller decodes the messages
        one by one, which also gives the precise error."""
        entry = LAYOUTS.get(self.type)
        if entry is None or not raws or bytes(raws[0][:2]) != _LE_CDR:
            return None
        layout_of, dtype, stamped = entry
        first, size = raws[0], np.dtype(dtype).itemsize
        field = spec.field or ("position" if self.type == "sensor_msgs/JointState" else "data")
        try:
            names, arrays = layout_of(first)
        except (struct.error, UnicodeDecodeError):
            return None
        L = len(first)
        if field not in arrays or any(len(r) != L for r in raws) or max(o + size * n for o, n in arrays.values()) > L:
            return None
        M = np.frombuffer(b"".join(raws), np.uint8).reshape(len(raws), L)  # (n, L)
        fixed = np.ones(L, dtype=bool)
        if stamped:
            fixed[4:12] = False
        for o, n in arrays.values():
            fixed[o : o + size * n] = False
        S = M[:, fixed]
        if not (S == S[0]).all():
            return None
        o, n = arrays[field]
        out = np.ascontiguousarray(M[:, o : o + size * n]).view(dtype).astype(np.float64)  # (n, D)
        if spec.joints is not None:
            if names is None or len(names) != n or any(j not in names for j in spec.joints):
                return None
            out = out[:, [names.index(j) for j in spec.joints]]
        if spec.indices is not None:
            if not spec.indices or max(spec.indices) >= out.shape[1]:
                return None
            out = out[:, list(spec.indices)]
        return out


def with_fast_path(msgtype: str, encoding: str, library: Decoder) -> Decoder:
    """The fast decoder for little-endian CDR of a hot type, else the library's decoder."""
    if encoding == "cdr" and norm_type(msgtype) in FAST_CDR:
        return CdrDecoder(msgtype, library)
    return library


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


_GOOD_FORMATS: set[str] = set()  # CompressedImage.format strings already accepted


def compressed_image(fmt: str, data: Any, *, depth: bool, where: str, time_ns: int) -> np.ndarray:
    """A CompressedImage's ``data`` decoded, once its ``format`` is checked (see ``images``)."""
    if fmt not in _GOOD_FORMATS:
        images.compressed_format(fmt, where=where, time_ns=time_ns)
        _GOOD_FORMATS.add(fmt)
    return images.decode_bytes(data, depth=depth, where=where, time_ns=time_ns)


def image(msg: Any, msgtype: str, *, depth: bool, where: str, time_ns: int) -> np.ndarray:
    t = norm_type(msgtype)
    if t == "sensor_msgs/CompressedImage":
        return compressed_image(msg.format, msg.data, depth=depth, where=where, time_ns=time_ns)
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

    def frames(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Iterator[np.ndarray]:
        depth, kind = role == "depth", norm_type(self.msgtype)
        # little-endian CDR CompressedImage: only the payload is parsed, no message is built
        payload = isinstance(self._decode, CdrDecoder) and kind == "sensor_msgs/CompressedImage"
        for i, t in zip(idx.tolist(), self.t_ns[idx].tolist(), strict=True):
            raw = self.raws[i]
            if payload and raw[:2] == _LE_CDR:
                try:
                    fmt, data = _cdr_compressed_payload(raw)
                except (struct.error, UnicodeDecodeError) as e:
                    raise self.error("corrupt", f"{self.msgtype} message {i} does not decode: {e}", i) from e
                yield compressed_image(fmt, data, depth=depth, where=self.name, time_ns=t)
            else:
                yield image(self.msg(i), kind, depth=depth, where=self.name, time_ns=t)

    def frames_into(self, spec: SourceSpec, role: str, idx: np.ndarray, out: np.ndarray) -> None:
        """Camera frames of little-endian CDR ``CompressedImage`` messages, decoded straight into
        ``out`` by a lean loop: the payload read from the CDR bytes, then a JPEG of the row's
        size decoded straight into its row (``images.decode_jpeg_into``), anything else by
        one ``cv2.imdecode`` with the flag ``images.decode_bytes`` uses (RGB, uint8), a shape
        check and the copy into the row. Any
        frame that is not that plain case (another encoding, a format not yet accepted, a frame
        that fails to decode or has another shape) goes through the general path, which decodes
        it the same way or raises its error; so the frames and the errors are those of
        ``frames`` (checked in tests/test_ingest_fast_paths.py). Other streams take the general
        path."""
        lean = (
            role == "image"
            and isinstance(self._decode, CdrDecoder)
            and norm_type(self.msgtype) == "sensor_msgs/CompressedImage"
            and images.READ_RGB >= 0
            and out.dtype == np.uint8
        )
        if not lean:
            stack_frames(self.frames(spec, role, idx), self, idx, out=out)
            return
        raws, row, good = self.raws, out.shape[1:], _GOOD_FORMATS
        imdecode, frombuffer, u8, flag = cv2.imdecode, np.frombuffer, np.uint8, images.READ_RGB
        jpeg_into = images.decode_jpeg_into
        for k, i in enumerate(idx.tolist()):
            raw = raws[i]
            img = None
            if raw[:2] == _LE_CDR:
                try:
                    fmt, data = _cdr_compressed_payload(raw)
                except (struct.error, UnicodeDecodeError):
                    fmt = None
                if fmt in good:
                    if jpeg_into(data, out[k]):  # JPEGs: libjpeg-turbo straight into the row
                        continue
                    img = imdecode(frombuffer(data, u8), flag)
            if img is None or img.shape != row:  # the general path: the same frame, or its error
                stack_frames(self.frames(spec, role, idx[k : k + 1]), self, idx[k : k + 1], out=out[k : k + 1])
            else:
                out[k] = img

    def values(self, spec: SourceSpec, role: str, idx: np.ndarray) -> Any:
        if role in ("image", "depth"):
            return stack_frames(self.frames(spec, role, idx), self, idx)
        if role == "vector" and isinstance(self._decode, CdrDecoder):
            fast = self._decode.vectors([self.raws[i] for i in idx.tolist()], spec)
            if fast is not None:
                return fast
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
