"""MCAP files with ``mcap`` (+ ``mcap-ros2-support`` for CDR, ``mcap-ros1-support`` for ROS 1).

Reading: the summary section (at the end of the file) is read first (``mcap``'s SeekingReader,
CRCs validated); with it, the chunks that hold a mapped topic are read (``mcap``'s Chunk record),
decompressed with the codec the library uses (zstd, lz4), their CRC checked, and the Message
records inside them split out by ``_chunk_messages``: a loop over the spec's fixed record header
(opcode u8, length u64; Message: channel u16, sequence u32, log time u64, publish time u64,
data), several times faster than the library's general record parser, which builds an object per
record (``benchmarks/ingest.py``; the tests check both give the same messages).

Without a readable summary (a recording cut off before it was finished: no footer), the data
section is read front to back, one whole record at a time (``_read_stream``: Schema and Channel
records parsed by the library, chunks CRC-checked, the data section's CRC checked at its end).
The first record the file does not hold whole (a chunk cut in the middle, a header cut short,
zeros that were never written) is where the file breaks: ``Break`` names its byte offset, and
everything before it is kept (``on_truncated: recover``, a ``truncated`` warning naming that
offset, how many messages were read and the last log time) or the file is rejected
(``on_truncated: reject``). A file with no whole message before the break is ``truncated``
either way (nothing was recoverable). A step or text topic with no message before the break is
``truncated`` too; a success/terminal flag with none is unknown. A whole record that does not
parse, or a CRC mismatch, is always an error (``corrupt``). Timestamps are the log times
(``sync.time: log``) or ``header.stamp``. ``read_file`` and ``sources_of`` also read the MCAP
storage of ROS 2 bags that rosbags cannot open because they were cut off (``rosbag``).
"""

from __future__ import annotations

import dataclasses
import io
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
from mcap.opcode import Opcode
from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, Schema
from mcap.stream_reader import CRCValidationError
from mcap.summary import Summary
from mcap_ros1.decoder import DecoderFactory as Ros1Decoders
from mcap_ros2.decoder import DecoderFactory as Ros2Decoders

from data_lake.ingest import ros
from data_lake.ingest.errors import IngestError, Note
from data_lake.ingest.mapping import Mapping
from data_lake.ingest.streams import EmptySource, Source, Unit

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
        self.count = 0  # messages read, of any topic
        self.last_ns: int | None = None  # the log time of the last one


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
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_DATA_END = 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F


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


def _chunk_messages(
    data: bytes,
    channels: dict[int, Channel],
    topics: _Topics,
    on_record: Callable[[int, bytes], None] | None = None,
) -> None:
    """Every Message record of one chunk's records into ``topics``. Schema and Channel records
    in chunks repeat the summary's and are skipped, or, read front to back without a summary,
    go to ``on_record(opcode, body)``."""
    o, n = 0, len(data)
    wanted = topics.channel_ids
    sinks: dict[int, tuple[Callable[[int], None], Callable[[bytes], None]]] = {}  # channel -> appends
    skipped: set[int] = set()  # known channels of topics the mapping does not read
    count, last = topics.count, topics.last_ns
    unpack_record, unpack_message = _RECORD.unpack_from, _MESSAGE.unpack_from
    try:
        while o < n:
            if o + 9 > n:
                raise McapError(f"a record header is cut off at byte {o} of a {n}-byte chunk")
            op, length = unpack_record(data, o)
            body, o = o + 9, o + 9 + length
            if o > n:
                raise McapError(f"a record of {length} bytes runs past the end of its {n}-byte chunk")
            if op != _OP_MESSAGE:
                if on_record is not None and op in (_OP_SCHEMA, _OP_CHANNEL):
                    on_record(op, data[body:o])
                    sinks.clear()
                continue
            if length < _MESSAGE_HEADER:
                raise McapError(f"a Message record of {length} bytes is shorter than its header")
            channel_id, _, last = unpack_message(data, body)
            count += 1
            sink = sinks.get(channel_id)
            if sink is None:
                if channel_id in skipped:
                    continue
                topic = wanted.get(channel_id)
                if topic is None:
                    if channel_id not in channels:
                        raise McapError(f"a message on channel {channel_id}, which no Channel record defines")
                    skipped.add(channel_id)
                    continue
                ts = topics.t[topic]
                if not ts:  # the topic's first message: its channel (and schema) decode the topic
                    topics.channel[topic] = (channels[channel_id], topics.schema_of[channel_id])
                sink = sinks[channel_id] = (ts.append, topics.raw[topic].append)
            sink[0](last)
            sink[1](data[body + _MESSAGE_HEADER : o])
    finally:
        topics.count, topics.last_ns = count, last


def _read_indexed(f: Any, summary: Summary, topics: _Topics, path: Path) -> None:
    topics.channel_ids, topics.schema_of = {}, {}  # this file's channel ids
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


