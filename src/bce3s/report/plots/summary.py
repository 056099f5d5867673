"""Summary figures: Many / Medium / Few bars, training curves, reliability diagram and confusion matrix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from bce3s.report.plots._base import (
    MAX_CONFUSION_CLASSES,
    WIDTH,
    as_float,
    colors_for,
    figure_legend,
    head_to_tail_order,
    styled,
)

__all__ = ["confusion_matrix", "reliability_diagram", "shot_accuracy_bars", "training_curves"]


_SHOT_CATEGORIES = (("top1", "All"), ("mean_per_class", "Class mean"), ("many", "Many"), ("medium", "Medium"),
                    ("few", "Few"))


@styled
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
    cols = colors_for(labels, colors)
    n = max(len(labels), 1)
    width = 0.8 / n
    fig = Figure(figsize=(min(WIDTH, max(5.5, 1.0 + 4.6 * len(panels) * max(1.0, n / 3))), 4.4),
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
            vals = as_float([runs[label].get(key) for key, _ in _SHOT_CATEGORIES])
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
    figure_legend(fig, handles, leg_labels, title)
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


_VAL_STYLES = (("mean_per_class", "-", "class mean"), ("top1", "--", "top-1"))


def _curve_panel(ax: Any, key: str, histories: Mapping[str, Sequence[Mapping[str, Any]]],
                 cols: Mapping[str, str]) -> None:
    """Draw one quantity (``loss``, ``lr``, ``val`` or ``term:<name>``) of every run into ``ax``."""
    positive = True
    for label, hist in histories.items():
        if not hist:
            continue
        x = np.array([float(r["global_epoch"]) + 1 for r in hist])
        new_stage = np.array([i > 0 and hist[i]["stage"] != hist[i - 1]["stage"] for i in range(len(hist))])
        marker = "o" if len(hist) <= 30 else None
        if key == "val":
            for vkey, ls, _ in _VAL_STYLES:
                y = as_float([(r.get("val") or {}).get(vkey) for r in hist])
                ok = np.isfinite(y)
                xs, ys = _break_at(x[ok], y[ok], new_stage[ok])
                ax.plot(xs, ys, ls=ls, marker=marker, ms=3, color=cols[label])
            continue
        if key == "loss" or key == "lr":
            y = as_float([r.get(key) for r in hist])
        else:
            term = key.split(":", 1)[1]
            y = as_float([(r.get("terms") or {}).get(term) for r in hist])
        positive = positive and bool(np.all(y[np.isfinite(y)] > 0))
        xs, ys = _break_at(x, y, new_stage)
        ax.plot(xs, ys, marker=marker, ms=3, color=cols[label], label=label)
    if key == "lr" and positive:
        ax.set_yscale("log")
    if key == "val":
        handles = [Line2D([], [], color="#444444", ls=ls, label=lab) for _, ls, lab in _VAL_STYLES]
        ax.legend(handles=handles, loc="best")


def _mark_stages(ax: Any, boundaries: Sequence[tuple[float, str]]) -> None:
    """Dotted vertical lines where a new stage starts, named at the top of the panel."""
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for xb, stage in boundaries:
        ax.axvline(xb, color="#555555", ls=":", lw=1.2)
        ax.text(xb, 0.98, f" {stage}", transform=trans, ha="left", va="top", fontsize=8, color="#555555",
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75})


@styled
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
    cols = colors_for(labels, colors)
    terms = list(dict.fromkeys(t for h in histories.values() for rec in h for t in (rec.get("terms") or {})))
    panels: list[tuple[str, str, str]] = [("loss", "Loss (total, weighted)", "loss")]
    panels += [(f"term:{t}", f"Loss term: {t}", "term value") for t in terms]
    panels += [("lr", "Learning rate", "lr (log scale)"), ("val", "Validation accuracy", "accuracy (%)")]
    ncols = 3 if len(panels) > 4 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(WIDTH, 3.0 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    boundaries = list(dict.fromkeys(b for h in histories.values() for b in _stage_boundaries(h)))
    for ax, (key, name, ylabel) in zip(axes, panels):
        _curve_panel(ax, key, histories, cols)
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("epoch (counted across stages)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        _mark_stages(ax, boundaries)
    xs = [float(r["global_epoch"]) + 1 for h in histories.values() for r in h]
    if xs:
        for ax in axes[: len(panels)]:
            ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)  # the same epoch axis in every panel
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=cols[label], label=label) for label in labels]
    figure_legend(fig, handles, labels, title)
    return fig


@styled
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
    cols = colors_for(list(reliability), colors)
    fig = Figure(figsize=(5.6, 6.6), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax.plot([0, 100], [0, 100], ls="--", color="#777777", lw=1, label="perfect calibration")
    for label, rel in reliability.items():
        edges = as_float(rel["bin_edges"]) * 100
        acc = as_float(rel["bin_acc"]) * 100
        conf = as_float(rel["bin_conf"]) * 100
        count = as_float(rel["bin_count"])
        ok = count > 0
        name = label
        if ece and ece.get(label) is not None:
            name = f"{label} (ECE {ece[label]:.2f}%)"
        share = 100 * count / max(count.sum(), 1)
        ax.plot(conf[ok], acc[ok], color=cols[label], lw=1.2, alpha=0.7, marker="o", ms=0, label=name)
        # marker area follows the bin's share of the samples: a bin of 3 samples does not look like one of 300
        ax.scatter(conf[ok], acc[ok], s=6 + 2.4 * share[ok], color=cols[label], zorder=3, clip_on=False)
        ax_n.stairs(share, edges, color=cols[label], lw=1.6)
    ax.set_xlim(0, 100)
    ax.set_ylim(-2, 102)  # points at 0 or 100 % stay whole
    ax.set_ylabel("accuracy in the bin (%)")
    if title:
        ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=1 if len(labels) > 2 else 2)  # never over a bin
    ax_n.set_ylabel("samples (%)")
    ax_n.set_xlabel("confidence = max softmax probability (%)")
    return fig


@styled
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
