"""One PNG that says how far to trust a success detector: the held-out confusion matrix at its threshold,
the reliability diagram, and the most confident mistakes (false positives and false negatives, with
their probabilities)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from robot_rl.detectors.success import DetectorError, SuccessDetector, classification_metrics, reliability

MISTAKES = 8  # images per row of false positives / false negatives


def plot_report(
    detector: SuccessDetector,
    heldout_images: np.ndarray,
    heldout_labels: np.ndarray,
    heldout_probs: np.ndarray,
    path: str | os.PathLike[str],
) -> Path:
    """Write the report of ``detector`` on held-out frames (uint8 (N, H, W, 3), bool (N,), float (N,)) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(heldout_labels, bool)
    probs = np.asarray(heldout_probs, np.float64)
    if not len(heldout_images) == len(labels) == len(probs):
        raise DetectorError(
            f"plot_report needs one label and probability per image: {len(heldout_images)} images, "
            f"{len(labels)} labels, {len(probs)} probabilities"
        )
    m = classification_metrics(probs, labels, detector.threshold)
    cal = reliability(probs, labels)

    fig = plt.figure(figsize=(2 + 1.3 * MISTAKES, 8.5))
    grid = fig.add_gridspec(4, MISTAKES, height_ratios=[3, 3, 1.3, 1.3], hspace=0.6)
    ax = fig.add_subplot(grid[0:2, : MISTAKES // 2])
    conf = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])  # rows: truth, columns: prediction
    ax.imshow(conf, cmap="Blues")
    for (i, j), v in np.ndenumerate(conf):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14, color="black" if v < conf.max() / 2 else "white")
    ax.set_xticks([0, 1], ["predicted fail", "predicted success"])
    ax.set_yticks([0, 1], ["fail", "success"])
    ax.set_title(
        f"held-out at threshold {detector.threshold:.3f}\n"
        f"precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}"
    )

    ax = fig.add_subplot(grid[0:2, MISTAKES // 2 :])
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    pts = [(p, o, n) for p, o, n in zip(cal["mean_predicted"], cal["observed"], cal["counts"], strict=True) if n]
    if pts:
        xs, ys, _ = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-", label="detector")
        for x, y, n in pts:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability"), ax.set_ylabel("observed success frequency")
    ax.set_title(f"reliability (10 bins, ECE {cal['ece']:.3f}; frames per bin)")
    ax.legend(loc="upper left", fontsize=8)

    for row, (name, wrong) in enumerate(
        (
            ("false positives", ~labels & (probs >= detector.threshold)),
            ("false negatives", labels & (probs < detector.threshold)),
        )
    ):
        idx = np.flatnonzero(wrong)
        idx = idx[np.argsort(-probs[idx] if row == 0 else probs[idx], kind="stable")][:MISTAKES]  # most confident first
        for j in range(MISTAKES):
            ax = fig.add_subplot(grid[2 + row, j])
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(idx):
                ax.imshow(heldout_images[idx[j]])
                ax.set_title(f"p={probs[idx[j]]:.2f}", fontsize=8)
            else:
                ax.set_frame_on(False)
            if j == 0:
                ax.set_ylabel(f"{name}\n({int(wrong.sum())})", fontsize=8)
    fig.suptitle(f"{detector.detector_id}: {detector.task} ({detector.camera})")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return out
