"""The three terms of BCE3S as modules: joint, contrastive (against a class memory) and uniform.

Each term holds and validates its own parameters and runs the public function of
:mod:`bce3s.losses.functional` that defines it. Terms hold no state: the seeded class-set sampler and the class
memory are passed in by the owner (:class:`~bce3s.losses.tripartite.Bce3sLoss` or
:class:`~bce3s.losses.bce.BceLoss`), which keeps them in its ``state_dict``.
"""

from __future__ import annotations

from torch import Tensor, nn

from bce3s.losses.functional import ClassSet, bce_contrastive, bce_joint, bce_uniform
from bce3s.losses.memory import ClassMemory
from bce3s.losses.params import check_param

__all__ = ["ContrastiveTerm", "JointTerm", "UniformTerm"]


class JointTerm(nn.Module):
    """L_sc, BCE joint learning between features and classifier vectors (:func:`bce_joint`).

    Args:
        neg_weight: l, weight of the negative terms (>= 0).
        logit_clip: optional clamp of the logits (None, or > 0; the official code uses 64).
    """

    def __init__(self, *, neg_weight: float = 1.0, logit_clip: float | None = None) -> None:
        super().__init__()
        self.neg_weight = check_param("neg_weight", neg_weight)
        self.logit_clip = check_param("logit_clip", logit_clip)

    def forward(self, logits: Tensor, target: Tensor, view: Tensor | None, classes: ClassSet | None) -> Tensor:
        """The mean over the views present of each view's BCE.

        Args:
            logits: z, (N, K), from the normalized classifier.
            target: (N,) class ids or (N, K) soft targets.
            view: (N,) view ids, or None (all clean).
            classes: the clean rows' class set (see :func:`bce_joint`); None = all classes.

        Returns:
            Scalar.
        """
        return bce_joint(
            logits, target, view=view, classes=classes, neg_weight=self.neg_weight, logit_clip=self.logit_clip
        )

    def extra_repr(self) -> str:
        return f"neg_weight={self.neg_weight}, logit_clip={self.logit_clip}"


class ContrastiveTerm(nn.Module):
    """L_ss, BCE contrastive learning of projections against a class memory (:func:`bce_contrastive`).

    Args:
        temperature: tau > 0 of the cosine logits.
        neg_weight: weight of the negative terms (>= 0).
        logit_clip: optional clamp of the logits.
    """

    def __init__(self, *, temperature: float = 1.0, neg_weight: float = 1.0, logit_clip: float | None = None) -> None:
        super().__init__()
        self.temperature = check_param("temperature", temperature)
        self.neg_weight = check_param("neg_weight", neg_weight)
        self.logit_clip = check_param("logit_clip", logit_clip)

    def forward(self, embeddings: Tensor, target: Tensor, view: Tensor | None, memory: ClassMemory) -> Tensor:
        """The sum over the mixed views present of each view's mean BCE (clean rows when none is mixed).

        Args:
            embeddings: projector outputs u, (N, P).
            target: (N,) class ids or (N, K) soft targets.
            view: (N,) view ids, or None (all clean).
            memory: the class memory (K, P) with its ``seen`` mask; unseen classes contribute nothing.

        Returns:
            Scalar.
        """
        return bce_contrastive(
            embeddings,
            memory.memory,
            target,
            view=view,
            temperature=self.temperature,
            seen=memory.seen,
            neg_weight=self.neg_weight,
            logit_clip=self.logit_clip,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, neg_weight={self.neg_weight}, logit_clip={self.logit_clip}"


class UniformTerm(nn.Module):
    """L_cc, BCE uniform learning among classifier vectors (:func:`bce_uniform`).

    Args:
        scale: s > 0 (the code's ``cc_s``).
    """

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = check_param("scale", scale)

    def forward(self, weight: Tensor) -> Tensor:
        """Scalar L_cc of the raw classifier weight W, (K, D)."""
        return bce_uniform(weight, scale=self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
