"""Data: long-tailed splits, samplers, augmentation presets, batch sources and batch mixing.

Layout: ``readers/`` (one module per dataset format, and the ``DATASETS`` registry), ``imageset``, ``imbalance``,
``splits`` (long-tailed train/val/test), ``samplers`` (epoch index lists), ``transforms`` (per-image presets),
``sources`` (the ``BatchSource`` contract and ``make_batch_source``), ``loader`` (the DataLoader pipeline),
``gpu/`` (the GPU-resident pipeline and batched augmentation) and ``mixing`` (GLMC views).

Public API (imported lazily on first attribute access, so ``import bce3s.data`` stays cheap and a missing
optional module only fails when its names are used)::

    splits = build_data(cfg.data)                      # DataSplits(train, val, test, train_counts, ...)
    augment = AugmentSpec("cifar")                     # preset, image_size, flip, autoaugment, cutout, randaugment
    sampling = SamplingSpec(train=True, batch_size=64)  # sampler, rho, seed, num_samples, drop_last
    source = make_batch_source(splits.train, augment, sampling, device=device, rank=0, world_size=1)
    source.set_epoch(epoch)
    for images, labels in source: ...                  # float (B, C, H, W) normalized, int64 (B,)
    mixed = glmc_mix(x, y, x2, y2, num_classes=K, generator=g)   # MixedBatch (3B views)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # splits and datasets
    "ImageSet": "imageset",
    "DataSplits": "splits",
    "build_data": "splits",
    "DATASETS": "readers",
    "READERS": "readers",
    "SourceData": "readers",
    "read_source": "readers",
    # imbalance
    "class_counts": "imbalance",
    "lt_subset_indices": "imbalance",
    "carve_val": "imbalance",
    "index_hash": "imbalance",
    # samplers
    "SAMPLER_KINDS": "samplers",
    "class_probabilities": "samplers",
    "epoch_indices": "samplers",
    "SamplingSpec": "samplers",
    "eval_shard": "samplers",
    # transforms
    "PRESETS": "transforms",
    "AugmentSpec": "transforms",
    "DATASET_PRESETS": "transforms",
    "CIFAR_MEAN": "transforms",
    "CIFAR_STD": "transforms",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "Cutout": "transforms",
    "build_transform": "transforms",
    "default_flip": "transforms",
    "flip_tta": "transforms",
    "preset_stats": "transforms",
    # batch sources
    "PIPELINES": "sources",
    "BatchSource": "sources",
    "make_batch_source": "sources",
    "LoaderBatchSource": "loader",
    "BatchAugment": "gpu.augment",
    "GpuBatchSource": "gpu.pipeline",
    # mixing
    "MixedBatch": "mixing",
    "glmc_mix": "mixing",
    "VIEW_CLEAN": "mixing",
    "VIEW_MIXUP": "mixing",
    "VIEW_CUTMIX": "mixing",
}

__all__ = [
    "AugmentSpec",
    "BatchAugment",
    "BatchSource",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "Cutout",
    "DATASETS",
    "DATASET_PRESETS",
    "DataSplits",
    "GpuBatchSource",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSet",
    "LoaderBatchSource",
    "MixedBatch",
    "PIPELINES",
    "PRESETS",
    "READERS",
    "SAMPLER_KINDS",
    "SamplingSpec",
    "SourceData",
    "VIEW_CLEAN",
    "VIEW_CUTMIX",
    "VIEW_MIXUP",
    "build_data",
    "build_transform",
    "carve_val",
    "class_counts",
    "class_probabilities",
    "default_flip",
    "epoch_indices",
    "eval_shard",
    "flip_tta",
    "glmc_mix",
    "index_hash",
    "lt_subset_indices",
    "make_batch_source",
    "preset_stats",
    "read_source",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers see the real names
    from bce3s.data.gpu.augment import BatchAugment
    from bce3s.data.gpu.pipeline import GpuBatchSource
    from bce3s.data.imageset import ImageSet
    from bce3s.data.imbalance import carve_val, class_counts, index_hash, lt_subset_indices
    from bce3s.data.loader import LoaderBatchSource
    from bce3s.data.mixing import VIEW_CLEAN, VIEW_CUTMIX, VIEW_MIXUP, MixedBatch, glmc_mix
    from bce3s.data.readers import DATASETS, READERS, SourceData, read_source
    from bce3s.data.samplers import (
        SAMPLER_KINDS,
        SamplingSpec,
        class_probabilities,
        epoch_indices,
        eval_shard,
    )
    from bce3s.data.sources import PIPELINES, BatchSource, make_batch_source
    from bce3s.data.splits import DataSplits, build_data
    from bce3s.data.transforms import (
        CIFAR_MEAN,
        CIFAR_STD,
        DATASET_PRESETS,
        IMAGENET_MEAN,
        IMAGENET_STD,
        PRESETS,
        AugmentSpec,
        Cutout,
        build_transform,
        default_flip,
        flip_tta,
        preset_stats,
    )
