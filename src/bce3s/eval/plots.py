"""Figures of the run report: one function per figure, each returning a :class:`matplotlib.figure.Figure`.

Every function takes the data of one or several runs as a mapping ``run label -> arrays`` and overlays the runs
in one figure, with one colour per run (pass the same ``colors`` mapping, e.g. from :func:`run_colors`, to every
function so that a run keeps its colour across figures). Classes are always shown head -> tail: sorted by
training count, most images first (ties keep class-id order).

The figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot``, no backend switch, no
global state left behind; the style is applied with ``matplotlib.rc_context``), so they are safe to make in
library code and in tests. :func:`fig_to_png_bytes` renders one to PNG.

Units follow the metric dicts of :mod:`bce3s.eval.metrics` and :mod:`bce3s.eval.geometry`: accuracies in
percent; confidences and calibration-bin accuracies as fractions in [0, 1] (shown in percent here).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

__all__ = [
    "MAX_CONFUSION_CLASSES",
    "confusion_matrix",
    "fig_to_png_bytes",
    "geometry_per_class",
    "per_class_accuracy",
    "reliability_diagram",
    "run_colors",
    "shot_accuracy_bars",
    "training_curves",
    "weight_norms",
]

_WIDTH = 10.2  # inches: at 110 dpi the PNG is about as wide as the report's text column, so fonts are not shrunk

MAX_CONFUSION_CLASSES = 100
"""Largest number of classes for which a confusion matrix is drawn (and stored by ``bce3s eval``)."""

# Okabe-Ito palette (colour-blind safe), yellow last because it is hard to see on white.
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_COUNT_COLOR = "#9a9a9a"
_GROUP_NAMES = (("many", "Many"), ("medium", "Medium"), ("few", "Few"))
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.framealpha": 0.9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
}

F = TypeVar("F", bound=Callable[..., Figure])


def _styled(func: F) -> F:
    """Build the figure inside ``rc_context(_STYLE)`` so the style never leaks into the caller's matplotlib."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(_STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def run_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per run label, in order (cycles after 8 runs)."""
    return {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(labels)}


def _colors_for(labels: Sequence[str], colors: Mapping[str, str] | None) -> dict[str, str]:
    fallback = run_colors(labels)
    return {label: (colors or {}).get(label, fallback[label]) for label in labels}


