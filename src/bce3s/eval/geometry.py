"""Feature and classifier geometry: pure functions over features, labels and head weights.

Definitions (applied identically to every model), for penultimate features ``h_i`` (not normalized) of class
``k``, class means ``mu_k`` and raw classifier rows ``w_k``:

* compactness_k            = mean_{i in k} cos(h_i, mu_k)                 (1 = the class collapsed to a ray)
* feature_separability_k   = 1 - max_{j != k} cos(mu_k, mu_j)             (over classes with samples)
* classifier_separability_k = 1 - max_{j != k} cos(w_k, w_j)
* feature_norm_k           = mean_{i in k} ||h_i||
* weight_norm_k            = ||w_k||                                      (raw, before the head's normalization)

Per-class arrays hold the **raw** values (cosines in ``[-1, 1]``, separabilities in ``[0, 2]``); the paper's
"x100" presentation is left to the report. For a simplex equiangular tight frame of ``K`` vectors every
separability equals ``1 + 1/(K-1)`` and the std over classes is 0.

Classes without samples get NaN in the feature-based arrays and are excluded from the means/stds of
:func:`geometry_summary` (NaN -> ``None`` in its JSON output). Stds are population stds (``ddof = 0``) over
classes. Cosines use ``a.b / (max(|a|, eps) max(|b|, eps))`` with ``eps = 1e-12``, so a zero vector has cosine 0
with everything. Computation is in float64 on the inputs' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bce3s.eval.metrics import SHOT_NAMES, shot_groups

__all__ = [
    "GEOMETRY_MEANINGS",
    "GEOMETRY_METRICS",
    "class_means",
    "classifier_separability",
    "compactness",
    "feature_norms",
    "feature_separability",
    "geometry_summary",
    "weight_norms",
]

_EPS = 1e-12
GEOMETRY_METRICS = ("compactness", "feature_separability", "classifier_separability", "feature_norm", "weight_norm")
GEOMETRY_MEANINGS = {
    "compactness": "mean cos(feature, its class mean), at most 1; higher = tighter classes",
    "feature_separability": "1 - max cos(class mean, another class mean), 0 to 2; higher = classes further apart",
    "classifier_separability": "1 - max cos(class weight, another class weight), 0 to 2; higher = more distinct "
    "classifiers (above 1: every pair of weights points away from each other)",
    "feature_norm": "mean length of the class's features; similar values across groups = less head bias",
    "weight_norm": "length of the class's classifier weight; similar values across groups = less head bias",
}
"""One line per geometry quantity: what it measures and which direction is better (CLI and report)."""


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def _check(features: Tensor, labels: Tensor, num_classes: int) -> None:
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")


def _class_counts(labels: Tensor, num_classes: int) -> Tensor:
    return torch.bincount(labels, minlength=num_classes)


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Class means ``mu_k`` of the features.

    Args:
        features: ``(N, D)``.
        labels: ``(N,)`` int64 in ``[0, K)``.
        num_classes: ``K``.

    Returns:
        ``(K, D)`` float64; rows of classes without samples are NaN.
    """
    _check(features, labels, num_classes)
    f = features.detach().double()
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    counts = _class_counts(labels, num_classes).to(f.dtype).unsqueeze(1)
    return sums / counts  # 0 / 0 = NaN for empty classes


