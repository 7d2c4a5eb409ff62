"""Image success detectors (MT-Opt): trained from lake episodes, they label logs that carry no reward.

``train_detector(lake_uri, ref, task, DetectorConfig(...))`` -> ``SuccessDetector`` (``predict_proba``,
``save``/``load``); ``report.plot_report`` draws its held-out confusion matrix, reliability diagram and
worst mistakes. The command is ``robot-rl detector train``; the guide is docs/detectors.md.
"""

from robot_rl.detectors.success import DetectorConfig, DetectorError, HeldOut, SuccessDetector, train_detector

__all__ = ["DetectorConfig", "DetectorError", "HeldOut", "SuccessDetector", "train_detector"]
