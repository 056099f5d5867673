"""Pure tensor functions behind the BCE3S losses: what the loss modules run during training.

All functions work on any device and floating dtype, have no state and draw randomness only from an explicit
``generator``. Reduction everywhere is the one the paper's code uses: **sum over classes, mean over samples**.
Rows of a training batch belong to views (0 clean, 1 mixup, 2 cutmix, see :mod:`bce3s.views`); rows are selected
by view id with a one-hot matrix, never by boolean indexing, so nothing here waits for the device.

Paper: W. Fan et al., "BCE3S: Binary Cross-Entropy Based Tripartite Synergistic Learning for Long-tailed
Recognition", AAAI 2026 (arXiv 2511.14097). Symbols of the paper: ``neg_weight`` = l, ``logit_clip`` = the
code's clamp, ``neg_class_ratio`` = r, ``temperature`` = tau, ``scale`` (uniform term) = cc_s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bce3s.losses._inputs import (
    ceil_ratio,
    check_finite,
    check_labels,
    check_target,
    require_2d,
    require_float,
    shape_str,
    soft_targets,
)
from bce3s.losses._kernels import NORM_EPS, CosineBce, LogitBce, Uniform
from bce3s.losses.params import check_param
from bce3s.views import CLEAN, NUM_VIEWS

__all__ = [
    "bce_contrastive",
    "bce_joint",
    "bce_sum",
    "bce_uniform",
    "effective_number_weights",
    "partial_class_set",
]

#: The class set of the clean rows in :func:`bce_joint`: a (K,) bool mask, or a function from the (K,) bool mask
#: of the classes present in the clean rows to such a mask (e.g. a seeded
#: :class:`~bce3s.losses.partial.PartialClassSampler`).
ClassSet = Tensor | Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------------------------------------
# private cores (no checks)
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
    """(K,) bool mask of the partial class set around the (K,) bool mask ``present`` (no host sync)."""
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
    return _partial_class_mask_from_keys(present, ratio, keys)


def _partial_class_mask_from_keys(present: Tensor, ratio: float, keys: Tensor) -> Tensor:
    """:func:`_partial_class_mask` with its (K,) uniform keys already drawn (on ``present``'s device)."""
    num_classes = present.shape[0]
    keys = keys.masked_fill(present, -1.0)
    order = torch.argsort(keys)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(num_classes, device=present.device))
    keep = present.sum().clamp(min=ceil_ratio(ratio, num_classes))
    return rank < keep


