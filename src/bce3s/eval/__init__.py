"""Evaluation metrics and geometry diagnostics: pure functions over logits, labels, features and head weights.

This package imports nothing from ``bce3s.engine``, ``bce3s.data`` or ``bce3s.report``; the engine and the
report build on it. ``metrics`` holds every classification and calibration metric (and the one confidence
binning shared by the ECE and the reliability diagram), ``geometry`` the feature / classifier geometry.
"""

from __future__ import annotations

from bce3s.eval.geometry import GEOMETRY_METRICS, geometry_summary
from bce3s.eval.metrics import (
    SHOT_NAMES,
    brier_score,
    confusion_matrix,
    expected_calibration_error,
    mean_per_class_accuracy,
    nll,
    per_class_accuracy,
    reliability_bins,
    shot_accuracy,
    shot_groups,
    summarize,
    topk_accuracy,
)

__all__ = [
    "GEOMETRY_METRICS",
    "SHOT_NAMES",
    "brier_score",
    "confusion_matrix",
    "expected_calibration_error",
    "geometry_summary",
    "mean_per_class_accuracy",
    "nll",
    "per_class_accuracy",
    "reliability_bins",
    "shot_accuracy",
    "shot_groups",
    "summarize",
    "topk_accuracy",
]
