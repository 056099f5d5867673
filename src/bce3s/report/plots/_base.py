"""Shared pieces of the report's figures: style, run colours, legends, head-to-tail order, PNG rendering.

The figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot``, no backend switch, no
global state left behind; the style is applied with ``matplotlib.rc_context`` by :func:`styled`).
"""

from __future__ import annotations

import functools
import io
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = [
    "COUNT_COLOR",
    "GROUP_NAMES",
    "METHOD_COLORS",
    "MAX_CONFUSION_CLASSES",
    "WIDTH",
    "as_float",
    "check_length",
    "colors_for",
    "fig_to_png_bytes",
    "figure_legend",
    "head_to_tail_order",
    "legend_above",
    "method_color",
    "run_colors",
    "styled",
]

WIDTH = 10.2  # inches: at 110 dpi the PNG is about as wide as the report's text column, so fonts are not shrunk

MAX_CONFUSION_CLASSES = 100
"""Largest number of classes for which a confusion matrix is drawn (and stored by ``bce3s eval``)."""

# Okabe-Ito palette (colour-blind safe), yellow last because it is hard to see on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
METHOD_COLORS = {
    "bce3s": "#0072B2",
    "ce": "#D55E00",
    "bce": "#009E73",
    "cb_bce": "#CC79A7",
    "balanced_softmax": "#E69F00",
    "logit_adjusted": "#56B4E9",
    "ldam": "#000000",
}
"""The fixed colour of each method (the first stage's loss name); others get a palette colour from their name."""
COUNT_COLOR = "#9a9a9a"
GROUP_NAMES = (("many", "Many"), ("medium", "Medium"), ("few", "Few"))
STYLE = {
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


def styled(func: F) -> F:
    """Build the figure inside ``rc_context(STYLE)`` so the style never leaks into the caller's matplotlib."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def method_color(method: str) -> str:
    """The stable colour of a method: :data:`METHOD_COLORS`, else a palette colour chosen by a hash of the name."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return PALETTE[zlib.crc32(method.encode("utf-8")) % len(PALETTE)]


def run_colors(labels: Sequence[str], methods: Sequence[str] | None = None) -> dict[str, str]:
    """One colour per run label that does not depend on the order of the runs.

    Each run gets the colour of its method (:func:`method_color`; the label itself when ``methods`` is not
    given). When two runs would share a colour (two seeds of one method, or a hash collision), the runs are
    taken in order of (method, label) and the later one gets the next palette colour not used yet, so the same
    set of runs is coloured the same way in every report whatever the order of the arguments (cycles after 8).
    """
    keys = list(methods) if methods is not None else list(labels)
    if len(keys) != len(labels):
        raise ValueError(f"run_colors: {len(labels)} labels but {len(keys)} methods")
    used: set[str] = set()
    out: dict[str, str] = {}
    for key, label in sorted(zip(keys, labels, strict=True)):
        color = method_color(key)
        if color in used and len(used) < len(PALETTE):
            start = PALETTE.index(color) if color in PALETTE else 0
            color = next(
                c for c in (PALETTE[(start + i) % len(PALETTE)] for i in range(len(PALETTE))) if c not in used
            )
        used.add(color)
        out[label] = color
    return {label: out[label] for label in labels}


def colors_for(labels: Sequence[str], colors: Mapping[str, str] | None) -> dict[str, str]:
    """The colour of each label: from ``colors`` where given, else that of :func:`run_colors`."""
    fallback = run_colors(labels)
    return {label: (colors or {}).get(label, fallback[label]) for label in labels}


def legend_above(fig: Figure, ax: Any, *, with_counts: bool = False) -> None:
    """The run legend in one row above a single-axes figure (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    if with_counts:
        handles.append(Patch(color=COUNT_COLOR, alpha=0.35))
        labels.append("training images (right axis)")
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4))


def figure_legend(fig: Figure, handles: list[Any], labels: list[str], title: str | None) -> None:
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


def as_float(values: Sequence[float | None]) -> np.ndarray:
    """A float64 array of ``values`` with ``None`` as NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def check_length(name: str, values: np.ndarray, k: int) -> None:
    """Raise ``ValueError`` unless ``values`` holds one value per class (shape ``(k,)``)."""
    if values.shape != (k,):
        raise ValueError(f"{name}: expected {k} per-class values (one per class of train_counts), got {values.shape}")



def fig_to_png_bytes(fig: Figure, *, dpi: int = 110) -> bytes:
    """Render ``fig`` to PNG bytes (no ``Software`` metadata, so the bytes depend only on the figure)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
