"""The loss contract: :class:`LossOutput`, the :class:`Loss` base class and :func:`as_soft_targets`.

Every loss has one call signature, ``loss(logits, target, *, view=None, embeddings=None, weight=None)``, and
returns a :class:`LossOutput`. The base class validates the inputs once and then calls the subclass's
``_compute``: shapes and dtypes always; the range of class and view ids on the CPU always and on accelerators
only with ``check_inputs`` (it needs a host sync there); NaN/inf only with ``check_inputs``.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from bce3s.losses._inputs import (
    check_finite,
    check_target,
    is_hard,
    require_2d,
    require_float,
    shape_str,
    soft_targets,
    values_checked,
)
from bce3s.losses.params import check_param
from bce3s.views import NUM_VIEWS

__all__ = ["Loss", "LossOutput", "as_soft_targets", "NUM_VIEWS"]

#: View ids: 0 = clean/original, 1 = mixup, 2 = cutmix.

_NEED_HELP = {
    "embeddings": "the projector outputs, shape (N, P); build the model with a projector",
    "weight": "the raw classifier weight, shape (K, D), e.g. model.head.weight",
}


class LossOutput(NamedTuple):
    """What every loss returns.

    Attributes:
        loss: scalar, differentiable; the engine calls ``.backward()`` on it.
        terms: detached scalars for logging, e.g. ``{"joint": ..., "contrastive": ..., "uniform": ...}``.
    """

    loss: Tensor
    terms: dict[str, Tensor]


def as_soft_targets(target: Tensor, num_classes: int, like: Tensor) -> Tensor:
    """Turn class ids into one-hot rows, or cast soft targets, on ``like``'s device and dtype.

    Args:
        target: (N,) int class ids in [0, K), or (N, K) float soft targets.
        num_classes: K.
        like: a tensor whose device and floating dtype the result takes (usually the logits).

    Returns:
        (N, K) tensor.

    Raises:
        ValueError: wrong shape or dtype, or class ids outside [0, K).
    """
    rows = target.shape[0] if isinstance(target, Tensor) and target.dim() >= 1 else 0
    check_target("as_soft_targets", target, rows, num_classes)
    return soft_targets(target, num_classes, like)


class Loss(nn.Module):
    """Base class of all losses in :mod:`bce3s.losses`.

    Subclasses set ``needs`` (a subset of ``{"embeddings", "weight"}``) and implement :meth:`_compute`; the
    engine reads ``needs`` to decide what to pass. Class statistics (counts, priors) are buffers, so ``.to()``
    and ``state_dict()`` cover them.

    Attributes:
        num_classes: K.
        check_inputs: when True, :meth:`forward` also rejects NaN/inf inputs and checks the range of class and
            view ids of accelerator tensors (host syncs; CPU tensors are always range-checked). Default False.
    """

    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = check_param("num_classes", num_classes)
        self.check_inputs = False
        self.static = False
        self._samplers: list[nn.Module] = []  # the partial-class samplers a static loss refills (make_static)

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        view: Tensor | None = None,
        embeddings: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> LossOutput:
        """Compute the loss.

        Args:
            logits: (N, K).
            target: (N,) int64 class ids, or (N, K) float soft targets (rows of a mixed view: positives are the
                soft weights, negatives the classes with weight 0).
            view: (N,) int64 view ids, 0 = clean, 1 = mixup, 2 = cutmix; None = all clean. Rows are selected by
                id, never by position.
            embeddings: (N, P) projector outputs (for losses that need them).
            weight: (K, D) raw classifier weight (for losses that need it).

        Returns:
            :class:`LossOutput` with the scalar loss and detached named terms.
        """
        self._validate(logits, target, view, embeddings, weight)
        return self._compute(logits, target, view=view, embeddings=embeddings, weight=weight)

    def _compute(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        view: Tensor | None,
        embeddings: Tensor | None,
        weight: Tensor | None,
    ) -> LossOutput:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the (0-based) epoch about to run. Default: nothing."""

    def make_static(self, device: torch.device) -> None:
        """Prepare for a captured or compiled step: no host-side draw or branch inside :meth:`forward`.

        Random draws (the partial class set) then come from device buffers that :meth:`prepare_step` refills
        before every step, in the order the eager path draws them, and epoch-dependent switches become device
        flags. The losses' values are unchanged. Call once, after moving the loss to ``device``.
        """
        from bce3s.losses.partial import PartialClassSampler

        self.static = True
        self._samplers = [m for m in self.modules() if isinstance(m, PartialClassSampler)]
        for sampler in self._samplers:
            sampler.use_static_keys(self.num_classes, device)

    def prepare_step(self) -> None:
        """Host-side work due before each step of a static loss (refill the draw buffers); no-op otherwise."""
        for sampler in self._samplers:
            sampler.prepare()

    @torch.no_grad()
    def update(self, embeddings: Tensor, target: Tensor) -> None:
        """Update state after ``optimizer.step()`` with the clean view (default: nothing)."""

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"

    # ------------------------------------------------------------------------------------------------------

    def _validate(
        self,
        logits: Tensor,
        target: Tensor,
        view: Tensor | None,
        embeddings: Tensor | None,
        weight: Tensor | None,
    ) -> None:
        where = type(self).__name__
        for name in sorted(self.needs):
            if {"embeddings": embeddings, "weight": weight}[name] is None:
                raise ValueError(f"{where} needs `{name}` ({_NEED_HELP[name]}); pass {name}=...")
        require_float("logits", logits, where)
        require_2d("logits", logits, where)
        n, k = logits.shape
        if k != self.num_classes:
            raise ValueError(f"{where}: logits have {k} columns but the loss was built for {self.num_classes} classes")
        check_target(where, target, n, k, labels=False)
        if view is not None:
            if not isinstance(view, Tensor) or view.dim() != 1 or view.shape[0] != n or not is_hard(view):
                got = shape_str(view) if isinstance(view, Tensor) else type(view).__name__
                raise ValueError(f"{where}: view must be an int64 tensor of shape ({n},), got {got}")
        if embeddings is not None:
            require_float("embeddings", embeddings, where)
            require_2d("embeddings", embeddings, where)
            if embeddings.shape[0] != n:
                raise ValueError(f"{where}: embeddings have {embeddings.shape[0]} rows but logits have {n}")
        if weight is not None:
            require_float("weight", weight, where)
            require_2d("weight", weight, where)
            if weight.shape[0] != k:
                raise ValueError(f"{where}: weight has {weight.shape[0]} rows but logits have {k} classes")
        # Range checks of class ids in [0, K) and view ids in [0, 3): free on the CPU; on an accelerator they cost
        # one host sync, so they run there only with check_inputs (as torch's one_hot does).
        checks = [
            (name, t, hi)
            for name, t, hi in (("target", target, k), ("view", view, NUM_VIEWS))
            if t is not None and is_hard(t) and t.numel() > 0 and values_checked(t, self.check_inputs)
        ]
        if checks:
            ends = [e.to(device=logits.device, dtype=torch.long) for _, t, _ in checks for e in torch.aminmax(t)]
            bounds = torch.stack(ends).tolist()
            for i, (name, _, hi) in enumerate(checks):
                lo_i, hi_i = bounds[2 * i], bounds[2 * i + 1]
                if lo_i < 0 or hi_i >= hi:
                    what = "class ids" if name == "target" else "view ids (0 clean, 1 mixup, 2 cutmix)"
                    raise ValueError(
                        f"{where}: {what} must be in [0, {hi}) but range from {lo_i} to {hi_i}; check the {name}"
                    )
        if self.check_inputs:
            check_finite(where, logits=logits, target=target, embeddings=embeddings, weight=weight)