def compactness(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Intra-class compactness ``mean_{i in k} cos(h_i, mu_k)``.

    Returns:
        ``(K,)`` float64 in ``[-1, 1]``; NaN for classes without samples.
    """
    means = class_means(features, labels, num_classes)
    cos = (_unit(features.detach().double()) * _unit(means)[labels]).sum(dim=1)
    sums = torch.zeros(num_classes, dtype=cos.dtype, device=cos.device).index_add_(0, labels, cos)
    return sums / _class_counts(labels, num_classes).to(cos.dtype)


def _separability(vectors: Tensor, valid: Tensor) -> Tensor:
    """``1 - max_{j != k, j valid} cos(v_k, v_j)`` for valid ``k``; NaN elsewhere or with < 2 valid rows."""
    k = vectors.shape[0]
    unit = _unit(torch.nan_to_num(vectors, nan=0.0))
    cos = unit @ unit.T
    mask = valid.unsqueeze(0) & ~torch.eye(k, dtype=torch.bool, device=vectors.device)
    cos = cos.masked_fill(~mask, -math.inf)
    sep = 1 - cos.max(dim=1).values
    return torch.where(valid & torch.isfinite(sep), sep, torch.full_like(sep, math.nan))


def feature_separability(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Inter-class separability of class means ``1 - max_{j != k} cos(mu_k, mu_j)`` over classes with samples.

    Returns:
        ``(K,)`` float64 in ``[0, 2]``; NaN for classes without samples (and for all when fewer than 2 have).
    """
    means = class_means(features, labels, num_classes)
    valid = _class_counts(labels, num_classes) > 0
    return _separability(means, valid)


def classifier_separability(weight: Tensor) -> Tensor:
    """Separability of classifier rows ``1 - max_{j != k} cos(w_k, w_j)``.

    Args:
        weight: ``(K, D)`` raw head weight (cosines do not depend on the row norms).

    Returns:
        ``(K,)`` float64 in ``[0, 2]``; NaN when ``K == 1``.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be (K, D), got shape {tuple(weight.shape)}")
    w = weight.detach().double()
    return _separability(w, torch.ones(w.shape[0], dtype=torch.bool, device=w.device))


def feature_norms(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean feature norm per class ``mean_{i in k} ||h_i||``.

    Returns:
        ``(K,)`` float64; NaN for classes without samples.
    """
    _check(features, labels, num_classes)
    norms = features.detach().double().norm(dim=1)
    sums = torch.zeros(num_classes, dtype=norms.dtype, device=norms.device).index_add_(0, labels, norms)
    return sums / _class_counts(labels, num_classes).to(norms.dtype)


def weight_norms(weight: Tensor) -> Tensor:
    """Raw row norms ``||w_k||`` of the head weight ``(K, D)``; returns ``(K,)`` float64."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be (K, D), got shape {tuple(weight.shape)}")
    return weight.detach().double().norm(dim=1)


def _mean_std(values: Tensor) -> dict[str, float | int | None]:
    v = values[~torch.isnan(values)]
    if v.numel() == 0:
        return {"mean": None, "std": None, "num_classes": 0}
    return {"mean": float(v.mean()), "std": float(v.std(correction=0)), "num_classes": int(v.numel())}


def geometry_summary(
    features: Tensor,
    labels: Tensor,
    weight: Tensor | None,
    train_counts: Sequence[int] | Tensor,
    *,
    many: int = 100,
    few: int = 20,
) -> dict[str, Any]:
    """All geometry metrics per class, with mean and std over classes overall and per Many / Medium / Few.

    Args:
        features: ``(N, D)`` penultimate features of one split.
        labels: ``(N,)`` int64.
        weight: ``(K, D)`` raw classifier weight, or ``None`` to skip the classifier metrics.
        train_counts: ``(K,)`` training counts (define the shot splits, see
            :func:`bce3s.eval.metrics.shot_groups`).
        many, few: shot thresholds.

    Returns:
        JSON-able ``{"num_samples": N, "num_classes": K, "per_class": {metric: [float | None] * K},
        "summary": {metric: {"all" | "many" | "medium" | "few": {"mean", "std", "num_classes"}}}}`` with metric in
        :data:`GEOMETRY_METRICS` (the classifier ones only when ``weight`` is given). Classes without samples are
        ``None`` and left out of the summaries.
    """
    num_classes = torch.as_tensor(train_counts).numel()
    _check(features, labels, num_classes)
    if weight is not None and (weight.dim() != 2 or weight.shape[0] != num_classes):
        raise ValueError(f"weight must be ({num_classes}, D), got shape {tuple(weight.shape)}")
    per_class: dict[str, Tensor] = {
        "compactness": compactness(features, labels, num_classes),
        "feature_separability": feature_separability(features, labels, num_classes),
        "feature_norm": feature_norms(features, labels, num_classes),
    }
    if weight is not None:
        per_class["classifier_separability"] = classifier_separability(weight)
        per_class["weight_norm"] = weight_norms(weight)
    per_class = {name: per_class[name].cpu() for name in GEOMETRY_METRICS if name in per_class}
    groups = shot_groups(train_counts, many, few)
    summary = {
        name: {
            "all": _mean_std(values),
            **{shot: _mean_std(values[groups[shot]]) for shot in SHOT_NAMES},
        }
        for name, values in per_class.items()
    }
    return {
        "num_samples": int(labels.shape[0]),
        "num_classes": num_classes,
        "per_class": {
            name: [None if math.isnan(v) else v for v in values.tolist()] for name, values in per_class.items()
        },
        "summary": summary,
    }
