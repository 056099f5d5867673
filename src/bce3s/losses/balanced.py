"""Class-frequency-aware baselines: class-balanced losses (Cui et al. 2019), balanced softmax (Ren et al. 2020),
logit adjustment (Menon et al. 2021) and the class-balanced BCE of the BCE3S stage 2 (``cb_bce``).

All take ``class_counts`` (training images per class, index = class id) and keep them as buffers. Classes with a
count of 0 are treated as having 1 image where a logarithm of the count is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bce3s.losses._inputs import counts_tensor, soft_targets
from bce3s.losses.base import Loss, LossOutput
from bce3s.losses.functional import bce_sum, effective_number_weights
from bce3s.losses.params import check_param
from bce3s.losses.partial import PartialClassSampler
from bce3s.losses.softmax import ce_rows

__all__ = [
    "BalancedSoftmaxLoss",
    "ClassBalancedBCELoss",
    "ClassBalancedFocalLoss",
    "ClassBalancedSigmoidLoss",
    "ClassBalancedSoftmaxLoss",
    "LogitAdjustedLoss",
]


def _mean(rows: Tensor) -> Tensor:
    return rows.sum() / max(rows.shape[0], 1)


class _CountsLoss(Loss):
    """A loss that keeps ``class_counts`` (K,) float32 as a buffer."""

    class_counts: Tensor

    def __init__(self, num_classes: int, class_counts: object) -> None:
        super().__init__(num_classes)
        self.register_buffer("class_counts", counts_tensor(class_counts, num_classes))

    def _log_prior(self) -> Tensor:
        counts = self.class_counts.double().clamp(min=1.0)  # float64: exact log prior for float64 logits
        return torch.log(counts / counts.sum())


class _ClassBalancedLoss(_CountsLoss):
    """Per-sample weight alpha_y = effective-number weight of the sample's class (q @ alpha for soft targets)."""

    class_weight: Tensor

    def __init__(self, num_classes: int, class_counts: object, beta: float) -> None:
        super().__init__(num_classes, class_counts)
        self.beta = check_param("beta", beta)
        self.register_buffer("class_weight", effective_number_weights(self.class_counts, beta))

    def _sample_weights(self, q: Tensor) -> Tensor:
        return q @ self.class_weight.to(q.dtype)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, beta={self.beta}"


class ClassBalancedSoftmaxLoss(_ClassBalancedLoss):
    """Class-balanced softmax cross-entropy (registry name ``cb_softmax``; Cui et al., CVPR 2019).

    ``loss = (1/N) sum_i alpha_{y_i} CE_i`` with alpha = (1 - beta) / (1 - beta^n) rescaled to sum to K
    (:func:`~bce3s.losses.functional.effective_number_weights`). beta = 0 gives plain CE.

    Args:
        num_classes: K.
        class_counts: training images per class.
        beta: in [0, 1) (default 0.9999).
    """

    def __init__(self, num_classes: int, class_counts: object, *, beta: float = 0.9999) -> None:
        super().__init__(num_classes, class_counts, beta)

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
        loss = _mean(self._sample_weights(q) * ce_rows(logits, q))
        return LossOutput(loss, {"cb_softmax": loss.detach()})


class ClassBalancedSigmoidLoss(_ClassBalancedLoss):
    """Class-balanced sigmoid BCE (registry name ``cb_sigmoid``; Cui et al., CVPR 2019).

    ``loss = (1/N) sum_i alpha_{y_i} sum_k BCE(z_ik, q_ik)`` (sum over classes, mean over samples, the BCE3S
    convention). beta = 0 gives :func:`~bce3s.losses.functional.bce_sum` with one-hot targets.

    Args:
        num_classes: K.
        class_counts: training images per class.
        beta: in [0, 1) (default 0.9999).
    """

    def __init__(self, num_classes: int, class_counts: object, *, beta: float = 0.9999) -> None:
        super().__init__(num_classes, class_counts, beta)

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
        rows = F.binary_cross_entropy_with_logits(logits, q, reduction="none").sum(dim=1)
        loss = _mean(self._sample_weights(q) * rows)
        return LossOutput(loss, {"cb_sigmoid": loss.detach()})


