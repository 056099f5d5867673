"""Backbones: output shapes, parameter counts, layout details."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bce3s.models import MODELS, build_backbone, build_model, resnet32, resnet34_cifar, small_cnn
from bce3s.models.resnet_cifar import _PadShortcut


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_names() -> None:
    assert set(MODELS) == {"resnet32", "resnet34_cifar", "resnet50", "resnext50_32x4d", "resnet152", "small_cnn",
                           "tiny_cnn"}


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*resnet32.*small_cnn"):
        build_model("resnet9", num_classes=10)


def test_resnet32_layout_and_params() -> None:
    torch.manual_seed(0)
    net = resnet32()
    # He et al.: 0.46 M parameters; option-A shortcuts have none. Hand count:
    # stem 3*16*9 + 2*16; stage c: 5 blocks of 2 convs (c_in*c*9 + c*c*9) + 4 BN params per channel.
    expected = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(5):
            expected += c_in * c * 9 + c * c * 9 + 4 * c
            c_in = c
    assert _count(net) == expected == 463_504
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 31  # + the head = 32 weighted layers
    assert sum(isinstance(m, _PadShortcut) for m in net.modules()) == 2
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 64) and net.out_features == 64
    assert bool((out >= 0).all())  # pooled post-ReLU


def test_option_a_shortcut_pads_channels_and_subsamples() -> None:
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4)
    y = _PadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 2, 2)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert bool((y[:, :8] == 0).all()) and bool((y[:, 24:] == 0).all())


def test_resnet34_cifar_layout() -> None:
    net = resnet34_cifar()
    # torchvision resnet34 (21,797,672) - fc (512*1000 + 1000) - 7x7 stem (3*64*49) + 3x3 stem (3*64*9)
    assert _count(net) == 21_797_672 - 513_000 - 3 * 64 * 49 + 3 * 64 * 9 == 21_276_992
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert not hasattr(net, "fc")
    conv1 = net.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.bias) == ((3, 3), (1, 1), (1, 1), None)
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 512) and net.out_features == 512


def test_resnet34_cifar_pool_matches_official_avg_pool2d_4() -> None:
    net = resnet34_cifar().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        h = net.relu(net.bn1(net.conv1(x)))
        h = net.layer4(net.layer3(net.layer2(net.layer1(h))))
        official = nn.functional.avg_pool2d(h, 4).flatten(1)
        torch.testing.assert_close(net(x), official)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_imagenet_backbones_small_input(name: str) -> None:
    net = build_backbone(name).eval()
    assert not hasattr(net, "fc")
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2048) and net.out_features == 2048


def test_imagenet_backbone_param_counts() -> None:
    # torchvision totals minus fc (2048*1000 + 1000)
    assert _count(build_backbone("resnet50")) == 25_557_032 - 2_049_000
    assert _count(build_backbone("resnext50_32x4d")) == 25_028_904 - 2_049_000
    assert _count(build_backbone("resnet152")) == 60_192_808 - 2_049_000


def test_imagenet_backbone_grayscale_stem() -> None:
    net = build_backbone("resnet50", in_channels=1).eval()
    assert net.conv1.weight.shape == (64, 1, 7, 7)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32)).shape == (1, 2048)


@pytest.mark.parametrize(("in_channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_small_cnn_shapes(in_channels: int, size: int) -> None:
    net = small_cnn(in_channels)
    out = net(torch.randn(4, in_channels, size, size))
    assert out.shape == (4, 128) and net.out_features == 128


def test_tiny_cnn_is_small_cnn_at_half_width() -> None:
    tiny, small = build_backbone("tiny_cnn", in_channels=1), small_cnn(1)
    assert tiny.out_features == 64 and tiny(torch.randn(2, 1, 28, 28)).shape == (2, 64)
    widths = [m.out_channels for m in tiny.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [c // 2 for c in (m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d))]


@pytest.mark.parametrize("name", ["resnet32", "resnet34_cifar", "small_cnn"])
def test_cifar_backbones_grayscale(name: str) -> None:
    net = build_backbone(name, in_channels=1).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16)).shape == (1, net.out_features)


def test_gradients_flow_to_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_model("resnet32", num_classes=10, projector_dim=8)
    out = model(torch.randn(4, 3, 16, 16))
    (out.logits.sum() + out.embeddings.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
