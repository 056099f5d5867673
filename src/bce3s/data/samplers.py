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
    sampler = LTSampler(labels, "class_balanced", seed=0, rank=rank, world_size=world)
    sampler.set_epoch(epoch)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["SAMPLER_KINDS", "LTSampler", "class_probabilities", "epoch_generator", "epoch_indices"]

SAMPLER_KINDS = ("instance", "class_balanced", "sqrt", "power")


def _exponent(kind: str, rho: float) -> float:
    if kind not in SAMPLER_KINDS:
        raise ValueError(f"unknown sampler {kind!r}; valid: {', '.join(SAMPLER_KINDS)}")
    return {"instance": 0.0, "class_balanced": 1.0, "sqrt": 0.5, "power": float(rho)}[kind]


def epoch_generator(seed: int, epoch: int, stream: str = "sampler") -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, stream)`` (a hash, so nearby seeds give unrelated streams)."""
    digest = hashlib.sha256(f"{stream}:{int(seed)}:{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


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
    gen = epoch_generator(seed, epoch)
    idx = _global_indices(lab, q, kind == "instance", total, gen)
    if drop_last:
        idx = idx[: total - total % world_size]
    elif total % world_size:
        pad = world_size - total % world_size
        idx = torch.cat([idx, idx.repeat(-(-pad // total))[:pad]])
    return idx[rank::world_size].contiguous()


class LTSampler(Sampler[int]):
    """A ``torch.utils.data.Sampler`` over :func:`epoch_indices`; call ``set_epoch`` before each epoch.

    Args:
        labels: (N,) class ids of the training set.
        kind: ``instance``, ``class_balanced``, ``sqrt`` or ``power``.
        rho: exponent of ``power``.
        seed: run seed.
        num_samples: draws per epoch over all ranks (default N).
        rank: this process's rank.
        world_size: number of processes.
        drop_last: drop the tail to a multiple of ``world_size`` instead of padding by wrapping.
    """

    def __init__(
        self,
        labels: Tensor | Sequence[int],
        kind: str = "instance",
        rho: float = 0.0,
        seed: int = 0,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.labels = torch.as_tensor(labels).detach().to("cpu", torch.int64).flatten()
        _exponent(kind, rho)
        self.kind = kind
        self.rho = rho
        self.seed = seed
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose indices the next ``__iter__`` yields."""
        self.epoch = int(epoch)

    def indices(self) -> Tensor:
        """int64 indices of the current epoch on this rank."""
        return epoch_indices(
            self.labels,
            kind=self.kind,
            rho=self.rho,
            seed=self.seed,
            epoch=self.epoch,
            num_samples=self.num_samples,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=self.drop_last,
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        total = self.labels.numel() if self.num_samples is None else int(self.num_samples)
        if self.drop_last:
            return total // self.world_size
        return -(-total // self.world_size)
