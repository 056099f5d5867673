"""A small conv net for tiny images (8x8 digits, 28x28 MNIST / Fashion-MNIST, 32x32 colour), fast on a CPU.

Layout: five 3x3 conv-BN-ReLU layers with ``width``, ``width``, ``2*width``, ``2*width``, ``4*width`` channels and
strides 1, 1, 2, 1, 2, then a global average pool -> ``4*width``-d features (128 with the default ``width=32``).
On 8x8 inputs the maps are 8 -> 8 -> 4 -> 4 -> 2; on 28x28 they are 28 -> 28 -> 14 -> 14 -> 7 (about 22 M
multiply-adds per image). Init: ``kaiming_normal_``
(fan_out, ReLU) on the convs, BN 1/0.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN", "small_cnn", "tiny_cnn"]


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Five conv-BN-ReLU layers (strides 1, 1, 2, 1, 2) and a global average pool.

    Five layers give a receptive field of 23 pixels, enough for 28x28 images; with three the network only
    saw 11-pixel patches before the global pool, which held Fashion-MNIST far below what small CNNs reach.

    Args:
        in_channels: input channels (1 for grayscale, 3 for colour).
        width: channels of the first layer; the feature dimension is ``4 * width``.

    Shapes:
        input ``(N, C, H, W)`` (any ``H, W >= 1``) -> output ``(N, 4 * width)``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be >= 1, got {in_channels} and {width}")
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width, 1),
            _conv_bn_relu(width, width, 1),
            _conv_bn_relu(width, 2 * width, 2),
            _conv_bn_relu(2 * width, 2 * width, 1),
            _conv_bn_relu(2 * width, 4 * width, 2),
        )
        self.out_features = 4 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        """The five conv-BN-ReLU layers, input first (``model.freeze_stages``)."""
        return list(self.features)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, 4 * width)`` from images ``(N, C, H, W)``."""
        return self.features(x).mean(dim=(2, 3))


def small_cnn(in_channels: int = 1) -> SmallCNN:
    """Small CNN with 128-d features."""
    return SmallCNN(in_channels=in_channels, width=32)


def tiny_cnn(in_channels: int = 1) -> SmallCNN:
    """Small CNN at half width: 64-d features, about a quarter of the multiply-adds (quick CPU runs)."""
    return SmallCNN(in_channels=in_channels, width=16)
