"""Head-to-tail figures: one value per class, classes sorted by training count, runs overlaid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from bce3s.report.plots._base import (
    COUNT_COLOR,
    GROUP_NAMES,
    WIDTH,
    as_float,
    check_length,
    colors_for,
    figure_legend,
    head_to_tail_order,
    legend_above,
    styled,
)

__all__ = ["geometry_per_class", "per_class_accuracy", "weight_norms"]


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average over ``window`` classes that ignores NaN. Shape as ``values``."""
    ok = np.isfinite(values)
    filled = np.where(ok, values, 0.0)
    kernel = np.ones(window)
    num = np.convolve(filled, kernel, mode="same")
    den = np.convolve(ok.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _mark_shot_groups(ax: Any, order: np.ndarray, groups: Mapping[str, Sequence[int]] | None) -> None:
    """Shade Many/Medium/Few regions along a head -> tail class axis and name them at the top."""
    if not groups:
        return
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    shades = {"many": 0.0, "medium": 0.05, "few": 0.1}
    for key, name in GROUP_NAMES:
        ids = np.asarray(list(groups.get(key, [])), dtype=np.int64)
        if ids.size == 0:
            continue
        lo, hi = rank[ids].min() - 0.5, rank[ids].max() + 0.5
        if shades[key] > 0:
            ax.axvspan(lo, hi, color="k", alpha=shades[key], lw=0, zorder=0)
        narrow = (hi - lo) / len(order) < 0.15  # a label across a narrow band would spill into its neighbours
        ax.text((lo + hi) / 2, 0.985, f"{name} ({ids.size})", transform=trans, ha="center", va="top",
                rotation=90 if narrow else 0, fontsize=8, color="#333333",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})


def _per_class_lines(ax: Any, values: Mapping[str, np.ndarray], order: np.ndarray,
                     colors: Mapping[str, str]) -> None:
    """Per-class values along the head -> tail axis: markers for small K, faint points + rolling mean for large K."""
    k = len(order)
    x = np.arange(k)
    window = max(5, k // 25)
    for label, vals in values.items():
        y = vals[order]
        color = colors[label]
        if k <= 60:
            ax.plot(x, y, marker="o", ms=3.5, color=color, label=label)
        else:
            ax.scatter(x, y, s=5, color=color, alpha=0.25, lw=0)
            ax.plot(x, _rolling_mean(y, window), color=color, label=f"{label} (mean over {window} classes)")
    ax.set_xlim(-0.5, k - 0.5)


def _count_axis(ax: Any, counts_sorted: np.ndarray) -> Any:
    """Training counts as grey bars on a log-scale right axis, drawn behind the main axis."""
    ax_counts = ax.twinx()
    edges = np.arange(len(counts_sorted) + 1) - 0.5
    positive = counts_sorted[counts_sorted > 0]
    low = 0.5 * float(positive.min()) if positive.size else 0.5
    high = 1.6 * float(positive.max()) if positive.size else 1.0
    # one filled step patch instead of K bars (same picture, much cheaper to draw for K = 1000)
    ax_counts.stairs(np.maximum(counts_sorted, low), edges, baseline=low, fill=True, color=COUNT_COLOR, alpha=0.25,
                     lw=0)
    ax_counts.set_yscale("log")
    ax_counts.set_ylim(low, high)
    ax_counts.set_ylabel("training images per class (log scale)", color="#555555")
    ax_counts.tick_params(axis="y", colors="#555555")
    ax_counts.spines["right"].set_visible(True)
    ax_counts.grid(False)
    ax.set_zorder(ax_counts.get_zorder() + 1)
    ax.patch.set_visible(False)
    return ax_counts


MAX_NAMED_CLASSES = 20
"""Largest number of classes whose names label the per-class accuracy axis (ranks above it)."""


def _runs_over_counts(
    per_run: Mapping[str, Sequence[float]],
    train_counts: Sequence[int],
    groups: Mapping[str, Sequence[int]] | None,
    colors: Mapping[str, str] | None,
    *,
    height: float,
) -> tuple[Figure, Any, np.ndarray, dict[str, np.ndarray]]:
    """One axes of per-class values (each run (K,)) over the grey training-count bars, classes head -> tail.

    Returns:
        The figure, its axes, the head-to-tail class order (K,) and the runs' values as float arrays.
    """
    k = len(train_counts)
    order = head_to_tail_order(train_counts)
    values = {label: as_float(v) for label, v in per_run.items()}
    for label, v in values.items():
        check_length(label, v, k)
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    ax = fig.add_subplot()
    _count_axis(ax, np.asarray(train_counts, dtype=np.float64)[order])
    _mark_shot_groups(ax, order, groups)
    _per_class_lines(ax, values, order, colors_for(list(values), colors))
    return fig, ax, order, values


@styled
def per_class_accuracy(
    per_class: Mapping[str, Sequence[float]],
    train_counts: Sequence[int],
    *,
    groups: Mapping[str, Sequence[int]] | None = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
    ylabel: str = "test accuracy of the class (%)",
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Per-class accuracy against training count, classes sorted head -> tail, runs overlaid.

    Args:
        per_class: run label -> per-class accuracy in percent, indexed by class id. Each (K,).
        train_counts: training images per class, indexed by class id. (K,)
        groups: optional ``{"many", "medium", "few"} -> class ids`` (from ``metrics.shot_groups``) to shade.
        colors: run label -> colour.
        title: optional axes title.
        ylabel: label of the accuracy axis.
        class_names: names by class id, shown under each class when K <= :data:`MAX_NAMED_CLASSES` (as on the
            confusion matrix); otherwise, or without names, the axis shows ranks (0 = most training images).

    Returns:
        The figure: accuracy lines on the left axis (0-100 %), training counts as grey bars on a log-scale right
        axis. With more than 60 classes each run shows faint per-class points and a rolling mean.
    """
    k = len(train_counts)
    fig, ax, order, values = _runs_over_counts(per_class, train_counts, groups, colors, height=4.6)
    ax.set_ylim(0, 108)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(ylabel)
    if class_names is not None and len(class_names) == k and k <= MAX_NAMED_CLASSES:
        names = [str(class_names[i]) for i in order]
        long = max(map(len, names)) > 3
        ax.set_xticks(range(k), names, rotation=45 if long else 0, ha="right" if long else "center")
        ax.set_xlabel("class, sorted by training images (most images first)")
    else:
        ax.set_xlabel("classes sorted by training images (0 = most images)")
    if title:
        ax.set_title(title)
    legend_above(fig, ax, with_counts=True)
    return fig


@styled
def weight_norms(
    norms: Mapping[str, Sequence[float]],
    train_counts: Sequence[int],
    *,
    groups: Mapping[str, Sequence[int]] | None = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Norm of each class's classifier weight vector ``||w_k||``, classes head -> tail, runs overlaid.

    Args:
        norms: run label -> per-class weight norm indexed by class id. Each (K,).
        train_counts: training images per class. (K,)
        groups: optional shot groups to shade.
        colors: run label -> colour.
        title: optional axes title.
    """
    fig, ax, _, values = _runs_over_counts(norms, train_counts, groups, colors, height=4.2)
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.zeros(0)])
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = max(0.05 * (hi - lo), 0.02 * max(abs(hi), 1e-6))
        ax.set_ylim(min(0.0, lo - pad), hi + 2.5 * pad + 0.12 * (hi - min(0.0, lo)))
    ax.set_ylabel("weight norm ||w_k||")
    ax.set_xlabel("classes sorted by training images (0 = most images)")
    if title:
        ax.set_title(title)
    legend_above(fig, ax, with_counts=True)
    return fig


