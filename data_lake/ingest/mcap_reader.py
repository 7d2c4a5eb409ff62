"""MCAP files with ``mcap`` (+ ``mcap-ros2-support`` for CDR, ``mcap-ros1-support`` for ROS 1).

Reading: the summary section (at the end of the file) is read first; with it, the indexed
reader reads the mapped topics' chunks with CRC validation on. Without a readable summary (a
recording cut off before it was finished: no footer), the file is read front to back with the
stream reader, also validating CRCs, until it stops being readable; what was read is kept
(``on_truncated: recover``, a ``truncated`` warning naming the byte offset and the last message
time) or the file is rejected (``on_truncated: reject``). A CRC mismatch is always an error
(``corrupt``). Timestamps are the log times (``sync.time: log``) or ``header.stamp``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mcap
import mcap_ros1
import mcap_ros2
import numpy as np
from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import CRCValidationError, StreamReader
from mcap_ros1.decoder import DecoderFactory as Ros1Decoders
from mcap_ros2.decoder import DecoderFactory as Ros2Decoders

from data_lake.ingest import ros
from data_lake.ingest.errors import IngestError, Note
from data_lake.ingest.mapping import Mapping
from data_lake.ingest.streams import Source, Unit

MAGIC = b"\x89MCAP0\r\n"
READ_ERRORS = (Exception,)  # the mcap library and its decompressors raise many kinds (McapError, struct.error, zstd)


def version() -> str:
    return (
        f"mcap {mcap.__version__}, mcap-ros2-support {mcap_ros2.__version__}, mcap-ros1-support {mcap_ros1.__version__}"
    )


def is_mcap(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(8) == MAGIC


def expand(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.mcap") if p.is_file())
    return [path]


class _Topics:
    """Raw messages of the mapped topics, grouped by topic as they are read."""

    def __init__(self, wanted: set[str]):
        self.wanted = wanted
        self.t: dict[str, list[int]] = {}
        self.raw: dict[str, list[bytes]] = {}
        self.channel: dict[str, tuple[Channel, Schema | None]] = {}
        self.all_topics: set[str] = set()
        self.count = 0
        self.last_ns: int | None = None

    def add(self, schema: Schema | None, channel: Channel, msg: Message) -> None:
        topic = channel.topic
        self.count += 1
        self.last_ns = msg.log_time
        if topic not in self.wanted:
            return
        if topic not in self.channel:
            self.channel[topic] = (channel, schema)
            self.t[topic], self.raw[topic] = [], []
        self.t[topic].append(msg.log_time)
        self.raw[topic].append(msg.data)


def _decoder(channel: Channel, schema: Schema | None, where: str) -> Callable[[bytes], Any]:
    enc = channel.message_encoding
    lib = None
    try:
        lib = Ros2Decoders().decoder_for(enc, schema) or Ros1Decoders().decoder_for(enc, schema)
    except Exception as e:  # schema text the libraries cannot parse
        raise IngestError(
            "unsupported_type", f"schema {schema.name if schema else None!r} does not parse: {e}", where=where
        ) from e
    if lib is None:
        raise IngestError(
            "unsupported_type",
            f"message encoding {enc!r} with schema encoding {schema.encoding if schema else None!r} is not decoded; "
            "expected ROS 2 (cdr + ros2msg) or ROS 1 (ros1 + ros1msg)",
            where=where,
        )
    return ros.with_fast_path(schema.name if schema else "", enc, lib)


def _read_indexed(f: Any, reader: SeekingReader, topics: _Topics, path: Path) -> None:
    try:
        for schema, channel, msg in reader.iter_messages(topics=sorted(topics.wanted), log_time_order=False):
            topics.add(schema, channel, msg)
    except CRCValidationError as e:
        rec: Any = e.record
        span = ""
        if isinstance(rec, Chunk):
            span = f" (a chunk with messages from {rec.message_start_time} to {rec.message_end_time} ns)"
        raise IngestError("corrupt", f"CRC mismatch{span}: {e}", source=str(path)) from e
    except READ_ERRORS as e:
        raise IngestError(
            "corrupt", f"unreadable data after {topics.count} messages (byte {f.tell()}): {e}", source=str(path)
        ) from e


def _read_stream(f: Any, topics: _Topics, path: Path) -> str | None:
    """Read records front to back; returns where and why it stopped early (None: read to the end)."""
    f.seek(0)
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    reader = StreamReader(f, skip_magic=False, validate_crcs=True)
    try:
        for rec in reader.records:
            if isinstance(rec, Schema):
                schemas[rec.id] = rec
            elif isinstance(rec, Channel):
                channels[rec.id] = rec
                topics.all_topics.add(rec.topic)
            elif isinstance(rec, Message):
                ch = channels.get(rec.channel_id)
                if ch is None:
                    raise McapError(f"message on unknown channel {rec.channel_id}")
                topics.add(schemas.get(ch.schema_id), ch, rec)
    except CRCValidationError as e:
        raise IngestError("corrupt", f"CRC mismatch near byte {f.tell()}: {e}", source=str(path)) from e
    except READ_ERRORS as e:
        return f"byte {f.tell()} of {path.stat().st_size} ({type(e).__name__}: {e})"
    return None


def read(path: Path, mapping: Mapping) -> Iterator[Unit]:
    """One unit per file (``episodes.split`` may cut it into several episodes)."""
    if not path.is_file():
        raise IngestError("not_found", "no such MCAP file", source=str(path))
    topics = _Topics(mapping.names())
    notes: list[Note] = []
    with open(path, "rb") as f:
        head = f.read(8)
        if head != MAGIC:
            raise IngestError(
                "wrong_format", f"not an MCAP file (starts with {head!r}, expected {MAGIC!r})", source=str(path)
            )
        summary = None
        broken = None
        try:
            f.seek(0)
            reader = SeekingReader(f, validate_crcs=True)
            summary = reader.get_summary()
        except READ_ERRORS as e:
            broken = f"{type(e).__name__}: {e}"
        if summary is not None and summary.chunk_indexes:
            topics.all_topics = {c.topic for c in summary.channels.values()}
            _read_indexed(f, reader, topics, path)
        else:
            stopped = _read_stream(f, topics, path)
            if broken is not None:
                notes.append(Note("summary_missing", f"no readable summary ({broken}); read front to back"))
            if stopped is not None:
                last = topics.last_ns
                details = (
                    f"the file ends early: records stop being readable at {stopped}; {topics.count} messages "
                    f"read, the last logged at {last} ns; anything after it is lost"
                )
                if mapping.on_truncated == "reject":
                    raise IngestError("truncated", details + " (on_truncated: reject)", source=str(path), time_ns=last)
                notes.append(Note("truncated", details + " (recovered)", source=str(path), time_ns=last))
    sources: dict[str, Source] = {}
    missing = sorted(topics.wanted - set(topics.channel))
    if missing:
        state = "has no messages" if set(missing) <= topics.all_topics else "is not in the file"
        raise IngestError(
            "missing_source",
            f"topic {state}; topics there: {sorted(topics.all_topics)[:30]}",
            source=str(path),
            where=", ".join(missing),
        )
    for name in sorted(topics.wanted):
        channel, schema = topics.channel[name]
        decode = _decoder(channel, schema, name)
        t = np.asarray(topics.t[name], dtype=np.int64)
        msgtype = schema.name if schema else ""
        src = ros.MessageSource(name, msgtype, t, topics.raw[name], decode)
        if mapping.sync.time == "header":
            src.t_ns = _header_times(src, t)
        sources[name] = src
    yield Unit(path, str(path), sources, "mcap", version(), notes=notes)


def _header_times(src: ros.MessageSource, log_ns: np.ndarray) -> np.ndarray:
    """``header.stamp`` of every message (log time for messages without a header)."""
    out = np.empty_like(log_ns)
    for i in range(len(log_ns)):
        s = ros.stamp_ns(src.msg(i))
        out[i] = log_ns[i] if s is None else s
    src.drop_cache()
    return out
