"""Plain BCE joint loss (``bce``): the joint term of BCE3S on its own, with the same view handling."""

from __future__ import annotations

from torch import Tensor

from bce3s.losses.base import Loss, LossOutput
from bce3s.losses.partial import PartialClassSampler
from bce3s.losses.terms import JointTerm

__all__ = ["BceLoss"]


class BceLoss(Loss):
    """BCE joint learning only (registry name ``bce``): :class:`~bce3s.losses.terms.JointTerm`, no other term.

    ``loss = mean over views present of (1/n_v) sum_i sum_k [q_ik softplus(-z_ik) + l * n_ik softplus(z_ik)]``
    where for clean rows the classes k run over the partial class set (ratio r) and for mixed rows over all
    classes; positives q are one-hot (clean) or the mixing weights (mixed), negatives n the zero-weight classes.

    Args:
        num_classes: K.
        neg_class_ratio: r in (0, 1]; default 1.0 (all classes).
        neg_weight: l, weight of the negative terms.
        logit_clip: optional clamp of the logits (official: 64; default None).
        seed: seed of the partial class set generator (its state is in ``state_dict``).

    Raises:
        ValueError: a parameter out of range; the message starts with the parameter's name.
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
        self.sampler = PartialClassSampler(neg_class_ratio, seed)
        self.joint = JointTerm(neg_weight=neg_weight, logit_clip=logit_clip)

    def _compute(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        view: Tensor | None,
        embeddings: Tensor | None,
        weight: Tensor | None,
    ) -> LossOutput:
        joint = self.joint(logits, target, view, self.sampler if self.sampler.ratio < 1.0 else None)
        return LossOutput(joint, {"joint": joint.detach()})
