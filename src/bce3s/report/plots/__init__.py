"""Figures of the run report: one function per figure, each returning a :class:`matplotlib.figure.Figure`.

The only place in the package that imports matplotlib. Every function takes the data of one or several runs as
a mapping ``run label -> arrays`` and overlays the runs in one figure, with one colour per run (pass the same
``colors`` mapping, e.g. from :func:`run_colors`, to every function so that a run keeps its colour across
figures). Classes are always shown head -> tail: sorted by training count, most images first (ties keep
class-id order).

The figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot``, no backend switch, no
global state left behind; the style is applied with ``matplotlib.rc_context``), so they are safe to make in
library code and in tests. :func:`fig_to_png_bytes` renders one to PNG.

Units follow the metric dicts of :mod:`bce3s.eval.metrics` and :mod:`bce3s.eval.geometry`: accuracies in
percent; confidences and calibration-bin accuracies as fractions in [0, 1] (shown in percent here).
"""

from __future__ import annotations

from bce3s.report.plots._base import MAX_CONFUSION_CLASSES, fig_to_png_bytes, head_to_tail_order, run_colors
from bce3s.report.plots.per_class import geometry_per_class, per_class_accuracy, weight_norms
from bce3s.report.plots.summary import confusion_matrix, reliability_diagram, shot_accuracy_bars, training_curves

__all__ = [
    "MAX_CONFUSION_CLASSES",
    "confusion_matrix",
    "fig_to_png_bytes",
    "geometry_per_class",
    "head_to_tail_order",
    "per_class_accuracy",
    "reliability_diagram",
    "run_colors",
    "shot_accuracy_bars",
    "training_curves",
    "weight_norms",
]
