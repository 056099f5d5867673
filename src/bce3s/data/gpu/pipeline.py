"""GPU-resident batches (airbench style): the uint8 split lives on the device, batches are augmented batched.

The whole uint8 image tensor (N, C, H, W) of an in-memory split is moved to the device once. The epoch's index
list (from :func:`bce3s.data.samplers.epoch_indices`) is cut into chunks of consecutive batches (8192 images by
default); the per-image random parameters of a chunk are drawn at once
(:meth:`bce3s.data.gpu.augment.BatchAugment.sample`), the images are gathered on the device and the preset is
applied to many batches in one call (:meth:`~bce3s.data.gpu.augment.BatchAugment.apply`; the whole chunk for
CIFAR-size images on a GPU, see :func:`block_images`), and the batches are yielded as slices. One call for many
batches saves the per-call host work (Python, kernel launches), which dominated on the GPU for CIFAR-size batches.

All random parameters of a chunk are drawn on the CPU from a generator seeded by ``(seed, epoch, chunk)``
(``bce3s.seeding.make_generator(seed, "augment", epoch, chunk)``), for the chunk of the global batch
(all DDP ranks together; each rank keeps its own rows, so the augmentation does not depend on the number of
processes), then moved to the device without waiting for it. No draw depends on pixel values and every image is
transformed independently of the others, so the batches are identical on every device and for any number of
batches per call, and resuming at any step (:meth:`GpuBatchSource.iter_from` draws the step's chunk again and
starts at the step's slice) reproduces the uninterrupted run exactly. The hot path is written without host
synchronisations (no boolean-mask indexing of device tensors, no blocking host-to-device copies). On a CPU-only
machine this is also the fast path: no worker processes, no per-image Python work.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from bce3s.data.gpu.augment import BatchAugment, slice_params
from bce3s.data.samplers import EpochIndexedSource, SamplingSpec
from bce3s.seeding import make_generator

__all__ = ["DEFAULT_CHUNK_IMAGES", "GpuBatchSource", "block_images"]

# Images whose random parameters are drawn from one generator, by default (GpuBatchSource's chunk_images).
DEFAULT_CHUNK_IMAGES = 8192


def block_images(image_pixels: int, device: torch.device | str) -> int:
    """Images transformed per :meth:`BatchAugment.apply` call: a pixel budget, larger on accelerators.

    8192 images of 32 x 32 pixels' worth on an accelerator (fewer for larger images: 167 for 224 x 224, so one
    block's float32 output and intermediates stay around 100 MB for 3 channels); a quarter of that on the CPU
    (2048 CIFAR images, 8192 digits of 8 x 8), where larger tensors leave the cache and are freshly mapped on every
    call and were measured slower. The block size never changes the pixels, only the speed and memory.

    Args:
        image_pixels: H * W of the larger of the stored image and the output crop.
        device: where the block is transformed.

    Returns:
        int >= 1.
    """
    budget = DEFAULT_CHUNK_IMAGES * 32 * 32
    if torch.device(device).type == "cpu":
        budget //= 4
    return max(1, budget // max(1, image_pixels))


class GpuBatchSource(EpochIndexedSource):
    """Batches of an in-memory split held on ``device``, augmented with :class:`BatchAugment` chunk by chunk.

    Satisfies the ``BatchSource`` contract (``set_epoch``, ``__len__``, ``__iter__``, :meth:`iter_from` for an
    exact mid-epoch resume and ``indices``). Build it with
    :func:`bce3s.data.sources.make_batch_source`.

    The epoch's batches are grouped into *chunks* of :attr:`chunk_batches` consecutive batches (``chunk_images``
    images of the global batch, i.e. of all ranks together, rounded down to whole global batches). The random
    parameters of a training chunk ``c`` are drawn at once for the *global* chunk (:meth:`BatchAugment.sample`)
    from ``make_generator(seed, "augment", epoch, c)``, which no rank-dependent value enters, and rank ``r`` keeps rows
    ``r, r + W, ...``: the sampler gives rank ``r`` the global positions ``r, r + W, ...`` of the epoch, so every
    image is augmented with the parameters of its global position, and a W-process run yields the rows of the
    one-process run with the global batch (exactly, when the epoch length is a multiple of W; otherwise the
    sampler pads the index list and the last chunk differs). With one batch per chunk every batch is augmented
    like a per-batch call with ``make_generator(seed, "augment", epoch, step)``. The chunk is then transformed in
    *blocks* of :attr:`block_batches` batches (the whole chunk for CIFAR-size images on a GPU;
    :func:`block_images`), one :meth:`BatchAugment.apply` call per block, and its batches are yielded as slices
    of the block. Only the current block's output is held. The pixels depend on ``chunk_images`` (resuming needs
    the same value) but not on the block size, so they are the same on every device.

    Args:
        images: uint8 (N, C, H, W), any device (moved to ``device`` on first use).
        labels: int64 (N,).
        augment: the batched transform (its ``train`` flag selects augmentation or the eval transform).
        sampling: order and batching (:class:`bce3s.data.samplers.SamplingSpec`).
        device: where batches are produced.
        rank, world_size: DDP position; training slices come from the sampler, evaluation uses
            :func:`bce3s.data.samplers.eval_shard`.
        chunk_images: images per chunk; ``None`` = :data:`DEFAULT_CHUNK_IMAGES` (8192); 0 or fewer than
            ``batch_size`` = one batch per chunk (the per-batch behaviour).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        augment: BatchAugment,
        sampling: SamplingSpec,
        *,
        device: torch.device | str,
        rank: int = 0,
        world_size: int = 1,
        chunk_images: int | None = None,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if chunk_images is not None and chunk_images < 0:
            raise ValueError(f"chunk_images must be >= 0 or None (got {chunk_images})")
        super().__init__(labels, sampling, rank=rank, world_size=world_size)
        self._images_src = images
        self._labels_src = labels
        self._images: Tensor | None = None
        self._labels: Tensor | None = None
        self.augment = augment
        self.device = torch.device(device)
        batch_size = sampling.batch_size
        chunk = DEFAULT_CHUNK_IMAGES if chunk_images is None else chunk_images
        self.chunk_batches = max(1, chunk // (batch_size * world_size))  # whole global batches
        pixels = max(int(images.shape[-2]) * int(images.shape[-1]), augment.image_size**2)
        self.block_batches = min(self.chunk_batches, max(1, block_images(pixels, self.device) // batch_size))

    def _resident(self) -> tuple[Tensor, Tensor]:
        if self._images is None or self._labels is None:
            self._images = self._images_src.to(self.device)
            self._labels = self._labels_src.to(self.device, dtype=torch.int64)
        return self._images, self._labels

    def iter_from(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate the current epoch from batch ``step`` on; batch k is identical to an uninterrupted epoch's.

        The parameters of the chunk holding ``step`` are drawn again (same generator, same values) and the block
        holding ``step`` is transformed again in full; iteration starts at the slice of ``step``.

        Yields:
            float32 (B, C, S, S) normalized images and int64 (B,) labels, on ``device``: slices (views) of the
            current block's output.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0 (got {step})")
        images, labels = self._resident()
        idx_cpu = self.indices()
        total = len(self)
        bs, per_chunk, per_block = self.batch_size, self.chunk_batches, self.block_batches
        height, width = int(images.shape[-2]), int(images.shape[-1])
        # non-blocking: idx_cpu stays referenced by this frame while the copy may be in flight
        idx = idx_cpu[: total * bs].to(self.device, non_blocking=True)
        for chunk in range(step // per_chunk, -(-total // per_chunk)):
            first, end = chunk * per_chunk, min(total, (chunk + 1) * per_chunk)
            params: dict[str, Tensor] = {}
            if self.augment.train:
                n = min(len(idx), end * bs) - first * bs  # this rank's images; every rank has as many
                world, rank = self.world_size, self.rank
                gen = make_generator(self.sampling.seed, "augment", self.epoch, chunk)  # the same on every rank
                drawn = self.augment.sample(n * world, gen, height, width)  # the global chunk
                params = {k: v[rank::world].contiguous() for k, v in drawn.items()} if world > 1 else drawn
            for block in range(first + max(0, step - first) // per_block * per_block, end, per_block):
                block_end = min(end, block + per_block)
                lo, hi = (block - first) * bs, (block_end - first) * bs  # image rows within the chunk
                rows = idx[first * bs + lo : first * bs + hi]
                x = self.augment.apply(images.index_select(0, rows), slice_params(params, lo, hi))
                y = labels.index_select(0, rows)
                for k in range(max(step, block), block_end):
                    off = (k - block) * bs
                    yield x[off : off + bs], y[off : off + bs]
                del x, y  # hold one block at a time (the caller may still hold its last batch)