class ClassBalancedFocalLoss(_ClassBalancedLoss):
    """Class-balanced sigmoid focal loss (registry name ``cb_focal``; Cui et al., CVPR 2019).

    ``loss = (1/N) sum_i alpha_{y_i} sum_k (1 - p_t)^gamma BCE(z_ik, q_ik)``, with the modulator written as
    ``exp(-gamma (q softplus(z) + (1 - q) softplus(-z)))`` (Cui et al.'s stable form). gamma = 0 and beta = 0
    give :func:`~bce3s.losses.functional.bce_sum` with one-hot targets.

    Args:
        num_classes: K.
        class_counts: training images per class.
        beta: in [0, 1) (default 0.9999).
        gamma: focusing parameter >= 0 (default 1.0).
    """

    def __init__(self, num_classes: int, class_counts: object, *, beta: float = 0.9999, gamma: float = 1.0) -> None:
        super().__init__(num_classes, class_counts, beta)
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
        sp_pos, sp_neg = F.softplus(-logits), F.softplus(logits)
        bce = q * sp_pos + (1 - q) * sp_neg
        if self.gamma != 0:
            bce = torch.exp(-self.gamma * (q * sp_neg + (1 - q) * sp_pos)) * bce
        loss = _mean(self._sample_weights(q) * bce.sum(dim=1))
        return LossOutput(loss, {"cb_focal": loss.detach()})

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, beta={self.beta}, gamma={self.gamma}"


class BalancedSoftmaxLoss(_CountsLoss):
    """Balanced softmax (registry name ``balanced_softmax``; Ren et al., NeurIPS 2020).

    ``loss = CE(z + log n, q)``: the logits are shifted by the log class counts during training only. With
    equal counts the shift is a constant and the loss equals CE.

    Args:
        num_classes: K.
        class_counts: training images per class.
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
        loss = _mean(ce_rows(logits + self._log_prior().to(logits.dtype), target))
        return LossOutput(loss, {"balanced_softmax": loss.detach()})


class LogitAdjustedLoss(_CountsLoss):
    """Logit-adjusted cross-entropy (registry name ``logit_adjusted``; Menon et al., ICLR 2021).

    ``loss = CE(z + tau * log pi, q)`` with pi the class prior from the counts. tau = 0 is CE; tau = 1 is the
    balanced softmax.

    Args:
        num_classes: K.
        class_counts: training images per class.
        tau: adjustment strength >= 0 (default 1.0).
    """

    def __init__(self, num_classes: int, class_counts: object, *, tau: float = 1.0) -> None:
        super().__init__(num_classes, class_counts)
        self.tau = check_param("tau", tau)

    def _compute(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        view: Tensor | None,
        embeddings: Tensor | None,
        weight: Tensor | None,
    ) -> LossOutput:
        shift = self.tau * self._log_prior().to(logits.dtype)
        loss = _mean(ce_rows(logits + shift, target))
        return LossOutput(loss, {"logit_adjusted": loss.detach()})

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, tau={self.tau}"


class ClassBalancedBCELoss(_ClassBalancedLoss):
    """Class-balanced BCE over the partial class set: the BCE3S stage-2 loss (registry name ``cb_bce``).

    ``loss = (1/N) sum_i alpha_{y_i} sum_{k in S} [1(k = y_i) softplus(-z_ik) + 1(k != y_i) softplus(z_ik)]``
    with alpha the effective-number weights (beta = 0.99999 in the logged run) multiplying every class term of
    the sample, and S the partial class set (all classes present in the batch plus random negatives up to
    ceil(r K); r = 0.4) drawn from a seeded generator whose state is in ``state_dict``. No clamp. Soft targets
    use q as positive weights, the zero-weight classes as negatives and ``q @ alpha`` as the sample weight.
    ``view`` is ignored (stage 2 has no mixing).

    Args:
        num_classes: K.
        class_counts: training images per class.
        beta: in [0, 1) (default 0.99999).
        neg_class_ratio: r in (0, 1] (default 0.4).
        seed: seed of the partial class set generator.
    """

    def __init__(
        self,
        num_classes: int,
        class_counts: object,
        *,
        beta: float = 0.99999,
        neg_class_ratio: float = 0.4,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, class_counts, beta)
        self.sampler = PartialClassSampler(neg_class_ratio, seed)

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
        positive = q > 0
        columns = self.sampler(positive.any(dim=0))
        neg = (~positive & columns[None, :]).to(logits.dtype)
        loss = bce_sum(logits, q, neg, sample_weight=self._sample_weights(q))
        return LossOutput(loss, {"cb_bce": loss.detach()})

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, beta={self.beta}, neg_class_ratio={self.sampler.ratio}"
