"""He et al. (2016) CIFAR ResNet-32, the standard long-tailed-recognition backbone (LDAM-DRW, GLMC, PaCo).

Layout: 3x3 conv (16 ch) -> BN -> ReLU -> 3 stages of 5 basic blocks with 16 / 32 / 64 channels (stride 1, 2, 2)
-> global average pool -> 64-d feature (post-ReLU, non-negative). 6n + 2 = 32 layers with n = 5.

Shortcuts are **option A** (as in He et al.'s CIFAR experiments and the LDAM-DRW / GLMC code): when the shape
changes, the identity is subsampled with stride 2 and zero-padded in channels, so shortcuts have no parameters
(0.46 M parameters in the backbone). Init as LDAM-DRW: ``kaiming_normal_`` (fan_in, ReLU gain) on every conv,
BN weight 1 and bias 0.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CifarResNet", "resnet32"]


class _PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` and zero-padding of the channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad[0], self.pad[1]))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or option-A) shortcut, ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            _PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet backbone (6n + 2 layers) returning pooled features.

    Args:
        num_blocks: basic blocks per stage (5 for ResNet-32).
        in_channels: input image channels.
        widths: channels of the three stages.

    Shapes:
        input ``(N, C, H, W)`` -> output ``(N, widths[-1])``.
    """

    def __init__(self, num_blocks: int = 5, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for b in range(num_blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.out_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        """The stem (``conv1``, ``bn1``) and ``layer1`` ... ``layer3``, input first (``model.freeze_stages``)."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3]

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, out_features)`` from images ``(N, C, H, W)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def resnet32(in_channels: int = 3) -> CifarResNet:
    """He et al. CIFAR ResNet-32 (option-A shortcuts), 64-d features."""
    return CifarResNet(num_blocks=5, in_channels=in_channels)