def _legend_above(fig: Figure, ax: Any, *, with_counts: bool = False) -> None:
    """The run legend in one row above a single-axes figure (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    if with_counts:
        handles.append(Patch(color=_COUNT_COLOR, alpha=0.35))
        labels.append("training images (right axis)")
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4))


def _figure_legend(fig: Figure, handles: list[Any], labels: list[str], title: str | None) -> None:
    """One legend for all panels: above them, or below them when the figure has a title (no overlap)."""
    if handles:
        loc = "outside lower center" if title else "outside upper center"
        fig.legend(handles, labels, loc=loc, ncols=min(len(labels), 4))
    if title:
        fig.suptitle(title, fontweight="bold")


def head_to_tail_order(train_counts: Sequence[int]) -> np.ndarray:
    """Class ids sorted by training count, most images first; ties keep class-id order. Shape (K,)."""
    counts = np.asarray(train_counts, dtype=np.int64)
    return np.argsort(-counts, kind="stable")


def _as_float(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _check_length(name: str, values: np.ndarray, k: int) -> None:
    if values.shape != (k,):
        raise ValueError(f"{name}: expected {k} per-class values (one per class of train_counts), got {values.shape}")


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
    for key, name in _GROUP_NAMES:
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
    ax_counts.stairs(np.maximum(counts_sorted, low), edges, baseline=low, fill=True, color=_COUNT_COLOR, alpha=0.25,
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


@_styled
def per_class_accuracy(
    per_class: Mapping[str, Sequence[float]],
    train_counts: Sequence[int],
    *,
    groups: Mapping[str, Sequence[int]] | None = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
    ylabel: str = "test accuracy of the class (%)",
) -> Figure:
    """Per-class accuracy against training count, classes sorted head -> tail, runs overlaid.

    Args:
        per_class: run label -> per-class accuracy in percent, indexed by class id. Each (K,).
        train_counts: training images per class, indexed by class id. (K,)
        groups: optional ``{"many", "medium", "few"} -> class ids`` (from ``metrics.shot_groups``) to shade.
        colors: run label -> colour.
        title: optional axes title.
        ylabel: label of the accuracy axis.

    Returns:
        The figure: accuracy lines on the left axis (0-100 %), training counts as grey bars on a log-scale right
        axis. With more than 60 classes each run shows faint per-class points and a rolling mean.
    """
    k = len(train_counts)
    order = head_to_tail_order(train_counts)
    values = {label: _as_float(v) for label, v in per_class.items()}
    for label, v in values.items():
        _check_length(label, v, k)
    cols = _colors_for(list(values), colors)
    fig = Figure(figsize=(_WIDTH, 4.6), layout="constrained")
    ax = fig.add_subplot()
    _count_axis(ax, np.asarray(train_counts, dtype=np.float64)[order])
    _mark_shot_groups(ax, order, groups)
    _per_class_lines(ax, values, order, cols)
    ax.set_ylim(0, 108)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(ylabel)
    ax.set_xlabel("classes sorted by training images (0 = most images)")
    if title:
        ax.set_title(title)
    _legend_above(fig, ax, with_counts=True)
    return fig


@_styled
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
    k = len(train_counts)
    order = head_to_tail_order(train_counts)
    values = {label: _as_float(v) for label, v in norms.items()}
    for label, v in values.items():
        _check_length(label, v, k)
    cols = _colors_for(list(values), colors)
    fig = Figure(figsize=(_WIDTH, 4.2), layout="constrained")
    ax = fig.add_subplot()
    _count_axis(ax, np.asarray(train_counts, dtype=np.float64)[order])
    _mark_shot_groups(ax, order, groups)
    _per_class_lines(ax, values, order, cols)
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.zeros(0)])
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = max(0.05 * (hi - lo), 0.02 * max(abs(hi), 1e-6))
        ax.set_ylim(min(0.0, lo - pad), hi + 2.5 * pad + 0.12 * (hi - min(0.0, lo)))
    ax.set_ylabel("weight norm ||w_k||")
    ax.set_xlabel("classes sorted by training images (0 = most images)")
    if title:
        ax.set_title(title)
    _legend_above(fig, ax, with_counts=True)
    return fig


_GEOMETRY_PANELS = (
    ("compactness", "Compactness", "mean cos(h_i, class mean)"),
    ("feature_separability", "Feature separability", "1 - max cos to another class mean"),
    ("classifier_separability", "Classifier separability", "1 - max cos to another w_j"),
    ("feature_norm", "Feature norm", "mean ||h_i|| of the class"),
)


@_styled
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
    cols = _colors_for(list(geometry), colors)
    panels = [p for p in _GEOMETRY_PANELS if any(p[0] in g for g in geometry.values())]
    ncols = 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(_WIDTH, 3.4 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for ax, (key, name, ylabel) in zip(axes, panels):
        values = {label: _as_float(g[key]) for label, g in geometry.items() if key in g}
        for label, v in values.items():
            _check_length(f"{label}: {key}", v, k)
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
    _figure_legend(fig, handles, labels, title)
    return fig


_SHOT_CATEGORIES = (("top1", "All"), ("mean_per_class", "Class mean"), ("many", "Many"), ("medium", "Medium"),
                    ("few", "Few"))


@_styled
def shot_accuracy_bars(
    panels: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    *,
    group_sizes: Mapping[str, int] | None = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Grouped bars of All / class-mean / Many / Medium / Few accuracy, runs side by side.

    Args:
        panels: panel title (e.g. ``"test, last checkpoint"``) -> run label -> metric dict with the keys
            ``top1``, ``mean_per_class``, ``many``, ``medium``, ``few`` (percent; a missing or ``None`` value
            leaves its bar out).
        group_sizes: optional number of classes in ``many`` / ``medium`` / ``few``, shown under the labels.
        colors: run label -> colour.
        title: optional figure title (the run legend then goes below the panels).
    """
    labels = list(dict.fromkeys(label for runs in panels.values() for label in runs))
    cols = _colors_for(labels, colors)
    n = max(len(labels), 1)
    width = 0.8 / n
    fig = Figure(figsize=(min(_WIDTH, max(5.5, 1.0 + 4.6 * len(panels) * max(1.0, n / 3))), 4.4),
                 layout="constrained")
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False, sharey=True).ravel()
    ticks = []
    for key, name in _SHOT_CATEGORIES:
        if group_sizes and key in group_sizes:
            n_cls = group_sizes[key]
            name = f"{name}\n({n_cls} class{'es' if n_cls != 1 else ''})"
        ticks.append(name)
    x = np.arange(len(_SHOT_CATEGORIES))
    for ax, (panel, runs) in zip(axes, panels.items()):
        for i, label in enumerate(labels):
            if label not in runs:
                continue
            vals = _as_float([runs[label].get(key) for key, _ in _SHOT_CATEGORIES])
            pos = x - 0.4 + width * (i + 0.5)
            bars = ax.bar(pos, np.nan_to_num(vals, nan=0.0), width=width * 0.92, color=cols[label], label=label)
            if n <= 4:
                for bar, v in zip(bars, vals):
                    if np.isfinite(v):
                        ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v), xytext=(0, 2),
                                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, ticks)
        ax.set_title(panel)
        ax.set_ylim(0, 109)
        ax.set_yticks(range(0, 101, 20))
        ax.grid(axis="x", visible=False)
    axes[0].set_ylabel("accuracy (%)")
    handles, leg_labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in leg_labels:
                handles.append(h)
                leg_labels.append(lab)
    _figure_legend(fig, handles, leg_labels, title)
    return fig


