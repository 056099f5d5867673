"""Long-tailed subsets: class-count profiles, subset selection, validation carving, index hashes.

Pure functions over label vectors; nothing here reads files. The conventions follow LDAM-DRW / WB / BCE3S:
class ``i`` keeps ``n_i = int(n_max * IF ** (-i / (K - 1)))`` images (class 0 is the head), taken as the first
``n_i`` images of that class in file order (or a seeded random choice), and a class-balanced validation split
comes from the images the subset did not use.

Example::

    counts = class_counts(500, 100, 100)          # [500, 477, 455, ..., 5], sum 10,847
    train = lt_subset_indices(labels, counts)     # LongTensor of positions in ``labels``
    val = carve_val(labels, train, per_class=20)  # disjoint from ``train``
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from bce3s.errors import DataError

__all__ = [
    "PROFILES",
    "carve_val",
    "class_counts",
    "index_hash",
    "lt_subset_indices",
    "per_class_carve",
]

PROFILES = ("exp", "step")
ORDERS = ("file", "random")


def class_counts(n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp") -> list[int]:
    """Per-class training counts of a long-tailed profile, head class first.

    Args:
        n_max: count of the head class (class 0).
        num_classes: number of classes K.
        imbalance_factor: IF = n_max / n_min (>= 1; 1 = balanced).
        profile: ``exp``: ``int(n_max * IF ** (-i / (K - 1)))`` (LDAM / CIFAR-LT); ``step``: the first ``K // 2``
            classes keep ``n_max``, the others ``int(n_max / IF)``.

    Returns:
        K counts, index = class id.

    Raises:
        DataError: bad arguments, or an imbalance factor so large that a class would get no image.
    """
    if profile not in PROFILES:
        raise DataError(f"unknown imbalance profile {profile!r}; valid: {', '.join(PROFILES)}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DataError(f"number of classes must be an integer >= 1 (got {num_classes!r})")
    if not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise DataError(f"head-class count n_max must be an integer >= 1 (got {n_max!r})")
    if not imbalance_factor >= 1:  # also rejects NaN
        raise DataError(f"imbalance factor must be >= 1 (got {imbalance_factor})")
    n_max, num_classes = int(n_max), int(num_classes)
    if num_classes == 1:
        return [n_max]
    if profile == "exp":
        counts = [int(n_max * imbalance_factor ** (-i / (num_classes - 1))) for i in range(num_classes)]
    else:
        head = num_classes // 2
        counts = [n_max] * head + [int(n_max / imbalance_factor)] * (num_classes - head)
    for i, n in enumerate(counts):
        if n < 1:
            raise DataError(
                f"imbalance factor {imbalance_factor:g} empties class {i} (n_max {n_max}, profile {profile}): "
                f"use an imbalance factor <= {n_max}"
            )
    return counts


def _as_labels(labels: Tensor | Sequence[int]) -> np.ndarray:
    t = torch.as_tensor(labels)
    if t.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"labels must be integers, got {t.dtype}")
    arr = t.detach().cpu().to(torch.int64).numpy()
    if arr.size and int(arr.min()) < 0:
        raise ValueError("labels must be >= 0")
    return arr


def _order(n: int, order: str, seed: int) -> np.ndarray:
    """Visiting order of the positions 0..n-1: identity (``file``) or a seeded permutation (``random``)."""
    if order not in ORDERS:
        raise DataError(f"unknown subset order {order!r}; valid: {', '.join(ORDERS)}")
    if order == "file":
        return np.arange(n, dtype=np.int64)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=gen).numpy()


def _select(labels: np.ndarray, visit: np.ndarray, take: np.ndarray) -> Tensor:
    """First ``take[c]`` positions of each class c in ``visit`` order; class-major, ascending inside a class.

    (numpy: ``torch.sort(stable=True)`` is ~100x slower on CPU for these sizes.)
    """
    keys = labels[visit]
    perm = np.argsort(keys, kind="stable")
    grouped = visit[perm]
    sorted_keys = keys[perm]
    rank = np.arange(grouped.size) - np.searchsorted(sorted_keys, sorted_keys, side="left")
    keep = grouped[rank < take[labels[grouped]]]
    # class-major; inside a class ascending position (= file order), whatever the visiting order was
    keep = keep[np.lexsort((keep, labels[keep]))]
    return torch.from_numpy(np.ascontiguousarray(keep, dtype=np.int64))


def lt_subset_indices(
    labels: Tensor | Sequence[int],
    counts: Sequence[int],
    *,
    order: str = "file",
    seed: int = 0,
) -> Tensor:
    """Positions of a long-tailed subset: ``counts[c]`` images of every class c.

    Args:
        labels: (N,) class ids of the full training set, in file order.
        counts: wanted count per class (length K >= max label + 1).
        order: ``file`` keeps the first ``counts[c]`` images of each class in file order (LDAM/WB/BCE3S);
            ``random`` keeps a uniformly random subset chosen with ``seed``.
        seed: seed of ``order="random"``.

    Returns:
        (sum(counts),) int64 positions into ``labels``, grouped by class (class 0 first), ascending inside a class.

    Raises:
        DataError: a class has fewer images than requested, or a negative count.
    """
    lab = _as_labels(labels)
    take = np.asarray(list(counts), dtype=np.int64)
    k = take.size
    if lab.size and int(lab.max()) >= k:
        raise DataError(f"labels go up to {int(lab.max())} but counts cover only {k} classes")
    if k and int(take.min()) < 0:
        c = int(np.flatnonzero(take < 0)[0])
        raise DataError(f"class {c}: requested count {int(take[c])} is negative")
    have = np.bincount(lab, minlength=k)
    short = np.flatnonzero(have < take)
    if short.size:
        c = int(short[0])
        raise DataError(
            f"class {c} has {int(have[c])} images but the long-tailed subset needs {int(take[c])} "
            f"({short.size} class(es) short): lower the imbalance factor's head count or check the labels"
        )
    return _select(lab, _order(lab.size, order, seed), take)


def carve_val(
    labels: Tensor | Sequence[int],
    used_indices: Tensor | Sequence[int],
    per_class: int,
    *,
    order: str = "file",
    seed: int = 0,
) -> Tensor:
    """A class-balanced validation split from the images a subset did not use.

    Args:
        labels: (N,) class ids of the full training set, in file order.
        used_indices: positions already taken (the long-tailed training subset).
        per_class: validation images per class (0 gives an empty split).
        order: ``file`` takes the first ``per_class`` unused images of each class in file order; ``random`` a
            seeded random choice among them.
        seed: seed of ``order="random"``.

    Returns:
        (K * per_class,) int64 positions into ``labels``, disjoint from ``used_indices``; class-major.

    Raises:
        DataError: a class has fewer than ``per_class`` unused images.
    """
    lab = _as_labels(labels)
    if per_class < 0:
        raise DataError(f"validation images per class must be >= 0 (got {per_class})")
    used = np.zeros(lab.size, dtype=bool)
    used[torch.as_tensor(used_indices, dtype=torch.int64).numpy()] = True
    k = int(lab.max()) + 1 if lab.size else 0
    free = np.bincount(lab[~used], minlength=k)
    short = np.flatnonzero(free < per_class)
    if short.size:
        c = int(short[0])
        raise DataError(
            f"class {c} has only {int(free[c])} training images left outside the long-tailed subset, "
            f"{per_class} needed for the validation split: lower data.val_per_class"
        )
    visit = _order(lab.size, order, seed)
    visit = visit[~used[visit]]
    return _select(lab, visit, np.full(k, per_class, dtype=np.int64))


def per_class_carve(labels: Tensor | Sequence[int], per_class: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split an (already long-tailed) training set into train and a small class-balanced validation set.

    Used for iNaturalist 2018, whose official val list serves as the test set. ``per_class``
    images of every class, chosen at random with ``seed``, move to validation; the rest stay in train.

    Args:
        labels: (N,) class ids.
        per_class: images per class to move (0 = none).
        seed: seed of the random choice.

    Returns:
        (train positions, val positions), each class-major and ascending inside a class; disjoint, covering.

    Raises:
        DataError: a class would be left without a training image.
    """
    lab = _as_labels(labels)
    if per_class < 0:
        raise DataError(f"validation images per class must be >= 0 (got {per_class})")
    k = int(lab.max()) + 1 if lab.size else 0
    have = np.bincount(lab, minlength=k)
    short = np.flatnonzero((have <= per_class) & (have > 0))
    if per_class > 0 and short.size:
        c = int(short[0])
        raise DataError(
            f"class {c} has {int(have[c])} training images; carving {per_class} for validation would leave none: "
            f"lower data.val_per_class"
        )
    val = _select(lab, _order(lab.size, "random", seed), np.full(k, per_class, dtype=np.int64))
    rest = np.ones(lab.size, dtype=bool)
    rest[val.numpy()] = False
    train = _select(lab, np.flatnonzero(rest), np.full(k, lab.size, dtype=np.int64))
    return train, val


def index_hash(indices: Tensor | Sequence[int]) -> str:
    """sha256 (hex) of the indices as little-endian int64 bytes, in the given order."""
    arr = torch.as_tensor(indices, dtype=torch.int64).cpu().numpy().astype("<i8", copy=False)
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
