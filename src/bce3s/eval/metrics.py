"""Classification and calibration metrics: the ONE definition of each metric in the project.

Conventions:

* Inputs are tensors on any device: ``logits`` ``(N, K)`` float, ``labels`` / ``preds`` ``(N,)`` int64 in
  ``[0, K)``. Bad arguments raise ``ValueError``.
* The tensor-level functions return **fractions** in ``[0, 1]`` (accuracies, ECE); :func:`summarize` reports
  accuracies and ECE in **percent**, NLL in nats and the Brier score in its natural units (sum over classes,
  mean over samples, range ``[0, 2]``).
* Many / Medium / Few are defined once, by :func:`shot_groups` on the *training* counts:
  Many ``n > 100``, Medium ``20 <= n <= 100``, Few ``n < 20``. A split's accuracy is the unweighted mean of the
  per-class accuracies of its classes.
* Classes absent from the evaluated labels have a per-class accuracy of NaN; means over classes skip them
  (so :func:`mean_per_class_accuracy` equals sklearn's ``balanced_accuracy_score``). In :func:`summarize` NaN
  becomes ``None`` so the dict is valid JSON.
* Calibration (ECE, NLL, Brier) is computed on ``softmax(logits)``, even for BCE-trained models, whose sigmoid
  outputs are not a distribution over classes; this makes the numbers comparable across losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SHOT_NAMES",
    "brier_score",
    "calibration_stats",
    "confusion_matrix",
    "empty_group_reasons",
    "expected_calibration_error",
    "mean_per_class_accuracy",
    "nll",
    "per_class_accuracy",
    "reliability_bins",
    "shot_accuracy",
    "shot_groups",
    "summarize",
    "topk_accuracy",
]

SHOT_NAMES = ("many", "medium", "few")
_CHUNK = 8192  # rows per chunk for the (N, K) softmax, so iNaturalist-size logits do not need 2 extra copies


def _check_labels(labels: Tensor, n: int, num_classes: int, what: str = "labels") -> None:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{what} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{what} must be an integer tensor, got {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(f"{what} must lie in [0, {num_classes}), got range [{lo}, {hi}]")


def _check_pair(preds: Tensor, labels: Tensor, num_classes: int) -> None:
    if labels.dim() != 1:
        raise ValueError(f"labels must be (N,), got shape {tuple(labels.shape)}")
    _check_labels(labels, labels.shape[0], num_classes)
    _check_labels(preds, labels.shape[0], num_classes, "preds")


def _check_logits(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, K), got shape {tuple(logits.shape)}")
    _check_labels(labels, logits.shape[0], logits.shape[1])


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of samples whose label is among the ``k`` largest logits.

    Args:
        logits: ``(N, K)``.
        labels: ``(N,)`` int64.
        k: ``1 <= k <= K``.

    Returns:
        Accuracy in ``[0, 1]``; NaN when ``N == 0``. Ties are broken by ``torch.topk``.
    """
    _check_logits(logits, labels)
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in [1, {logits.shape[1]}], got {k}")
    if logits.shape[0] == 0:
        return math.nan
    top = logits.topk(k, dim=1).indices
    return float((top == labels.unsqueeze(1)).any(dim=1).double().mean())