def _break_at(x: np.ndarray, y: np.ndarray, new_stage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN before each point that starts a new stage, so a line is not drawn across stages."""
    cut = np.flatnonzero(new_stage)
    return np.insert(x, cut, np.nan), np.insert(y, cut, np.nan)


def _stage_boundaries(history: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """(x position, name of the stage that starts there) for every stage change, x in plotted epoch units."""
    out = []
    for prev, rec in zip(history, history[1:]):
        if rec.get("stage") != prev.get("stage"):
            out.append((float(rec["global_epoch"]) + 0.5, str(rec.get("stage"))))
    return out


@_styled
def training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Total loss, each logged loss term, learning rate and validation accuracy against the epoch, runs overlaid.

    Args:
        histories: run label -> the records of ``metrics.jsonl`` (keys ``stage``, ``global_epoch``, ``lr``,
            ``loss``, ``terms`` and ``val`` = ``{"top1", "mean_per_class", ...}`` or ``None``).
        colors: run label -> colour.
        title: optional figure title (the run legend then goes below the panels).

    Returns:
        A grid of panels; the x axis counts epochs across stages (1 = the first epoch of the first stage);
        dotted vertical lines mark where a new stage starts (named at the top of each panel).
    """
    labels = list(histories)
    cols = _colors_for(labels, colors)
    terms = list(dict.fromkeys(t for h in histories.values() for rec in h for t in (rec.get("terms") or {})))
    panels: list[tuple[str, str, str]] = [("loss", "Loss (total, weighted)", "loss")]
    panels += [(f"term:{t}", f"Loss term: {t}", "term value") for t in terms]
    panels += [("lr", "Learning rate", "lr (log scale)"), ("val", "Validation accuracy", "accuracy (%)")]
    ncols = 3 if len(panels) > 4 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(_WIDTH, 3.0 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    boundaries = list(dict.fromkeys(b for h in histories.values() for b in _stage_boundaries(h)))
    val_styles = (("mean_per_class", "-", "class mean"), ("top1", "--", "top-1"))
    for ax, (key, name, ylabel) in zip(axes, panels):
        positive = True
        for label in labels:
            hist = histories[label]
            if not hist:
                continue
            x = np.array([float(r["global_epoch"]) + 1 for r in hist])
            new_stage = np.array([i > 0 and hist[i]["stage"] != hist[i - 1]["stage"] for i in range(len(hist))])
            marker = "o" if len(hist) <= 30 else None
            if key == "val":
                for vkey, ls, _ in val_styles:
                    y = _as_float([(r.get("val") or {}).get(vkey) for r in hist])
                    ok = np.isfinite(y)
                    xs, ys = _break_at(x[ok], y[ok], new_stage[ok])
                    ax.plot(xs, ys, ls=ls, marker=marker, ms=3, color=cols[label])
                continue
            if key == "loss" or key == "lr":
                y = _as_float([r.get(key) for r in hist])
            else:
                term = key.split(":", 1)[1]
                y = _as_float([(r.get("terms") or {}).get(term) for r in hist])
            positive = positive and bool(np.all(y[np.isfinite(y)] > 0))
            xs, ys = _break_at(x, y, new_stage)
            ax.plot(xs, ys, marker=marker, ms=3, color=cols[label], label=label)
        if key == "lr" and positive:
            ax.set_yscale("log")
        if key == "val":
            handles = [Line2D([], [], color="#444444", ls=ls, label=lab)
                       for _, ls, lab in val_styles]
            ax.legend(handles=handles, loc="best")
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("epoch (counted across stages)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        for xb, stage in boundaries:
            ax.axvline(xb, color="#555555", ls=":", lw=1.2)
            ax.text(xb, 0.98, f" {stage}", transform=trans, ha="left", va="top", fontsize=8, color="#555555",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75})
    xs = [float(r["global_epoch"]) + 1 for h in histories.values() for r in h]
    if xs:
        for ax in axes[: len(panels)]:
            ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)  # the same epoch axis in every panel
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=cols[label], label=label) for label in labels]
    _figure_legend(fig, handles, labels, title)
    return fig


