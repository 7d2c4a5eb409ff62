"""Resampling onto the target clock (known answers), gap and order rules, and the image decode
and resize policy."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from data_lake.ingest import IngestError
from data_lake.ingest.images import decode_raw, fit, geometry
from data_lake.ingest.mapping import Mapping
from data_lake.ingest.streams import ArraySource
from data_lake.ingest.sync import NEVER, order, resample, windows

MS = 1_000_000


def mapping(**over: Any) -> Mapping:
    return Mapping.from_dict({"format": "mcap", "rate_hz": 25, "state": ["/a"], "action": ["/b"], **over})


def stream(name: str, t_ms: np.ndarray) -> ArraySource:
    t = (np.asarray(t_ms, dtype=np.float64) * MS).round().astype(np.int64)
    return ArraySource(name, t, np.arange(len(t), dtype=np.float64))


def test_multi_rate_streams_resample_to_known_answers() -> None:
    """10 Hz and 50 Hz streams (the 50 Hz one starting 5 ms late) onto 25 Hz: tick k at 5 + 40k ms
    takes the latest sample at or before it."""
    slow = stream("/slow", np.arange(0, 1000, 100))  # 10 Hz, 0..900 ms
    fast = stream("/fast", 5 + np.arange(0, 1000, 20))  # 50 Hz, 5..985 ms
    m = mapping(rate_hz=25, sync={"max_staleness_s": 0.1})
    pieces, notes = resample({"/slow": slow, "/fast": fast}, (-NEVER, NEVER), m, 0)
    assert notes == [] and len(pieces) == 1
    p = pieces[0]
    ticks_ms = 5 + 40 * np.arange(23)  # up to 885 ms: the slow stream's last sample is at 900 ms
    np.testing.assert_array_equal(p.ticks, ticks_ms * MS)
    np.testing.assert_array_equal(p.idx["/slow"], ticks_ms // 100)
    np.testing.assert_array_equal(p.idx["/fast"], (ticks_ms - 5) // 20)
    s = p.stats["/slow"]
    ages = ticks_ms - 100 * (ticks_ms // 100)
    assert s["age_ms_max"] == pytest.approx(ages.max()) and s["age_ms_mean"] == pytest.approx(ages.mean(), abs=1e-3)
    assert p.stats["/fast"]["age_ms_max"] == 0.0 and p.stats["/fast"]["used"] == 23


def test_staleness_limit_is_inclusive_and_gaps_split_or_reject() -> None:
    a = stream("/a", np.arange(0, 2000, 40))
    b_t = np.concatenate([np.arange(0, 600, 40), np.arange(1000, 2000, 40)])  # silent 560..1000 ms
    b = stream("/b", b_t)
    m = mapping(sync={"max_staleness_s": 0.04})
    pieces, notes = resample({"/a": a, "/b": b}, (-NEVER, NEVER), m, 0)
    # 0..600 ms (at 600 ms the 560 ms sample is exactly 40 ms old: allowed) and 1000..1960 ms
    assert [len(p.ticks) for p in pieces] == [16, 25]
    assert pieces[0].ticks[-1] == 600 * MS and pieces[1].ticks[0] == 1000 * MS
    assert pieces[0].span == (0, 1000 * MS)
    gap = [n for n in notes if n.code == "gap"]
    assert len(gap) == 1 and gap[0].where == "/b" and gap[0].time_ns == 640 * MS  # 80 ms old there
    with pytest.raises(IngestError) as exc:
        resample({"/a": a, "/b": b}, (-NEVER, NEVER), mapping(sync={"max_staleness_s": 0.04, "on_gap": "reject"}), 0)
    assert exc.value.code == "gap" and exc.value.note.where == "/b" and "80.0 ms old" in str(exc.value)


def test_short_runs_are_dropped_with_a_warning() -> None:
    a = stream("/a", np.arange(0, 1000, 40))
    b = stream("/b", [0, 400, 440, 480, 520, 560, 600, 640, 680, 720, 760, 800, 840, 880, 920, 960])
    pieces, notes = resample({"/a": a, "/b": b}, (-NEVER, NEVER), mapping(sync={"max_staleness_s": 0.03}), 0)
    assert [len(p.ticks) for p in pieces] == [15]  # the lone tick at 0 ms is too short
    assert [n.code for n in notes] == ["gap", "too_short"]


def test_order_rejects_or_drops_backwards_samples() -> None:
    s = stream("/a", [0, 10, 20, 15, 18, 30, 40])
    with pytest.raises(IngestError) as exc:
        order(s, "reject")
    assert exc.value.code == "time_backwards" and "sample 3" in str(exc.value) and "2 of 7" in str(exc.value)
    kept, notes = order(s, "drop")
    np.testing.assert_array_equal(kept.t_ns, np.array([0, 10, 20, 30, 40]) * MS)
    spec = mapping().state[0]
    np.testing.assert_array_equal(kept.values(spec, "vector", np.arange(5))[:, 0], [0, 1, 2, 5, 6])
    assert [n.code for n in notes] == ["time_backwards"]


def test_gap_windows_cut_on_silence() -> None:
    a = stream("/a", [0, 100, 200, 1500, 1600])
    b = stream("/b", [50, 150, 1550, 1650])
    m = mapping(episodes={"split": "gap", "gap_s": 0.5})
    wins, _ = windows({"/a": a, "/b": b}, None, None, m)
    # each window runs up to the first sample after the silence, the last one to the end
    assert wins == [(0, 1500 * MS), (1500 * MS, NEVER)]


# ---------------------------------------------------------------------------- images
def test_resize_policy_geometry() -> None:
    assert geometry((480, 640), (64, 64), "crop") == ((64, 85), (0, 10))
    assert geometry((480, 640), (64, 64), "pad") == ((48, 64), (8, 0))
    assert geometry((480, 640), (64, 64), "stretch") == ((64, 64), (0, 0))
    assert geometry((10, 10), (20, 40), "crop") == ((40, 40), (10, 0))


def test_fit_crop_pad_and_identity() -> None:
    img = np.zeros((1, 4, 8, 3), np.uint8)
    img[0, :, :2] = 255  # a white left quarter
    crop = fit(img, (4, 4), "crop")  # the centre 4x4: the white columns are cut off
    assert crop.shape == (1, 4, 4, 3) and crop.max() == 0
    pad = fit(img, (8, 8), "pad")  # scaled to 4x8, centred: 2 black rows above and below
    assert pad.shape == (1, 8, 8, 3) and pad[0, :2].max() == 0 and pad[0, 2:6, :2].min() == 255
    assert fit(img, (4, 8), "crop") is img
    depth = np.arange(16, dtype=np.uint16).reshape(1, 4, 4)
    up = fit(depth, (8, 8), "stretch", depth=True)  # nearest: no blended depths
    assert set(np.unique(up)) <= set(range(16))
    np.testing.assert_array_equal(up[0], cv2.resize(depth[0], (8, 8), interpolation=cv2.INTER_NEAREST))


def test_decode_raw_encodings() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    padded = np.zeros((3, 16), np.uint8)  # step 16 > 5 * 3 bytes: padded rows
    padded[:, :15] = rgb.reshape(3, 15)
    kw: dict[str, Any] = {"depth": False, "where": "/cam", "time_ns": 0}
    np.testing.assert_array_equal(decode_raw(padded.tobytes(), "rgb8", 3, 5, 16, False, **kw), rgb)
    bgr = np.ascontiguousarray(rgb[..., ::-1]).tobytes()
    np.testing.assert_array_equal(decode_raw(bgr, "bgr8", 3, 5, 15, False, **kw), rgb)
    mono = decode_raw(rgb[..., 0].tobytes(), "mono8", 3, 5, 5, False, **kw)
    np.testing.assert_array_equal(mono, np.repeat(rgb[..., :1], 3, axis=2))
    d = np.array([[1, 2], [300, 65535]], dtype=">u2")
    out = decode_raw(d.tobytes(), "16UC1", 2, 2, 4, True, depth=True, where="/d", time_ns=0)
    assert out.dtype == np.uint16 and out.tolist() == [[1, 2], [300, 65535]]
    with pytest.raises(IngestError, match="needs 15 bytes per row"):
        decode_raw(bytes(20), "rgb8", 3, 5, 15, False, **kw)
    with pytest.raises(IngestError) as exc:
        decode_raw(bytes(30), "16UC1", 3, 5, 10, False, **kw)
    assert exc.value.code == "unsupported_encoding" and "depth:" in str(exc.value)
