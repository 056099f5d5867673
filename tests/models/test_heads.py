"""Heads and projector: logits against manual computations, init statistics, invariances."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bce3s.models import Linear, NormalizedLinear, Projector, build_head


def test_normalized_linear_matches_manual_formula() -> None:
    torch.manual_seed(0)
    head = NormalizedLinear(5, 3)
    h = torch.randn(4, 5)
    w, b = head.weight.detach(), head.bias.detach()
    manual = torch.empty(4, 3)
    for i in range(4):
        for k in range(3):
            manual[i, k] = (w[k] / max(w[k].norm().item(), 1e-5)) @ h[i] + b[k]
    torch.testing.assert_close(head(h), manual)


def test_normalized_linear_eps_bounds_tiny_rows() -> None:
    head = NormalizedLinear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1e-7, 0.0], [3.0, 4.0]]))
        head.bias.zero_()
    out = head(torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[1e-7 / 1e-5, 7.0 / 5.0]]))


def test_normalized_linear_row_scale_invariance() -> None:
    torch.manual_seed(1)
    head = NormalizedLinear(8, 6)
    h = torch.randn(10, 8)
    before = head(h)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([0.01, 0.5, 1.0, 3.0, 70.0, 1e3]).unsqueeze(1))
    torch.testing.assert_close(head(h), before)


def test_normalized_linear_init_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    head = NormalizedLinear(512, 2000)
    head.reset_parameters(generator=gen)
    # kaiming_normal(a=1, fan_in, leaky_relu): gain sqrt(2 / (1 + 1)) = 1 -> std 1/sqrt(512)
    assert abs(head.weight.std().item() - 1 / math.sqrt(512)) < 0.01 / math.sqrt(512) * 5
    bound = 1 / math.sqrt(512)
    assert head.bias.abs().max().item() <= bound
    assert head.bias.abs().max().item() > 0.95 * bound  # uniform fills the interval


def test_reset_parameters_with_generator_is_reproducible() -> None:
    a, b = NormalizedLinear(4, 3), NormalizedLinear(4, 3)
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)


def test_linear_head_is_nn_linear_with_default_init_distribution() -> None:
    head = build_head("linear", 16, 4)
    assert isinstance(head, nn.Linear) and isinstance(head, Linear)
    head.reset_parameters(torch.Generator().manual_seed(0))
    assert head.weight.abs().max().item() <= 1 / math.sqrt(16)
    h = torch.randn(3, 16)
    torch.testing.assert_close(head(h), h @ head.weight.T + head.bias)


def test_build_head_unknown_name() -> None:
    with pytest.raises(ValueError, match="valid heads: normalized, linear"):
        build_head("cosine", 4, 2)


def test_projector_shapes_and_formula() -> None:
    torch.manual_seed(0)
    proj = Projector(12, 5)
    h = torch.randn(7, 12)
    out = proj(h)
    assert out.shape == (7, 5)
    l1, l2 = proj.net[0], proj.net[2]
    assert (l1.in_features, l1.out_features, l2.in_features, l2.out_features) == (12, 12, 12, 5)
    manual = torch.relu(h @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias
    torch.testing.assert_close(out, manual)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in proj.modules())