@dataclasses.dataclass(frozen=True)
class Break:
    """Where a front-to-back read of a recording stopped: the first record that is not whole."""

    offset: int  # the byte where the first unreadable record starts
    size: int  # the file's size
    what: str  # what is there (the record, how many of its bytes the file holds)

    def __str__(self) -> str:
        return f"byte {self.offset} of {self.size}: {self.what}"


_OPCODES = {int(op): op.name.replace("_", " ").title().replace(" ", "") for op in Opcode}


def _register(op: int, body: bytes, state: _StreamState, topics: _Topics) -> None:
    """A Schema or Channel record met while reading front to back."""
    stream = ReadDataStream(io.BytesIO(body))
    if op == _OP_SCHEMA:
        schema = Schema.read(stream)
        state.schemas[schema.id] = schema
        return
    channel = Channel.read(stream)
    state.channels[channel.id] = channel
    topics.all_topics.add(channel.topic)
    if channel.topic in topics.wanted:
        if channel.schema_id != 0 and channel.schema_id not in state.schemas:
            raise McapError(
                f"channel {channel.id} ({channel.topic}) refers to schema {channel.schema_id}, not defined before it"
            )
        topics.channel_ids[channel.id] = channel.topic
        topics.schema_of[channel.id] = state.schemas.get(channel.schema_id)
        topics.t.setdefault(channel.topic, [])
        topics.raw.setdefault(channel.topic, [])


@dataclasses.dataclass
class _StreamState:
    schemas: dict[int, Schema] = dataclasses.field(default_factory=dict)
    channels: dict[int, Channel] = dataclasses.field(default_factory=dict)


def _read_stream(f: Any, topics: _Topics, path: Path) -> Break | None:
    """Read the data section front to back, one whole record at a time (a chunk's CRC checked,
    the data section's CRC checked at its end). Returns where it stopped early: the first record
    that is not whole (or None: read to the data section's end). A whole record that does not
    parse is ``corrupt``."""
    size = path.stat().st_size
    f.seek(0)
    crc = zlib.crc32(f.read(len(MAGIC)))
    o = len(MAGIC)
    state = _StreamState()
    topics.channel_ids, topics.schema_of = {}, {}

    def on_record(op: int, body: bytes) -> None:
        _register(op, body, state, topics)

    while True:
        head = f.read(9)
        if len(head) < 9:
            if not head:
                return Break(o, size, "the file ends after a whole record, before the data section's end")
            return Break(o, size, f"a record header needs 9 bytes, the file holds {len(head)}")
        op, length = _RECORD.unpack(head)
        kind = _OPCODES.get(op, f"opcode 0x{op:02x}")
        if op == 0:  # not an MCAP opcode: space reserved on disk that was never written
            return Break(o, size, "zero bytes where a record should start (space that was never written)")
        if length > size - o - 9:
            return Break(o, size, f"a {kind} record of {length} bytes, of which the file holds {size - o - 9}")
        body = f.read(length)
        try:
            if op == _OP_DATA_END:
                (expected,) = struct.unpack_from("<I", body)
                if expected != 0 and expected != crc:
                    raise IngestError(
                        "corrupt",
                        f"the data section's CRC is {crc:#010x}, its DataEnd record says {expected:#010x}",
                        source=str(path),
                    )
                return None
            if op == _OP_FOOTER:
                return None
            if op == _OP_CHUNK:
                chunk = Chunk.read(ReadDataStream(io.BytesIO(body)))
                _chunk_messages(_chunk_data(chunk), state.channels, topics, on_record)
            elif op in (_OP_SCHEMA, _OP_CHANNEL):
                on_record(op, body)
            elif op == _OP_MESSAGE:
                _chunk_messages(head + body, state.channels, topics, on_record)
        except CRCValidationError as e:
            raise IngestError("corrupt", f"CRC mismatch in the {kind} record at byte {o}: {e}", source=str(path)) from e
        except IngestError:
            raise
        except READ_ERRORS as e:
            raise IngestError(
                "corrupt",
                f"the {kind} record at byte {o} is whole but unreadable: {type(e).__name__}: {e}",
                source=str(path),
            ) from e
        crc = zlib.crc32(body, zlib.crc32(head, crc))
        o += 9 + length


def _last(topics: _Topics, origin: int | None) -> str:
    if topics.last_ns is None:
        return "no message was readable"
    after = f", {(topics.last_ns - origin) / 1e9:.3f} s after the first mapped one" if origin is not None else ""
    return f"{topics.count} messages were read, the last logged at {topics.last_ns} ns{after}"


