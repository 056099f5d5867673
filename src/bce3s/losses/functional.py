"""Pure tensor functions behind the BCE3S losses (the contract that modules and other code call).

All functions work on any device and floating dtype, have no state and draw randomness only from an explicit
``generator``. Reduction everywhere is the one the paper's code uses: **sum over classes, mean over samples**.

Paper: W. Fan et al., "BCE3S: Binary Cross-Entropy Based Tripartite Synergistic Learning for Long-tailed
Recognition", AAAI 2026 (arXiv 2511.14097); official code github.com/WakingHours-GitHub/BCE3S @ 663f810
(``head.py``). Symbols of the paper/code: ``neg_weight`` = l, ``logit_clip`` = strict, ``neg_class_ratio`` = r,
``temperature`` = tau, ``scale`` (uniform term) = cc_s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bce3s.losses._validation import (
    ceil_ratio,
    check_clip,
    check_finite,
    check_labels,
    check_positive,
    check_ratio,
    check_target,
    require_2d,
    require_float,
    shape_str,
    soft_targets,
)

__all__ = [
    "bce_contrastive",
    "bce_joint",
    "bce_sum",
    "bce_uniform",
    "effective_number_weights",
    "partial_class_set",
]

# F.normalize epsilon used by the official code for classifier rows, projections and memory slots.
NORM_EPS = 1e-5


# ----------------------------------------------------------------------------------------------------------
# private cores (no checks); the modules call these after validating once
# ----------------------------------------------------------------------------------------------------------


def _bce_rows(
    logits: Tensor, pos: Tensor, neg: Tensor, neg_weight: float = 1.0, logit_clip: float | None = None
) -> Tensor:
    """Per-sample BCE summed over classes: (N, K) -> (N,)."""
    if logit_clip is not None:
        logits = logits.clamp(-logit_clip, logit_clip)
    loss = pos * F.softplus(-logits)
    if neg_weight != 0:
        loss = loss + (neg_weight * neg) * F.softplus(logits)
    return loss.sum(dim=1)


def _mean_rows(rows: Tensor) -> Tensor:
    """Mean over samples that is 0 (with a gradient path) for an empty batch instead of NaN."""
    return rows.sum() / max(rows.shape[0], 1)


def _partial_class_mask(present: Tensor, ratio: float, generator: torch.Generator | None) -> Tensor:
    """Boolean (K,) mask of the partial class set; ``present`` is a (K,) bool mask of positive classes.

    Keys are uniform draws from ``generator`` on its own device (CPU by default, so a seed gives the same set
    on every device), present classes get key -1, and the max(ceil(r*K), #present) smallest keys are kept.
    No host-device synchronisation. With ratio 1 every class is kept and nothing is drawn.
    """
    num_classes = present.shape[0]
    if ratio >= 1.0:
        return torch.ones(num_classes, dtype=torch.bool, device=present.device)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    keys = torch.rand(num_classes, generator=generator, device=gen_device)
    if keys.device != present.device:
        if keys.device.type == "cpu" and present.device.type == "cuda":
            # pinned + non_blocking: the copy does not wait for the device (no host sync in the training step)
            keys = keys.pin_memory().to(present.device, non_blocking=True)
        else:
            keys = keys.to(present.device)
    keys = keys.masked_fill(present, -1.0)
    order = torch.argsort(keys)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(num_classes, device=present.device))
    keep = present.sum().clamp(min=ceil_ratio(ratio, num_classes))
    return rank < keep


def _normalize(x: Tensor) -> Tensor:
    return F.normalize(x, dim=1, eps=NORM_EPS)


def _cosine_logits(embeddings: Tensor, memory: Tensor, temperature: float) -> Tensor:
    """cos(u_i, m_k) / tau: (N, P), (K, P) -> (N, K)."""
    return _normalize(embeddings) @ _normalize(memory.to(embeddings.dtype)).T / temperature


def _uniform(weight: Tensor, scale: float) -> Tensor:
    """(1/K) sum_k [softplus(-s) + sum_{j != k} softplus(s cos(w_k, w_j))] for a (K, D) weight."""
    num_classes = weight.shape[0]
    w = _normalize(weight)
    sp = F.softplus(scale * (w @ w.T))
    # Subtracting the diagonal (instead of masking it) avoids a K x K mask; its gradient cancels exactly.
    off_diagonal = sp.sum() - sp.diagonal().sum()
    diagonal = math.log1p(math.exp(-scale))  # softplus(-s), s > 0
    return off_diagonal / num_classes + diagonal


# ----------------------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------------------


def bce_sum(
    logits: Tensor,
    pos: Tensor,
    neg: Tensor | None = None,
    *,
    neg_weight: float = 1.0,
    logit_clip: float | None = None,
    check_inputs: bool = False,
) -> Tensor:
    """Generic BCE of the paper's code: sum over classes, mean over samples.

    ``(1/N) sum_i sum_k [pos_ik softplus(-t_ik) + neg_weight * neg_ik softplus(t_ik)]`` (official
    ``bce_loss``, head.py:212-221, with a stable softplus instead of ``log(1 + exp(.))``).

    Args:
        logits: t, (N, K).
        pos: positive weights, (N, K): hard 0/1 (bool or float) or soft (e.g. mixup lambda, 1 - lambda).
        neg: negative mask (or weights), (N, K); default ``1 - (pos > 0)`` (every class with zero positive
            weight is a negative).
        neg_weight: weight of the negative terms (the code's ``l``).
        logit_clip: if given, clamp t to [-logit_clip, logit_clip] first (the official code uses 64; gradients
            are zero beyond). Default None: no clamp, which is stable for |t| up to 1e4 and beyond.
        check_inputs: also raise ValueError if any input holds NaN or inf (costs a sync per tensor).

    Returns:
        Scalar loss (0 for an empty batch).
    """
    where = "bce_sum"
    require_float("logits", logits, where)
    require_2d("logits", logits, where)
    if not isinstance(pos, Tensor) or pos.shape != logits.shape:
        got = shape_str(pos) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"{where}: pos must have the shape of logits {shape_str(logits)}, got {got}")
    if neg is not None and (not isinstance(neg, Tensor) or neg.shape != logits.shape):
        got = shape_str(neg) if isinstance(neg, Tensor) else type(neg).__name__
        raise ValueError(f"{where}: neg must have the shape of logits {shape_str(logits)}, got {got}")
    check_positive(where, "neg_weight", neg_weight, allow_zero=True)
    check_clip(where, logit_clip)
    if check_inputs:
        check_finite(where, logits=logits, pos=pos, neg=neg)
    pos_f = pos.to(logits.dtype)
    neg_f = (pos <= 0).to(logits.dtype) if neg is None else neg.to(logits.dtype)
    return _mean_rows(_bce_rows(logits, pos_f, neg_f, neg_weight, logit_clip))


def partial_class_set(
    present: Tensor,
    num_classes: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    check_inputs: bool = False,
) -> Tensor:
    """The classes a clean batch's BCE is computed over (SPEC 7.4).

    Every class present is kept, then classes drawn uniformly at random (from ``generator``) are added until
    the set has max(ceil(ratio * K), #present) classes. Unlike the official ``topk`` trick (head.py:228-233),
    positives are never dropped.

    Args:
        present: the batch's class ids (any shape, duplicates allowed), or a (K,) bool mask of present classes.
        num_classes: K.
        ratio: r in (0, 1]; 1 returns all classes (and draws nothing).
        generator: source of randomness. The draw happens on the generator's device (the default generator is
            the CPU one), so a seeded CPU generator gives the same set whatever device ``present`` is on.
        check_inputs: accepted for a uniform signature; the class-id range is always checked here, because
            building the sorted id list syncs anyway.

    Returns:
        Sorted int64 class ids, on ``present``'s device.
    """
    where = "partial_class_set"
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be an int >= 1 (got {num_classes!r})")
    check_ratio(where, ratio)
    if not isinstance(present, Tensor):
        raise ValueError(f"{where}: present must be a tensor of class ids or a (K,) bool mask")
    if present.dtype == torch.bool:
        if tuple(present.shape) != (num_classes,):
            raise ValueError(f"{where}: a bool mask must have shape ({num_classes},), got {shape_str(present)}")
        mask = present
    elif present.is_floating_point():
        raise ValueError(f"{where}: present must hold int class ids or be a bool mask (got dtype {present.dtype})")
    else:
        ids = present.reshape(-1).long()
        check_labels(where, ids, num_classes, force=True)  # nonzero() below syncs anyway
        mask = torch.zeros(num_classes, dtype=torch.bool, device=present.device)
        mask[ids] = True
    return _partial_class_mask(mask, ratio, generator).nonzero().squeeze(1)


def bce_joint(
    features: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    *,
    neg_class_ratio: float = 1.0,
    generator: torch.Generator | None = None,
    neg_weight: float = 1.0,
    logit_clip: float | None = None,
    check_inputs: bool = False,
) -> Tensor:
    """BCE joint learning between features and classifier vectors for one view (L_sc, SPEC 1.2).

    Logits are ``z = h @ normalize(W).T + b`` (rows of W unit-normalized with eps 1e-5, features not
    normalized). Positives are the target's classes (soft weights for a mixed view), negatives the classes with
    zero target weight. With ``neg_class_ratio < 1`` the BCE runs over :func:`partial_class_set` only (every
    class with positive weight is kept, random negatives fill up to ceil(r*K)); the paper applies this to the
    clean view only and uses all classes (ratio 1) for mixed views.

    Args:
        features: h, (N, D).
        weight: raw classifier weight W, (K, D).
        bias: b, (K,), or None.
        target: (N,) class ids or (N, K) soft targets.
        neg_class_ratio: r in (0, 1].
        generator: randomness of the partial class set (see :func:`partial_class_set`).
        neg_weight: weight of the negative terms.
        logit_clip: optional clamp of the logits (official: 64).
        check_inputs: also reject NaN/inf inputs, and check the class-id range on accelerators too (the
            range is always checked on the CPU); costs host syncs.

    Returns:
        Scalar loss (sum over classes, mean over samples).
    """
    where = "bce_joint"
    require_float("features", features, where)
    require_float("weight", weight, where)
    require_2d("features", features, where)
    require_2d("weight", weight, where)
    num_classes = weight.shape[0]
    if features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{where}: features {shape_str(features)} and weight {shape_str(weight)} disagree on the feature size"
        )
    if bias is not None and tuple(bias.shape) != (num_classes,):
        raise ValueError(f"{where}: bias must have shape ({num_classes},), got {shape_str(bias)}")
    check_target(where, target, features.shape[0], num_classes, force=check_inputs)
    check_ratio(where, neg_class_ratio)
    check_positive(where, "neg_weight", neg_weight, allow_zero=True)
    check_clip(where, logit_clip)
    if check_inputs:
        check_finite(where, features=features, weight=weight, bias=bias, target=target)
    logits = features @ _normalize(weight).T
    if bias is not None:
        logits = logits + bias
    q = soft_targets(target, num_classes, logits)
    positive = q > 0
    columns = _partial_class_mask(positive.any(dim=0), neg_class_ratio, generator)
    neg = (~positive & columns).to(logits.dtype)
    return _mean_rows(_bce_rows(logits, q, neg, neg_weight, logit_clip))


def bce_contrastive(
    embeddings: Tensor,
    memory: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    seen: Tensor | None = None,
    neg_weight: float = 1.0,
    logit_clip: float | None = None,
    check_inputs: bool = False,
) -> Tensor:
    """BCE contrastive learning among features for one view (L_ss, SPEC 1.3).

    Logits ``g_ik = cos(u_i, M_k) / tau`` against a class memory (one stored projection per class), fed to
    :func:`bce_sum` with the view's positives (class ids or soft weights) and negatives (zero-weight classes).
    Classes with ``seen == False`` are left out of the logits: their columns contribute nothing, positives on
    them included (numerically identical to removing the columns, without a host sync).

    Args:
        embeddings: projector outputs u, (N, P) (not normalized).
        memory: M, (K, P) (not normalized; cast to ``embeddings``' dtype).
        target: (N,) class ids or (N, K) soft targets.
        temperature: tau > 0 (the released run uses 1.0).
        seen: (K,) bool; None means all classes are in the memory.
        neg_weight: weight of the negative terms.
        logit_clip: optional clamp of the logits.
        check_inputs: also reject NaN/inf inputs, and check the class-id range on accelerators too (the
            range is always checked on the CPU); costs host syncs.

    Returns:
        Scalar loss (sum over classes, mean over samples).
    """
    where = "bce_contrastive"
    require_float("embeddings", embeddings, where)
    require_float("memory", memory, where)
    require_2d("embeddings", embeddings, where)
    require_2d("memory", memory, where)
    num_classes = memory.shape[0]
    if embeddings.shape[1] != memory.shape[1]:
        raise ValueError(
            f"{where}: embeddings {shape_str(embeddings)} and memory {shape_str(memory)} disagree on the size P"
        )
    if seen is not None and (seen.dtype != torch.bool or tuple(seen.shape) != (num_classes,)):
        raise ValueError(f"{where}: seen must be a bool tensor of shape ({num_classes},)")
    check_target(where, target, embeddings.shape[0], num_classes, force=check_inputs)
    check_positive(where, "temperature", temperature)
    check_positive(where, "neg_weight", neg_weight, allow_zero=True)
    check_clip(where, logit_clip)
    if check_inputs:
        check_finite(where, embeddings=embeddings, memory=memory, target=target)
    logits = _cosine_logits(embeddings, memory, temperature)
    q = soft_targets(target, num_classes, logits)
    neg = (q == 0).to(logits.dtype)
    if seen is not None:
        keep = seen.to(device=logits.device, dtype=logits.dtype)
        q, neg = q * keep, neg * keep
    return _mean_rows(_bce_rows(logits, q, neg, neg_weight, logit_clip))


def bce_uniform(weight: Tensor, *, scale: float = 1.0, check_inputs: bool = False) -> Tensor:
    """BCE uniform learning among classifier vectors (L_cc, SPEC 1.4).

    ``(1/K) sum_k [softplus(-s) + sum_{j != k} softplus(s cos(w_k, w_j))]``: every pair of classifier
    directions repels equally, independent of class frequency. The diagonal term is the constant
    softplus(-s). For K = 100, s = 1: 68.44 at the simplex ETF, 68.93 for orthogonal rows.

    Args:
        weight: raw classifier weight W, (K, D).
        scale: s (the code's ``cc_s``), > 0.
        check_inputs: also reject NaN/inf inputs, and check the class-id range on accelerators too (the
            range is always checked on the CPU); costs host syncs.

    Returns:
        Scalar loss.
    """
    where = "bce_uniform"
    require_float("weight", weight, where)
    require_2d("weight", weight, where)
    if weight.shape[0] < 1:
        raise ValueError(f"{where}: weight must have at least one row")
    check_positive(where, "scale", scale)
    if check_inputs:
        check_finite(where, weight=weight)
    return _uniform(weight, scale)


def effective_number_weights(counts: Sequence[int] | Tensor, beta: float) -> Tensor:
    """Class-balanced weights of Cui et al. (CVPR 2019): (1 - beta) / (1 - beta^n_c), rescaled to sum to K.

    beta = 0 gives all ones; beta -> 1 approaches inverse frequency. A class with zero count gets weight 0
    (it never occurs as a target) and the others are rescaled to sum to K.

    Args:
        counts: training images per class, length K.
        beta: in [0, 1).

    Returns:
        float32 tensor (K,) (on ``counts``' device when it is a tensor).
    """
    where = "effective_number_weights"
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0 <= beta < 1:
        raise ValueError(f"{where}: beta must be in [0, 1) (got {beta!r})")
    device = counts.device if isinstance(counts, Tensor) else torch.device("cpu")
    n = torch.as_tensor(counts, dtype=torch.float64, device=device).reshape(-1)
    if n.numel() == 0:
        raise ValueError(f"{where}: counts is empty")
    if not bool(torch.isfinite(n).all()) or bool((n < 0).any()):
        raise ValueError(f"{where}: counts must be finite and >= 0")
    if not bool((n > 0).any()):
        raise ValueError(f"{where}: every class count is 0")
    if beta == 0:
        w = (n > 0).to(torch.float64)
    else:
        # 1 - beta^n computed as -expm1(n log beta): exact for beta close to 1 (0.99999) and large n.
        effective = -torch.expm1(n * math.log1p(beta - 1.0))
        w = torch.where(n > 0, (1.0 - beta) / effective.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    w = w * (n.numel() / w.sum())
    return w.to(torch.float32)
