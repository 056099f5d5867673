"""Per-image torchvision v2 presets, the official Cutout rule and flip TTA."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from bce3s.data.transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    DATASET_PRESETS,
    Cutout,
    build_transform,
    cutout_box,
    default_flip,
    eval_resize_size,
    flip_tta,
    preset_stats,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _types(t: v2.Compose) -> list[type]:
    return [type(op) for op in t.transforms]


def test_cifar_train_order_matches_official_recipe() -> None:
    t = build_transform("cifar", train=True, image_size=32)
    assert _types(t) == [v2.RandomCrop, v2.RandomHorizontalFlip, v2.AutoAugment, v2.ToDtype, Cutout, v2.Normalize]
    crop, aa, cut, norm = t.transforms[0], t.transforms[2], t.transforms[4], t.transforms[5]
    assert crop.padding == [4, 4, 4, 4] and crop.size == (32, 32)
    assert aa.policy == v2.AutoAugmentPolicy.CIFAR10
    assert cut.size == 16
    assert tuple(norm.mean) == CIFAR_MEAN and tuple(norm.std) == CIFAR_STD
    # options switch the optional parts off
    t = build_transform("cifar", train=True, image_size=32, autoaugment=False, cutout=0, flip=False)
    assert _types(t) == [v2.RandomCrop, v2.ToDtype, v2.Normalize]


def test_gray_preset_padding_and_flip_default() -> None:
    t = build_transform("gray", train=True, image_size=28, channels=1)
    assert _types(t) == [v2.RandomCrop, v2.ToDtype, v2.Normalize]  # no flip: digits change meaning
    assert t.transforms[0].padding == [3, 3, 3, 3]
    t = build_transform("gray", train=True, image_size=8, flip=True, channels=1)
    assert _types(t) == [v2.RandomCrop, v2.RandomHorizontalFlip, v2.ToDtype, v2.Normalize]
    assert t.transforms[0].padding == [1, 1, 1, 1]
    assert DATASET_PRESETS["digits_lt"] == ("gray", False) and DATASET_PRESETS["fashion_mnist_lt"] == ("gray", True)
    assert not default_flip("gray") and default_flip("cifar") and default_flip("imagenet")
    out = t(torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8))
    assert out.shape == (1, 8, 8) and out.dtype == torch.float32


def test_eval_presets_are_exact_normalization() -> None:
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = build_transform("cifar", train=False, image_size=32)(x)
    mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std, rtol=1e-6, atol=1e-6)
    g = x[:1]
    torch.testing.assert_close(build_transform("gray", train=False, image_size=32, channels=1)(g),
                               (g.float() / 255 - 0.5) / 0.5, rtol=1e-6, atol=1e-6)


def test_imagenet_presets_sizes() -> None:
    assert eval_resize_size(224) == 256
    x = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    train = build_transform("imagenet", train=True, image_size=48)
    assert _types(train) == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.ColorJitter, v2.ToDtype, v2.Normalize]
    assert train(x).shape == (3, 48, 48)
    ra = build_transform("imagenet", train=True, image_size=48, randaugment=True)
    assert v2.RandAugment in _types(ra) and ra(x).shape == (3, 48, 48)
    ev = build_transform("imagenet", train=False, image_size=48)
    assert _types(ev) == [v2.Resize, v2.CenterCrop, v2.ToDtype, v2.Normalize]
    assert ev.transforms[0].size == [55] and ev(x).shape == (3, 48, 48)


def test_preset_stats_and_errors() -> None:
    assert preset_stats("gray", 3) == ((0.5,) * 3, (0.5,) * 3)
    assert preset_stats("cifar") == (CIFAR_MEAN, CIFAR_STD)
    with pytest.raises(ValueError, match="valid: cifar, imagenet, gray"):
        build_transform("mnist", train=True, image_size=28)


def test_per_image_and_batched_transforms_check_their_options_alike() -> None:
    from bce3s.data.gpu.augment import BatchAugment

    for make in (build_transform, BatchAugment):  # one definition of the keywords: same checks for both
        with pytest.raises(ValueError, match="cutout"):
            make("cifar", train=True, image_size=32, cutout=-1)
        with pytest.raises(ValueError, match="autoaugment_fill"):
            make("cifar", train=True, image_size=32, autoaugment_fill=256)
        with pytest.raises(TypeError, match="cutuot"):
            make("cifar", train=True, image_size=32, cutuot=8)


@pytest.mark.parametrize(
    ("cy", "cx", "size", "expected"),
    [
        (16, 16, 16, (8, 24, 8, 24)),  # interior: a full 16 x 16 square
        (0, 0, 16, (0, 8, 0, 8)),  # corner: clipped to 8 x 8
        (20, 31, 16, (12, 28, 23, 32)),  # right border
        (5, 5, 5, (3, 7, 3, 7)),  # odd size: centre ± 2, i.e. side 4 as in the official code
    ],
)
def test_cutout_box_official_rule(cy: int, cx: int, size: int, expected: tuple[int, int, int, int]) -> None:
    assert cutout_box(cy, cx, size, 32, 32) == expected


def test_cutout_zeroes_exactly_the_box() -> None:
    x = torch.ones(3, 32, 32)
    for seed in range(20):
        torch.manual_seed(seed)
        out = Cutout(16)(x)
        torch.manual_seed(seed)
        cy, cx = int(torch.randint(32, ())), int(torch.randint(32, ()))
        y1, y2, x1, x2 = cutout_box(cy, cx, 16, 32, 32)
        expected = torch.ones(3, 32, 32)
        expected[:, y1:y2, x1:x2] = 0
        assert torch.equal(out, expected)
    assert torch.equal(Cutout(0)(x), x)
    with pytest.raises(ValueError):
        Cutout(-1)


def test_flip_tta_averages_logits_of_both_views() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 2 * 4 * 6)

    def model(x: torch.Tensor) -> torch.Tensor:  # (N, 2, 4, 6) -> (N, 5), not flip invariant
        return x.flatten(1) @ w.T

    x = torch.randn(3, 2, 4, 6)
    expected = (model(x) + model(x[..., torch.arange(5, -1, -1)])) / 2
    torch.testing.assert_close(flip_tta(model, x), expected)
    sym = flip_tta(lambda t: t.mean(dim=(1, 2, 3))[:, None].expand(-1, 5), x)
    torch.testing.assert_close(sym, x.mean(dim=(1, 2, 3))[:, None].expand(-1, 5))
