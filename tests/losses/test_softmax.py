"""Tests of CrossEntropyLoss and FocalLoss against torch built-ins and hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bce3s.losses import CrossEntropyLoss, FocalLoss


def _inputs(seed=0, n=6, k=5):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    return z, torch.randint(0, k, (n,), generator=g)


def test_ce_equals_torch_hard_and_soft():
    z, y = _inputs()
    ours = CrossEntropyLoss(5)(z, y).loss
    ref = F.cross_entropy(z, y)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ref, z)[0])
    q = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    torch.testing.assert_close(CrossEntropyLoss(5)(z, q).loss, -(q * F.log_softmax(z, 1)).sum(1).mean())


def test_focal_gamma_zero_is_ce():
    z, y = _inputs(1)
    a = FocalLoss(5, gamma=0.0)(z, y).loss
    b = F.cross_entropy(z, y)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, z)[0], torch.autograd.grad(b, z)[0])


def test_focal_hand_constant():
    # p = softmax([log 3, 0]) = [0.75, 0.25]
    z = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    expected = (-(0.25**2) * math.log(0.75) - (0.75**2) * math.log(0.25)) / 2
    assert FocalLoss(2, gamma=2.0)(z, y).loss.item() == pytest.approx(expected, rel=1e-12)


def test_focal_matches_ldam_drw_reference():
    """LDAM-DRW code: p = exp(-ce); loss = ((1 - p) ** gamma * ce).mean()."""
    z, y = _inputs(2)
    ce = F.cross_entropy(z, y, reduction="none")
    ref = ((1 - torch.exp(-ce)) ** 1.5 * ce).mean()
    ours = FocalLoss(5, gamma=1.5)(z, y).loss
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ref, z)[0])


def test_focal_small_gamma_finite_grad_when_confident():
    z = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    loss = FocalLoss(3, gamma=0.5)(z, torch.tensor([0])).loss
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


def test_errors():
    with pytest.raises(ValueError, match="^gamma: "):
        FocalLoss(3, gamma=-1.0)
