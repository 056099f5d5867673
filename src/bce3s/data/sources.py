"""Batch sources: the one contract the engine iterates over (:class:`BatchSource`) and its factory.

``make_batch_source(split, augment, sampling, device=..., rank=..., world_size=...)`` returns a
:class:`BatchSource`: ``set_epoch(epoch)``, ``__len__`` (batches per epoch on this rank), ``__iter__`` yielding
``(images float (B, C, S, S) normalized, labels int64 (B,))`` on ``device``, ``iter_from(step)`` (resume
mid-epoch exactly) and ``indices()`` (the dataset indices this rank iterates). What a source does to each image
is an :class:`~bce3s.data.transforms.AugmentSpec`; which images it yields, in which order and batches, a
:class:`~bce3s.data.samplers.SamplingSpec`.

Two pipelines implement it:

- ``gpu`` (:class:`bce3s.data.gpu.pipeline.GpuBatchSource`): the uint8 split lives on ``device`` and batches are
  augmented batched; needs an in-memory split. Also the fast path on CPU.
- ``loader`` (:class:`bce3s.data.loader.LoaderBatchSource`): a ``torch.utils.data.DataLoader`` applying the
  per-image torchvision v2 transform of :func:`bce3s.data.transforms.build_transform`; works for file-based
  splits.

Both take the epoch's index list from :func:`bce3s.data.samplers.epoch_indices` (same ``seed`` and ``epoch`` give
the same images in the same order in both pipelines) and derive every random draw from ``(seed, epoch, step)``
(the ``gpu`` path from the chunk of consecutive batches it augments together, see ``GpuBatchSource``); the
DataLoader path seeds torch's RNG per *sample* (from its position in the epoch), so its output does not depend
on ``num_workers`` either. Training sources under DDP take this rank's slice from the sampler; evaluation
sources (``sampling.train=False``) iterate the split in order, each rank a contiguous block without padding
(:func:`bce3s.data.samplers.eval_shard`), so gathering the ranks' outputs in rank order gives every item exactly
once.

A second source for mixing uses the same ``batch_size`` and ``num_samples = len(main epoch)``, so both yield the
same number of batches; give it a different ``seed`` (e.g. ``seed + 1``) so it draws other images.

Example::

    augment = AugmentSpec("cifar", image_size=32, cutout=16)
    sampling = SamplingSpec(train=True, batch_size=128, sampler="power", rho=0.0, seed=0)
    source = make_batch_source(split, augment, sampling, device=device, rank=rank, world_size=world_size)
    source.set_epoch(epoch)
    for images, labels in source: ...
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from bce3s.data.gpu.augment import BatchAugment
from bce3s.data.gpu.pipeline import GpuBatchSource
from bce3s.data.imageset import ImageSet
from bce3s.data.loader import LoaderBatchSource
from bce3s.data.samplers import SamplingSpec
from bce3s.data.transforms import AugmentSpec, build_transform
from bce3s.errors import DataError

__all__ = ["PIPELINES", "AugmentSpec", "BatchSource", "SamplingSpec", "make_batch_source"]

PIPELINES = ("auto", "gpu", "loader")


@runtime_checkable
class BatchSource(Protocol):
    """What the engine iterates over: one epoch of ``(images, labels)`` batches on this rank.

    ``images`` are float32 (B, C, S, S) normalized, ``labels`` int64 (B,), both on the source's device; B is
    ``sampling.batch_size`` except possibly for the last batch.
    """

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (index list and augmentation draws) of the next iteration."""
        ...

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The current epoch's batches, from the first."""
        ...

    def iter_from(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The current epoch's batches from batch ``step`` on, identical to those of an uninterrupted epoch."""
        ...

    def indices(self) -> Tensor:
        """int64 (n,) CPU: the dataset indices this rank iterates in the current epoch, in order."""
        ...


def make_batch_source(
    split: ImageSet,
    augment: AugmentSpec,
    sampling: SamplingSpec,
    *,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
    pipeline: str = "auto",
    num_workers: int = 0,
    chunk_images: int | None = None,
) -> BatchSource:
    """Build the batch source of one split.

    Args:
        split: the split; ``split.images`` must be set for ``pipeline="gpu"``.
        augment: what is done to each image (training sources augment, evaluation sources apply the preset's
            eval transform).
        sampling: which images, in which order and batches; ``sampling.batch_size`` is per rank.
        device: where batches are produced.
        rank, world_size: DDP position.
        pipeline: ``gpu``, ``loader`` or ``auto`` (``gpu`` when the split is in memory).
        num_workers: DataLoader workers (``loader`` only).
        chunk_images: ``gpu`` only: images whose augmentation parameters come from one generator (whole
            batches; see ``GpuBatchSource``); ``None`` = 8192, 0 = one batch per chunk (per-batch seeding).
            The pixels depend on it: resuming mid-epoch needs the same value.

    Returns:
        A :class:`BatchSource`.

    Raises:
        DataError: ``pipeline="gpu"`` for a file-based split.
        ValueError: unknown pipeline.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; valid: {', '.join(PIPELINES)}")
    if pipeline == "auto":
        pipeline = "gpu" if split.images is not None else "loader"
    if pipeline == "gpu" and split.images is None:
        raise DataError("pipeline 'gpu' needs an in-memory split (images decoded into one tensor); use 'loader'")
    image_size = augment.image_size
    if image_size is None:
        image_size = int(split.images.shape[-1]) if split.images is not None else 224
    position = {"device": device, "rank": rank, "world_size": world_size}
    augmenting = sampling.train and augment.train_transform
    if pipeline == "gpu":
        assert split.images is not None
        batched = BatchAugment(augment.preset, train=augmenting, image_size=image_size, **augment.options())
        return GpuBatchSource(split.images, split.labels, batched, sampling, chunk_images=chunk_images, **position)
    channels = int(split.images.shape[1]) if split.images is not None else (1 if split.mode == "L" else 3)
    transform = build_transform(
        augment.preset, train=augmenting, image_size=image_size, channels=channels, **augment.options()
    )
    return LoaderBatchSource(split, transform, sampling, num_workers=num_workers, **position)
