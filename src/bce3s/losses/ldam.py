"""LDAM loss with deferred re-weighting (``ldam``; Cao et al., NeurIPS 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from bce3s.losses._inputs import counts_tensor, soft_targets
from bce3s.losses.base import Loss, LossOutput
from bce3s.losses.functional import effective_number_weights
from bce3s.losses.params import check_param
from bce3s.losses.softmax import ce_rows

__all__ = ["LDAMLoss"]


class LDAMLoss(Loss):
    """Label-distribution-aware margin loss with optional deferred re-weighting (DRW).

    Margins ``m_k = max_margin * (min_j n_j / n_k)^(1/4)`` (so the rarest class gets ``max_margin``) are
    subtracted from the target logit, the result is scaled by ``s`` and fed to a weighted cross-entropy:
    ``loss = sum_i w_{y_i} CE(s (z_i - m_{y_i} e_{y_i}), y_i) / sum_i w_{y_i}`` (the weighted mean of
    ``F.cross_entropy(weight=...)``, as in the official LDAM-DRW code). With DRW the class weights are 1 before
    ``drw_epoch`` and the effective-number weights (beta) from then on; :meth:`set_epoch` switches them. For soft
    targets the margin is ``q_k m_k`` on every logit and the sample weight ``q @ w``.

    Args:
        num_classes: K.
        class_counts: training images per class (counts of 0 are treated as 1).
        max_margin: largest margin (default 0.5).
        s: logit scale (default 30).
        drw_epoch: first epoch of re-weighting (LDAM-DRW uses 160 of 200); None = no re-weighting.
        beta: effective-number beta of the DRW weights (default 0.9999).
    """

    class_counts: Tensor
    margins: Tensor
    class_weight: Tensor

    def __init__(
        self,
        num_classes: int,
        class_counts: object,
        *,
        max_margin: float = 0.5,
        s: float = 30.0,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
    ) -> None:
        super().__init__(num_classes)
        self.max_margin = check_param("max_margin", max_margin)
        self.s = check_param("s", s)
        self.drw_epoch = check_param("drw_epoch", drw_epoch)
        self.beta = check_param("beta", beta)
        counts = counts_tensor(class_counts, num_classes)
        self.register_buffer("class_counts", counts)
        inv_root = counts.clamp(min=1.0).pow(-0.25)
        self.register_buffer("margins", inv_root * (self.max_margin / inv_root.max()))
        self.register_buffer("class_weight", self.drw_weights(0))
        self.epoch = 0

    def drw_weights(self, epoch: int) -> Tensor:
        """Class weights (K,) used at ``epoch``: ones before ``drw_epoch`` (or without DRW), else the
        effective-number weights. A pure function of ``epoch`` (and the constructor arguments)."""
        if self.drw_epoch is None or epoch < self.drw_epoch:
            return torch.ones_like(self.class_counts)
        return effective_number_weights(self.class_counts, self.beta).to(self.class_counts.device)

    def set_epoch(self, epoch: int) -> None:
        """Switch the class weights to those of ``epoch`` (DRW)."""
        self.epoch = int(epoch)
        self.class_weight.copy_(self.drw_weights(self.epoch))

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
        adjusted = self.s * (logits - q * self.margins.to(logits.dtype))
        w = q @ self.class_weight.to(logits.dtype)
        rows = ce_rows(adjusted, target)
        loss = (w * rows).sum() / w.sum().clamp(min=torch.finfo(w.dtype).tiny)
        return LossOutput(loss, {"ldam": loss.detach()})

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, max_margin={self.max_margin}, s={self.s}, "
            f"drw_epoch={self.drw_epoch}, beta={self.beta}"
        )
