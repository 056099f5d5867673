"""Feature extractors built from torchvision ResNets (always from scratch, ``weights=None``; nothing downloads).

* ``resnet34_cifar``: the WB / official BCE3S CIFAR encoder. torchvision ``resnet34`` layout,
  ``conv1`` replaced by a 3x3 stride-1 conv (64 ch, no bias), **no max-pool**, layers 1-4, average pool ->
  512-d (post-ReLU). The official code pools with ``avg_pool2d(4)``, which on 32x32 inputs (4x4 maps after
  layer4) equals the adaptive average pool used here; other input sizes also work. The unused torchvision
  ``fc`` is not kept. Init: torchvision's (kaiming_normal fan_out on convs, BN 1/0); the replaced ``conv1``
  keeps PyTorch's default conv init, as in the official code (it swaps the layer after construction).
* ``resnet50``, ``resnext50_32x4d``, ``resnet152``: the ImageNet layouts (7x7 stride-2 stem, max-pool),
  ``fc`` removed -> 2048-d. With ``in_channels != 3`` the stem conv is rebuilt with that many input channels.

Submodule names match torchvision's (``conv1``, ``bn1``, ``layer1`` ...), so torchvision state dicts minus
``fc.*`` load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.models import resnet

__all__ = ["ResNetFeatures", "resnet34_cifar", "resnet50", "resnet152", "resnext50_32x4d"]


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without its ``fc``: images -> pooled penultimate features.

    Args:
        net: a torchvision ``ResNet``; its stem, stages and pool are taken over, its ``fc`` dropped.
        use_maxpool: keep the stem max-pool (False for the CIFAR variant).

    Shapes:
        input ``(N, C, H, W)`` -> output ``(N, out_features)`` (512 for ResNet-18/34, 2048 for 50/101/152).
    """

    def __init__(self, net: resnet.ResNet, *, use_maxpool: bool = True) -> None:
        super().__init__()
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool: nn.Module = net.maxpool if use_maxpool else nn.Identity()
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_features: int = net.fc.in_features

    def stages(self) -> list[nn.Module]:
        """The stem (``conv1``, ``bn1``) and ``layer1`` ... ``layer4``, input first (``model.freeze_stages``)."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, out_features)`` from images ``(N, C, H, W)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet34_cifar(in_channels: int = 3) -> ResNetFeatures:
    """WB / official BCE3S CIFAR ResNet-34: 3x3 stride-1 stem, no max-pool, 512-d features (21.3 M params)."""
    net = resnet.resnet34(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return ResNetFeatures(net, use_maxpool=False)


def _imagenet(factory: Callable[..., resnet.ResNet], in_channels: int) -> ResNetFeatures:
    net = factory(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return ResNetFeatures(net, use_maxpool=True)


def resnet50(in_channels: int = 3) -> ResNetFeatures:
    """torchvision ResNet-50 from scratch without ``fc``, 2048-d features."""
    return _imagenet(resnet.resnet50, in_channels)


def resnext50_32x4d(in_channels: int = 3) -> ResNetFeatures:
    """torchvision ResNeXt-50 (32x4d) from scratch without ``fc``, 2048-d features."""
    return _imagenet(resnet.resnext50_32x4d, in_channels)


def resnet152(in_channels: int = 3) -> ResNetFeatures:
    """torchvision ResNet-152 from scratch without ``fc``, 2048-d features."""
    return _imagenet(resnet.resnet152, in_channels)