def read_file(path: Path, topics: _Topics, mapping: Mapping) -> tuple[list[Note], Break | None]:
    """Read one MCAP file's messages of the mapped topics into ``topics``: by its summary when it
    has one, else front to back. Returns the warnings and, for a file cut short, where it breaks
    (``on_truncated: reject`` raises ``truncated`` instead)."""
    notes: list[Note] = []
    with open(path, "rb") as f:
        head = f.read(8)
        if head != MAGIC:
            raise IngestError(
                "wrong_format", f"not an MCAP file (starts with {head!r}, expected {MAGIC!r})", source=str(path)
            )
        summary = None
        broken = None
        f.seek(max(0, path.stat().st_size - len(MAGIC)))
        if f.read() != MAGIC:
            broken = "the file does not end with the MCAP magic: no footer, the recording was not closed"
        else:
            try:
                f.seek(0)
                reader = SeekingReader(f, validate_crcs=True)
                summary = reader.get_summary()
            except READ_ERRORS as e:
                broken = f"{type(e).__name__}: {e}"
        if summary is not None and summary.chunk_indexes:
            topics.all_topics |= {c.topic for c in summary.channels.values()}
            _read_indexed(f, summary, topics, path)
            return notes, None
        count0 = topics.count
        stopped = _read_stream(f, topics, path)
    if broken is not None:
        notes.append(Note("summary_missing", f"no readable summary ({broken}); read front to back", source=str(path)))
    if stopped is None:
        return notes, None
    origin = min((ts[0] for ts in topics.t.values() if ts), default=None)
    details = f"the file ends early: it breaks at {stopped}"
    if topics.count == 0:  # (of a bag's several storage files, the earlier ones may hold some)
        raise IngestError(
            "truncated",
            details
            + "; no message was readable before it: nothing was recoverable"
            + (" (on_truncated: reject)" if mapping.on_truncated == "reject" else ""),
            source=str(path),
        )
    if topics.count == count0:
        details += f"; no message of this file was readable before it ({topics.count} from the files before)"
    details += f"; {_last(topics, origin)}; everything from byte {stopped.offset} on is lost"
    if mapping.on_truncated == "reject":
        raise IngestError("truncated", details + " (on_truncated: reject)", source=str(path), time_ns=topics.last_ns)
    notes.append(Note("truncated", details + " (recovered)", source=str(path), time_ns=topics.last_ns))
    return notes, stopped


def sources_of(topics: _Topics, mapping: Mapping, label: str, stopped: Break | None) -> dict[str, Source]:
    """The unit's sources once every file is read. A mapped topic that is not in the file, or a
    step/text topic without messages, is ``missing_source``; in a file cut short (``stopped``), a
    step/text topic with no message before the break is ``truncated``. A success/terminal flag
    with no message gets an empty source: the flag is unknown (a warning when reduced)."""
    missing = sorted(t for t in topics.wanted if not topics.t.get(t))
    flags = mapping.flag_names()
    lost = [t for t in missing if t not in flags]
    if stopped is not None and lost:
        raise IngestError(
            "truncated",
            f"no message of {'this topic' if len(lost) == 1 else 'these topics'} before the file breaks at "
            f"{stopped}; {topics.count} messages of other topics were recovered",
            source=label,
            where=", ".join(lost),
        )
    if stopped is None:
        absent = [t for t in missing if t not in topics.all_topics]
        if absent:
            raise IngestError(
                "missing_source",
                f"topic is not in the file; topics there: {sorted(topics.all_topics)[:30]}",
                source=label,
                where=", ".join(absent),
            )
        if lost:
            raise IngestError(
                "missing_source",
                f"topic has no messages; topics with messages: {sorted(t for t, ts in topics.t.items() if ts)[:30]}",
                source=label,
                where=", ".join(lost),
            )
    sources: dict[str, Source] = {}
    for name in sorted(topics.wanted):
        if name in missing:
            sources[name] = EmptySource(name)
            continue
        channel, schema = topics.channel[name]
        decode = _decoder(channel, schema, name)
        t = np.asarray(topics.t[name], dtype=np.int64)
        msgtype = schema.name if schema else ""
        src = ros.MessageSource(name, msgtype, t, topics.raw[name], decode)
        if mapping.sync.time == "header":
            src.t_ns = _header_times(src, t)
        sources[name] = src
    return sources


def new_topics(mapping: Mapping) -> _Topics:
    """An empty collection of the mapped topics' messages, for ``read_file``."""
    return _Topics(mapping.names())


def read(path: Path, mapping: Mapping) -> Iterator[Unit]:
    """One unit per file (``episodes.split`` may cut it into several episodes)."""
    if not path.is_file():
        raise IngestError("not_found", "no such MCAP file", source=str(path))
    topics = new_topics(mapping)
    notes, stopped = read_file(path, topics, mapping)
    sources = sources_of(topics, mapping, str(path), stopped)
    yield Unit(path, str(path), sources, "mcap", version(), notes=notes)


def _header_times(src: ros.MessageSource, log_ns: np.ndarray) -> np.ndarray:
    """``header.stamp`` of every message (log time for messages without a header)."""
    out = np.empty_like(log_ns)
    for i in range(len(log_ns)):
        s = ros.stamp_ns(src.msg(i))
        out[i] = log_ns[i] if s is None else s
    src.drop_cache()
    return out
