"""The model contract: a backbone, a classifier head and an optional contrastive projector in one module.

All trainable parameters (projector included) live in :class:`Classifier`, so training uses one optimizer,
one DDP wrapper and one checkpoint entry (STYLE 3.2).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from bce3s.models.heads import Linear, NormalizedLinear, Projector

__all__ = ["Classifier", "ModelOutput"]


class ModelOutput(NamedTuple):
    """What :meth:`Classifier.forward` returns.

    Attributes:
        logits: ``(N, K)`` head output plus the post-hoc ``logit_bias`` (zeros unless set).
        features: ``(N, D)`` penultimate backbone features (not normalized).
        embeddings: ``(N, P)`` projector output, or ``None`` when the model has no projector.
    """

    logits: Tensor
    features: Tensor
    embeddings: Tensor | None


class Classifier(nn.Module):
    """Backbone + head (+ projector), with a post-hoc logit-adjustment buffer.

    Args:
        backbone: module mapping images ``(N, C, H, W)`` to features ``(N, D)``; must expose ``out_features``
            unless ``feature_dim`` is given.
        head: :class:`NormalizedLinear` or ``nn.Linear`` with ``weight`` ``(K, D)`` and ``bias`` ``(K,)``.
        projector: optional :class:`Projector` ``D -> P`` for the contrastive term.
        feature_dim: ``D``; read from ``backbone.out_features`` when omitted.

    Buffers:
        logit_bias: ``(K,)`` added to the logits in :meth:`forward`; zeros by default, set by
            :meth:`set_logit_adjustment` (post-hoc logit adjustment). It is saved in the state dict, so an
            adjusted model keeps its adjustment across checkpoints.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: NormalizedLinear | nn.Linear,
        projector: Projector | None = None,
        *,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        if feature_dim is None:
            feature_dim = getattr(backbone, "out_features", None)
            if not isinstance(feature_dim, int):
                raise ValueError("backbone has no integer `out_features`; pass feature_dim explicitly")
        if head.in_features != feature_dim:
            raise ValueError(f"head expects {head.in_features}-d features but the backbone gives {feature_dim}-d")
        if projector is not None and projector.in_features != feature_dim:
            raise ValueError(
                f"projector expects {projector.in_features}-d features but the backbone gives {feature_dim}-d"
            )
        self.backbone = backbone
        self.head = head
        self.projector = projector
        self.feature_dim: int = feature_dim
        self.num_classes: int = head.out_features
        self.register_buffer("logit_bias", torch.zeros(head.out_features, dtype=head.weight.dtype))

    def forward(self, x: Tensor) -> ModelOutput:
        """Run the model.

        Args:
            x: images ``(N, C, H, W)``.

        Returns:
            :class:`ModelOutput` with logits ``(N, K)``, features ``(N, D)``, embeddings ``(N, P)`` or ``None``.
        """
        features = self.backbone(x)
        logits = self.head(features) + self.logit_bias
        embeddings = self.projector(features) if self.projector is not None else None
        return ModelOutput(logits, features, embeddings)

    def reset_head(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise the head with its own init (cRT); shapes, device and dtype are kept.

        ``logit_bias`` and the projector are left as they are. A plain ``nn.Linear`` head that does not accept
        a generator is reset with its own ``reset_parameters()`` (then ``generator`` is ignored).
        """
        if isinstance(self.head, (NormalizedLinear, Linear)):
            self.head.reset_parameters(generator=generator)
        else:
            self.head.reset_parameters()

    @torch.no_grad()
    def set_logit_adjustment(self, class_counts: Sequence[int] | Tensor, tau: float = 1.0) -> None:
        """Post-hoc logit adjustment (Menon et al. 2021): ``logit_bias = -tau * log(prior)``.

        ``prior_k = n_k / sum_j n_j`` from the training counts, so rare classes get a larger bonus. ``tau = 0``
        clears the adjustment. The bias is added in every forward (training too), so set it after training.

        Args:
            class_counts: ``(K,)`` training images per class, all positive.
            tau: adjustment strength.

        Raises:
            ValueError: wrong length or a non-positive count.
        """
        counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
        if counts.numel() != self.num_classes:
            raise ValueError(f"class_counts has {counts.numel()} entries, the model has {self.num_classes} classes")
        if bool((counts <= 0).any()):
            raise ValueError("class_counts must all be positive for logit adjustment (log prior of 0 is -inf)")
        prior = counts / counts.sum()
        bias = -float(tau) * prior.log()
        self.logit_bias.copy_(bias.to(self.logit_bias))

    def clear_logit_adjustment(self) -> None:
        """Reset ``logit_bias`` to zeros."""
        self.logit_bias.zero_()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the classifier head (what stage 2 trains)."""
        return self.head.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the backbone."""
        return self.backbone.parameters()

    def projector_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the projector (empty without one). Backbone + head + projector = all parameters."""
        return self.projector.parameters() if self.projector is not None else iter(())
