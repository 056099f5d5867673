"""MaxNorm via projected gradient descent (Alshammari et al., "weight balancing"; SPEC 2.3).

WB (utils/regularizers.py, copied into the official BCE3S code) fixes one threshold per layer from the row
norms ``m_k = ||w_k||`` of the weight *at the start of stage 2*::

    T = min_k m_k + theta * (max_k m_k - min_k m_k)          # theta = 0.1

and after every epoch rescales every row whose norm exceeds ``T`` onto the ball: ``w_k <- w_k * T / ||w_k||``.
The bias gets threshold +inf (never projected), so only the weight is handled here.

Important: on a :class:`~bce3s.models.heads.NormalizedLinear` head the logits use ``w_k / ||w_k||``, so this
projection **cannot change any logit, prediction or loss value**; it only changes the size of later gradient
steps on ``w`` (the gradient through the normalization scales like ``1/||w_k||``). It matters only for a plain
linear head (WB's setting). The project offers it for fidelity (SPEC 7.9).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MaxNorm", "apply_max_norm", "max_norm_threshold"]


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


class MaxNorm:
    """Stateful WB MaxNorm: the threshold is fixed from the first weight it sees, then applied per epoch.

    Example::

        maxnorm = MaxNorm(theta=0.1)
        maxnorm.fit(model.head.weight)      # at the start of stage 2 (or lazily on the first apply)
        for epoch in range(epochs):
            train_one_epoch(...)
            maxnorm.apply(model.head.weight)

    Args:
        theta: see :func:`max_norm_threshold`.
    """

    def __init__(self, theta: float = 0.1) -> None:
        if theta < 0:
            raise ValueError(f"theta must be >= 0, got {theta}")
        self.theta = float(theta)
        self.threshold: float | None = None

    def fit(self, weight: Tensor) -> float:
        """Fix the threshold from the current row norms of ``weight`` ``(K, D)``; returns it."""
        self.threshold = max_norm_threshold(weight, self.theta)
        return self.threshold

    def apply(self, weight: Tensor) -> Tensor:
        """Project ``weight`` in place (fitting the threshold first if not yet fitted, as WB does)."""
        if self.threshold is None:
            self.fit(weight)
        assert self.threshold is not None
        return apply_max_norm(weight, self.threshold)

    __call__ = apply

    def state_dict(self) -> dict[str, float | None]:
        """Checkpointable state (``theta`` and the fixed ``threshold``)."""
        return {"theta": self.theta, "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        """Restore :meth:`state_dict` output."""
        theta = state["theta"]
        self.theta = float(theta) if theta is not None else 0.1
        threshold = state["threshold"]
        self.threshold = None if threshold is None else float(threshold)
