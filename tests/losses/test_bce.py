"""Tests of BceLoss (the joint term alone) and its view handling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bce3s.losses import BceLoss, bce_sum


def test_hand_constant_zero_logits():
    z = torch.zeros(2, 3, dtype=torch.float64)
    assert BceLoss(3)(z, torch.tensor([0, 2])).loss.item() == pytest.approx(3 * math.log(2))


def test_equals_bce_with_logits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (6,), generator=g)
    ours = BceLoss(5)(z, y).loss
    ref = F.binary_cross_entropy_with_logits(z, F.one_hot(y, 5).float(), reduction="none").sum(1).mean()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ref, z)[0])


def test_mean_over_views_present():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    q = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.2, 0.8], [0, 0, 0.2, 0.8]], dtype=torch.float64
    )
    view = torch.tensor([0, 0, 2, 2, 2])  # no mixup rows: mean of the clean and cutmix views
    out = BceLoss(4)(z, q, view=view).loss
    expected = (bce_sum(z[:2], q[:2]) + bce_sum(z[2:], q[2:])) / 2
    torch.testing.assert_close(out, expected)


def test_ratio_applies_to_clean_rows_only():
    z = torch.zeros(2, 10, dtype=torch.float64)
    q = torch.zeros(2, 10, dtype=torch.float64)
    q[0, 3] = 1.0
    q[1, 4], q[1, 5] = 0.5, 0.5
    view = torch.tensor([0, 1])
    out = BceLoss(10, neg_class_ratio=0.2)(z, q, view=view).loss
    # clean row: 2 classes (ceil(0.2 * 10)) x log 2; mixup row: all 10 classes, 8 negatives x log 2 plus two
    # positives of weight 0.5 x log 2
    assert out.item() == pytest.approx((2 * math.log(2) + 9 * math.log(2)) / 2)


def test_logit_clip_and_empty_batch():
    z = torch.tensor([[100.0, 0.0]], requires_grad=True)
    out = BceLoss(2, logit_clip=64.0)(z, torch.tensor([1]))
    out.loss.backward()
    assert z.grad[0, 0].item() == 0.0
    empty = torch.zeros(0, 2, requires_grad=True)
    loss = BceLoss(2)(empty, torch.zeros(0, dtype=torch.long)).loss
    loss.backward()
    assert loss.item() == 0.0
