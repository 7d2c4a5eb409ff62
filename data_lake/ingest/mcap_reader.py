"""MCAP files with ``mcap`` (+ ``mcap-ros2-support`` for CDR, ``mcap-ros1-support`` for ROS 1).

Reading: the summary section (at the end of the file) is read first (``mcap``'s SeekingReader,
CRCs validated); with it, the chunks that hold a mapped topic are read (``mcap``'s Chunk record),
decompressed with the codec the library uses (zstd, lz4), their CRC checked, and the Message
records inside them split out by ``_chunk_messages``: a loop over the spec's fixed record header
(opcode u8, length u64; Message: channel u16, sequence u32, log time u64, publish time u64,
data), several times faster than the library's general record parser, which builds an object per
record (``benchmarks/ingest.py``; the tests check both give the same messages). Without a readable summary (a
recording cut off before it was finished: no footer), the file is read front to back with the
stream reader, also validating CRCs, until it stops being readable; what was read is kept
(``on_truncated: recover``, a ``truncated`` warning naming the byte offset and the last message
time) or the file is rejected (``on_truncated: reject``). A CRC mismatch is always an error
(``corrupt``). Timestamps are the log times (``sync.time: log``) or ``header.stamp``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lz4.frame
import mcap
import mcap_ros1
import mcap_ros2
import numpy as np
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import CRCValidationError, StreamReader
from mcap.summary import Summary
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
        self.channel_ids: dict[int, str] = {}  # mapped topics' channel ids (indexed reading)
        self.schema_of: dict[int, Schema | None] = {}  # their schemas
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


_RECORD = struct.Struct("<BQ")  # opcode, length
_MESSAGE = struct.Struct("<HIQ")  # channel id, sequence, log time (publish time follows)
_MESSAGE_HEADER = 22  # channel id, sequence, log time, publish time
_OP_MESSAGE = 0x05


def _chunk_data(chunk: Chunk) -> bytes:
    """A chunk's records, decompressed as the library does, with its CRC checked."""
    if chunk.compression == "zstd":
        data = zstandard.decompress(chunk.data, chunk.uncompressed_size)
    elif chunk.compression == "lz4":
        data = lz4.frame.decompress(chunk.data)
    elif chunk.compression == "":
        data = chunk.data
    else:
        raise McapError(f"chunk compression {chunk.compression!r} is not supported (expected zstd, lz4 or none)")
    if chunk.uncompressed_crc != 0:
        crc = zlib.crc32(data)
        if crc != chunk.uncompressed_crc:
            raise CRCValidationError(expected=chunk.uncompressed_crc, actual=crc, record=chunk)
    return data


def _chunk_messages(data: bytes, channels: dict[int, Channel], topics: _Topics) -> None:
    """Every Message record of one chunk's records into ``topics`` (Schema and Channel records
    in chunks repeat the summary's and are skipped)."""
    o, n = 0, len(data)
    wanted = topics.channel_ids
    while o < n:
        if o + 9 > n:
            raise McapError(f"a record header is cut off at byte {o} of a {n}-byte chunk")
        op, length = _RECORD.unpack_from(data, o)
        body, o = o + 9, o + 9 + length
        if o > n:
            raise McapError(f"a record of {length} bytes runs past the end of its {n}-byte chunk")
        if op != _OP_MESSAGE:
            continue
        if length < _MESSAGE_HEADER:
            raise McapError(f"a Message record of {length} bytes is shorter than its header")
        channel_id, _, log_time = _MESSAGE.unpack_from(data, body)
        topics.count += 1
        topics.last_ns = log_time
        topic = wanted.get(channel_id)
        if topic is not None:
            ts = topics.t[topic]
            if not ts:  # the topic's first message: its channel (and schema) decode the topic
                topics.channel[topic] = (channels[channel_id], topics.schema_of[channel_id])
            ts.append(log_time)
            topics.raw[topic].append(data[body + _MESSAGE_HEADER : o])
        elif channel_id not in channels:
            raise McapError(f"a message on channel {channel_id}, which the summary does not list")


def _read_indexed(f: Any, summary: Summary, topics: _Topics, path: Path) -> None:
    for channel in summary.channels.values():
        if channel.topic in topics.wanted:
            if channel.schema_id != 0 and channel.schema_id not in summary.schemas:
                raise IngestError(
                    "corrupt",
                    f"channel {channel.id} ({channel.topic}) refers to schema {channel.schema_id}, "
                    "which the summary does not hold",
                    source=str(path),
                )
            topics.channel_ids[channel.id] = channel.topic
            topics.schema_of[channel.id] = summary.schemas.get(channel.schema_id)
            topics.t.setdefault(channel.topic, [])
            topics.raw.setdefault(channel.topic, [])
    ids = set(topics.channel_ids)
    try:
        for index in summary.chunk_indexes:
            if index.message_index_offsets and not ids & index.message_index_offsets.keys():
                continue  # no mapped topic in this chunk (without message indexes it is read)
            f.seek(index.chunk_start_offset + 1 + 8)
            chunk = Chunk.read(ReadDataStream(f))
            _chunk_messages(_chunk_data(chunk), summary.channels, topics)
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
    for topic in [t for t, ts in topics.t.items() if not ts]:  # listed, but no message: as if absent
        del topics.t[topic], topics.raw[topic]


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
            _read_indexed(f, summary, topics, path)
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
