"""Property tests (hypothesis): every loss is finite with finite gradients; class_counts is a sound profile.

(The config parser's properties are in tests/test_config.py.)
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bce3s.data.imbalance import class_counts
from bce3s.errors import DataError
from bce3s.losses import LOSSES, build_loss

PROPS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


Targets = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]


def _targets(n: int, k: int, soft: bool, gen: torch.Generator) -> Targets:
    """Class ids (n,), and for ``soft`` the (n, k) rows of a [clean, mixup, cutmix] batch with their view ids."""
    y = torch.randint(0, k, (n,), generator=gen)
    if not soft:
        return y, None, y
    view = torch.randint(0, 3, (n,), generator=gen)
    view[0] = 0  # at least one clean row
    y2 = torch.randint(0, k, (n,), generator=gen)
    lam = torch.rand(n, generator=gen).clamp(0.01, 0.99)
    target = torch.zeros(n, k)
    target[torch.arange(n), y] += torch.where(view == 0, torch.ones(n), lam)
    target[torch.arange(n), y2] += torch.where(view == 0, torch.zeros(n), 1 - lam)
    return target, view, y


@pytest.mark.parametrize("name", sorted(LOSSES))
@PROPS
@given(
    k=st.integers(2, 12),
    n=st.integers(1, 12),
    log10_scale=st.floats(-3, 4),
    saturate=st.booleans(),
    soft=st.booleans(),
    epoch=st.integers(0, 3),
    counts=st.lists(st.integers(1, 5000), min_size=12, max_size=12),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_loss_is_finite_with_finite_gradients(name, k, n, log10_scale, saturate, soft, epoch, counts, seed):
    gen = torch.Generator().manual_seed(seed)
    scale = 10.0**log10_scale  # logit magnitudes from 1e-3 to 1e4
    logits = torch.randn(n, k, generator=gen) * scale
    if saturate:  # exact +-scale entries: every sigmoid/softmax saturated
        logits = torch.sign(logits) * scale
    target, view, labels = _targets(n, k, soft, gen)
    emb = (torch.randn(n, 8, generator=gen) * scale).requires_grad_(True)
    weight = (torch.randn(k, 6, generator=gen) * scale).requires_grad_(True)
    logits.requires_grad_(True)
    params = {"embedding_dim": 8} if name == "bce3s" else {}
    loss_fn = build_loss(name, num_classes=k, class_counts=counts[:k], **params)
    loss_fn.set_epoch(epoch)
    if "embeddings" in loss_fn.needs:  # fill the class memory as the engine does after a step
        loss_fn.update(torch.randn(n, 8, generator=gen) * scale, labels)
    out = loss_fn(logits, target, view=view, embeddings=emb, weight=weight)
    assert out.loss.dim() == 0
    assert torch.isfinite(out.loss), (name, float(out.loss))
    for term, value in out.terms.items():
        assert torch.isfinite(value), (name, term, float(value))
    out.loss.backward()
    for what, t in (("logits", logits), ("embeddings", emb), ("weight", weight)):
        if t.grad is not None:
            assert bool(torch.isfinite(t.grad).all()), (name, what)


def _exact_counts(n_max: int, k: int, imbalance: float, profile: str) -> list[Decimal]:
    """The profile evaluated with 60 significant digits (independent of float rounding)."""
    with localcontext() as ctx:
        ctx.prec = 60
        f = Decimal(imbalance)
        if k == 1:  # a single class is its own head, whatever the profile
            return [Decimal(n_max)]
        if profile == "step":
            return [Decimal(n_max)] * (k // 2) + [Decimal(n_max) / f] * (k - k // 2)
        return [Decimal(n_max) * f ** (Decimal(-i) / Decimal(k - 1)) for i in range(k)]


@PROPS
@given(
    n_max=st.integers(1, 5000),
    k=st.integers(1, 1000),
    imbalance=st.floats(1.0, 1000.0) | st.sampled_from([1.0, 10.0, 50.0, 100.0, 200.0, 256.0]),
    profile=st.sampled_from(["exp", "step"]),
)
def test_class_counts_is_non_increasing_and_sums_correctly(n_max, k, imbalance, profile):
    exact = _exact_counts(n_max, k, imbalance, profile)
    # a value within 1e-9 of an integer may truncate either way in float arithmetic
    near_int = [abs(v - v.to_integral_value()) < Decimal("1e-9") for v in exact]
    try:
        counts = class_counts(n_max, k, imbalance, profile)
    except DataError as err:
        assert "empties class" in str(err)
        assert any(v < 1 or (n and v < 2) for v, n in zip(exact, near_int))
        return
    assert len(counts) == k
    assert all(isinstance(c, int) and c >= 1 for c in counts)
    assert counts[0] == n_max
    assert all(a >= b for a, b in zip(counts, counts[1:])), "not non-increasing"
    for c, v, n in zip(counts, exact, near_int):
        assert c == int(v) or (n and abs(c - v) < 1), (c, v)
    slack = sum(near_int)
    assert abs(sum(counts) - sum(int(v) for v in exact)) <= slack
    # the head/tail ratio is at least the imbalance factor (truncation only shrinks the tail)
    assert counts[0] / counts[-1] >= imbalance * (1 - 1e-9) or k == 1 or math.isclose(imbalance, 1.0)
