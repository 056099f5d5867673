"""BCE3S: BCE joint + BCE contrastive + BCE uniform learning (``bce3s``), SPEC 1.2-1.5 and 7.2."""

from __future__ import annotations

import torch
from torch import Tensor

from bce3s.losses._validation import check_clip, check_positive, soft_targets
from bce3s.losses.base import Loss, LossOutput
from bce3s.losses.bce import joint_term
from bce3s.losses.functional import _bce_rows, _cosine_logits, _uniform
from bce3s.losses.memory import ClassMemory
from bce3s.losses.partial import PartialClassSampler
from bce3s.views import CLEAN, view_onehot

__all__ = ["Bce3sLoss"]


def _contrastive_term(
    embeddings: Tensor,
    q: Tensor,
    views: Tensor,
    memory: ClassMemory,
    temperature: float,
    neg_weight: float,
    logit_clip: float | None,
) -> Tensor:
    """L_ss (SPEC 1.3): the SUM over the mixed views present of each view's mean contrastive BCE.

    Without mixed rows, the clean rows are the anchors (one view, its mean). Classes not yet seen by the memory
    contribute nothing (their columns are masked; with nothing seen the term is 0).
    """
    logits = _cosine_logits(embeddings, memory.memory.to(embeddings.device), temperature)
    seen = memory.seen.to(device=logits.device, dtype=logits.dtype)
    pos = q * seen
    neg = (q == 0).to(logits.dtype) * seen
    rows = _bce_rows(logits, pos, neg, neg_weight, logit_clip)
    counts = views.sum(dim=0)
    per_view = (views * rows[:, None]).sum(dim=0) / counts.clamp(min=1)
    mixed = per_view[CLEAN + 1 :].sum()
    return torch.where(counts[CLEAN + 1 :].sum() > 0, mixed, per_view[CLEAN])


class Bce3sLoss(Loss):
    """The full BCE3S loss (registry name ``bce3s``).

    ``loss = L_joint + contrastive_weight * L_contrastive + uniform_weight * L_uniform`` (official head.py:273):

    - **joint** (L_sc, SPEC 1.2): mean over the views present of the per-view BCE between features and
      normalized classifier vectors, computed from the ``logits`` passed in (the model's normalized head gives
      ``z = h @ normalize(W).T + b``). Clean rows: hard targets over the partial class set (ratio r, from this
      module's seeded generator); mixed rows: soft targets over all classes.
    - **contrastive** (L_ss, SPEC 1.3): ``cos(u_i, M_k) / tau`` against the class memory (:class:`ClassMemory`),
      summed over the mixed views (clean rows are the anchors only when there are no mixed rows); 0 while
      ``epoch < contrastive_start_epoch`` and for classes the memory has not seen.
    - **uniform** (L_cc, SPEC 1.4): :func:`~bce3s.losses.functional.bce_uniform` of the classifier weight.

    Call :meth:`set_epoch` at the start of every epoch and :meth:`update` with the clean view's (detached)
    embeddings and labels **after** ``optimizer.step()``.

    Args:
        num_classes: K.
        embedding_dim: P, size of the projector output (128 in the paper).
        neg_class_ratio: r, fraction of classes in the clean view's partial class set (0.4; use 1.0 for K = 10).
        temperature: tau of the contrastive logits (1.0 in the released run).
        contrastive_weight: lambda_ss (0.1).
        uniform_weight: lambda_cc (1.0).
        uniform_scale: the code's cc_s (1.0).
        neg_weight: l, weight of negative terms in the two sample-level BCEs (1.0).
        logit_clip: the code's strict; None = no clamp (default), 64 = official.
        contrastive_start_epoch: first epoch with the contrastive term (1: epoch 0 only fills the memory).
        seed: seed of the partial class set generator; its state is saved in ``state_dict``.
    """

    needs = frozenset({"embeddings", "weight"})

    def __init__(
        self,
        num_classes: int,
        *,
        embedding_dim: int = 128,
        neg_class_ratio: float = 0.4,
        temperature: float = 1.0,
        contrastive_weight: float = 0.1,
        uniform_weight: float = 1.0,
        uniform_scale: float = 1.0,
        neg_weight: float = 1.0,
        logit_clip: float | None = None,
        contrastive_start_epoch: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes)
        where = type(self).__name__
        check_positive(where, "temperature", temperature)
        check_positive(where, "contrastive_weight", contrastive_weight, allow_zero=True)
        check_positive(where, "uniform_weight", uniform_weight, allow_zero=True)
        check_positive(where, "uniform_scale", uniform_scale)
        check_positive(where, "neg_weight", neg_weight, allow_zero=True)
        check_clip(where, logit_clip)
        if not isinstance(contrastive_start_epoch, int) or contrastive_start_epoch < 0:
            raise ValueError(f"{where}: contrastive_start_epoch must be an int >= 0 (got {contrastive_start_epoch!r})")
        self.temperature = float(temperature)
        self.contrastive_weight = float(contrastive_weight)
        self.uniform_weight = float(uniform_weight)
        self.uniform_scale = float(uniform_scale)
        self.neg_weight = float(neg_weight)
        self.logit_clip = logit_clip
        self.contrastive_start_epoch = contrastive_start_epoch
        self.epoch = 0
        self.sampler = PartialClassSampler(neg_class_ratio, seed)
        self.class_memory = ClassMemory(num_classes, embedding_dim)

    @property
    def contrastive_active(self) -> bool:
        """Whether the contrastive term is computed in the current epoch."""
        return self.epoch >= self.contrastive_start_epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the current (0-based) epoch; the contrastive term starts at ``contrastive_start_epoch``."""
        self.epoch = int(epoch)

    @torch.no_grad()
    def update(self, embeddings: Tensor, target: Tensor) -> None:
        """Write the clean view's embeddings into the class memory (last sample of a class wins)."""
        self.class_memory.check_inputs = self.check_inputs
        self.class_memory.update(embeddings, target)

    def _compute(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        view: Tensor | None,
        embeddings: Tensor | None,
        weight: Tensor | None,
    ) -> LossOutput:
        assert embeddings is not None and weight is not None  # guaranteed by Loss._validate (needs)
        if embeddings.shape[1] != self.class_memory.dim:
            raise ValueError(
                f"{type(self).__name__}: embeddings have size {embeddings.shape[1]} but embedding_dim is "
                f"{self.class_memory.dim}; build the loss with embedding_dim={embeddings.shape[1]}"
            )
        q = soft_targets(target, self.num_classes, logits)
        views = view_onehot(view, logits.shape[0], logits)
        joint = joint_term(logits, q, views, self.sampler, self.neg_weight, self.logit_clip)
        if self.contrastive_active:
            contrastive = _contrastive_term(
                embeddings,
                q.to(embeddings.dtype),
                views.to(embeddings.dtype),
                self.class_memory,
                self.temperature,
                self.neg_weight,
                self.logit_clip,
            )
        else:
            contrastive = logits.new_zeros(())
        uniform = _uniform(weight, self.uniform_scale)
        loss = joint + self.contrastive_weight * contrastive + self.uniform_weight * uniform
        terms = {"joint": joint.detach(), "contrastive": contrastive.detach(), "uniform": uniform.detach()}
        return LossOutput(loss, terms)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, temperature={self.temperature}, "
            f"contrastive_weight={self.contrastive_weight}, uniform_weight={self.uniform_weight}, "
            f"uniform_scale={self.uniform_scale}, neg_weight={self.neg_weight}, logit_clip={self.logit_clip}, "
            f"contrastive_start_epoch={self.contrastive_start_epoch}"
        )
