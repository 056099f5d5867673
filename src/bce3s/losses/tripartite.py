"""BCE3S (``bce3s``): BCE joint + BCE contrastive + BCE uniform learning, a composition of three term modules."""

from __future__ import annotations

import os
import sys
import warnings

import torch
from torch import Tensor

from bce3s.losses.base import Loss, LossOutput
from bce3s.losses.memory import ClassMemory
from bce3s.losses.params import check_param
from bce3s.losses.partial import PartialClassSampler
from bce3s.losses.terms import ContrastiveTerm, JointTerm, UniformTerm

__all__ = ["Bce3sLoss", "ContrastiveInactiveWarning"]

#: Forward calls with the contrastive term on and ``update`` never called before warning. 2, not 1: when the term
#: is on from the first step (``contrastive_start_epoch=0``, or a resumed run), the first forward legitimately
#: comes before the first ``update``.
UNFED_CALLS_BEFORE_WARNING = 2
#: Forward calls with ``set_epoch`` never called before warning (only when the term starts after epoch 0).
NO_EPOCH_CALLS_BEFORE_WARNING = 1000


class ContrastiveInactiveWarning(UserWarning):
    """The contrastive term of :class:`Bce3sLoss` stays 0 because ``update`` or ``set_epoch`` is never called."""