@_styled
def reliability_diagram(
    reliability: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    ece: Mapping[str, float | None] | None = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Accuracy against confidence per confidence bin, runs overlaid, with the share of samples per bin below.

    Args:
        reliability: run label -> ``{"bin_edges" (B+1,), "bin_acc" (B,), "bin_conf" (B,), "bin_count" (B,)}``,
            accuracies and confidences as fractions in [0, 1]. Empty bins are left out.
        ece: optional run label -> ECE in percent, shown in the legend.
        colors: run label -> colour.
        title: optional axes title.
    """
    cols = _colors_for(list(reliability), colors)
    fig = Figure(figsize=(5.6, 6.6), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax.plot([0, 100], [0, 100], ls="--", color="#777777", lw=1, label="perfect calibration")
    for label, rel in reliability.items():
        edges = _as_float(rel["bin_edges"]) * 100
        acc = _as_float(rel["bin_acc"]) * 100
        conf = _as_float(rel["bin_conf"]) * 100
        count = _as_float(rel["bin_count"])
        ok = count > 0
        name = label
        if ece and ece.get(label) is not None:
            name = f"{label} (ECE {ece[label]:.2f}%)"
        ax.plot(conf[ok], acc[ok], marker="o", ms=4, color=cols[label], label=name)
        share = 100 * count / max(count.sum(), 1)
        ax_n.stairs(share, edges, color=cols[label], lw=1.6)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy in the bin (%)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left")
    ax_n.set_ylabel("samples (%)")
    ax_n.set_xlabel("confidence = max softmax probability (%)")
    return fig


@_styled
def confusion_matrix(
    matrix: Sequence[Sequence[int]],
    *,
    train_counts: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "Confusion matrix",
) -> Figure:
    """Row-normalised confusion matrix (percent of each true class), classes ordered head -> tail.

    Args:
        matrix: counts, ``matrix[t][p]`` = samples of true class ``t`` predicted as ``p``. (K, K), K <= 100.
        train_counts: training images per class; orders the classes head -> tail (class-id order without it).
        class_names: names shown on the axes when K <= 20 (class ids otherwise).
        title: axes title.

    Raises:
        ValueError: the matrix is not square or has more than ``MAX_CONFUSION_CLASSES`` classes.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {m.shape}")
    k = m.shape[0]
    if k > MAX_CONFUSION_CLASSES:
        raise ValueError(f"confusion matrix has {k} classes; it is drawn only up to {MAX_CONFUSION_CLASSES}")
    order = head_to_tail_order(train_counts) if train_counts is not None else np.arange(k)
    m = m[np.ix_(order, order)]
    rows = m.sum(axis=1, keepdims=True)
    pct = np.divide(100 * m, rows, out=np.zeros_like(m), where=rows > 0)
    size = 4.6 if k <= 20 else 5.4
    fig = Figure(figsize=(size + 1.0, size + 0.3), layout="constrained")
    ax = fig.add_subplot()
    # square-root colour scale: the few-percent confusions that matter stay visible next to a strong diagonal
    im = ax.imshow(pct, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=100), interpolation="nearest")
    ax.grid(False)
    if k <= 20:
        names = [str(class_names[i]) if class_names is not None else str(i) for i in order]
        ax.set_xticks(range(k), names, rotation=60 if max(map(len, names)) > 3 else 0, ha="right"
                      if max(map(len, names)) > 3 else "center")
        ax.set_yticks(range(k), names)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if pct[i, j] >= 0.5:
                        ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=7.5,
                                color="white" if pct[i, j] > 55 else "#222222")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class (head at top)")
    else:
        step = max(1, math.ceil(k / 20))
        ticks = list(range(0, k, step))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_yticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("predicted class (rank by training images, 0 = most)")
        ax.set_ylabel("true class (rank by training images)")
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_ticks([0, 5, 10, 25, 50, 75, 100])
    cbar.set_label("% of the true class (sqrt scale)")
    ax.set_title(title)
    return fig


def fig_to_png_bytes(fig: Figure, *, dpi: int = 110) -> bytes:
    """Render ``fig`` to PNG bytes (no ``Software`` metadata, so the bytes depend only on the figure)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
