"""ROS 1 ``.bag`` files and ROS 2 bag directories with ``rosbags`` (no ROS installation needed).

ROS 1: version 2.0 bags, indexed (an unindexed bag, e.g. from a recorder that was killed, is
refused with ``unindexed``: run ``rosbag reindex`` on it first). ROS 2: a directory with
``metadata.yaml`` and its sqlite3 or MCAP storage files. Message types are registered from the
definitions stored in the bag (falling back to ROS 1 Noetic / ROS 2 Humble definitions for
connections without one). Timestamps are the bag's receive times (``sync.time: log``) or
``header.stamp``.

A ROS 2 bag whose MCAP storage was cut off (a storage file without the MCAP footer: the recorder
stopped before closing it), which rosbags cannot open, is read with our MCAP reader instead
(``mcap_reader.read_file``: front to back, what was written before the break is kept, with a
``truncated`` warning naming the file and the byte; see ``mcap_reader``). A mapped topic that is
not in the bag, or a step or text topic without messages, is ``missing_source``; a
success/terminal flag topic without messages leaves the flag unknown (a warning).
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag1 import Reader as Reader1
from rosbags.rosbag1 import ReaderError as ReaderError1
from rosbags.rosbag2 import Reader as Reader2
from rosbags.rosbag2 import ReaderError as ReaderError2
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg, get_typestore

from data_lake.ingest import mcap_reader, ros
from data_lake.ingest.errors import IngestError, Note
from data_lake.ingest.mapping import Mapping
from data_lake.ingest.streams import EmptySource, Source, Unit

ROS1_MAGIC = b"#ROSBAG V2.0\n"
READ_ERRORS = (
    ReaderError1,
    ReaderError2,
    SerdeError,
    TypesysError,
    struct.error,
    sqlite3.Error,
    OSError,
    ValueError,
    KeyError,
    EOFError,
)


def version() -> str:
    return f"rosbags {pkg_version('rosbags')}"


def is_ros1(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(ROS1_MAGIC)) == ROS1_MAGIC


def is_ros2(path: Path) -> bool:
    meta = path / "metadata.yaml"
    return path.is_dir() and meta.is_file() and "rosbag2_bagfile_information" in meta.read_text(errors="replace")


def expand(path: Path, fmt: str) -> list[Path]:
    if fmt == "ros1":
        return sorted(p for p in path.rglob("*.bag") if p.is_file()) if path.is_dir() else [path]
    if is_ros2(path) or not path.is_dir():
        return [path]
    return sorted(p.parent for p in path.rglob("metadata.yaml") if is_ros2(p.parent)) or [path]


def _typestore(reader: Reader1 | Reader2, ros2: bool) -> Any:
    """Types from the bag's own definitions; the standard ones for connections without any."""
    typs: dict[str, Any] = {}
    default = get_typestore(Stores.ROS2_HUMBLE if ros2 else Stores.ROS1_NOETIC)
    for c in reader.connections:
        if c.msgdef.format == MessageDefinitionFormat.MSG:
            typs.update(get_types_from_msg(c.msgdef.data, c.msgtype))
        elif c.msgdef.format == MessageDefinitionFormat.IDL:
            sep = "=" * 80 + "\n"
            for block in c.msgdef.data.split(sep)[1:] if c.msgdef.data.startswith(sep) else [c.msgdef.data]:
                typs.update(get_types_from_idl(block.split("\n", 1)[1] if block.startswith("IDL: ") else block))
    store = get_typestore(Stores.EMPTY)
    store.register({**default.fielddefs, **typs})
    return store


def _open(path: Path, fmt: str) -> Reader1 | Reader2:
    if fmt == "ros1":
        if not path.is_file():
            raise IngestError(
                "not_found" if not path.exists() else "wrong_format", "expected a ROS 1 .bag file", source=str(path)
            )
        with open(path, "rb") as f:
            head = f.read(len(ROS1_MAGIC))
        if head != ROS1_MAGIC:
            raise IngestError(
                "wrong_format",
                f"not a ROS 1 bag v2.0 (starts with {head!r}, expected {ROS1_MAGIC!r})",
                source=str(path),
            )
        reader: Reader1 | Reader2 = Reader1(path)
    else:
        if not is_ros2(path):
            what = "a file" if path.is_file() else "a directory without a rosbag2 metadata.yaml"
            raise IngestError(
                "wrong_format",
                f"expected a ROS 2 bag directory (metadata.yaml + storage), found {what}",
                source=str(path),
            )
        reader = Reader2(path)
    try:
        reader.open()
    except READ_ERRORS as e:
        msg = str(e.args[0]) if e.args else str(e)
        if "not indexed" in msg:
            raise IngestError(
                "unindexed",
                "the bag has no index (its recording was cut off); run `rosbag reindex` on it first",
                source=str(path),
            ) from e
        code = (
            "truncated"
            if isinstance(e, (struct.error, EOFError)) or "damaged" in msg or "Unexpected end" in msg
            else "corrupt"
        )
        raise IngestError(code, f"rosbags cannot open it: {msg}", source=str(path)) from e
    return reader