_GEOMETRY_PANELS = (
    ("compactness", "Compactness", "mean cos(h_i, class mean)"),
    ("feature_separability", "Feature separability", "1 - max cos to another class mean"),
    ("classifier_separability", "Classifier separability", "1 - max cos to another w_j"),
    ("feature_norm", "Feature norm", "mean ||h_i|| of the class"),
)


@styled
def geometry_per_class(
    geometry: Mapping[str, Mapping[str, Sequence[float]]],
    train_counts: Sequence[int],
    *,
    groups: Mapping[str, Sequence[int]] | None = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Compactness, feature separability, classifier separability and feature norm per class, runs overlaid.

    Args:
        geometry: run label -> per-class lists ``{"compactness", "feature_separability",
            "classifier_separability", "feature_norm": (K,)}`` (``geometry_summary(...)["per_class"]``; missing
            keys are skipped).
        train_counts: training images per class. (K,)
        groups: optional shot groups to shade.
        colors: run label -> colour.
        title: optional figure title (the run legend then goes below the panels).
    """
    k = len(train_counts)
    order = head_to_tail_order(train_counts)
    cols = colors_for(list(geometry), colors)
    panels = [p for p in _GEOMETRY_PANELS if any(p[0] in g for g in geometry.values())]
    ncols = 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(WIDTH, 3.4 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for ax, (key, name, ylabel) in zip(axes, panels):
        values = {label: as_float(g[key]) for label, g in geometry.items() if key in g}
        for label, v in values.items():
            check_length(f"{label}: {key}", v, k)
        _mark_shot_groups(ax, order, groups)
        _per_class_lines(ax, values, order, cols)
        finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.zeros(0)])
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            span = max(hi - lo, 1e-3 * max(abs(hi), 1.0))
            ax.set_ylim(lo - 0.08 * span, hi + 0.3 * span)  # head-room for the group labels
        ax.set_title(name)
        ax.set_ylabel(ylabel)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-ncols:]:
        ax.set_xlabel("classes sorted by training images (0 = most images)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure_legend(fig, handles, labels, title)
    return fig
