"""Softmax baselines: cross-entropy (``ce``) and focal loss (``focal``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bce3s.losses._inputs import is_hard, soft_targets
from bce3s.losses.base import Loss, LossOutput
from bce3s.losses.params import check_param

__all__ = ["CrossEntropyLoss", "FocalLoss", "ce_rows", "focal_rows"]


def ce_rows(logits: Tensor, target: Tensor) -> Tensor:
    """Per-sample cross-entropy, (N,): class ids or soft targets (``-sum_k q_k log softmax(z)_k``)."""
    if is_hard(target):
        return F.cross_entropy(logits, target.to(device=logits.device, dtype=torch.long), reduction="none")
    return F.cross_entropy(logits, target.to(device=logits.device, dtype=logits.dtype), reduction="none")


def focal_rows(logits: Tensor, q: Tensor, gamma: float) -> Tensor:
    """Per-sample softmax focal loss ``-sum_k q_k (1 - p_k)^gamma log p_k``, (N,); gamma = 0 is CE."""
    if gamma == 0:
        return ce_rows(logits, q)
    log_p = F.log_softmax(logits, dim=1)
    # 1 - p = -expm1(log p) is exact near p = 1; the clamp keeps pow's gradient finite for gamma < 1.
    one_minus_p = (-torch.expm1(log_p)).clamp(min=torch.finfo(log_p.dtype).tiny)
    return -(q * one_minus_p.pow(gamma) * log_p).sum(dim=1)


def _mean(rows: Tensor) -> Tensor:
    return rows.sum() / max(rows.shape[0], 1)


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy (registry name ``ce``), mean over samples; class ids or soft targets.

    Args:
        num_classes: K.
    """

    def _compute(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        view: Tensor | None,
        embeddings: Tensor | None,
        weight: Tensor | None,
    ) -> LossOutput:
        loss = _mean(ce_rows(logits, target))
        return LossOutput(loss, {"ce": loss.detach()})


class FocalLoss(Loss):
    """Softmax focal loss (registry name ``focal``; Lin et al. 2017, as in the LDAM-DRW code).

    ``loss = (1/N) sum_i -sum_k q_ik (1 - p_ik)^gamma log p_ik`` with p = softmax(z); for class ids this is
    ``(1 - p_y)^gamma * CE``. gamma = 0 is cross-entropy.

    Args:
        num_classes: K.
        gamma: focusing parameter >= 0 (default 1.0, the LDAM-DRW CIFAR baseline).
    """

    def __init__(self, num_classes: int, *, gamma: float = 1.0) -> None:
        super().__init__(num_classes)
        self.gamma = check_param("gamma", gamma)

    def _compute(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        view: Tensor | None,
        embeddings: Tensor | None,
        weight: Tensor | None,
    ) -> LossOutput:
        q = soft_targets(target, self.num_classes, logits)
        loss = _mean(focal_rows(logits, q, self.gamma))
        return LossOutput(loss, {"focal": loss.detach()})

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma={self.gamma}"
