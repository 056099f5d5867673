"""Classifier heads and the contrastive projector.

* :class:`NormalizedLinear` is the BCE3S head: logits use unit-normalized weight rows,
  ``z = h @ normalize(W).T + b``, so the feature norm ``||h||`` acts as a per-sample scale.
* :class:`Linear` is a plain ``nn.Linear`` whose ``reset_parameters`` accepts a generator (cRT, baselines).
* :class:`Projector` is the two-layer MLP ``Linear(d, d) -> ReLU -> Linear(d, p)`` of the contrastive term.
* :func:`build_head` picks a head by name (``"normalized"`` or ``"linear"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HEADS", "Linear", "NormalizedLinear", "Projector", "build_head"]


class NormalizedLinear(nn.Module):
    """Linear layer over unit-normalized weight rows (the BCE3S classifier).

    ``logits = h @ F.normalize(W, dim=1, eps=eps).T + b``, i.e. ``z_ik = w_k^T h_i / max(||w_k||, eps) + b_k``.
    The raw weight ``W`` is unconstrained; only its row directions reach the logits, so rescaling any row leaves
    the output unchanged (which is why MaxNorm cannot change predictions, see :mod:`bce3s.models.maxnorm`).

    Init (as the official head.py): ``W ~ kaiming_normal_(a=1, mode="fan_in", nonlinearity="leaky_relu")``
    (i.e. std ``1/sqrt(d)``), ``b ~ U(-1/sqrt(d), 1/sqrt(d))``.

    Args:
        in_features: feature dimension ``d``.
        num_classes: number of classes ``K``.
        bias: whether to learn the per-class bias ``b``.
        eps: lower bound on the row norm in the normalization.

    Shapes:
        input ``(N, d)`` -> output ``(N, K)``; ``weight`` ``(K, d)``, ``bias`` ``(K,)``.
    """

    def __init__(self, in_features: int, num_classes: int, *, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(f"in_features and num_classes must be >= 1, got {in_features} and {num_classes}")
        self.in_features = in_features
        self.out_features = num_classes
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw ``weight`` and ``bias`` with the official init (optionally from ``generator``)."""
        nn.init.kaiming_normal_(self.weight, a=1, mode="fan_in", nonlinearity="leaky_relu", generator=generator)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    def normalized_weight(self) -> Tensor:
        """The unit-normalized rows ``w_k / max(||w_k||, eps)``, shape ``(K, d)``."""
        return F.normalize(self.weight, dim=1, eps=self.eps)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(N, K)`` from features ``(N, d)``."""
        return F.linear(features, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.out_features}, bias={self.bias is not None}"


class Linear(nn.Linear):
    """``nn.Linear`` with PyTorch's default init, re-drawable from an explicit generator.

    Init (same as ``nn.Linear``): ``W ~ kaiming_uniform_(a=sqrt(5))`` (i.e. ``U(-1/sqrt(d), 1/sqrt(d))``),
    ``b ~ U(-1/sqrt(d), 1/sqrt(d))``.
    """

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw ``weight`` and ``bias`` (optionally from ``generator``)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound, generator=generator)


class Projector(nn.Module):
    """Contrastive projector ``Linear(d, d) -> ReLU -> Linear(d, p)`` (no BN, with biases, as released).

    Args:
        in_features: feature dimension ``d``.
        out_features: projection dimension ``p`` (128 in the released run).

    Shapes:
        input ``(N, d)`` -> output ``(N, p)``.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"projector dims must be >= 1, got {in_features} -> {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.net = nn.Sequential(
            nn.Linear(in_features, in_features), nn.ReLU(inplace=True), nn.Linear(in_features, out_features)
        )

    def forward(self, features: Tensor) -> Tensor:
        """Embeddings ``(N, p)`` from features ``(N, d)``."""
        return self.net(features)


HEADS = ("normalized", "linear")


def build_head(name: str, in_features: int, num_classes: int) -> NormalizedLinear | Linear:
    """Build a classifier head by name.

    Args:
        name: ``"normalized"`` (:class:`NormalizedLinear`, the BCE3S head) or ``"linear"`` (:class:`Linear`).
        in_features: feature dimension ``d``.
        num_classes: number of classes ``K``.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "normalized":
        return NormalizedLinear(in_features, num_classes)
    if name == "linear":
        return Linear(in_features, num_classes)
    raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}")
