"""Ingest errors: one reason code per kind of bad input, with the file, the topic/key and the time.

Codes (also in ``docs/ingest.md``):

    mapping               the mapping file is invalid (unknown key, wrong type, missing section)
    not_found             an input path does not exist
    wrong_format          the file is not what ``--format`` (or the mapping's ``format``) says
    truncated             the file ends early (HDF5, Parquet, ROS 1 / sqlite3 bags; MCAP and ROS 2
                          MCAP storage: with ``on_truncated: reject``, with nothing readable before
                          the break, or with a step/text topic that has no message before it)
    corrupt               a checksum (CRC) mismatch or an unreadable record, block or chunk
    unindexed             a ROS 1 bag without its index (``rosbag reindex`` it first)
    missing_source        a topic or key named by the mapping is not in the file, or a step, text
                          or marker source with no samples (a flag with none: a warning)
    unsupported_type      a message type the mapping cannot turn into the wanted role
    unsupported_encoding  an image encoding or compression we do not decode
    decode                an image or video frame that fails to decode
    non_finite            NaN or Inf in a value that would be stored
    shape_change          a value or image whose shape changes within an episode
    time_backwards        timestamps that go backwards within a stream (``on_backwards: reject``)
    gap                   a stream older than ``max_staleness_s`` at a tick (``on_gap: reject``)
    too_short             an episode with fewer than ``min_steps`` ticks
    hdf5_external         an HDF5 external link, external storage or virtual dataset (refused)

Warnings use the same shape (code, where, details) and land in the report and in each episode's
provenance (``metadata["ingest"]["warnings"]``): ``truncated`` (recovered), ``summary_missing``,
``time_backwards`` (dropped), ``gap`` (split), ``too_short`` (a piece dropped after a split),
``before_first_marker``, ``missing_source`` (a success/terminal flag with no sample: unknown).
"""

from __future__ import annotations

import dataclasses
from typing import Any

CODES = (
    "mapping",
    "not_found",
    "wrong_format",
    "truncated",
    "corrupt",
    "unindexed",
    "missing_source",
    "unsupported_type",
    "unsupported_encoding",
    "decode",
    "non_finite",
    "shape_change",
    "time_backwards",
    "gap",
    "too_short",
    "hdf5_external",
)


def fmt_t(t_ns: int, origin_ns: int) -> str:
    """A time for messages: seconds after ``origin_ns`` (the stream's or unit's first sample)."""
    return f"+{(int(t_ns) - int(origin_ns)) / 1e9:.3f}s"


@dataclasses.dataclass
class Note:
    """One problem (error) or warning, located as precisely as we can."""

    code: str
    details: str
    source: str = ""  # the file (or file#unit)
    where: str = ""  # topic or key
    time_ns: int | None = None
    step: int | None = None

    def __str__(self) -> str:
        parts = [self.source, self.where]
        if self.step is not None:
            parts.append(f"step {self.step}")
        if self.time_ns is not None:
            parts.append(f"time {self.time_ns} ns")
        return f"[{self.code}] {', '.join(p for p in parts if p)}: {self.details}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class IngestError(ValueError):
    """A source (file, demo or episode) that cannot be ingested; ``.note`` says why and where."""

    def __init__(
        self,
        code: str,
        details: str,
        *,
        source: str = "",
        where: str = "",
        time_ns: int | None = None,
        step: int | None = None,
    ):
        assert code in CODES, code
        self.note = Note(code, details, source, where, time_ns, step)
        super().__init__(str(self.note))

    @property
    def code(self) -> str:
        return self.note.code

    def located(self, source: str) -> IngestError:
        """This error with ``source`` filled in (when the raiser did not know the file)."""
        if not self.note.source:
            self.note.source = source
            self.args = (str(self.note),)
        return self


class MappingError(IngestError):
    """The mapping file is invalid."""

    def __init__(self, details: str, *, source: str = "", where: str = ""):
        super().__init__("mapping", details, source=source, where=where)


class IngestRejected(ValueError):
    """The whole ingest was rejected (nothing committed); ``.notes`` lists every problem found."""

    def __init__(self, notes: list[Note], hint: str = ""):
        self.notes = notes
        lines = "\n  ".join(str(n) for n in notes[:20])
        more = f"\n  ... and {len(notes) - 20} more" if len(notes) > 20 else ""
        hint = hint or "nothing was committed; fix the inputs or pass --skip-invalid to commit the valid episodes"
        self.details = f"ingest rejected ({len(notes)} problems):\n  {lines}{more}\n{hint}"  # CLI --verbose
        others = f" (and {len(notes) - 1} more; --verbose lists them)" if len(notes) > 1 else ""
        first = notes[0] if notes else "no episodes"
        super().__init__(f"ingest rejected: {first}{others}; {hint}")
