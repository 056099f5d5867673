"""Epoch-seeded, DDP-aware samplers for long-tailed training sets.

Kinds (a sample of class c has weight ∝ n_c^-q, i.e. class c is drawn with probability ∝ n_c^(1-q)):

- ``instance``: a seeded permutation of the training set (no replacement; q = 0).
- ``class_balanced``: every class equally likely, then uniform inside the class, with replacement (q = 1).
- ``sqrt``: class probability ∝ sqrt(n_c), with replacement (q = 1/2).
- ``power``: sample weight ∝ n_c^-rho, with replacement (the GLMC / BCE3S "re-balanced" loader; rho = 0 is
  uniform with replacement, the released CIFAR-100-LT run).

The indices of an epoch depend only on ``(seed, epoch)``: every DDP rank generates the same global list,
pads it to a multiple of ``world_size`` by wrapping around (or drops the tail with ``drop_last``), and rank r
takes ``indices[r::world_size]``, so the ranks' slices are disjoint and together form one epoch.

Example::

    idx = epoch_indices(labels, kind="power", rho=0.0, seed=0, epoch=3)   # LongTensor (N,)

Both batch sources (:mod:`bce3s.data.sources`) iterate these lists through :class:`EpochIndexedSource`, which
also holds the evaluation order (:func:`eval_shard`: each rank a contiguous block, no padding).

Seeds follow the package's one scheme (:func:`bce3s.seeding.derive_seed`): an epoch's index list is drawn from
``make_generator(seed, "sampler", epoch)``, the augmentation of the sources from ``(seed, "augment", epoch, ...)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bce3s.seeding import make_generator

__all__ = [
    "SAMPLER_KINDS",
    "EpochIndexedSource",
    "SamplingSpec",
    "class_probabilities",
    "epoch_indices",
    "eval_shard",
    "num_batches",
]

SAMPLER_KINDS = ("instance", "class_balanced", "sqrt", "power")


def _exponent(kind: str, rho: float) -> float:
    if kind not in SAMPLER_KINDS:
        raise ValueError(f"unknown sampler {kind!r}; valid: {', '.join(SAMPLER_KINDS)}")
    return {"instance": 0.0, "class_balanced": 1.0, "sqrt": 0.5, "power": float(rho)}[kind]


def class_probabilities(counts: Sequence[int] | Tensor, *, kind: str, rho: float = 0.0) -> Tensor:
    """Probability that one draw of the sampler comes from each class.

    Args:
        counts: (K,) images per class.
        kind: sampler kind; ``instance`` gives the empirical frequencies n_c / N.
        rho: exponent of ``power``.

    Returns:
        float64 (K,) summing to 1; 0 for empty classes.
    """
    q = _exponent(kind, rho)
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = torch.where(n > 0, n.clamp(min=1) ** (1.0 - q), torch.zeros_like(n))
    total = w.sum()
    if not total > 0:
        raise ValueError("class counts are all zero")
    return w / total


def _global_indices(labels: Tensor, q: float, instance: bool, num_samples: int, gen: torch.Generator) -> Tensor:
    n = labels.numel()
    if instance:
        rounds = -(-num_samples // n)
        return torch.cat([torch.randperm(n, generator=gen) for _ in range(rounds)])[:num_samples]
    counts = torch.bincount(labels)
    probs = class_probabilities(counts, kind="power", rho=q)
    # class first, then uniform inside the class (equivalent to per-sample weights n_c^-q, O(num_samples))
    cls = torch.multinomial(probs, num_samples, replacement=True, generator=gen)
    # numpy: torch's CPU sort is much slower at these sizes when threads compete
    order = torch.from_numpy(np.argsort(labels.numpy(), kind="stable"))
    starts = torch.cumsum(counts, 0) - counts
    offset = (torch.rand(num_samples, generator=gen, dtype=torch.float64) * counts[cls]).long()
    offset = torch.minimum(offset, counts[cls] - 1)
    return order[starts[cls] + offset]


def epoch_indices(
    labels: Tensor | Sequence[int],
    *,
    kind: str,
    rho: float = 0.0,
    seed: int,
    epoch: int,
    num_samples: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> Tensor:
    """This rank's sample indices for one epoch.

    Args:
        labels: (N,) class ids of the training set.
        kind: ``instance``, ``class_balanced``, ``sqrt`` or ``power``.
        rho: exponent of ``power`` (ignored by the other kinds).
        seed: run seed.
        epoch: epoch number; with ``seed`` it fixes the indices.
        num_samples: draws per epoch over all ranks (default N); ``instance`` concatenates fresh permutations
            when it exceeds N.
        rank: this process's rank.
        world_size: number of processes.
        drop_last: drop the tail of the global list to a multiple of ``world_size`` instead of padding.

    Returns:
        int64 (M,) indices into ``labels``, M = ceil(num_samples / world_size) (floor with ``drop_last``).
    """
    q = _exponent(kind, rho)
    lab = torch.as_tensor(labels).detach().to("cpu", torch.int64).flatten()
    n = lab.numel()
    if n == 0:
        raise ValueError("cannot sample from an empty training set")
    if lab.min() < 0:
        raise ValueError("labels must be >= 0")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    total = n if num_samples is None else int(num_samples)
    if total < 1:
        raise ValueError(f"num_samples must be >= 1 (got {num_samples})")
    gen = make_generator(seed, "sampler", epoch)
    idx = _global_indices(lab, q, kind == "instance", total, gen)
    if drop_last:
        idx = idx[: total - total % world_size]
    elif total % world_size:
        pad = world_size - total % world_size
        idx = torch.cat([idx, idx.repeat(-(-pad // total))[:pad]])
    return idx[rank::world_size].contiguous()


def eval_shard(n: int, rank: int = 0, world_size: int = 1) -> range:
    """The contiguous block of ``range(n)`` that ``rank`` evaluates: no padding, no duplicates.

    Blocks follow ``numpy.array_split`` (the first ``n % world_size`` ranks get one more item); concatenating the
    blocks of ranks 0..world_size-1 gives ``range(n)``, so gathered predictions need no de-duplication.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) (got rank={rank}, world_size={world_size})")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches for ``n`` items: ``ceil(n / batch_size)``, or ``floor`` with ``drop_last``."""
    return n // batch_size if drop_last else -(-n // batch_size)


