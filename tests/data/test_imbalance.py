"""Class-count profiles, long-tailed subsets, validation carving and index hashes."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch

from bce3s.data.imbalance import carve_val, class_counts, index_hash, lt_subset_indices, per_class_carve
from bce3s.errors import DataError


def naive_exp(n_max: int, k: int, imb: float) -> list[int]:
    # the LDAM-DRW / BCE3S formula as written there: img_max * (imb_factor ** (i / (K - 1))), imb_factor = 1/IF
    return [int(n_max * ((1.0 / imb) ** (i / (k - 1.0)))) for i in range(k)]


def test_cifar100_if100_counts():
    counts = class_counts(500, 100, 100)
    assert sum(counts) == 10847
    assert counts[:3] == [500, 477, 455]
    assert counts[-1] == 5
    assert counts == [int(500 * 100 ** (-i / 99)) for i in range(100)]
    assert counts == naive_exp(500, 100, 100)
    # Many (> 100) / Medium / Few (< 20) = 35 / 35 / 30
    assert sum(n > 100 for n in counts) == 35
    assert sum(n < 20 for n in counts) == 30
    assert all(a >= b for a, b in zip(counts, counts[1:]))


@pytest.mark.parametrize(
    ("n_max", "k", "imb", "total"),
    # the training-set sizes the long-tailed literature reports
    [
        (500, 100, 50, 12608),
        (500, 100, 10, 19573),
        (5000, 10, 100, 12406),
        (5000, 10, 50, 13996),
        (5000, 10, 10, 20431),
    ],
)
def test_literature_sizes(n_max, k, imb, total):
    counts = class_counts(n_max, k, imb)
    assert sum(counts) == total
    assert counts == naive_exp(n_max, k, imb)


def test_cifar10_if100_exact():
    assert class_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_step_profile():
    assert class_counts(100, 10, 10, "step") == [100] * 5 + [10] * 5
    assert class_counts(100, 5, 10, "step") == [100, 100, 10, 10, 10]
    assert class_counts(7, 4, 3, "step") == [7, 7, 2, 2]


def test_balanced_and_single_class():
    assert class_counts(30, 4, 1) == [30] * 4
    assert class_counts(30, 4, 1, "step") == [30] * 4
    assert class_counts(30, 1, 100) == [30]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((500, 100, 0.5), "imbalance factor must be >= 1"),
        ((500, 100, float("nan")), "imbalance factor must be >= 1"),
        ((500, 0, 10), "number of classes"),
        ((0, 10, 10), "n_max"),
        ((500, 10, 10, "linear"), "unknown imbalance profile 'linear'; valid: exp, step"),
        ((100, 10, 1000), r"imbalance factor 1000 empties class 7 .*imbalance factor <= 100"),
        ((100, 10, 200, "step"), r"imbalance factor 200 empties class 5"),
    ],
)
def test_class_counts_errors(args, match):
    with pytest.raises(DataError, match=match):
        class_counts(*args)


LABELS = torch.tensor([2, 0, 1, 0, 2, 0, 1, 2, 0, 2, 1, 0])
#           position:   0  1  2  3  4  5  6  7  8  9 10 11
# class 0 at 1, 3, 5, 8, 11; class 1 at 2, 6, 10; class 2 at 0, 4, 7, 9


def test_subset_file_order_by_hand():
    idx = lt_subset_indices(LABELS, [3, 2, 1])
    assert idx.dtype == torch.int64
    assert idx.tolist() == [1, 3, 5, 2, 6, 0]


def naive_subset(labels: list[int], counts: list[int]) -> list[int]:
    out = []
    for c, n in enumerate(counts):
        out += [i for i, y in enumerate(labels) if y == c][:n]
    return out


def test_subset_matches_naive_loop():
    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 7, (500,), generator=gen)
    have = torch.bincount(labels, minlength=7)
    counts = [int(h) // (c + 1) for c, h in enumerate(have)]
    assert lt_subset_indices(labels, counts).tolist() == naive_subset(labels.tolist(), counts)


def test_subset_random_order():
    a = lt_subset_indices(LABELS, [3, 2, 1], order="random", seed=1)
    b = lt_subset_indices(LABELS, [3, 2, 1], order="random", seed=1)
    assert torch.equal(a, b)
    assert torch.bincount(LABELS[a], minlength=3).tolist() == [3, 2, 1]
    assert len(set(a.tolist())) == 6
    # class-major and ascending inside a class
    keys = (LABELS[a] * 100 + a).tolist()
    assert keys == sorted(keys)
    draws = {tuple(lt_subset_indices(LABELS, [3, 2, 1], order="random", seed=s).tolist()) for s in range(20)}
    assert len(draws) > 5


def test_subset_errors():
    with pytest.raises(DataError, match=r"class 1 has 3 images but the long-tailed subset needs 4"):
        lt_subset_indices(LABELS, [3, 4, 1])
    with pytest.raises(DataError, match="counts cover only 2 classes"):
        lt_subset_indices(LABELS, [3, 2])
    with pytest.raises(DataError, match="unknown subset order 'shuffled'"):
        lt_subset_indices(LABELS, [1, 1, 1], order="shuffled")
    with pytest.raises(ValueError, match="1-D"):
        lt_subset_indices(LABELS.view(3, 4), [1, 1, 1])


def test_carve_val_file_order_by_hand():
    train = lt_subset_indices(LABELS, [3, 1, 2])  # [1, 3, 5], [2], [0, 4]
    val = carve_val(LABELS, train, 2)
    assert val.tolist() == [8, 11, 6, 10, 7, 9]
    assert not set(val.tolist()) & set(train.tolist())
    assert carve_val(LABELS, train, 0).numel() == 0


def test_carve_val_random_is_seeded_and_disjoint():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (400,), generator=gen)
    train = lt_subset_indices(labels, [40, 30, 20, 10, 5], order="random", seed=3)
    v1 = carve_val(labels, train, 7, order="random", seed=3)
    v2 = carve_val(labels, train, 7, order="random", seed=3)
    assert torch.equal(v1, v2)
    assert torch.bincount(labels[v1], minlength=5).tolist() == [7] * 5
    assert not set(v1.tolist()) & set(train.tolist())


def test_carve_val_error_names_class():
    train = lt_subset_indices(LABELS, [3, 2, 1])
    with pytest.raises(DataError, match=r"class 1 has only 1 training images left .* 2 needed .*val_per_class"):
        carve_val(LABELS, train, 2)


def test_per_class_carve():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 6, (300,), generator=gen)
    train, val = per_class_carve(labels, 3, seed=4)
    assert torch.bincount(labels[val], minlength=6).tolist() == [3] * 6
    assert sorted(train.tolist() + val.tolist()) == list(range(300))
    train2, val2 = per_class_carve(labels, 3, seed=4)
    assert torch.equal(val, val2) and torch.equal(train, train2)
    _, val3 = per_class_carve(labels, 3, seed=5)
    assert not torch.equal(val, val3)
    t0, v0 = per_class_carve(labels, 0)
    assert v0.numel() == 0 and sorted(t0.tolist()) == list(range(300))


def test_per_class_carve_keeps_a_training_image():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    with pytest.raises(DataError, match=r"class 2 has 1 training images; carving 1 .* leave none"):
        per_class_carve(labels, 1)


def test_index_hash():
    idx = torch.tensor([3, 1, 2**40, 0])
    ref = hashlib.sha256(struct.pack("<4q", 3, 1, 2**40, 0)).hexdigest()
    assert index_hash(idx) == ref
    assert index_hash([3, 1, 2**40, 0]) == ref
    assert index_hash(idx.to(torch.int32)[:2]) == hashlib.sha256(struct.pack("<2q", 3, 1)).hexdigest()
    assert index_hash(idx.flip(0)) != ref
