"""Resampling every stream onto one target clock, episode splitting, and sync statistics.

Rules (``sync:`` and ``episodes:`` in the mapping):

1. Order. Each stream keeps its samples in arrival order. A timestamp smaller than an earlier
   one of the same stream is a backwards jump: ``on_backwards: reject`` rejects the source
   (``time_backwards``, naming the stream, the sample and by how much), ``drop`` drops every
   sample older than the newest one before it and records a warning.
2. Windows. ``split: file``: the whole source. ``marker``: [marker_i, marker_i+1), the last one
   to the end of the source. ``gap``: the union of the step streams' timestamps cut wherever no
   stream has a sample for more than ``gap_s``; a window runs from its first sample up to the
   first sample after the silence (the silence belongs to the episode before it), the last one to
   the end of the source. "The end of the source" is after its last message of any topic (``NEVER``).
3. Ticks. In a window [w0, w1) the clock starts at the latest first sample among the step streams
   (cameras, depth, state, action, a reward source) and ends at the earliest last sample, so no
   stream is extrapolated past its end: ticks t_k = start + round(k * 1e9 / rate_hz) ns.
4. Samples. At each tick every stream gives its latest sample at or before the tick (never one
   from before w0). Its age (tick - sample time) must be at most ``max_staleness_s``; a tick
   where some stream is older is a gap: ``on_gap: reject`` rejects the source (``gap``);
   ``split`` drops those ticks and the window falls apart into runs of consecutive good ticks.
   Runs shorter than ``min_steps`` are dropped with a ``too_short`` warning.
5. Statistics per stream and episode: samples available and used, age of the used samples
   (mean, p95, max, in ms) and ``stale_ticks``: the window's ticks dropped because this stream was
   stale, each counted once, in the episode that follows them (those after a window's last episode
   in that episode), so that their sum over a window's episodes is the window's count.

Per-episode values from sources (success, terminal, task, language) reduce the samples in the
episode's span: from its first tick up to the next episode's first tick or, for a window's last
episode, the window's end (rule 2), so a flag logged after the last step sample (an end-of-episode
marker) still counts. With none there, the latest sample before the span (a latched topic) is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_lake.ingest.errors import IngestError, Note, fmt_t
from data_lake.ingest.mapping import Mapping
from data_lake.ingest.streams import Source

NEVER = np.iinfo(np.int64).max
TICK_SLACK_NS = 1000  # a last tick up to 1 us after the end still counts (recorders round times)


@dataclasses.dataclass
class Piece:
    """One episode's clock: tick times and, per step stream, the sample index at each tick."""

    ticks: np.ndarray  # int64 (T,)
    idx: dict[str, np.ndarray]  # stream name -> int64 (T,)
    span: tuple[int, int]  # [first tick, next piece's first tick or window end)
    stats: dict[str, dict[str, Any]]


def order(src: Source, on_backwards: str) -> tuple[Source, list[Note]]:
    """Check that timestamps never go back; drop or reject the samples that do (rule 1)."""
    t = src.t_ns
    if len(t) < 2:
        return src, []
    d = np.diff(t)
    if (d >= 0).all():
        return src, []
    newest = np.maximum.accumulate(t)
    bad = t < newest
    i = int(np.argmax(bad))
    n = int(bad.sum())
    details = (
        f"sample {i} at {fmt_t(t[i], t[0])} is {(newest[i] - t[i]) / 1e6:.3f} ms older than an earlier sample "
        f"({n} of {len(t)} samples go back)"
    )
    if on_backwards == "reject":
        raise IngestError(
            "time_backwards",
            details + "; fix the recording's clock, or set sync.on_backwards: drop",
            where=src.name,
            time_ns=int(t[i]),
            step=None,
        )
    keep = np.flatnonzero(~bad)
    return src.subset(keep), [Note("time_backwards", details + "; dropped", where=src.name, time_ns=int(t[i]))]


def windows(
    streams: dict[str, Source], marker: Source | None, marker_starts: np.ndarray | None, mapping: Mapping
) -> tuple[list[tuple[int, int]], list[Note]]:
    """The [w0, w1) time windows that become episodes before gap handling (rule 2)."""
    split = mapping.episodes.split
    notes: list[Note] = []
    if split == "file":
        return [(-NEVER, NEVER)], notes
    if split == "marker":
        assert marker is not None and marker_starts is not None
        m = np.unique(marker.t_ns[marker_starts])
        if len(m) == 0:
            raise IngestError(
                "missing_source", "the marker stream has no sample that starts an episode", where=marker.name
            )
        first = min(int(s.t_ns.min()) for s in streams.values() if len(s.t_ns))
        if first < m[0]:
            notes.append(
                Note(
                    "before_first_marker",
                    f"{(m[0] - first) / 1e9:.3f} s of data before the first marker dropped",
                    where=marker.name,
                    time_ns=int(m[0]),
                )
            )
        bounds = [*m.tolist(), NEVER]
        return [(bounds[i], bounds[i + 1]) for i in range(len(m))], notes
    gap_ns = int(mapping.episodes.gap_s * 1e9)
    u = np.unique(np.concatenate([s.t_ns for s in streams.values()]))
    cuts = np.flatnonzero(np.diff(u) > gap_ns)
    starts = [int(u[0]), *(int(u[c + 1]) for c in cuts)]
    return list(zip(starts, [*starts[1:], NEVER], strict=True)), notes