@dataclass(frozen=True)
class SamplingSpec:
    """Which images a batch source yields, in which order and batches (the same on every rank).

    Attributes:
        train: sampled epochs with augmentation (True) or the split in order, un-augmented (False).
        batch_size: images per batch on each rank (the global batch is ``batch_size * world_size``).
        sampler: ``instance``, ``class_balanced``, ``sqrt`` or ``power`` (training only).
        rho: exponent of ``power`` (weight ∝ n_class^-rho).
        seed: base seed of sampling and augmentation (use another one for a second, mixing source).
        num_samples: draws per epoch over all ranks; ``None`` = the split's size.
        drop_last: drop the last incomplete training batch (default: the last batch may be smaller).
    """

    train: bool
    batch_size: int
    sampler: str = "instance"
    rho: float = 0.0
    seed: int = 0
    num_samples: int | None = None
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0 (got {self.batch_size})")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 (got {self.num_samples})")
        _exponent(self.sampler, self.rho)


class EpochIndexedSource:
    """What both batch sources share: the epoch's per-rank index list (sampler, or a contiguous eval shard).

    Implements ``set_epoch``, ``indices``, ``__len__`` and ``__iter__`` of the ``BatchSource`` contract
    (:mod:`bce3s.data.sources`); subclasses implement ``iter_from(step)``.

    Args:
        labels: int64 (N,) labels of the split (CPU or device).
        sampling: order and batching.
        rank, world_size: DDP position; training slices come from :func:`epoch_indices`, evaluation uses
            :func:`eval_shard`.
    """

    def __init__(self, labels: Tensor, sampling: SamplingSpec, *, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self._index_labels = labels
        self.sampling = sampling
        self.batch_size = sampling.batch_size
        self.train = sampling.train
        self.drop_last = sampling.drop_last and sampling.train
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._cache: tuple[int, Tensor] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose index list and augmentation draws the next iteration uses."""
        self.epoch = int(epoch)

    def indices(self) -> Tensor:
        """int64 (n,) CPU: the dataset indices this rank iterates in the current epoch, in order."""
        labels = self._index_labels
        if not self.train:
            shard = eval_shard(len(labels), self.rank, self.world_size)
            return torch.arange(shard.start, shard.stop, dtype=torch.int64)
        if self._cache is None or self._cache[0] != self.epoch:
            s = self.sampling
            idx = epoch_indices(
                labels.cpu(),
                kind=s.sampler,
                rho=s.rho,
                seed=s.seed,
                epoch=self.epoch,
                num_samples=s.num_samples,
                rank=self.rank,
                world_size=self.world_size,
            )
            self._cache = (self.epoch, torch.as_tensor(idx, dtype=torch.int64))
        return self._cache[1]

    def __len__(self) -> int:
        return num_batches(len(self.indices()), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def iter_from(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError
