"""Batch sources: what the engine iterates over (``make_batch_source``), GPU-resident or torch ``DataLoader``.

``make_batch_source`` returns an object with ``set_epoch(epoch)``, ``__len__`` (batches per epoch on this rank)
and ``__iter__`` yielding ``(images float (B, C, S, S) normalized, labels int64 (B,))`` on ``device``, plus
``iter_from(step)`` (resume mid-epoch exactly) and ``indices()`` (the dataset indices this rank iterates).

Two pipelines implement it:

- ``gpu`` (:class:`bce3s.data.gpu.pipeline.GpuBatchSource`): the uint8 split lives on ``device`` and batches are
  augmented batched; needs an in-memory split. Also the fast path on CPU.
- ``loader`` (:class:`bce3s.data.loader.LoaderBatchSource`): a ``torch.utils.data.DataLoader`` applying the per-image
  torchvision v2 transform of :func:`bce3s.data.transforms.build_transform`; works for file-based splits.

Both take the epoch's index list from :func:`bce3s.data.samplers.epoch_indices` (same ``seed`` and ``epoch`` give
the same images in the same order in both pipelines) and derive every random draw from ``(seed, epoch, step)``
(the ``gpu`` path from the chunk of consecutive batches it augments together, see :class:`GpuBatchSource`);
the DataLoader path seeds torch's RNG per *sample* (from its position in the epoch), so its output does not
depend on ``num_workers`` either. Training sources under DDP take this rank's slice from the sampler; evaluation
sources (``train=False``) iterate the split in order, each rank a contiguous block without padding
(:func:`bce3s.data.samplers.eval_shard`), so gathering the ranks' outputs in rank order gives every item exactly once.

A second source for mixing uses the same ``batch_size`` and ``num_samples = len(main epoch)``, so both yield the
same number of batches; give it a different ``seed`` (e.g. ``seed + 1``) so it draws other images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from bce3s.data.gpu.augment import BatchAugment
from bce3s.data.gpu.pipeline import GpuBatchSource
from bce3s.data.imageset import ImageSet
from bce3s.data.loader import LoaderBatchSource
from bce3s.data.transforms import PRESETS, build_transform
from bce3s.errors import DataError

__all__ = ["PIPELINES", "BatchSource", "make_batch_source"]

PIPELINES = ("auto", "gpu", "loader")


@runtime_checkable
class BatchSource(Protocol):
    """What the engine iterates over."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...


def make_batch_source(
    split: ImageSet,
    *,
    train: bool,
    preset: str,
    batch_size: int,
    sampler: str = "instance",
    rho: float = 0.0,
    class_counts: Sequence[int] | None = None,
    device: torch.device,
    pipeline: str = "auto",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    num_workers: int = 0,
    num_samples: int | None = None,
    image_size: int | None = None,
    autoaugment: bool = True,
    cutout: int = 16,
    randaugment: bool = False,
    flip: bool | None = None,
    chunk_images: int | None = None,
) -> GpuBatchSource | LoaderBatchSource:
    """Build the batch source of one split.

    Args:
        split: the split; ``split.images`` must be set for ``pipeline="gpu"``.
        train: sampled and augmented (True) or sequential and deterministic (False).
        preset: ``cifar``, ``imagenet`` or ``gray`` (:mod:`bce3s.data.transforms`).
        batch_size: images per batch (per rank).
        sampler: ``instance``, ``class_balanced``, ``sqrt`` or ``power`` (training only).
        rho: exponent of the ``power`` sampler (weight ∝ n_class^-rho).
        class_counts: accepted for symmetry with the loss builders; the sampler derives counts from the labels.
        device: where batches are produced.
        pipeline: ``gpu``, ``loader`` or ``auto`` (``gpu`` when the split is in memory).
        seed: base seed of sampling and augmentation (use a different one for a second, mixing source).
        rank, world_size: DDP position.
        drop_last: drop the last incomplete training batch (default False: the last batch may be smaller).
        num_workers: DataLoader workers (``loader`` only).
        num_samples: samples per epoch (all ranks together) for the sampler; ``None`` = len(split).
        image_size: output side; ``None`` = the stored image side (in-memory) or 224 (files, ``imagenet``).
        autoaugment, cutout, randaugment, flip: augmentation options (``DataConfig``; see ``build_transform``).
        chunk_images: ``gpu`` only: images whose augmentation parameters come from one generator (whole
            batches; see :class:`GpuBatchSource`); ``None`` = 8192, 0 = one batch per chunk (per-batch seeding).
            The pixels depend on it: resuming mid-epoch needs the same value.

    Returns:
        A :class:`BatchSource` (with ``iter_from`` and ``indices``).

    Raises:
        DataError: ``pipeline="gpu"`` for a file-based split.
        ValueError: unknown preset or pipeline.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; valid: {', '.join(PRESETS)}")
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; valid: {', '.join(PIPELINES)}")
    device = torch.device(device)
    if pipeline == "auto":
        pipeline = "gpu" if split.images is not None else "loader"
    if pipeline == "gpu" and split.images is None:
        raise DataError("pipeline 'gpu' needs an in-memory split (images decoded into one tensor); use 'loader'")
    if image_size is None:
        image_size = int(split.images.shape[-1]) if split.images is not None else 224
    common = {
        "batch_size": batch_size,
        "device": device,
        "train": train,
        "sampler": sampler,
        "rho": rho,
        "num_samples": num_samples,
        "seed": seed,
        "rank": rank,
        "world_size": world_size,
        "drop_last": drop_last,
    }
    options = {"autoaugment": autoaugment, "cutout": cutout, "randaugment": randaugment, "flip": flip}
    if pipeline == "gpu":
        augment = BatchAugment(preset, train=train, image_size=image_size, **options)
        gpu_options = {**common, "augment": augment, "chunk_images": chunk_images}
        return GpuBatchSource(split.images, split.labels, **gpu_options)  # type: ignore[arg-type]
    channels = int(split.images.shape[1]) if split.images is not None else (1 if split.mode == "L" else 3)
    transform = build_transform(preset, train=train, image_size=image_size, channels=channels, **options)
    return LoaderBatchSource(split, transform=transform, num_workers=num_workers, **common)
