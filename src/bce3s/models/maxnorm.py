"""MaxNorm via projected gradient descent (Alshammari et al., "Long-tailed recognition via weight balancing").

WB (utils/regularizers.py, copied into the official BCE3S code) fixes one threshold per layer from the row
norms ``m_k = ||w_k||`` of the weight *at the start of stage 2*::

    T = min_k m_k + theta * (max_k m_k - min_k m_k)          # theta = 0.1

and after every epoch rescales every row whose norm exceeds ``T`` onto the ball: ``w_k <- w_k * T / ||w_k||``.
The bias gets threshold +inf (never projected), so only the weight is handled here.

Important: on a :class:`~bce3s.models.heads.NormalizedLinear` head the logits use ``w_k / ||w_k||``, so this
projection **cannot change any logit, prediction or loss value**; it only changes the size of later gradient
steps on ``w`` (the gradient through the normalization scales like ``1/||w_k||``). It matters only for a plain
linear head (WB's setting). bce3s offers it for fidelity to the released BCE3S stage 2.

The engine fixes the threshold with :func:`max_norm_threshold` when a stage with ``max_norm`` starts (it is kept
in ``last.pt``) and calls :func:`apply_max_norm` after each of the stage's epochs.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_max_norm", "max_norm_threshold"]


def max_norm_threshold(weight: Tensor, theta: float = 0.1) -> float:
    """WB threshold ``T = min_k m_k + theta * (max_k m_k - min_k m_k)`` from the row norms of ``weight``.

    Args:
        weight: ``(K, D)`` weight (rows = classes); more dims are flattened per row.
        theta: position of ``T`` between the smallest (0) and the largest (1) row norm.

    Returns:
        The threshold as a Python float.
    """
    if weight.dim() < 2 or weight.shape[0] == 0:
        raise ValueError(f"weight must be (K, D) with K >= 1, got shape {tuple(weight.shape)}")
    norms = weight.detach().reshape(weight.shape[0], -1).norm(dim=1)
    return float(norms.min() + theta * (norms.max() - norms.min()))


@torch.no_grad()
def apply_max_norm(weight: Tensor, thresholds: float | Tensor) -> Tensor:
    """Project, in place, every row of ``weight`` whose L2 norm exceeds its threshold onto that norm.

    ``w_k <- w_k * T_k / ||w_k||`` for ``||w_k|| > T_k``; other rows are left untouched.

    Args:
        weight: ``(K, D)`` tensor or parameter, modified in place (no autograd record).
        thresholds: one threshold for all rows, or a ``(K,)`` tensor of per-row thresholds.

    Returns:
        ``weight`` (the same object).
    """
    if weight.dim() < 2:
        raise ValueError(f"weight must be (K, D), got shape {tuple(weight.shape)}")
    rows = weight.reshape(weight.shape[0], -1)
    norms = rows.norm(dim=1)
    t = torch.as_tensor(thresholds, dtype=norms.dtype, device=norms.device)
    if t.dim() not in (0, 1) or (t.dim() == 1 and t.shape[0] != weight.shape[0]):
        raise ValueError(f"thresholds must be a scalar or ({weight.shape[0]},), got shape {tuple(t.shape)}")
    scale = torch.where(norms > t, t / norms, torch.ones_like(norms))
    weight.mul_(scale.to(weight.dtype).view(-1, *([1] * (weight.dim() - 1))))
    return weight

