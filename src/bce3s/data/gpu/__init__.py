"""The GPU-resident pipeline: batched augmentation presets and the batch source that applies them.

- :mod:`bce3s.data.gpu.pipeline`: :class:`~bce3s.data.gpu.pipeline.GpuBatchSource` (the split on the device,
  chunked parameter draws, exact resume);
- :mod:`bce3s.data.gpu.augment`: :class:`~bce3s.data.gpu.augment.BatchAugment` (the presets, batched);
- :mod:`bce3s.data.gpu.autoaugment`: AutoAugment / RandAugment policies, parameter draws and the per-variant
  reference path; :mod:`bce3s.data.gpu.batched_ops`: the vectorized op variants.
"""
