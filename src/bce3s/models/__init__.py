"""Models: backbones ``(N, C, H, W) -> (N, D)``, heads, the projector and the :class:`Classifier` contract.

``build_model(name, num_classes=K, head="normalized", projector_dim=128)`` is the entry point; ``MODELS`` lists
the backbones. See docs/design.md ("Models").
"""

from __future__ import annotations

from bce3s.models.classifier import Classifier, ModelOutput
from bce3s.models.factory import MODELS, build_backbone, build_model
from bce3s.models.heads import HEADS, Linear, NormalizedLinear, Projector, build_head
from bce3s.models.maxnorm import apply_max_norm, max_norm_threshold
from bce3s.models.resnet_cifar import CifarResNet, resnet32
from bce3s.models.small_cnn import SmallCNN, small_cnn, tiny_cnn
from bce3s.models.torchvision_resnets import ResNetFeatures, resnet34_cifar, resnet50, resnet152, resnext50_32x4d

__all__ = [
    "HEADS",
    "MODELS",
    "CifarResNet",
    "Classifier",
    "Linear",
    "ModelOutput",
    "NormalizedLinear",
    "Projector",
    "ResNetFeatures",
    "SmallCNN",
    "apply_max_norm",
    "build_backbone",
    "build_head",
    "build_model",
    "max_norm_threshold",
    "resnet32",
    "resnet34_cifar",
    "resnet50",
    "resnet152",
    "resnext50_32x4d",
    "small_cnn",
    "tiny_cnn",
]