def per_class_accuracy(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class accuracy (recall) ``acc_k = #{i: y_i = k, pred_i = k} / #{i: y_i = k}``.

    Args:
        preds: ``(N,)`` predicted classes.
        labels: ``(N,)`` true classes.
        num_classes: ``K``.

    Returns:
        ``(K,)`` float64 on the inputs' device, in ``[0, 1]``; **NaN for classes absent from ``labels``**.
    """
    _check_pair(preds, labels, num_classes)
    total = torch.bincount(labels, minlength=num_classes).double()
    correct = torch.bincount(labels[preds == labels], minlength=num_classes).double()
    acc = correct / total
    return torch.where(total > 0, acc, torch.full_like(acc, math.nan))


def mean_per_class_accuracy(preds: Tensor, labels: Tensor, num_classes: int) -> float:
    """Unweighted mean of :func:`per_class_accuracy` over the classes present in ``labels``.

    Equals sklearn's ``balanced_accuracy_score``. Returns a fraction in ``[0, 1]`` (NaN when ``N == 0``).
    """
    return _nanmean(per_class_accuracy(preds, labels, num_classes))


def empty_group_reasons(train_counts: Sequence[int] | Tensor, many: int = 100, few: int = 20) -> dict[str, str]:
    """Why a shot group is empty (its accuracy shown as a dash), for each empty group of :func:`shot_groups`.

    Returns:
        ``{"few": "no class has < 20 training images", ...}``; only the empty groups (``{}`` when none is).
    """
    rules = {
        "many": f"no class has > {many} training images",
        "medium": f"no class has {few}-{many} training images",
        "few": f"no class has < {few} training images",
    }
    groups = shot_groups(train_counts, many=many, few=few)
    return {name: rules[name] for name in SHOT_NAMES if groups[name].numel() == 0}


def shot_groups(train_counts: Sequence[int] | Tensor, many: int = 100, few: int = 20) -> dict[str, Tensor]:
    """Split classes into Many / Medium / Few by their training counts (the only place the thresholds live).

    Many: ``n > many``; Few: ``n < few``; Medium: ``few <= n <= many``. With the defaults a class with exactly
    100 or exactly 20 training images is Medium (OLTR's ``shot_acc``).

    Args:
        train_counts: ``(K,)`` training images per class.
        many: Many threshold (exclusive).
        few: Few threshold (exclusive).

    Returns:
        ``{"many": idx, "medium": idx, "few": idx}``, each a sorted int64 CPU tensor of class indices.
    """
    if few > many:
        raise ValueError(f"few ({few}) must be <= many ({many})")
    counts = torch.as_tensor(train_counts).detach().cpu().flatten()
    if counts.dtype.is_floating_point and not bool((counts == counts.round()).all()):
        raise ValueError("train_counts must be whole numbers")
    counts = counts.long()
    if bool((counts < 0).any()):
        raise ValueError("train_counts must be >= 0")
    return {
        "many": torch.nonzero(counts > many).flatten(),
        "medium": torch.nonzero((counts >= few) & (counts <= many)).flatten(),
        "few": torch.nonzero(counts < few).flatten(),
    }


def shot_accuracy(
    per_class_acc: Tensor, train_counts: Sequence[int] | Tensor, many: int = 100, few: int = 20
) -> dict[str, float]:
    """Many / Medium / Few accuracy: the unweighted mean of the per-class accuracies in each split.

    Args:
        per_class_acc: ``(K,)`` per-class accuracies (any unit; NaN = class not evaluated, skipped).
        train_counts: ``(K,)`` training counts, see :func:`shot_groups`.

    Returns:
        ``{"many", "medium", "few"}`` in the unit of ``per_class_acc``; NaN for a split with no evaluated class.
    """
    acc = torch.as_tensor(per_class_acc).detach().double().cpu().flatten()
    groups = shot_groups(train_counts, many, few)
    if sum(len(g) for g in groups.values()) != acc.numel():
        n_counts = sum(len(g) for g in groups.values())
        raise ValueError(f"per_class_acc has {acc.numel()} classes, train_counts has {n_counts}")
    return {name: _nanmean(acc[idx]) for name, idx in groups.items()}


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix ``C[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (sklearn layout).

    Returns:
        ``(K, K)`` int64 on the inputs' device.
    """
    _check_pair(preds, labels, num_classes)
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def calibration_stats(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Per-sample quantities of ``p = softmax(logits)`` from which every calibration metric is averaged.

    Computed in float32 (float64 if the logits are) in row chunks, so no more than a chunk of the ``(N, K)``
    softmax exists at a time.

    Returns:
        ``{"confidence": max_k p_k, "correct": argmax == label (bool), "nll": -log p_y,
        "brier": sum_k (p_k - 1[k = y])^2}``, each ``(N,)`` on the logits' device.
    """
    _check_logits(logits, labels)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    parts: dict[str, list[Tensor]] = {"confidence": [], "correct": [], "nll": [], "brier": []}
    for start in range(0, logits.shape[0], _CHUNK):
        z = logits[start : start + _CHUNK].to(dtype)
        y = labels[start : start + _CHUNK].unsqueeze(1)
        logp = F.log_softmax(z, dim=1)
        p = logp.exp()
        conf, pred = p.max(dim=1)
        p_y = p.gather(1, y).squeeze(1)
        parts["confidence"].append(conf)
        parts["correct"].append(pred == y.squeeze(1))
        parts["nll"].append(-logp.gather(1, y).squeeze(1))
        parts["brier"].append((p * p).sum(dim=1) - 2 * p_y + 1)
    if not parts["nll"]:
        empty = logits.new_zeros(0, dtype=dtype)
        return {"confidence": empty, "correct": empty.bool(), "nll": empty, "brier": empty}
    return {key: torch.cat(vals) for key, vals in parts.items()}


def _bin_index(confidence: Tensor, n_bins: int) -> Tensor:
    """Bin of each confidence among ``n_bins`` equal-width bins ``(b/n_bins, (b+1)/n_bins]`` (bin 0 also holds 0).

    The one binning of the project: the ECE and the reliability diagram both use it, so a confidence that lies
    exactly on an edge ``b/n_bins`` falls in the bin *below* the edge in both.
    """
    inner = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype, device=confidence.device)[1:-1]
    return torch.bucketize(confidence, inner, right=False)  # bin b holds (b/n_bins, (b+1)/n_bins]


def _bin_sums(confidence: Tensor, correct: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin sample count, sum of confidences and number correct, each ``(n_bins,)`` float64."""
    bins = _bin_index(confidence, n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device).index_add_(
        0, bins, confidence.double()
    )
    acc_sum = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device).index_add_(0, bins, correct.double())
    count = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device).index_add_(
        0, bins, torch.ones_like(confidence, dtype=torch.float64)
    )
    return count, conf_sum, acc_sum


def _ece_from_stats(confidence: Tensor, correct: Tensor, n_bins: int) -> float:
    n = confidence.numel()
    if n == 0:
        return math.nan
    _, conf_sum, acc_sum = _bin_sums(confidence, correct, n_bins)
    return float((acc_sum - conf_sum).abs().sum() / n)


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 softmax confidence (Guo et al. 2017).

    ``n_bins`` equal-width bins ``(b/n_bins, (b+1)/n_bins]`` (the first also holds 0);
    ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``.

    Returns:
        ECE as a fraction in ``[0, 1]`` (NaN when ``N == 0``).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    stats = calibration_stats(logits, labels)
    return _ece_from_stats(stats["confidence"], stats["correct"], n_bins)


def reliability_bins(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, list[Any]]:
    """Per-bin accuracy, mean confidence and count of the top-1 softmax confidence (the reliability diagram).

    Uses the bins of :func:`expected_calibration_error` (``(b/n_bins, (b+1)/n_bins]``, the first also holds 0)
    and the same confidences, so ``ECE = sum_b count_b / N * |acc_b - conf_b|`` over these bins.

    Returns:
        ``{"bin_edges": [n_bins + 1], "bin_acc": [n_bins], "bin_conf": [n_bins], "bin_count": [n_bins]}``;
        accuracies and confidences are fractions in ``[0, 1]``, ``None`` for an empty bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    stats = calibration_stats(logits, labels)
    count, conf_sum, acc_sum = (t.cpu() for t in _bin_sums(stats["confidence"], stats["correct"], n_bins))
    counts = [int(c) for c in count.tolist()]
    acc = (acc_sum / count.clamp_min(1)).tolist()
    conf = (conf_sum / count.clamp_min(1)).tolist()
    return {
        "bin_edges": torch.linspace(0, 1, n_bins + 1, dtype=torch.float64).tolist(),
        "bin_acc": [a if c > 0 else None for a, c in zip(acc, counts)],
        "bin_conf": [m if c > 0 else None for m, c in zip(conf, counts)],
        "bin_count": counts,
    }


def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood ``-log softmax(logits)_y`` in nats (= cross-entropy; NaN when ``N == 0``)."""
    return _mean(calibration_stats(logits, labels)["nll"])


def brier_score(logits: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score ``mean_i sum_k (p_ik - 1[k = y_i])^2`` on ``softmax(logits)``, range ``[0, 2]``."""
    return _mean(calibration_stats(logits, labels)["brier"])


def summarize(
    logits: Tensor,
    labels: Tensor,
    train_counts: Sequence[int] | Tensor,
    *,
    many: int = 100,
    few: int = 20,
    n_bins: int = 15,
) -> dict[str, Any]:
    """All headline metrics of one evaluation as a JSON-able dict (the keys every metric dict in the project uses).

    Args:
        logits: ``(N, K)``.
        labels: ``(N,)`` int64.
        train_counts: ``(K,)`` training counts (define Many / Medium / Few).
        many, few: shot thresholds, see :func:`shot_groups`.
        n_bins: ECE bins.

    Returns:
        ``{"num_samples": int, "top1", "top5", "mean_per_class", "many", "medium", "few": percent,
        "per_class": [percent | None] * K, "ece": percent, "nll": nats, "brier": float,
        "calibration_by_shot": {"many" | "medium" | "few": {"ece", "nll", "brier", "num_samples"}}}``.
        ``top5`` is ``None`` when ``K < 5``; any NaN (empty split, class absent from ``labels``) is ``None``.
        Split calibration is over the test samples whose *true* class is in the split.
    """
    _check_logits(logits, labels)
    num_classes = logits.shape[1]
    n_counts = torch.as_tensor(train_counts).numel()
    if n_counts != num_classes:
        raise ValueError(f"train_counts has {n_counts} entries, logits have {num_classes} classes")
    preds = logits.argmax(dim=1)
    pca = per_class_accuracy(preds, labels, num_classes).cpu()
    shots = shot_accuracy(pca, train_counts, many, few)
    stats = calibration_stats(logits, labels)
    groups = shot_groups(train_counts, many, few)
    labels_cpu = labels.detach().cpu()
    stats_cpu = {key: val.detach().cpu() for key, val in stats.items()}
    by_shot: dict[str, dict[str, float | int | None]] = {}
    for name in SHOT_NAMES:
        in_split = torch.zeros(num_classes, dtype=torch.bool)
        in_split[groups[name]] = True
        rows = in_split[labels_cpu]
        by_shot[name] = {
            "num_samples": int(rows.sum()),
            "ece": _json(100 * _ece_from_stats(stats_cpu["confidence"][rows], stats_cpu["correct"][rows], n_bins)),
            "nll": _json(_mean(stats_cpu["nll"][rows])),
            "brier": _json(_mean(stats_cpu["brier"][rows])),
        }
    return {
        "num_samples": int(labels.shape[0]),
        "top1": _json(100 * topk_accuracy(logits, labels, 1)) if labels.shape[0] else None,
        "top5": _json(100 * topk_accuracy(logits, labels, 5)) if num_classes >= 5 and labels.shape[0] else None,
        "mean_per_class": _json(100 * _nanmean(pca)),
        "many": _json(100 * shots["many"]),
        "medium": _json(100 * shots["medium"]),
        "few": _json(100 * shots["few"]),
        "per_class": [_json(100 * v) for v in pca.tolist()],
        "ece": _json(100 * _ece_from_stats(stats_cpu["confidence"], stats_cpu["correct"], n_bins)),
        "nll": _json(_mean(stats_cpu["nll"])),
        "brier": _json(_mean(stats_cpu["brier"])),
        "calibration_by_shot": by_shot,
    }


def _nanmean(x: Tensor) -> float:
    x = x.detach().double()
    valid = ~torch.isnan(x)
    return float(x[valid].mean()) if bool(valid.any()) else math.nan


def _mean(x: Tensor) -> float:
    return float(x.double().mean()) if x.numel() else math.nan


def _json(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
