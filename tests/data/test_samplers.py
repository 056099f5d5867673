"""Epoch-seeded, DDP-aware long-tailed samplers."""

from __future__ import annotations

import math

import pytest
import torch

from bce3s.data.samplers import class_probabilities, epoch_indices
from bce3s.seeding import make_generator

COUNTS = [400, 200, 100, 50, 25, 10, 4, 1]
_SHUFFLE = torch.randperm(sum(COUNTS), generator=torch.Generator().manual_seed(0))
LABELS = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])[_SHUFFLE]


def target_probs(q: float) -> list[float]:
    # class probability = n_c * n_c^-q / sum (sum of the per-sample weights of the class), by hand
    w = [n * n**-q for n in COUNTS]
    return [x / sum(w) for x in w]


def test_instance_is_a_permutation():
    idx = epoch_indices(LABELS, kind="instance", seed=0, epoch=0)
    assert sorted(idx.tolist()) == list(range(len(LABELS)))
    assert not torch.equal(idx, torch.arange(len(LABELS)))
    two = epoch_indices(LABELS, kind="instance", seed=0, epoch=0, num_samples=2 * len(LABELS))
    assert torch.bincount(two, minlength=len(LABELS)).tolist() == [2] * len(LABELS)
    part = epoch_indices(LABELS, kind="instance", seed=0, epoch=0, num_samples=100)
    assert len(set(part.tolist())) == 100


@pytest.mark.parametrize(
    ("kind", "rho", "q"),
    [("class_balanced", 0.0, 1.0), ("sqrt", 0.0, 0.5), ("power", 0.0, 0.0), ("power", 0.3, 0.3), ("power", 1.0, 1.0)],
)
def test_class_frequencies(kind, rho, q):
    m = 200_000
    idx = epoch_indices(LABELS, kind=kind, rho=rho, seed=1, epoch=2, num_samples=m)
    assert idx.numel() == m
    observed = torch.bincount(LABELS[idx], minlength=len(COUNTS)).tolist()
    for c, p in enumerate(target_probs(q)):
        assert abs(observed[c] - m * p) <= 4 * math.sqrt(m * p * (1 - p)) + 1, (c, observed[c], m * p)
    probs = class_probabilities(COUNTS, kind=kind, rho=rho)
    assert probs.tolist() == pytest.approx(target_probs(q), rel=1e-12)


def test_uniform_within_class():
    m = 100_000
    idx = epoch_indices(LABELS, kind="class_balanced", seed=0, epoch=0, num_samples=m)
    head = torch.nonzero(LABELS == 0).flatten()
    hits = torch.bincount(idx, minlength=len(LABELS))[head].double()
    expected = m / len(COUNTS) / COUNTS[0]  # 31.25 per head sample
    assert hits.mean().item() == pytest.approx(expected, rel=0.05)
    # Poisson-like spread; chi-square statistic over 400 cells ~ 399 +- 28
    chi2 = ((hits - hits.mean()) ** 2 / hits.mean()).sum().item()
    assert 399 - 4 * 28 < chi2 < 399 + 4 * 28
    # the single-image class is drawn about m / 8 times, always the same sample
    tail = torch.nonzero(LABELS == 7).flatten()
    assert int((idx == tail[0]).sum()) == pytest.approx(m / 8, rel=0.05)


def test_power_rho0_is_uniform_with_replacement():
    idx = epoch_indices(LABELS, kind="power", rho=0.0, seed=0, epoch=0)
    assert idx.numel() == len(LABELS)
    assert len(set(idx.tolist())) < len(LABELS)  # repeats: with replacement (expected ~ 63% distinct)


@pytest.mark.parametrize("kind", ["instance", "class_balanced", "sqrt", "power"])
def test_epoch_seeding(kind):
    a = epoch_indices(LABELS, kind=kind, rho=0.5, seed=3, epoch=1)
    assert torch.equal(a, epoch_indices(LABELS, kind=kind, rho=0.5, seed=3, epoch=1))
    assert not torch.equal(a, epoch_indices(LABELS, kind=kind, rho=0.5, seed=3, epoch=2))
    assert not torch.equal(a, epoch_indices(LABELS, kind=kind, rho=0.5, seed=4, epoch=1))


@pytest.mark.parametrize("kind", ["instance", "power"])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_slices_disjoint_and_covering(kind, world):
    n = 10
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    full = epoch_indices(labels, kind=kind, seed=7, epoch=5)
    per_rank = math.ceil(n / world)
    padded = torch.cat([full, full[: per_rank * world - n]])
    slices = [epoch_indices(labels, kind=kind, seed=7, epoch=5, rank=r, world_size=world) for r in range(world)]
    assert all(s.numel() == per_rank for s in slices)
    # rank r holds positions r, r + world, ... of the padded global list: disjoint positions, union = the list
    for r, s in enumerate(slices):
        assert torch.equal(s, padded[r::world])
    merged = torch.stack([torch.nn.functional.pad(s, (0, per_rank - s.numel())) for s in slices], 1).flatten()
    assert torch.equal(merged, padded)
    if kind == "instance":
        assert set(torch.cat(slices).tolist()) == set(range(n))
    dropped = [epoch_indices(labels, kind=kind, seed=7, epoch=5, rank=r, world_size=world, drop_last=True)
               for r in range(world)]  # fmt: skip
    assert sum(d.numel() for d in dropped) == n - n % world
    assert sorted(torch.cat(dropped).tolist()) == sorted(full[: n - n % world].tolist())


def test_epoch_list_comes_from_the_package_seed_scheme():
    """instance = one permutation drawn from make_generator(seed, "sampler", epoch); rank r takes r::W."""
    full = torch.randperm(len(LABELS), generator=make_generator(3, "sampler", 7))
    assert torch.equal(epoch_indices(LABELS, kind="instance", seed=3, epoch=7), full)
    padded = torch.cat([full, full[:1]]) if len(LABELS) % 2 else full
    assert torch.equal(epoch_indices(LABELS, kind="instance", seed=3, epoch=7, rank=1, world_size=2), padded[1::2])


def test_errors():
    with pytest.raises(ValueError, match="unknown sampler 'balanced'; valid: instance, class_balanced, sqrt, power"):
        epoch_indices(LABELS, kind="balanced", seed=0, epoch=0)
    with pytest.raises(ValueError, match="rank"):
        epoch_indices(LABELS, kind="instance", seed=0, epoch=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="empty"):
        epoch_indices(torch.empty(0, dtype=torch.int64), kind="instance", seed=0, epoch=0)
    with pytest.raises(ValueError, match="num_samples"):
        epoch_indices(LABELS, kind="instance", seed=0, epoch=0, num_samples=0)
