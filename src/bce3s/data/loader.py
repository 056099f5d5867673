"""The ``loader`` pipeline: a torch ``DataLoader`` applying a per-image torchvision v2 transform.

:class:`LoaderBatchSource` works for in-memory and file-based splits. Every random draw of an image's
transform comes from a seed fixed by the image's position in the epoch (a forked torch RNG per sample), so the
batches depend neither on ``num_workers`` nor on the worker that transforms an image. The position is the one in
the epoch's global index list (all DDP ranks together), so a W-process run augments every image as the
one-process run with the global batch does. Build it with
:func:`bce3s.data.sources.make_batch_source`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bce3s.data.imageset import ImageSet
from bce3s.data.samplers import EpochIndexedSource, SamplingSpec
from bce3s.seeding import derive_seed

__all__ = ["LoaderBatchSource"]


class _TransformedImages(Dataset):
    """Items are ``(index, sample_seed)`` pairs; returns ``(transformed image, label)``.

    The transform runs under a forked torch RNG seeded with ``sample_seed`` (-1: unseeded, for deterministic
    eval transforms), so each image's augmentation depends only on its seed, not on the worker that runs it,
    and the caller's global RNG is left untouched.
    """

    def __init__(self, split: ImageSet, transform: torch.nn.Module) -> None:
        self.split = split
        self.transform = transform
        self.labels = split.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, sample_seed = key
        image = self.split.load_image(index)
        if sample_seed < 0:
            out = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(sample_seed)
                out = self.transform(image)
        return out, self.labels[index]


class _Batches:
    """The batch list of one epoch from a given step: lists of ``(index, sample_seed)``."""

    def __init__(self, batches: list[list[tuple[int, int]]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class LoaderBatchSource(EpochIndexedSource):
    """A torch ``DataLoader`` over the split with a per-image torchvision v2 transform.

    Args:
        split: in-memory or file-based :class:`ImageSet`.
        transform: per-image transform uint8 (C, H, W) -> float (C, S, S) (augmenting when ``sampling.train``).
        sampling: order and batching (:class:`bce3s.data.samplers.SamplingSpec`).
        device: where batches are delivered.
        rank, world_size: DDP position.
        num_workers: DataLoader worker processes (0 = in the main process).
    """

    def __init__(
        self,
        split: ImageSet,
        transform: torch.nn.Module,
        sampling: SamplingSpec,
        *,
        device: torch.device | str,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__(split.labels, sampling, rank=rank, world_size=world_size)
        self.split = split
        self.dataset = _TransformedImages(split, transform)
        self.device = torch.device(device)
        self.num_workers = num_workers

    def _batches(self, step: int) -> list[list[tuple[int, int]]]:
        idx = self.indices().tolist()
        if self.train:
            # one seed per *global* epoch position (rank r holds positions r, r + W, ...: the sampler's slice), so
            # an image is augmented the same for any number of processes; +position keeps the seeds distinct
            # (mt19937 seeds need not be "random")
            base = derive_seed(self.sampling.seed, "augment", self.epoch) >> 2
            seeds = [base + p * self.world_size + self.rank for p in range(len(idx))]
        else:
            seeds = [-1] * len(idx)
        b = self.batch_size
        return [list(zip(idx[k * b : (k + 1) * b], seeds[k * b : (k + 1) * b])) for k in range(step, len(self))]

    def iter_from(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate the current epoch from batch ``step`` on; batch k is identical to an uninterrupted epoch's.

        Yields:
            float32 (B, C, S, S) normalized images and int64 (B,) labels, on ``device``.
        """
        loader = DataLoader(
            self.dataset,
            batch_sampler=_Batches(self._batches(step)),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(derive_seed(self.sampling.seed, "workers", self.epoch, self.rank)),
        )
        non_blocking = self.device.type == "cuda"
        for images, labels in loader:
            yield images.to(self.device, non_blocking=non_blocking), labels.to(self.device, non_blocking=non_blocking)