def _decoder(store: Any, msgtype: str, ros2: bool) -> ros.Decoder:
    if ros2:
        return ros.with_fast_path(msgtype, "cdr", lambda b: store.deserialize_cdr(b, msgtype))
    return lambda b: store.deserialize_ros1(b, msgtype)


def _cut_mcap_storage(path: Path) -> list[Path] | None:
    """A ROS 2 bag's MCAP storage files, in order, when one of them lacks the MCAP footer (the
    recording was cut off before the file was closed); None otherwise."""
    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text(errors="replace"))["rosbag2_bagfile_information"]
        storage = str(info.get("storage_identifier") or "")
        files = [path / str(f) for f in info.get("relative_file_paths") or []]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return None
    if storage != "mcap" or not files:
        return None
    files = [f for f in files if f.is_file()]
    cut = False
    for f in files:
        with open(f, "rb") as fh:
            if fh.read(len(mcap_reader.MAGIC)) != mcap_reader.MAGIC:
                return None  # not MCAP after all: rosbags reports it
            fh.seek(max(0, f.stat().st_size - len(mcap_reader.MAGIC)))
            cut |= fh.read() != mcap_reader.MAGIC
    return files if cut else None


def _read_cut_mcap(path: Path, files: list[Path], mapping: Mapping) -> Unit:
    """A ROS 2 bag with cut-off MCAP storage, read file by file with our MCAP reader."""
    topics = mcap_reader.new_topics(mapping)
    notes: list[Note] = []
    stopped = None
    for f in files:
        n, brk = mcap_reader.read_file(f, topics, mapping)
        notes += n
        stopped = stopped or brk
    sources = mcap_reader.sources_of(topics, mapping, str(path), stopped)
    reader_version = f"{mcap_reader.version()} (cut-off MCAP storage, which rosbags cannot open)"
    return Unit(path, str(path), sources, "ros2", reader_version, notes=notes)


def read(path: Path, mapping: Mapping, fmt: str) -> Iterator[Unit]:
    """One unit per bag (``episodes.split`` may cut it into several episodes)."""
    ros2 = fmt == "ros2"
    cut = _cut_mcap_storage(path) if ros2 and is_ros2(path) else None
    if cut is not None:
        yield _read_cut_mcap(path, cut, mapping)
        return
    reader = _open(path, fmt)
    try:
        store = _typestore(reader, ros2)
        wanted = mapping.names()
        present = {c.topic for c in reader.connections}
        missing = sorted(wanted - present)
        if missing:
            raise IngestError(
                "missing_source",
                f"topic is not in the bag; topics there: {sorted(present)[:30]}",
                source=str(path),
                where=", ".join(missing),
            )
        conns = [c for c in reader.connections if c.topic in wanted]
        types: dict[str, str] = {}
        for c in conns:
            if types.setdefault(c.topic, c.msgtype) != c.msgtype:
                raise IngestError(
                    "unsupported_type",
                    f"topic carries two types ({types[c.topic]}, {c.msgtype})",
                    source=str(path),
                    where=c.topic,
                )
        t: dict[str, list[int]] = {n: [] for n in wanted}
        raw: dict[str, list[bytes]] = {n: [] for n in wanted}
        last = None
        try:
            for conn, stamp, data in reader.messages(connections=conns):
                t[conn.topic].append(stamp)
                raw[conn.topic].append(bytes(data))
                last = stamp
        except READ_ERRORS as e:
            raise IngestError(
                "corrupt", f"unreadable message data after log time {last} ns: {e}", source=str(path), time_ns=last
            ) from e
    finally:
        reader.close()
    flags = mapping.flag_names()
    empty = sorted(n for n in wanted if not t[n] and n not in flags)
    if empty:
        raise IngestError(
            "missing_source",
            f"topic has no messages; topics with messages: {sorted(n for n in wanted if t[n])}",
            source=str(path),
            where=", ".join(empty),
        )
    sources: dict[str, Source] = {}
    for name in sorted(wanted):
        if not t[name]:  # a flag topic without messages: the flag is unknown
            sources[name] = EmptySource(name)
            continue
        msgtype = types[name]
        decode = _decoder(store, msgtype, ros2)
        ts = np.asarray(t[name], dtype=np.int64)
        src = ros.MessageSource(name, msgtype, ts, raw[name], decode)
        if mapping.sync.time == "header":
            stamps = [ros.stamp_ns(src.msg(i)) for i in range(len(ts))]
            src.t_ns = np.asarray([s if s is not None else ts[i] for i, s in enumerate(stamps)], dtype=np.int64)
            src.drop_cache()
        sources[name] = src
    yield Unit(path, str(path), sources, fmt, version())
