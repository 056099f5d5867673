"""Losses for long-tailed recognition: BCE3S and the usual baselines, behind one call signature.

Every loss is a :class:`Loss` called as ``loss(logits, target, *, view=None, embeddings=None, weight=None)``
and returning a :class:`LossOutput` ``(loss, terms)``. Build one by registry name with :func:`build_loss`::

    loss_fn = build_loss("bce3s", num_classes=100, neg_class_ratio=0.4)
    loss_fn = build_loss("ldam", num_classes=100, class_counts=counts)  # class_counts: only where used

``Bce3sLoss`` is a composition of three term modules (:mod:`bce3s.losses.terms`), each running one public function
of :mod:`bce3s.losses.functional`. Every loss parameter is validated by :func:`check_param` when the loss is built.
See ``docs/losses.md``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from bce3s.losses.balanced import (
    BalancedSoftmaxLoss,
    ClassBalancedBCELoss,
    ClassBalancedFocalLoss,
    ClassBalancedSigmoidLoss,
    ClassBalancedSoftmaxLoss,
    LogitAdjustedLoss,
)
from bce3s.losses.base import Loss, LossOutput, as_soft_targets
from bce3s.losses.bce import BceLoss
from bce3s.losses.functional import (
    bce_contrastive,
    bce_joint,
    bce_sum,
    bce_uniform,
    effective_number_weights,
    partial_class_set,
)
from bce3s.losses.ldam import LDAMLoss
from bce3s.losses.memory import ClassMemory
from bce3s.losses.params import check_param
from bce3s.losses.partial import PartialClassSampler
from bce3s.losses.softmax import CrossEntropyLoss, FocalLoss
from bce3s.losses.terms import ContrastiveTerm, JointTerm, UniformTerm
from bce3s.losses.tripartite import Bce3sLoss, ContrastiveInactiveWarning

__all__ = [
    "LOSSES",
    "BalancedSoftmaxLoss",
    "Bce3sLoss",
    "BceLoss",
    "ClassBalancedBCELoss",
    "ClassBalancedFocalLoss",
    "ClassBalancedSigmoidLoss",
    "ClassBalancedSoftmaxLoss",
    "ClassMemory",
    "ContrastiveInactiveWarning",
    "ContrastiveTerm",
    "CrossEntropyLoss",
    "FocalLoss",
    "JointTerm",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "Loss",
    "LossOutput",
    "PartialClassSampler",
    "UniformTerm",
    "as_soft_targets",
    "bce_contrastive",
    "bce_joint",
    "bce_sum",
    "bce_uniform",
    "build_loss",
    "check_param",
    "effective_number_weights",
    "loss_params",
    "partial_class_set",
]

#: Registry: name -> constructor. Every constructor takes ``num_classes`` and, if it uses them, ``class_counts``;
#: all other parameters are keyword-only.
LOSSES: dict[str, Callable[..., Loss]] = {
    "bce3s": Bce3sLoss,
    "bce": BceLoss,
    "ce": CrossEntropyLoss,
    "focal": FocalLoss,
    "cb_softmax": ClassBalancedSoftmaxLoss,
    "cb_sigmoid": ClassBalancedSigmoidLoss,
    "cb_focal": ClassBalancedFocalLoss,
    "balanced_softmax": BalancedSoftmaxLoss,
    "logit_adjusted": LogitAdjustedLoss,
    "ldam": LDAMLoss,
    "cb_bce": ClassBalancedBCELoss,
}

_BUILD_ARGS = ("num_classes", "class_counts")


def loss_params(name: str) -> dict[str, Any]:
    """The keyword parameters of the loss ``name`` (besides num_classes/class_counts) with their defaults.

    Raises:
        ValueError: unknown name (the message lists the valid names).
    """
    factory = _factory(name)
    out: dict[str, Any] = {}
    for param in inspect.signature(factory).parameters.values():
        if param.name in _BUILD_ARGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        out[param.name] = None if param.default is param.empty else param.default
    return out


def build_loss(name: str, *, num_classes: int, class_counts: Sequence[int] | None = None, **params: Any) -> Loss:
    """Build a loss by registry name.

    Args:
        name: one of ``LOSSES`` (bce3s, bce, ce, focal, cb_softmax, cb_sigmoid, cb_focal, balanced_softmax,
            logit_adjusted, ldam, cb_bce).
        num_classes: K.
        class_counts: training images per class (length K); required by the losses that use it (the class-balanced
            ones, balanced_softmax, logit_adjusted, ldam, cb_bce), optional and ignored otherwise (bce3s, bce, ce,
            focal).
        **params: the loss's keyword parameters (see :func:`loss_params`).

    Returns:
        The loss module.

    Raises:
        ValueError: unknown name or parameter (the message lists the valid ones), or an invalid value (the message
            starts with the parameter's name, e.g. ``temperature: must be > 0 (got 0)``), or ``class_counts``
            missing for a loss that needs it (the message starts with ``class_counts:``).
    """
    factory = _factory(name)
    signature = inspect.signature(factory)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    valid = loss_params(name)
    unknown = sorted(set(params) - set(valid))
    if unknown and not takes_any:
        listed = ", ".join(sorted(valid)) or "(none)"
        close = difflib.get_close_matches(unknown[0], sorted(valid), n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{unknown[0]}: unknown parameter of loss {name!r};{hint} valid: {listed}")
    needs_counts = "class_counts" in signature.parameters
    if class_counts is None:
        if needs_counts:
            raise ValueError(
                f"class_counts: loss {name!r} needs the training images per class; pass "
                f"class_counts=[n_0, ..., n_{{K-1}}] (length num_classes={num_classes})"
            )
    elif len(class_counts) != num_classes:
        raise ValueError(f"class_counts: has {len(class_counts)} entries but num_classes is {num_classes}")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if class_counts is not None and (needs_counts or takes_any):
        kwargs["class_counts"] = class_counts
    return factory(**kwargs, **params)


def _factory(name: str) -> Callable[..., Loss]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    return LOSSES[name]