def fmt_window(window: tuple[int, int], origin_ns: int) -> str:
    """A window for messages: ``the source``, ``[+1.000s, +2.000s)`` or ``[+1.000s, end)``."""
    w0, w1 = window
    if w0 == -NEVER and w1 == NEVER:
        return "the source"
    left = "[start" if w0 == -NEVER else f"[{fmt_t(w0, origin_ns)}"
    return f"{left}, {'end' if w1 == NEVER else fmt_t(w1, origin_ns)})"


def resample(
    streams: dict[str, Source], window: tuple[int, int], mapping: Mapping, origin_ns: int
) -> tuple[list[Piece], list[Note]]:
    """Ticks and per-stream sample indices for one window (rules 3-5)."""
    w0, w1 = window
    notes: list[Note] = []
    first: dict[str, int] = {}
    lastj: dict[str, int] = {}
    for name, s in streams.items():
        i0 = int(np.searchsorted(s.t_ns, w0, "left"))
        i1 = int(np.searchsorted(s.t_ns, w1, "left")) - 1
        if i0 > i1:
            raise IngestError("missing_source", f"no samples in {fmt_window(window, origin_ns)}", where=name)
        first[name], lastj[name] = i0, i1
    start = max(int(streams[n].t_ns[i]) for n, i in first.items())
    end = min(int(streams[n].t_ns[i]) for n, i in lastj.items())
    min_steps = mapping.episodes.min_steps
    if end < start:
        notes.append(
            Note(
                "too_short",
                f"the streams do not overlap in time in the window starting at {fmt_t(max(w0, origin_ns), origin_ns)}",
            )
        )
        return [], notes
    step = mapping.step_ns
    n = int(np.floor((end - start + TICK_SLACK_NS) / step)) + 1
    ticks = start + np.round(np.arange(n) * step).astype(np.int64)  # (T,)
    stale_ns = round(mapping.sync.max_staleness_s * 1e9)
    idx: dict[str, np.ndarray] = {}
    age: dict[str, np.ndarray] = {}
    good = np.ones(n, dtype=bool)
    for name, s in streams.items():
        j = np.searchsorted(s.t_ns, ticks, "right") - 1  # (T,) latest sample at or before each tick
        a = ticks - s.t_ns[j]
        ok = a <= stale_ns
        if not ok.all():
            k = int(np.argmax(~ok))
            if mapping.sync.on_gap == "reject":
                raise IngestError(
                    "gap",
                    f"at tick {k} ({fmt_t(ticks[k], origin_ns)}) the latest sample is {a[k] / 1e6:.1f} ms old; "
                    f"max_staleness_s is {mapping.sync.max_staleness_s} (or set sync.on_gap: split)",
                    where=name,
                    time_ns=int(ticks[k]),
                )
            notes.append(
                Note(
                    "gap",
                    f"{int((~ok).sum())} ticks dropped: the latest sample was older than "
                    f"{mapping.sync.max_staleness_s} s (first at {fmt_t(ticks[k], origin_ns)}, "
                    f"{a[k] / 1e6:.1f} ms old)",
                    where=name,
                    time_ns=int(ticks[k]),
                )
            )
        good &= ok
        idx[name], age[name] = j, a
    runs = [(a0, a1) for a0, a1 in _runs(good) if a1 - a0 >= min_steps]
    for a0, a1 in _runs(good):
        if a1 - a0 < min_steps:
            notes.append(
                Note(
                    "too_short",
                    f"{a1 - a0} tick(s) from {fmt_t(ticks[a0], origin_ns)} dropped (min_steps is {min_steps})",
                    time_ns=int(ticks[a0]),
                )
            )
    pieces: list[Piece] = []
    owned = 0  # the window's ticks already counted in an earlier piece's stale_ticks
    for r, (a0, a1) in enumerate(runs):
        last = r + 1 == len(runs)
        span_end = w1 if last else int(ticks[runs[r + 1][0]])
        upto = n if last else a1  # this piece counts the stale ticks in [owned, upto)
        stats = {}
        for name, s in streams.items():
            j, a = idx[name][a0:a1], age[name][a0:a1]
            lo = np.searchsorted(s.t_ns, ticks[a0] - stale_ns, side="left")
            hi = np.searchsorted(s.t_ns, ticks[a1 - 1], side="right")
            stats[name] = {
                "samples": int(hi - lo),
                "used": len(np.unique(j)),
                "age_ms_mean": round(float(a.mean()) / 1e6, 3),
                "age_ms_p95": round(float(np.percentile(a, 95)) / 1e6, 3),
                "age_ms_max": round(float(a.max()) / 1e6, 3),
                "stale_ticks": int((age[name][owned:upto] > stale_ns).sum()),
            }
        owned = upto
        pieces.append(Piece(ticks[a0:a1], {k: v[a0:a1] for k, v in idx.items()}, (int(ticks[a0]), span_end), stats))
    return pieces, notes


def _runs(good: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    d = np.diff(np.concatenate([[0], good.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def span_indices(src: Source, span: tuple[int, int]) -> np.ndarray:
    """Samples of ``src`` in [span) or, with none there, the latest one before it (latched)."""
    lo, hi = np.searchsorted(src.t_ns, list(span), side="left")
    if hi > lo:
        return np.arange(lo, hi)
    return np.array([lo - 1]) if lo > 0 else np.array([], dtype=np.int64)
