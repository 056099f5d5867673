"""GLMC mixing: hand-checked example, soft targets, CutMix box rule, lambda distribution."""

from __future__ import annotations

import math

import pytest
import torch

from bce3s.data.mixing import (
    VIEW_CLEAN,
    VIEW_CUTMIX,
    VIEW_MIXUP,
    cutmix_box,
    cutmix_box_at,
    glmc_mix,
    sample_lambda,
)


def _replay(seed: int, alpha: float, h: int, w: int) -> tuple[float, tuple[int, int, int, int]]:
    """lambda and box that glmc_mix draws from a generator seeded with ``seed`` (same draw order)."""
    g = torch.Generator().manual_seed(seed)
    lam = sample_lambda(alpha, g)
    return lam, cutmix_box(lam, h, w, g)


def test_hand_checked_example() -> None:
    x = torch.zeros(2, 1, 4, 4)
    x2 = torch.ones(2, 1, 4, 4)
    y = torch.tensor([0, 1])
    y2 = torch.tensor([2, 1])
    out = glmc_mix(x, y, x2, y2, num_classes=3, generator=torch.Generator().manual_seed(7))
    lam, (y1_, y2_, x1_, x2_) = _replay(7, 1.0, 4, 4)
    assert out.lam == lam and 0 < lam < 1
    assert out.images.shape == (6, 1, 4, 4)
    torch.testing.assert_close(out.images[:2], x)
    torch.testing.assert_close(out.images[2:4], torch.full((2, 1, 4, 4), 1 - lam))  # 0 * lam + 1 * (1 - lam)
    box = torch.zeros(4, 4)
    box[y1_:y2_, x1_:x2_] = 1
    torch.testing.assert_close(out.images[4:], box.expand(2, 1, 4, 4))
    expected = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [lam, 0, 1 - lam], [0, 1, 0], [lam, 0, 1 - lam], [0, 1, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(out.target, expected)
    assert out.view.tolist() == [VIEW_CLEAN] * 2 + [VIEW_MIXUP] * 2 + [VIEW_CUTMIX] * 2
    assert out.labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("lam", "cy", "cx", "expected"),
    [
        (0.75, 10, 20, (2, 18, 12, 28)),  # sqrt(0.25) * 32 = 16 -> centre ± 8
        (0.5, 0, 31, (0, 11, 20, 32)),  # ceil(32 * 0.7071) = 23 -> ± 11, clipped at both borders
        (1.0, 5, 5, (5, 5, 5, 5)),  # empty box
        (0.0, 16, 16, (0, 32, 0, 32)),  # whole image
    ],
)
def test_cutmix_box_rule(lam: float, cy: int, cx: int, expected: tuple[int, int, int, int]) -> None:
    assert cutmix_box_at(lam, 32, 32, cy, cx) == expected
    g = torch.Generator().manual_seed(11)
    cy, cx = int(torch.randint(32, (1,), generator=g)), int(torch.randint(32, (1,), generator=g))
    assert cutmix_box(lam, 32, 32, torch.Generator().manual_seed(11)) == cutmix_box_at(lam, 32, 32, cy, cx)


def test_soft_targets_and_cutmix_pixels_on_random_batches() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        b, k = 8, 5
        x = torch.randn(b, 3, 12, 10, generator=g)
        x2 = torch.randn(b + 3, 3, 12, 10, generator=g)  # longer second batch: sliced to b rows
        y = torch.randint(k, (b,), generator=g)
        y2 = torch.randint(k, (b + 3,), generator=g)
        out = glmc_mix(x, y, x2, y2, num_classes=k, alpha=1.0, generator=torch.Generator().manual_seed(trial))
        lam, (r1, r2, c1, c2) = _replay(trial, 1.0, 12, 10)
        torch.testing.assert_close(out.target.sum(1), torch.ones(3 * b))
        for i in range(b):
            q = torch.zeros(k)
            q[y[i]] += lam
            q[y2[i]] += 1 - lam
            torch.testing.assert_close(out.target[b + i], q)
            torch.testing.assert_close(out.target[2 * b + i], q)  # not area-corrected
        torch.testing.assert_close(out.images[b : 2 * b], lam * x + (1 - lam) * x2[:b])
        cut = out.images[2 * b :]
        inside = torch.zeros(12, 10, dtype=torch.bool)
        inside[r1:r2, c1:c2] = True
        assert torch.equal(cut[:, :, inside], x2[:b][:, :, inside])  # exact copies from x2
        assert torch.equal(cut[:, :, ~inside], x[:, :, ~inside])
        ch, cw = math.ceil(12 * math.sqrt(1 - lam)), math.ceil(10 * math.sqrt(1 - lam))
        assert r2 - r1 <= 2 * (ch // 2) and c2 - c1 <= 2 * (cw // 2)


def test_lambda_distribution_and_reproducibility() -> None:
    g = torch.Generator().manual_seed(1)
    lams = torch.tensor([sample_lambda(1.0, g) for _ in range(4000)], dtype=torch.float64)
    assert abs(lams.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / 4000)
    assert abs(lams.var().item() - 1 / 12) < 0.008  # Beta(1, 1) = uniform
    lams = torch.tensor([sample_lambda(0.5, g) for _ in range(4000)], dtype=torch.float64)
    assert abs(lams.var().item() - 1 / 8) < 0.01  # Beta(a, a): 1 / (4 (2a + 1))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    a = glmc_mix(x, y, x.flip(0), y.flip(0), num_classes=4, generator=torch.Generator().manual_seed(3))
    b = glmc_mix(x, y, x.flip(0), y.flip(0), num_classes=4, generator=torch.Generator().manual_seed(3))
    c = glmc_mix(x, y, x.flip(0), y.flip(0), num_classes=4, generator=torch.Generator().manual_seed(4))
    assert a.lam == b.lam and torch.equal(a.images, b.images) and a.lam != c.lam


def test_errors() -> None:
    x, y = torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64)
    g = torch.Generator()
    with pytest.raises(ValueError, match="fewer"):
        glmc_mix(x, y, x[:3], y[:3], num_classes=2, generator=g)
    with pytest.raises(ValueError, match="image shape"):
        glmc_mix(x, y, x[:, :, :4], y, num_classes=2, generator=g)
    with pytest.raises(ValueError, match="alpha"):
        sample_lambda(0.0, g)


@pytest.mark.gpu
def test_mix_stays_on_device() -> None:
    x, y = torch.randn(4, 3, 8, 8, device="cuda"), torch.tensor([0, 1, 2, 3], device="cuda")
    out = glmc_mix(x, y, x.flip(0), y.flip(0), num_classes=4, generator=torch.Generator().manual_seed(0))
    assert out.images.is_cuda and out.target.is_cuda and out.view.is_cuda
    ref = glmc_mix(x.cpu(), y.cpu(), x.flip(0).cpu(), y.flip(0).cpu(), num_classes=4,
                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.images.cpu(), ref.images)
