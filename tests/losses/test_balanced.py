"""Tests of the class-balanced losses, balanced softmax, logit adjustment and the stage-2 cb_bce."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from bce3s.losses import (
    BalancedSoftmaxLoss,
    ClassBalancedBCELoss,
    ClassBalancedFocalLoss,
    ClassBalancedSigmoidLoss,
    ClassBalancedSoftmaxLoss,
    LogitAdjustedLoss,
    bce_sum,
    effective_number_weights,
    partial_class_set,
)

COUNTS = [100, 40, 10, 3, 1]


def _inputs(seed=0, n=7, k=5):
    g = torch.Generator().manual_seed(seed)
    z = (2 * torch.randn(n, k, generator=g, dtype=torch.float64)).requires_grad_()
    return z, torch.randint(0, k, (n,), generator=g)


def _grad(loss, z):
    return torch.autograd.grad(loss, z)[0]


def test_balanced_softmax_uniform_counts_is_ce():
    z, y = _inputs()
    a = BalancedSoftmaxLoss(5, [7] * 5)(z, y).loss
    b = F.cross_entropy(z, y)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(_grad(a, z), _grad(b, z))


def test_balanced_softmax_hand_constant():
    # zero logits, counts [3, 1]: softmax(log n) = [0.75, 0.25]
    z = torch.zeros(2, 2, dtype=torch.float64)
    out = BalancedSoftmaxLoss(2, [3, 1])(z, torch.tensor([0, 1])).loss
    assert out.item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, rel=1e-12)


def test_logit_adjusted_tau_zero_is_ce_and_tau_one_is_balanced_softmax():
    z, y = _inputs(1)
    a = LogitAdjustedLoss(5, COUNTS, tau=0.0)(z, y).loss
    torch.testing.assert_close(a, F.cross_entropy(z, y))
    torch.testing.assert_close(_grad(a, z), _grad(F.cross_entropy(z, y), z))
    torch.testing.assert_close(LogitAdjustedLoss(5, COUNTS)(z, y).loss, BalancedSoftmaxLoss(5, COUNTS)(z, y).loss)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    ref = F.cross_entropy(z + 2 * prior.log(), y)
    torch.testing.assert_close(LogitAdjustedLoss(5, COUNTS, tau=2.0)(z, y).loss, ref)


def test_cb_beta_zero_is_base_loss():
    z, y = _inputs(2)
    onehot = F.one_hot(y, 5).double()
    pairs = [
        (ClassBalancedSoftmaxLoss(5, COUNTS, beta=0.0), F.cross_entropy(z, y)),
        (ClassBalancedSigmoidLoss(5, COUNTS, beta=0.0), bce_sum(z, onehot)),
        (ClassBalancedFocalLoss(5, COUNTS, beta=0.0, gamma=0.0), bce_sum(z, onehot)),
        (ClassBalancedBCELoss(5, COUNTS, beta=0.0, neg_class_ratio=1.0), bce_sum(z, onehot)),
    ]
    for loss, ref in pairs:
        ours = loss(z, y).loss
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(_grad(ours, z), _grad(ref, z))


def test_cb_softmax_weights_hand_constant():
    z = torch.zeros(2, 2, dtype=torch.float64)
    beta = 0.9
    raw = [(1 - beta) / (1 - beta**n) for n in (10, 2)]
    alpha = [2 * r / sum(raw) for r in raw]
    out = ClassBalancedSoftmaxLoss(2, [10, 2], beta=beta)(z, torch.tensor([0, 1])).loss
    assert out.item() == pytest.approx((alpha[0] + alpha[1]) * math.log(2) / 2, rel=1e-6)


def test_cb_focal_matches_naive_cui_reference():
    z, y = _inputs(3)
    gamma, beta = 2.0, 0.99
    alpha = effective_number_weights(COUNTS, beta).double()
    total = 0.0
    zd = z.detach()
    for i in range(z.shape[0]):
        for k in range(5):
            x, t = float(zd[i, k]), 1.0 if k == int(y[i]) else 0.0
            p = 1 / (1 + math.exp(-x))
            p_t = p if t == 1 else 1 - p
            bce = -math.log(p_t)
            total += float(alpha[y[i]]) * (1 - p_t) ** gamma * bce
    ours = ClassBalancedFocalLoss(5, COUNTS, beta=beta, gamma=gamma)(z, y).loss
    assert ours.item() == pytest.approx(total / z.shape[0], rel=1e-10)


def test_cb_sigmoid_soft_targets_use_mixed_weight():
    z, y = _inputs(4)
    q = 0.5 * F.one_hot(y, 5).double() + 0.5 * F.one_hot((y + 1) % 5, 5).double()
    alpha = effective_number_weights(COUNTS, 0.9999).double()
    ref = ((q @ alpha) * F.binary_cross_entropy_with_logits(z, q, reduction="none").sum(1)).mean()
    torch.testing.assert_close(ClassBalancedSigmoidLoss(5, COUNTS)(z, q).loss, ref)


def naive_cb_bce(z, y, alpha, columns):
    """Stage-2 loss: (1/B) sum_i alpha_{y_i} sum_{k in S} [1(k = y_i) sp(-z) + 1(k != y_i) sp(z)]."""
    total = 0.0
    for i in range(z.shape[0]):
        row = 0.0
        for k in columns:
            x = float(z[i, k])
            row += math.log1p(math.exp(-x)) if k == int(y[i]) else math.log1p(math.exp(x))
        total += float(alpha[y[i]]) * row
    return total / z.shape[0]


def test_cb_bce_matches_naive_reference():
    g = torch.Generator().manual_seed(5)
    counts = [500, 200, 100, 50, 20, 10, 5, 3, 2, 1]
    z, y = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g)
    loss = ClassBalancedBCELoss(10, counts, seed=7)
    alpha = effective_number_weights(counts, 0.99999)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        columns = partial_class_set(y, 10, 0.4, generator=gen).nonzero().squeeze(1).tolist()
        assert set(y.tolist()) <= set(columns)
        assert loss(z, y).loss.item() == pytest.approx(naive_cb_bce(z, y, alpha, columns), rel=1e-10)


def test_cb_bce_generator_state_round_trip_and_no_clamp():
    z, y = _inputs(6, n=4, k=5)
    a = ClassBalancedBCELoss(5, COUNTS, neg_class_ratio=0.4, seed=1)
    a(z, y)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ClassBalancedBCELoss(5, COUNTS, neg_class_ratio=0.4, seed=2)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(3):
        assert a(z, y).loss.item() == b(z, y).loss.item()
    big = torch.tensor([[200.0, 0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    out = ClassBalancedBCELoss(5, COUNTS, beta=0.0, neg_class_ratio=1.0)(big, torch.tensor([1]))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(200 + 4 * math.log(2), rel=1e-6)
    assert big.grad[0, 0].item() == pytest.approx(1.0)  # not clamped: the wrong class still gets a gradient


def test_errors():
    with pytest.raises(ValueError, match="^beta: "):
        ClassBalancedSoftmaxLoss(5, COUNTS, beta=1.0)
    for counts in (COUNTS[:4], [1, 2, -1, 3, 4], [0] * 5, ["a"] * 5):
        with pytest.raises(ValueError, match="^class_counts: "):
            LogitAdjustedLoss(5, counts)
    with pytest.raises(ValueError, match="^tau: "):
        LogitAdjustedLoss(5, COUNTS, tau=-1.0)
    with pytest.raises(ValueError, match="^gamma: "):
        ClassBalancedFocalLoss(5, COUNTS, gamma=-1.0)
    with pytest.raises(ValueError, match="^neg_class_ratio: "):
        ClassBalancedBCELoss(5, COUNTS, neg_class_ratio=0.0)
