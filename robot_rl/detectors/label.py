"""A success detector over a lake: versioned labels with provenance, and the frames to label by hand next.

``label_with_detector`` runs a :class:`~robot_rl.detectors.success.SuccessDetector` over every stored
frame of its camera (``predict_episodes``: each frame's p is the median over the detector's
``median_window`` frames of its episode) and writes the label set (task, source) in one commit
(``Lake.label``): the label ``p >= threshold`` and its confidence ``max(p, 1 − p)`` per step, and as
provenance the detector id, threshold, median window, camera, checkpoint and the snapshot it was
trained on. The source defaults to the detector id, so labels of several detectors coexist; give one
source name (``source=learned``) to several tasks' detectors when a run should read them together
(MT-Opt's ``relabel.label_source``).

``uncertain_frames`` ranks frames by the detector's margin ``|p − threshold|``, lowest first: the
frames where a human label changes the most (``robot-rl lake annotate --suggest``).
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any

import numpy as np

from data_lake import Lake
from data_lake.lake import WriteResult
from data_lake.segment import SegmentData
from robot_rl.detectors.success import DetectorError, SuccessDetector


def _images(seg: SegmentData, det: SuccessDetector, lake: str) -> np.ndarray:
    key = f"images/{det.camera}"
    if key not in seg.steps:
        have = sorted(k.split("/", 1)[1] for k in seg.steps if k.startswith("images/"))
        raise DetectorError(
            f"detector {det.detector_id} reads camera {det.camera!r}; segment {seg.name} of lake {lake} has {have}"
        )
    images = seg.steps[key]
    if tuple(images.shape[1:3]) != det.image_size:
        raise DetectorError(
            f"detector {det.detector_id} was trained on {det.image_size[0]}x{det.image_size[1]} {det.camera!r} "
            f"images; lake {lake} stores {images.shape[1]}x{images.shape[2]}"
        )
    return images


def check_camera(schema: dict[str, Any] | None, det: SuccessDetector, lake: str) -> None:
    """The lake stores ``det``'s camera at the size it was trained on, or a DetectorError saying what differs."""
    cams = {
        k.split("/", 1)[1]: v["shape"] for k, v in (schema or {}).get("step", {}).items() if k.startswith("images/")
    }
    if det.camera not in cams:
        raise DetectorError(f"detector {det.detector_id} reads camera {det.camera!r}; lake {lake} has {sorted(cams)}")
    h, w = cams[det.camera][:2]
    if (h, w) != det.image_size:
        raise DetectorError(
            f"detector {det.detector_id} was trained on {det.image_size[0]}x{det.image_size[1]} {det.camera!r} "
            f"images; lake {lake} stores {h}x{w}"
        )


def label_with_detector(
    lake: Lake,
    det: SuccessDetector,
    checkpoint: str | Path | None = None,
    *,
    source: str | None = None,
    branch: str = "main",
    overwrite: bool = False,
    author: str | None = None,
    progress: bool = False,
) -> WriteResult:
    """Label ``det.task`` on every episode of ``branch`` with ``det``; source: ``det.detector_id`` unless given."""
    uri = lake.location.uri
    check_camera(lake.checkout(branch).schema, det, uri)  # before any segment is read

    def detect(seg: SegmentData) -> tuple[np.ndarray, np.ndarray]:
        p = det.predict_episodes(_images(seg, det, uri), seg.episode_ends)  # (T,), median_window per episode
        return p >= det.threshold, np.maximum(p, 1.0 - p).astype(np.float32)

    provenance: dict[str, Any] = {
        "detector_id": det.detector_id,
        "threshold": det.threshold,
        "median_window": det.cfg.median_window,
        "camera": det.camera,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "trained_on": det.info.get("lake", {}),
        "heldout_f1": det.metrics.get("f1"),
    }
    return lake.label(
        det.task,
        detect,
        source=source or det.detector_id,
        provenance=provenance,
        branch=branch,
        overwrite=overwrite,
        message=f"label {det.task} with detector {det.detector_id} (threshold {det.threshold:.3f})",
        author=author,
        progress=progress,
    )


def uncertain_frames(lake: Lake, ref: str, det: SuccessDetector, n: int) -> list[dict[str, Any]]:
    """The ``n`` frames of snapshot ``ref`` with the lowest margin |p − threshold|: episode, step, p, margin."""
    if n < 1:
        raise DetectorError(f"the number of frames to suggest must be >= 1, got {n}")
    view = lake.checkout(ref)
    uri = lake.location.uri
    check_camera(view.schema, det, uri)
    best: list[tuple[float, int, dict[str, Any]]] = []  # a max-heap of the n lowest margins (negated)
    k = 0
    for name in view.segment_names():
        seg = view.read_segment(name, [f"images/{det.camera}"])
        p = det.predict_episodes(_images(seg, det, uri), seg.episode_ends)  # (T,): what the labels would say
        margin = np.abs(p - det.threshold)
        start = 0
        for i, end in enumerate(seg.episode_ends):
            for t in range(int(end) - start):
                m = float(margin[start + t])
                row = {"episode": seg.table["episode_id"][i], "step": t, "p": float(p[start + t]), "margin": m}
                item = (-m, k, row)
                k += 1
                if len(best) < n:
                    heapq.heappush(best, item)
                elif -m > best[0][0]:
                    heapq.heapreplace(best, item)
            start = int(end)
    return [row for _, _, row in sorted(best, key=lambda x: (-x[0], x[1]))]