def _view_sizes(view: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N,) view ids -> the ids as int64 on like's device, the rows of each view (3,) and each row's view size (N,).

    Sizes are in like's dtype; no host sync.
    """
    view = view.to(device=like.device, dtype=torch.long)
    counts = torch.zeros(NUM_VIEWS, dtype=like.dtype, device=like.device)
    counts.index_add_(0, view, torch.ones_like(view, dtype=like.dtype))
    return view, counts, counts[view]


def _check_view(where: str, view: Tensor | None, num_rows: int) -> None:
    if view is None:
        return
    if not isinstance(view, Tensor) or view.is_floating_point() or view.dtype == torch.bool:
        raise ValueError(f"{where}: view must be an int64 tensor of view ids (0 clean, 1 mixup, 2 cutmix)")
    if tuple(view.shape) != (num_rows,):
        raise ValueError(f"{where}: view must have shape ({num_rows},), got {shape_str(view)}")


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
    sample_weight: Tensor | None = None,
    check_inputs: bool = False,
) -> Tensor:
    """Generic BCE: sum over classes, mean over samples.

    ``(1/N) sum_i a_i sum_k [pos_ik softplus(-t_ik) + neg_weight * neg_ik softplus(t_ik)]`` with a stable
    softplus (not ``log(1 + exp(.))``) and sample weights a (default 1).

    Args:
        logits: t, (N, K).
        pos: positive weights, (N, K): hard 0/1 (bool or float) or soft (e.g. mixup lambda, 1 - lambda).
        neg: negative mask (or weights), (N, K); default ``1 - (pos > 0)`` (every class with zero positive
            weight is a negative).
        neg_weight: weight of the negative terms (the paper's ``l``), >= 0.
        logit_clip: if given, clamp t to [-logit_clip, logit_clip] first (the official code uses 64; gradients
            are zero beyond). Default None: no clamp, which is stable for |t| up to 1e4 and beyond.
        sample_weight: a, (N,), or None.
        check_inputs: also raise ValueError if any input holds NaN or inf (costs a sync per tensor).

    Returns:
        Scalar loss (0 for an empty batch).
    """
    where = "bce_sum"
    require_float("logits", logits, where)
    require_2d("logits", logits, where)
    expected = {
        "pos": (pos, logits.shape),
        "neg": (neg, logits.shape),
        "sample_weight": (sample_weight, logits.shape[:1]),
    }
    for name, (t, shape) in expected.items():
        if (t is not None or name == "pos") and (not isinstance(t, Tensor) or t.shape != shape):
            got = shape_str(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{where}: {name} must have shape {tuple(shape)}, got {got}")
    neg_weight = check_param("neg_weight", neg_weight)
    logit_clip = check_param("logit_clip", logit_clip)
    if check_inputs:
        check_finite(where, logits=logits, pos=pos, neg=neg, sample_weight=sample_weight)
    pos_f = pos.to(logits.dtype)
    neg_f = (pos <= 0).to(logits.dtype) if neg is None else neg.to(logits.dtype)
    rows = _bce_rows(logits, pos_f, neg_f, neg_weight, logit_clip)
    if sample_weight is not None:
        rows = sample_weight.to(rows.dtype) * rows
    return _mean_rows(rows)


def partial_class_set(
    present: Tensor,
    num_classes: int,
    neg_class_ratio: float,
    *,
    generator: torch.Generator | None = None,
    check_inputs: bool = False,
) -> Tensor:
    """The classes a clean view's BCE is computed over, as a (K,) bool mask.

    Every class present is kept, then classes drawn uniformly at random (from ``generator``) are added until
    the set has max(ceil(r * K), #present) classes: unlike a plain top-k draw, positives are never dropped.
    Keys are uniform draws on the generator's device (CPU by default, so a seed gives the same set on every
    device); nothing waits for the device.

    Args:
        present: the batch's class ids (any shape, duplicates allowed), or a (K,) bool mask of present classes.
        num_classes: K.
        neg_class_ratio: r in (0, 1]; 1 returns all classes (and draws nothing).
        generator: source of randomness.
        check_inputs: check the class-id range of accelerator tensors too (a host sync; CPU ids are always
            checked).

    Returns:
        (K,) bool mask on ``present``'s device; ``mask.nonzero().squeeze(1)`` gives the sorted class ids.
    """
    where = "partial_class_set"
    num_classes = check_param("num_classes", num_classes)
    neg_class_ratio = check_param("neg_class_ratio", neg_class_ratio)
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
        check_labels(where, ids, num_classes, force=check_inputs)
        mask = torch.zeros(num_classes, dtype=torch.bool, device=present.device)
        mask[ids] = True
    return _partial_class_mask(mask, neg_class_ratio, generator)


def bce_joint(
    logits: Tensor,
    target: Tensor,
    *,
    view: Tensor | None = None,
    classes: ClassSet | None = None,
    neg_weight: float = 1.0,
    logit_clip: float | None = None,
    check_inputs: bool = False,
) -> Tensor:
    """BCE joint learning between features and classifier vectors (L_sc), over all views of a batch.

    The logits must come from the normalized classifier, ``z = h @ normalize(W).T + b`` (rows of W
    unit-normalized with eps 1e-5, features not normalized). Per view v,
    ``L^v = (1/n_v) sum_{i in v} sum_k [q_ik softplus(-z_ik) + l * n_ik softplus(z_ik)]`` with positives q the
    target's weights (one-hot for clean rows, mixing weights for mixed rows) and negatives n the classes of zero
    weight. For clean rows the negatives are restricted to ``classes`` (the partial class set; positives always
    count); mixed rows use all classes. The result is the mean over the views present.

    Args:
        logits: z, (N, K).
        target: (N,) class ids or (N, K) soft targets.
        view: (N,) int64 view ids (0 clean, 1 mixup, 2 cutmix); None = all rows clean.
        classes: the clean rows' class set: None (all K classes), a (K,) bool mask (see
            :func:`partial_class_set`), or a function from the (K,) bool mask of the classes present in the
            clean rows to that mask (e.g. a :class:`~bce3s.losses.partial.PartialClassSampler`, drawn per call).
        neg_weight: l, weight of the negative terms, >= 0.
        logit_clip: optional clamp of the logits (official: 64).
        check_inputs: also reject NaN/inf inputs, and check the class-id range on accelerators too (the
            range is always checked on the CPU); costs host syncs.

    Returns:
        Scalar loss (0 for an empty batch).
    """
    where = "bce_joint"
    require_float("logits", logits, where)
    require_2d("logits", logits, where)
    num_rows, num_classes = logits.shape
    check_target(where, target, num_rows, num_classes, force=check_inputs)
    _check_view(where, view, num_rows)
    if isinstance(classes, Tensor) and (classes.dtype != torch.bool or tuple(classes.shape) != (num_classes,)):
        raise ValueError(f"{where}: classes must be a bool tensor of shape ({num_classes},)")
    neg_weight = check_param("neg_weight", neg_weight)
    logit_clip = check_param("logit_clip", logit_clip)
    if check_inputs:
        check_finite(where, logits=logits, target=target)
    q = soft_targets(target, num_classes, logits)
    # row weight 1 / (n_v * #views present): the mean over the views present of each view's mean
    if view is None:
        row = logits.new_full((num_rows,), 1.0 / max(num_rows, 1))
    else:
        view, counts, sizes = _view_sizes(view, logits)
        row = ((counts > 0).sum() * sizes).reciprocal()
    negative = q <= 0
    if classes is not None:
        clean = torch.ones(num_rows, dtype=torch.bool, device=logits.device) if view is None else view == CLEAN
        columns = classes if isinstance(classes, Tensor) else classes((~negative & clean[:, None]).any(dim=0))
        negative = torch.where(clean[:, None], negative & columns.to(logits.device)[None, :], negative)
    neg_row = row if neg_weight == 1.0 else row * neg_weight
    return LogitBce.apply(logits, q * row[:, None], negative * neg_row[:, None], logit_clip)


def bce_contrastive(
    embeddings: Tensor,
    memory: Tensor,
    target: Tensor,
    *,
    view: Tensor | None = None,
    temperature: float = 1.0,
    seen: Tensor | None = None,
    neg_weight: float = 1.0,
    logit_clip: float | None = None,
    check_inputs: bool = False,
) -> Tensor:
    """BCE contrastive learning among features (L_ss) against a class memory, over all views of a batch.

    Logits ``g_ik = cos(u_i, M_k) / tau`` against a memory of one stored projection per class, with the BCE of
    :func:`bce_sum`: positives the target's weights, negatives the zero-weight classes. Classes with
    ``seen == False`` are left out (their columns contribute nothing, positives on them included; nothing
    seen gives 0). The result is the **sum** over the mixed views present of each view's mean; the clean rows
    are the anchors (their mean) only when the batch has no mixed rows.

    Args:
        embeddings: projector outputs u, (N, P) (not normalized).
        memory: M, (K, P) (not normalized; cast to ``embeddings``' dtype and device).
        target: (N,) class ids or (N, K) soft targets.
        view: (N,) int64 view ids (0 clean, 1 mixup, 2 cutmix); None = all rows clean (then the mean over rows).
        temperature: tau > 0.
        seen: (K,) bool; None means all classes are in the memory.
        neg_weight: weight of the negative terms, >= 0.
        logit_clip: optional clamp of the logits.
        check_inputs: also reject NaN/inf inputs, and check the class-id range on accelerators too (the
            range is always checked on the CPU); costs host syncs.

    Returns:
        Scalar loss.
    """
    where = "bce_contrastive"
    require_float("embeddings", embeddings, where)
    require_float("memory", memory, where)
    require_2d("embeddings", embeddings, where)
    require_2d("memory", memory, where)
    num_rows, num_classes = embeddings.shape[0], memory.shape[0]
    if embeddings.shape[1] != memory.shape[1]:
        raise ValueError(
            f"{where}: embeddings {shape_str(embeddings)} and memory {shape_str(memory)} disagree on the size P"
        )
    if seen is not None and (seen.dtype != torch.bool or tuple(seen.shape) != (num_classes,)):
        raise ValueError(f"{where}: seen must be a bool tensor of shape ({num_classes},)")
    check_target(where, target, num_rows, num_classes, force=check_inputs)
    _check_view(where, view, num_rows)
    temperature = check_param("temperature", temperature)
    neg_weight = check_param("neg_weight", neg_weight)
    logit_clip = check_param("logit_clip", logit_clip)
    if check_inputs:
        check_finite(where, embeddings=embeddings, memory=memory, target=target)
    memory = memory.to(device=embeddings.device, dtype=embeddings.dtype)
    norms = torch.linalg.vector_norm(memory, dim=1, keepdim=True).clamp(min=NORM_EPS)
    memory_hat = memory / (norms if temperature == 1.0 else norms * temperature)
    q = soft_targets(target, num_classes, embeddings)
    # row weight: 1 / n_v for mixed rows, and for clean rows only when no row is mixed
    if view is None:
        row = embeddings.new_full((num_rows,), 1.0 / max(num_rows, 1))
    else:
        view, counts, sizes = _view_sizes(view, embeddings)
        row = ((view != CLEAN) == (counts[CLEAN] < num_rows)) / sizes
    weight = row[:, None] if seen is None else row[:, None] * seen.to(device=q.device, dtype=q.dtype)
    neg = (q == 0) * (weight if neg_weight == 1.0 else weight * neg_weight)
    return CosineBce.apply(embeddings, memory_hat, q * weight, neg, logit_clip)


def bce_uniform(weight: Tensor, *, scale: float = 1.0, check_inputs: bool = False) -> Tensor:
    """BCE uniform learning among classifier vectors (L_cc).

    ``(1/K) sum_k [softplus(-s) + sum_{j != k} softplus(s cos(w_k, w_j))]``: every pair of classifier
    directions repels equally, independent of class frequency. The diagonal term is the constant
    softplus(-s). For K = 100, s = 1: 68.44 at the simplex ETF, 68.93 for orthogonal rows.

    Args:
        weight: raw classifier weight W, (K, D).
        scale: s > 0.
        check_inputs: also reject NaN/inf inputs (a host sync).

    Returns:
        Scalar loss.
    """
    where = "bce_uniform"
    require_float("weight", weight, where)
    require_2d("weight", weight, where)
    if weight.shape[0] < 1:
        raise ValueError(f"{where}: weight must have at least one row")
    scale = check_param("scale", scale)
    if check_inputs:
        check_finite(where, weight=weight)
    return Uniform.apply(weight, scale)


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
    beta = check_param("beta", beta)
    device = counts.device if isinstance(counts, Tensor) else torch.device("cpu")
    n = torch.as_tensor(counts, dtype=torch.float64, device=device).reshape(-1)
    if n.numel() == 0:
        raise ValueError("class_counts: is empty")
    if not bool(torch.isfinite(n).all()) or bool((n < 0).any()):
        raise ValueError("class_counts: must be finite and >= 0")
    if not bool((n > 0).any()):
        raise ValueError("class_counts: every class count is 0")
    if beta == 0:
        w = (n > 0).to(torch.float64)
    else:
        # 1 - beta^n computed as -expm1(n log beta): exact for beta close to 1 (0.99999) and large n.
        effective = -torch.expm1(n * math.log1p(beta - 1.0))
        w = torch.where(n > 0, (1.0 - beta) / effective.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    w = w * (n.numel() / w.sum())
    return w.to(torch.float32)
