"""Model registry and :func:`build_model`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bce3s.models.classifier import Classifier
from bce3s.models.heads import HEADS, Projector, build_head
from bce3s.models.resnet_cifar import resnet32
from bce3s.models.small_cnn import small_cnn, tiny_cnn
from bce3s.models.torchvision_resnets import resnet34_cifar, resnet50, resnet152, resnext50_32x4d

__all__ = ["MODELS", "build_backbone", "build_model"]

#: Backbone factories ``(in_channels) -> nn.Module`` with an ``out_features`` attribute.
MODELS: dict[str, Callable[[int], nn.Module]] = {
    "resnet32": resnet32,  # He et al. CIFAR ResNet-32, option-A shortcuts, 64-d
    "resnet34_cifar": resnet34_cifar,  # WB / official BCE3S encoder, 512-d
    "resnet50": resnet50,  # 2048-d
    "resnext50_32x4d": resnext50_32x4d,  # 2048-d
    "resnet152": resnet152,  # 2048-d
    "small_cnn": small_cnn,  # 128-d, tiny images on CPU
    "tiny_cnn": tiny_cnn,  # 64-d, small_cnn at half width (quick CPU runs)
}


def build_backbone(name: str, *, in_channels: int = 3) -> nn.Module:
    """Build a backbone ``(N, C, H, W) -> (N, D)`` by name: a key of :data:`MODELS` or ``timm/<arch>`` (timm).

    Raises:
        ValueError: unknown name (the message lists the valid ones) or ``in_channels < 1``.
    """
    if name.startswith("timm/"):
        from bce3s.models.timm_backbone import TimmFeatures

        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        return TimmFeatures(name, in_channels=in_channels)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    return MODELS[name](in_channels)


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    head: str = "normalized",
    projector_dim: int | None = None,
) -> Classifier:
    """Build a :class:`Classifier` from a backbone name.

    Args:
        name: a key of :data:`MODELS`, or ``timm/<arch>`` for a timm model (needs timm).
        num_classes: number of classes ``K``.
        in_channels: image channels (1 for grayscale).
        head: ``"normalized"`` (BCE3S) or ``"linear"``.
        projector_dim: output dim ``P`` of a ``Linear(D, D) -> ReLU -> Linear(D, P)`` projector; ``None`` = no
            projector.

    Raises:
        ValueError: unknown model or head name, or a non-positive size.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
    if projector_dim is not None and projector_dim < 1:
        raise ValueError(f"projector_dim must be >= 1 or None, got {projector_dim}")
    backbone = build_backbone(name, in_channels=in_channels)
    dim = int(backbone.out_features)
    projector = Projector(dim, projector_dim) if projector_dim is not None else None
    return Classifier(backbone, build_head(head, dim, num_classes), projector, feature_dim=dim)
