"""Tests of PartialClassSampler: same sets as partial_class_set, generator state in state_dict."""

from __future__ import annotations

import io

import pytest
import torch

from bce3s.losses import PartialClassSampler, partial_class_set


def test_sampler_matches_functional_sequence():
    sampler = PartialClassSampler(0.3, seed=7)
    g = torch.Generator().manual_seed(7)
    present = torch.zeros(20, dtype=torch.bool)
    present[[2, 5]] = True
    for _ in range(5):
        assert torch.equal(sampler(present), partial_class_set(present, 20, 0.3, generator=g))


def test_generator_state_round_trip():
    a = PartialClassSampler(0.4, seed=3)
    present = torch.zeros(30, dtype=torch.bool)
    present[0] = True
    for _ in range(3):
        a(present)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = PartialClassSampler(0.4, seed=99)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(3):
        assert torch.equal(a(present), b(present))


def test_errors():
    with pytest.raises(ValueError, match="^neg_class_ratio: "):
        PartialClassSampler(0.0)
    with pytest.raises(ValueError, match="^seed: "):
        PartialClassSampler(0.5, seed=1.5)
