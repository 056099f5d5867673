"""WB MaxNorm: loop reference, threshold, and no effect on a normalized head."""

from __future__ import annotations

import pytest
import torch

from bce3s.models import NormalizedLinear, apply_max_norm, max_norm_threshold


def _loop_reference(weight: torch.Tensor, theta: float, init_weight: torch.Tensor) -> torch.Tensor:
    """WB regularizers.py, one row at a time."""
    norms0 = [float(row.norm()) for row in init_weight]
    thresh = min(norms0) + theta * (max(norms0) - min(norms0))
    out = weight.clone()
    for k in range(weight.shape[0]):
        n = float(weight[k].norm())
        if n > thresh:
            out[k] = weight[k] * (thresh / n)
    return out


def test_threshold_formula() -> None:
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 10.0]])  # norms 5, 1, 10
    assert max_norm_threshold(w, 0.1) == pytest.approx(1 + 0.1 * 9)
    assert max_norm_threshold(w, 0.0) == pytest.approx(1.0)
    assert max_norm_threshold(w, 1.0) == pytest.approx(10.0)


def test_matches_loop_reference_over_epochs() -> None:
    torch.manual_seed(0)
    w = torch.randn(20, 7) * torch.linspace(0.2, 3.0, 20).unsqueeze(1)
    init = w.clone()
    threshold = max_norm_threshold(w, 0.1)  # fixed once, at the start of the stage
    ref = w.clone()
    for _ in range(3):  # a few "epochs" of drift then projection; the threshold stays the initial one
        drift = torch.randn(20, 7) * 0.3
        w += drift
        ref += drift
        apply_max_norm(w, threshold)
        ref = _loop_reference(ref, 0.1, init)
        torch.testing.assert_close(w, ref)
    assert bool((w.norm(dim=1) <= threshold * (1 + 1e-6)).all())


def test_per_row_thresholds_and_validation() -> None:
    w = torch.tensor([[3.0, 4.0], [6.0, 8.0]])
    apply_max_norm(w, torch.tensor([1.0, 20.0]))
    torch.testing.assert_close(w, torch.tensor([[0.6, 0.8], [6.0, 8.0]]))
    with pytest.raises(ValueError):
        apply_max_norm(w, torch.ones(3))


def test_maxnorm_cannot_change_normalized_head_logits() -> None:
    torch.manual_seed(2)
    head = NormalizedLinear(16, 10)
    with torch.no_grad():
        head.weight.mul_(torch.linspace(0.1, 5.0, 10).unsqueeze(1))
    h = torch.randn(32, 16)
    before = head(h).detach()
    threshold = max_norm_threshold(head.weight, 0.1)
    apply_max_norm(head.weight, threshold)
    assert head.weight.norm(dim=1).max() <= threshold * (1 + 1e-6)
    torch.testing.assert_close(head(h), before)
    assert head.weight.grad is None  # in-place projection is not recorded by autograd
