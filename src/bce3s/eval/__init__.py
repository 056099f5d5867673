"""Evaluation: metrics, geometry diagnostics, figures, the run report and the multi-seed comparison.

``metrics`` and ``geometry`` are imported eagerly (the engine needs them). ``plots``, ``report`` and ``compare``
pull in matplotlib, so their names are resolved on first use (PEP 562), which keeps ``import bce3s.eval.metrics``
free of matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

from bce3s.eval.geometry import GEOMETRY_METRICS, geometry_summary
from bce3s.eval.metrics import (
    SHOT_NAMES,
    brier_score,
    confusion_matrix,
    expected_calibration_error,
    mean_per_class_accuracy,
    nll,
    per_class_accuracy,
    shot_accuracy,
    shot_groups,
    summarize,
    topk_accuracy,
)

_LAZY = {
    "RunData": "bce3s.eval.report",
    "load_run": "bce3s.eval.report",
    "write_report": "bce3s.eval.report",
    "compare_runs": "bce3s.eval.compare",
    "format_csv": "bce3s.eval.compare",
    "format_markdown": "bce3s.eval.compare",
    "fig_to_png_bytes": "bce3s.eval.plots",
}

__all__ = [
    "GEOMETRY_METRICS",
    "SHOT_NAMES",
    "RunData",
    "brier_score",
    "compare_runs",
    "confusion_matrix",
    "expected_calibration_error",
    "fig_to_png_bytes",
    "format_csv",
    "format_markdown",
    "geometry_summary",
    "load_run",
    "mean_per_class_accuracy",
    "nll",
    "per_class_accuracy",
    "shot_accuracy",
    "shot_groups",
    "summarize",
    "topk_accuracy",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bce3s.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
