"""Plain BCE joint loss (``bce``): the L_sc term of BCE3S on its own, with the same view handling."""

from __future__ import annotations

from torch import Tensor

from bce3s.losses._validation import check_clip, check_positive, soft_targets
from bce3s.losses.base import Loss, LossOutput
from bce3s.losses.functional import _bce_rows
from bce3s.losses.partial import PartialClassSampler
from bce3s.views import is_clean, mean_of_view_means, view_onehot

__all__ = ["BceLoss", "joint_term"]


def joint_term(
    logits: Tensor,
    q: Tensor,
    views: Tensor,
    sampler: PartialClassSampler,
    neg_weight: float,
    logit_clip: float | None,
) -> Tensor:
    """L_sc over all views (SPEC 1.2): the mean over the views present of each view's BCE.

    Clean rows use the partial class set (drawn from ``sampler`` around the classes with positive weight in the
    clean rows); mixed rows use all K classes with soft positives and zero-weight negatives. Equals
    :func:`~bce3s.losses.functional.bce_joint` per view on the same logits and generator state.

    Args:
        logits: z, (N, K).
        q: soft targets, (N, K), in the logits' dtype.
        views: (N, 3) one-hot view ids.
        sampler: partial class set sampler.
        neg_weight: weight of the negative terms.
        logit_clip: optional clamp.

    Returns:
        Scalar.
    """
    positive = q > 0
    negative = ~positive
    if sampler.ratio < 1.0:
        clean = is_clean(views)
        columns = sampler((positive & clean[:, None]).any(dim=0))
        negative = negative & (columns[None, :] | ~clean[:, None])
    rows = _bce_rows(logits, q, negative.to(logits.dtype), neg_weight, logit_clip)
    return mean_of_view_means(rows, views)


class BceLoss(Loss):
    """BCE joint learning only (registry name ``bce``): L_sc of SPEC 1.2, no contrastive or uniform term.

    ``loss = mean over views present of (1/n_v) sum_i sum_k [q_ik softplus(-z_ik) + l * n_ik softplus(z_ik)]``
    where for clean rows the classes k run over the partial class set (ratio r) and for mixed rows over all
    classes; positives q are one-hot (clean) or the mixing weights (mixed), negatives n the zero-weight classes.

    Args:
        num_classes: K.
        neg_class_ratio: r in (0, 1]; default 1.0 (all classes).
        neg_weight: l, weight of the negative terms.
        logit_clip: optional clamp of the logits (official: 64; default None).
        seed: seed of the partial class set generator (its state is in ``state_dict``).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        neg_class_ratio: float = 1.0,
        neg_weight: float = 1.0,
        logit_clip: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes)
        where = type(self).__name__
        check_positive(where, "neg_weight", neg_weight, allow_zero=True)
        check_clip(where, logit_clip)
        self.neg_weight = float(neg_weight)
        self.logit_clip = logit_clip
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
        views = view_onehot(view, logits.shape[0], logits)
        joint = joint_term(logits, q, views, self.sampler, self.neg_weight, self.logit_clip)
        return LossOutput(joint, {"joint": joint.detach()})
