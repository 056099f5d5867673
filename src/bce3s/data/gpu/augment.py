"""The batched augmentation presets of the GPU-resident pipeline (:class:`BatchAugment`).

The preset (:mod:`bce3s.data.transforms`) is applied to a whole uint8 batch on its device with per-image random
parameters, drawn on the CPU first (:meth:`BatchAugment.sample`) and applied after (:meth:`BatchAugment.apply`):

- random crop with zero padding and horizontal flip in one gather (per-image offsets and flip bits);
- AutoAugment CIFAR-10 / RandAugment through :class:`bce3s.data.gpu.batched_ops.BatchedOps` (one call per op
  family, built from torchvision's v2 kernels, so every op equals torchvision's bit for bit);
- ``RandomResizedCrop`` + ``ColorJitter`` for the ``imagenet`` preset (bilinear ``grid_sample`` without
  antialiasing; colour ops per image with torchvision's blend formulas, random order per image);
- Cutout (official box rule; zeroed in uint8, which equals zeroing after ``ToDtype``), then
  ``ToDtype(float32, scale=True)`` and ``Normalize`` (torchvision's kernel ops, batched).

No draw depends on pixel values and every image is transformed independently of the others, so parameters drawn
for many images can be applied to any split of them (:func:`slice_params`) with the same result.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from bce3s.data.gpu.autoaugment import (
    OpTable,
    autoaugment_table,
    randaugment_table,
    sample_autoaugment,
    sample_randaugment,
)
from bce3s.data.gpu.batched_ops import BatchedOps
from bce3s.data.transforms import PRESETS, AugmentOptions, crop_padding, eval_resize_size, preset_stats

__all__ = ["BatchAugment", "check_images", "slice_params"]


class BatchAugment:
    """A transform preset applied to a whole uint8 batch on its device, with per-image random parameters.

    Semantics follow :func:`bce3s.data.transforms.build_transform` with the same arguments (see the module
    docstring for where the ``imagenet`` preset approximates torchvision).

    Args:
        preset: ``cifar``, ``imagenet`` or ``gray``.
        train: augment (True) or the deterministic eval transform (False).
        image_size: output side.
        **options: the keywords of :class:`bce3s.data.transforms.AugmentOptions`, as in ``build_transform``.
    """

    def __init__(self, preset: str, *, train: bool, image_size: int, **options: Any) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r}; valid: {', '.join(PRESETS)}")
        if image_size <= 0:
            raise ValueError(f"image_size must be > 0 (got {image_size})")
        opts = AugmentOptions(**options).for_preset(preset)
        self.preset = preset
        self.train = train
        self.image_size = image_size
        self.autoaugment = opts.autoaugment
        self.cutout = opts.cutout
        self.randaugment = opts.randaugment
        self.flip = bool(opts.flip)
        self.padding = crop_padding(preset, image_size)
        self.autoaugment_fill = opts.autoaugment_fill
        self.autoaugment_geometry = opts.autoaugment_geometry
        self._aa = autoaugment_table(image_size, image_size, opts.autoaugment_geometry) if self.autoaugment else None
        self._ra = randaugment_table(image_size, image_size) if self.randaugment else None
        self._ops: dict[tuple[str, int, int, int, str], BatchedOps] = {}
        self._norm: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"BatchAugment(preset={self.preset!r}, train={self.train}, image_size={self.image_size}, "
            f"autoaugment={self.autoaugment}, cutout={self.cutout}, randaugment={self.randaugment}, flip={self.flip}, "
            f"autoaugment_fill={self.autoaugment_fill}, autoaugment_geometry={self.autoaugment_geometry!r})"
        )

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch: ``apply(images, sample(B, generator, H, W))`` in training, the eval transform otherwise.

        Args:
            images: uint8 (B, C, H, W) on any device.
            generator: CPU generator for all random draws (required when ``train``).

        Returns:
            float32 (B, C, image_size, image_size), normalized, on ``images.device``.
        """
        check_images(images)
        if not self.train:
            return self.apply(images, {})
        if generator is None:
            raise ValueError("a CPU torch.Generator is required for training augmentation")
        return self.apply(images, self.sample(images.shape[0], generator, images.shape[2], images.shape[3]))

    def sample(self, n: int, generator: torch.Generator, height: int, width: int) -> dict[str, Tensor]:
        """Draw the random parameters of ``n`` images of size (height, width), in a fixed order, on the CPU.

        No draw depends on pixel values, so the parameters of a chunk can be drawn at once and applied to any
        split of it (:func:`slice_params`) with the same result as one :meth:`apply` call.

        Args:
            n: number of images.
            generator: CPU generator.
            height, width: input image size.

        Returns:
            name -> CPU tensor with ``n`` rows: ``oy``, ``ox``, ``flip``, ``aa``, ``cy``, ``cx`` (``cifar`` /
            ``gray``; AutoAugment and Cutout when enabled) or ``top``, ``left``, ``bh``, ``bw``, ``flip``, then
            ``ra`` or ``factors`` and ``order`` (``imagenet``). Empty for an eval transform.
        """
        if not self.train:
            return {}
        g = generator
        if self.preset == "imagenet":
            params = self._sample_resized_crop(n, g, height, width)
            if self._ra is not None:
                params["ra"] = sample_randaugment(n, self._ra[1], g)
            else:
                params["factors"] = 0.6 + 0.8 * torch.rand(n, 3, generator=g)
                params["order"] = torch.argsort(torch.rand(n, 3, generator=g), dim=1)
            return params
        size, pad = self.image_size, self.padding
        hp, wp = height + 2 * pad, width + 2 * pad
        if hp < size or wp < size:
            raise ValueError(f"crop size {size} is larger than the padded image {hp}x{wp}")
        params = {
            "oy": torch.randint(hp - size + 1, (n,), generator=g),
            "ox": torch.randint(wp - size + 1, (n,), generator=g),
            "flip": torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool),
        }
        if self._aa is not None:
            _table, ids, probs = self._aa
            params["aa"] = sample_autoaugment(n, ids, probs, g)
        if self.cutout > 0:
            params["cy"] = torch.randint(size, (n,), generator=g)
            params["cx"] = torch.randint(size, (n,), generator=g)
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Transform a batch with given parameters (from :meth:`sample`; ignored for an eval transform).

        Each image's result depends only on that image and its parameter rows, not on the rest of the batch.

        Args:
            images: uint8 (B, C, H, W) on any device.
            params: CPU tensors with B rows.

        Returns:
            float32 (B, C, image_size, image_size), normalized, on ``images.device``.
        """
        check_images(images)
        if self.train:
            x = self._augment_uint8(images, params)
            if self.cutout > 0:
                # Cutout zeroes after ToDtype; a uint8 0 scales to exactly 0.0, so zeroing before is the same
                x = self._cutout(x, params["cy"], params["cx"])
        else:
            x = self._eval_uint8(images)
        out = F.to_dtype(x, torch.float32, scale=True)
        mean, std = self._stats(out.shape[1], out.device)
        # torchvision's normalize_image (inplace) does exactly this, but builds mean/std from Python lists on
        # every call (a blocking host-to-device copy on CUDA)
        return out.sub_(mean).div_(std)

    def _stats(self, channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """float32 (C, 1, 1) mean and std of the preset on ``device``, cached."""
        key = (channels, str(device))
        if key not in self._norm:
            mean, std = preset_stats(self.preset, channels)
            self._norm[key] = (
                torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1).to(device),
                torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1).to(device),
            )
        return self._norm[key]

    # -- uint8 stages --------------------------------------------------------------------------------------------

    def _eval_uint8(self, x: Tensor) -> Tensor:
        if self.preset == "imagenet":
            x = F.resize(x, [eval_resize_size(self.image_size)], antialias=True)
            x = F.center_crop(x, [self.image_size, self.image_size])
        return x

    def _augment_uint8(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        if self.preset == "imagenet":
            x = self._resized_crop_flip(x, p["top"], p["left"], p["bh"], p["bw"], p["flip"])
            if self._ra is not None:
                x = self._batched_ops("ra", self._ra[0], x).apply(x, p["ra"])
            else:
                x = self._color_jitter(x, p["factors"], p["order"])
            return x
        x = self._crop_flip(x, p["oy"], p["ox"], p["flip"])
        if self._aa is not None:
            x = self._batched_ops("aa", self._aa[0], x).apply(x, p["aa"])
        return x

    def _batched_ops(self, kind: str, table: OpTable, x: Tensor) -> BatchedOps:
        key = (kind, *x.shape[1:], str(x.device))
        if key not in self._ops:
            # the fill and geometry options belong to AutoAugment; RandAugment keeps torchvision's semantics
            opts = {"fill": self.autoaugment_fill, "geometry": self.autoaugment_geometry} if kind == "aa" else {}
            self._ops[key] = BatchedOps(table, x.shape[1], x.shape[2], x.shape[3], x.device, **opts)
        return self._ops[key]

    def _crop_flip(self, x: Tensor, oy: Tensor, ox: Tensor, flip: Tensor) -> Tensor:
        """RandomCrop(size, padding, fill 0) at offsets (oy, ox) then horizontal flip where ``flip``.

        One strided row copy per image: the crop of a horizontally flipped padded image at column ``Wp - S - ox``
        is the flip of the crop at ``ox``, so flipped images are cut from a flipped copy of their padded image.
        """
        b, c, h, w = x.shape
        size, pad = self.image_size, self.padding
        hp, wp = h + 2 * pad, w + 2 * pad
        padded = nnf.pad(x, (pad, pad, pad, pad)) if pad > 0 else x.contiguous()
        flipped = flip.nonzero().squeeze(1)  # on the CPU: no device synchronisation
        source = torch.arange(b)
        if flipped.numel():
            flipped_dev = flipped.to(x.device, non_blocking=True)
            padded = torch.cat([padded, padded.index_select(0, flipped_dev).flip(-1)])
            source[flipped] = b + torch.arange(flipped.numel())
            ox = torch.where(flip, wp - size - ox, ox)
        flat = padded.reshape(-1)
        image_stride = c * hp * wp
        extent = (c - 1) * hp * wp + (size - 1) * wp + size  # elements spanned by one window
        windows = flat.as_strided((flat.numel() - extent + 1, c, size, size), (1, hp * wp, wp, 1))
        start = (source * image_stride + oy * wp + ox).to(x.device, non_blocking=True)
        return windows.index_select(0, start)

    def _cutout(self, x: Tensor, cy: Tensor, cx: Tensor) -> Tensor:
        """Official Cutout: centre (cy, cx) uniform over the pixels, box centre ± size // 2 clipped, set to 0."""
        _b, _, h, w = x.shape
        half = self.cutout // 2
        box = torch.stack([cy - half, cy + half, cx - half, cx + half]).to(x.device, non_blocking=True)
        ys = torch.arange(h, device=x.device)
        xs = torch.arange(w, device=x.device)
        # clipping is implicit: rows outside [0, H) do not exist
        out_y = (ys[None, :] < box[0][:, None]) | (ys[None, :] >= box[1][:, None])  # (B, H) rows kept
        out_x = (xs[None, :] < box[2][:, None]) | (xs[None, :] >= box[3][:, None])  # (B, W)
        keep = (out_y[:, :, None] | out_x[:, None, :]).to(torch.uint8)  # (B, H, W)
        return x * keep[:, None]

    def _sample_resized_crop(self, b: int, g: torch.Generator, h: int, w: int) -> dict[str, Tensor]:
        """RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) boxes (top, left, bh, bw) and flip bits."""
        area = h * w
        attempts = 10
        target = area * (0.08 + (1.0 - 0.08) * torch.rand(b, attempts, generator=g, dtype=torch.float64))
        log_lo, log_hi = math.log(3.0 / 4.0), math.log(4.0 / 3.0)
        ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, attempts, generator=g, dtype=torch.float64))
        cw = torch.round(torch.sqrt(target * ratio)).long()
        ch = torch.round(torch.sqrt(target / ratio)).long()
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
        # fallback: central crop of the whole image clipped to the ratio range (torchvision's rule)
        in_ratio = w / h
        if in_ratio < 3.0 / 4.0:
            fw, fh = w, int(round(w / (3.0 / 4.0)))
        elif in_ratio > 4.0 / 3.0:
            fw, fh = int(round(h * (4.0 / 3.0))), h
        else:
            fw, fh = w, h
        pick = first.clamp(min=0)[:, None]
        bw = torch.where(first >= 0, cw.gather(1, pick).squeeze(1), torch.full((b,), fw))
        bh = torch.where(first >= 0, ch.gather(1, pick).squeeze(1), torch.full((b,), fh))
        u = torch.rand(b, 2, generator=g, dtype=torch.float64)
        top = torch.where(first >= 0, (u[:, 0] * (h - bh + 1)).floor().long(), (h - bh) // 2)
        left = torch.where(first >= 0, (u[:, 1] * (w - bw + 1)).floor().long(), (w - bw) // 2)
        flip = torch.rand(b, generator=g) < 0.5 if self.flip else torch.zeros(b, dtype=torch.bool)
        return {"top": top, "left": left, "bh": bh, "bw": bw, "flip": flip}

    def _resized_crop_flip(self, x: Tensor, top: Tensor, left: Tensor, bh: Tensor, bw: Tensor, flip: Tensor) -> Tensor:
        """Crop boxes resized to ``image_size`` + flip via bilinear grid_sample (no antialias)."""
        _b, _, h, w = x.shape
        size = self.image_size
        # output pixel k samples input coordinate left + (k + 0.5) * bw / size - 0.5 (align_corners=False)
        k = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        xs = left[:, None] + k[None, :] * bw[:, None]  # (B, S) in input pixel units (edges at integers)
        ys = top[:, None] + k[None, :] * bh[:, None]
        xs = torch.where(flip[:, None], xs.flip(1), xs)
        gx = (xs / w * 2 - 1).float()
        gy = (ys / h * 2 - 1).float()
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, S, S, 2)
        grid = grid.to(x.device, non_blocking=True)
        out = nnf.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def _color_jitter(self, x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
        """ColorJitter(0.4, 0.4, 0.4): per image factors (B, 3) in [0.6, 1.4], op order (B, 3) per image."""
        b = x.shape[0]
        factors = factors.to(x.device, non_blocking=True)
        order = order.to(x.device, non_blocking=True)
        for pos in range(3):
            for op in range(3):
                ratio = torch.where(order[:, pos] == op, factors[:, op], torch.ones_like(factors[:, op]))
                x = _blend_op(x, op, ratio.view(b, 1, 1, 1))
        return x


def check_images(images: Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is a uint8 (B, C, H, W) tensor."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (B, C, H, W), got {images.dtype} {tuple(images.shape)}")


def slice_params(params: dict[str, Tensor], start: int, stop: int) -> dict[str, Tensor]:
    """Rows ``start:stop`` of every parameter tensor of :meth:`BatchAugment.sample`."""
    return {k: v[start:stop] for k, v in params.items()}


def _blend_op(x: Tensor, op: int, ratio: Tensor) -> Tensor:
    """torchvision's brightness (0) / contrast (1) / saturation (2) on uint8 with a per-image ratio (B, 1, 1, 1)."""
    xf = x.float()
    if op == 0:
        return xf.mul_(ratio).clamp_(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        if op == 2:
            return x
        other = xf.mean(dim=(-3, -2, -1), keepdim=True)
    else:
        gray = (xf[:, 0:1] * 0.2989 + xf[:, 1:2] * 0.587 + xf[:, 2:3] * 0.114).floor_()
        other = gray.mean(dim=(-3, -2, -1), keepdim=True) if op == 1 else gray
    return (xf * ratio + other * (1.0 - ratio)).clamp_(0, 255).to(torch.uint8)
