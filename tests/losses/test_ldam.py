"""Tests of LDAMLoss (margins, scale, DRW weights) against F.cross_entropy with explicit margins/weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bce3s.losses import LDAMLoss, effective_number_weights

COUNTS = [500, 100, 20, 5]


def test_margins():
    loss = LDAMLoss(4, COUNTS, max_margin=0.5)
    expected = [0.5 * (5 / n) ** 0.25 for n in COUNTS]
    assert loss.margins.tolist() == pytest.approx(expected, rel=1e-6)
    assert loss.margins.max().item() == pytest.approx(0.5)


def test_matches_official_formula():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (6,), generator=g)
    loss = LDAMLoss(4, COUNTS, drw_epoch=2, beta=0.999)
    m = loss.margins.double()
    for epoch, w in [(0, None), (2, effective_number_weights(COUNTS, 0.999).double())]:
        loss.set_epoch(epoch)
        adjusted = 30.0 * (z - F.one_hot(y, 4).double() * m)
        ref = F.cross_entropy(adjusted, y, weight=w)
        ours = loss(z, y).loss
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ref, z)[0])


def test_drw_weights_pure_function_of_epoch():
    loss = LDAMLoss(4, COUNTS, drw_epoch=160, beta=0.9999)
    assert loss.drw_weights(0).tolist() == [1.0] * 4
    assert loss.drw_weights(159).tolist() == [1.0] * 4
    torch.testing.assert_close(loss.drw_weights(160), effective_number_weights(COUNTS, 0.9999))
    torch.testing.assert_close(loss.drw_weights(199), loss.drw_weights(160))
    loss.set_epoch(170)
    torch.testing.assert_close(loss.class_weight, effective_number_weights(COUNTS, 0.9999))
    loss.set_epoch(3)  # going back (e.g. a new stage) restores ones
    assert loss.class_weight.tolist() == [1.0] * 4
    assert LDAMLoss(4, COUNTS).drw_weights(10_000).tolist() == [1.0] * 4


def test_zero_margin_scale_one_is_ce():
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (5,), generator=g)
    torch.testing.assert_close(LDAMLoss(4, COUNTS, max_margin=0.0, s=1.0)(z, y).loss, F.cross_entropy(z, y))


def test_errors():
    for name, bad in (("drw_epoch", -1), ("drw_epoch", 2.5), ("s", 0.0), ("max_margin", -0.1), ("beta", 1.0)):
        with pytest.raises(ValueError, match=f"^{name}: "):
            LDAMLoss(4, COUNTS, **{name: bad})
