"""``bench/losses.py --floor --plain``: the textbook formulation computes the same loss as Bce3sLoss, or the
comparison means nothing."""

from __future__ import annotations

import pytest
import torch

import losses as losses_bench  # bench/ is on sys.path (tests/bench/conftest.py)


def test_plain_formulation_computes_the_bce3s_loss():
    # bench_plain_floor checks its textbook head + loss against Bce3sLoss before timing anything
    row = losses_bench.bench_plain_floor(10, 4, 16, torch.device("cpu"), repeats=1)
    assert row["ms"] > 0 and row["floor_ms"] > 0


def test_plain_formulation_refuses_a_different_loss(monkeypatch):
    # a comparison with a loss missing a term (here the uniform one, weight 0 in the reference) must not be timed
    real = losses_bench.Bce3sLoss
    monkeypatch.setattr(losses_bench, "Bce3sLoss", lambda *a, **kw: real(*a, **kw, uniform_weight=0.0))
    with pytest.raises(AssertionError):
        losses_bench.bench_plain_floor(10, 4, 16, torch.device("cpu"), repeats=1)