class Bce3sLoss(Loss):
    """The full BCE3S loss (registry name ``bce3s``).

    ``loss = L_joint + contrastive_weight * L_contrastive + uniform_weight * L_uniform``:

    - **joint** (:class:`~bce3s.losses.terms.JointTerm`, :func:`~bce3s.losses.functional.bce_joint`): mean over
      the views present of the per-view BCE of the ``logits`` passed in (the model's normalized head gives
      ``z = h @ normalize(W).T + b``). Clean rows: hard targets over the partial class set (ratio r, drawn by
      ``sampler``); mixed rows: soft targets over all classes.
    - **contrastive** (:class:`~bce3s.losses.terms.ContrastiveTerm`,
      :func:`~bce3s.losses.functional.bce_contrastive`): ``cos(u_i, M_k) / tau`` against ``class_memory``, summed
      over the mixed views (clean rows are the anchors only when there are no mixed rows); 0 while
      ``epoch < contrastive_start_epoch`` and for classes the memory has not seen.
    - **uniform** (:class:`~bce3s.losses.terms.UniformTerm`, :func:`~bce3s.losses.functional.bce_uniform`) of
      the classifier weight.

    Call :meth:`set_epoch` at the start of every epoch and :meth:`update` with the clean view's (detached)
    embeddings and labels **after** ``optimizer.step()``. Forgetting either leaves the contrastive term at 0;
    the loss then warns once (:class:`ContrastiveInactiveWarning`): when the term is on and :meth:`update` has
    never been called by the second forward call, or when :meth:`set_epoch` has never been called after
    ``NO_EPOCH_CALLS_BEFORE_WARNING`` forward calls while ``contrastive_start_epoch > 0``. The checks only look
    at Python flags and counters (no host sync). ``state_dict`` holds ``class_memory.memory``,
    ``class_memory.seen`` and ``sampler._extra_state`` (the class-set generator).

    Args:
        num_classes: K.
        embedding_dim: P, size of the projector output (128 in the paper).
        neg_class_ratio: r, fraction of classes in the clean view's partial class set (0.4; use 1.0 for K = 10).
        temperature: tau of the contrastive logits (1.0 in the released run).
        contrastive_weight: lambda_ss (0.1); 0 switches the contrastive term off (not computed, reported as 0).
        uniform_weight: lambda_cc (1.0); 0 switches the uniform term off (not computed, reported as 0).
        uniform_scale: the code's cc_s (1.0).
        neg_weight: l, weight of negative terms in the two sample-level BCEs (1.0).
        logit_clip: the code's clamp; None = no clamp (default), 64 = official.
        contrastive_start_epoch: first epoch with the contrastive term (1: epoch 0 only fills the memory).
        seed: seed of the partial class set generator; its state is saved in ``state_dict``.

    Raises:
        ValueError: a parameter out of range; the message starts with the parameter's name.
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
        for name, value in (("temperature", temperature), ("uniform_scale", uniform_scale)):
            check_param(name, value)  # the terms name these parameters differently
        self.contrastive_weight = check_param("contrastive_weight", contrastive_weight)
        self.uniform_weight = check_param("uniform_weight", uniform_weight)
        self.contrastive_start_epoch = check_param("contrastive_start_epoch", contrastive_start_epoch)
        self.epoch = 0
        # the same switch as a device flag, read by a static (captured) step instead of the Python branch
        self.register_buffer("_active", torch.tensor(contrastive_start_epoch <= 0), persistent=False)
        self._epoch_set = False
        self._unfed_calls = 0
        self._no_epoch_calls = 0
        self._warned = False
        self.sampler = PartialClassSampler(neg_class_ratio, seed)
        self.class_memory = ClassMemory(num_classes, embedding_dim)
        self.joint = JointTerm(neg_weight=neg_weight, logit_clip=logit_clip)
        self.contrastive = ContrastiveTerm(temperature=temperature, neg_weight=neg_weight, logit_clip=logit_clip)
        self.uniform = UniformTerm(scale=uniform_scale)

    @property
    def contrastive_active(self) -> bool:
        """Whether the contrastive term is computed in the current epoch."""
        return self.epoch >= self.contrastive_start_epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the current (0-based) epoch; the contrastive term starts at ``contrastive_start_epoch``."""
        self.epoch = int(epoch)
        self._epoch_set = True
        self._active.fill_(self.contrastive_active)

    @torch.no_grad()
    def update(self, embeddings: Tensor, target: Tensor) -> None:
        """Write the clean view's embeddings (N, P) with their class ids (N,) into the class memory."""
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
        if not self._warned and self.contrastive_weight > 0 and not self.static:
            self._warn_if_contrastive_stuck()
        classes = self.sampler if self.sampler.ratio < 1.0 else None
        joint = self.joint(logits, target, view, classes)
        # a term whose weight is 0 is not computed at all (ablations): it adds exactly 0 and no gradient
        if self.static and self.contrastive_weight != 0:  # every epoch, switched by the device flag (same kernels)
            contrastive = self.contrastive(embeddings, target, view, self.class_memory) * self._active
        elif self.contrastive_active and self.contrastive_weight != 0:
            contrastive = self.contrastive(embeddings, target, view, self.class_memory)
        else:
            contrastive = logits.new_zeros(())
        uniform = self.uniform(weight) if self.uniform_weight != 0 else logits.new_zeros(())
        loss = torch.add(joint, contrastive, alpha=self.contrastive_weight).add_(uniform, alpha=self.uniform_weight)
        terms = {"joint": joint.detach(), "contrastive": contrastive.detach(), "uniform": uniform.detach()}
        return LossOutput(loss, terms)

    def _warn_if_contrastive_stuck(self) -> None:
        """Warn once when ``update`` or ``set_epoch`` is evidently never called (Python state only)."""
        if self.contrastive_active and not self.class_memory.written:
            self._unfed_calls += 1
            if self._unfed_calls >= UNFED_CALLS_BEFORE_WARNING:
                self._warn(
                    f"the contrastive term is 0 because the class memory is empty after {self._unfed_calls} "
                    "forward calls at epoch >= contrastive_start_epoch: call "
                    "loss.update(clean_embeddings.detach(), labels) after every optimizer.step()"
                )
        elif not self._epoch_set and self.contrastive_start_epoch > 0:
            self._no_epoch_calls += 1
            if self._no_epoch_calls >= NO_EPOCH_CALLS_BEFORE_WARNING:
                self._warn(
                    f"set_epoch() has not been called in {self._no_epoch_calls} forward calls, so the epoch is "
                    f"still 0 and the contrastive term (from epoch {self.contrastive_start_epoch}) stays 0: call "
                    "loss.set_epoch(epoch) at the start of every epoch"
                )

    def _warn(self, message: str) -> None:
        """Raise the one :class:`ContrastiveInactiveWarning` of this loss, pointing at the caller's line."""
        self._warned = True
        warnings.warn(f"{type(self).__name__}: {message}", ContrastiveInactiveWarning, stacklevel=_caller_level())

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, contrastive_weight={self.contrastive_weight}, "
            f"uniform_weight={self.uniform_weight}, contrastive_start_epoch={self.contrastive_start_epoch}"
        )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside bce3s.losses and torch.nn (the line calling the loss)."""
    inside = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.nn.__file__)))
    level, frame = 2, sys._getframe(2)  # 1: Bce3sLoss._warn, which calls warnings.warn
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        level, frame = level + 1, frame.f_back
    return level
