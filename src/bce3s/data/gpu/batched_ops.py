"""Vectorized AutoAugment / RandAugment op variants (:class:`BatchedOps`), the fast path of the GPU pipeline.

One call per op *family* and slot instead of one per variant; every table is built from torchvision's own
kernels or op sequences (:mod:`bce3s.data.gpu.autoaugment`), so the output equals
:func:`bce3s.data.gpu.autoaugment.apply_op` image by image, bit for bit, on every device.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from bce3s.data.gpu.autoaugment import GEOMETRIES, OpTable, apply_op, autocontrast, row_view, sorted_rows, take_rows

__all__ = ["BatchedOps"]

# op families of the vectorized path
_GEOM, _LUT, _COLOR, _SHARP, _KERNEL = range(5)
_FAMILY = {
    "ShearX": _GEOM,
    "ShearY": _GEOM,
    "TranslateX": _GEOM,
    "TranslateY": _GEOM,
    "Rotate": _GEOM,
    "Invert": _LUT,
    "Posterize": _LUT,
    "Solarize": _LUT,
    "Brightness": _LUT,
    "Color": _COLOR,
    "Sharpness": _SHARP,
    "Contrast": _KERNEL,
    "Equalize": _KERNEL,
    "AutoContrast": _KERNEL,
}


def _blend_lut(ratio: float) -> Tensor:
    """uint8 (256 * 256,): torchvision's ``_blend(x, y, ratio)`` for uint8 x (row) and integer-valued float y (column).

    Same aten ops in the same order as ``torchvision.transforms.v2.functional._color._blend``.
    """
    x = torch.arange(256, dtype=torch.uint8).repeat_interleave(256)
    y = torch.arange(256, dtype=torch.float32).repeat(256)
    return x.mul(float(ratio)).add_(y, alpha=(1.0 - float(ratio))).clamp_(0, 255).to(torch.uint8)


def _sharp_lut(factor: float) -> Tensor:
    """uint8 (256 * 256,): torchvision's sharpness blend ``x + (1 - f) * (blurred - x)`` for x (row), blurred (col)."""
    x = torch.arange(256, dtype=torch.float32).repeat_interleave(256)
    y = torch.arange(256, dtype=torch.float32).repeat(256)
    return x.add_(y.sub_(x), alpha=(1.0 - float(factor))).clamp_(0, 255).to(torch.uint8)


def _blur13(x: Tensor) -> Tensor:
    """torchvision's sharpness blur of the interior: ``round(conv2d(x, [[1,1,1],[1,5,1],[1,1,1]] / 13))``.

    Computed exactly in integers: with S the weighted 3x3 sum, S / 13 has a fractional part k / 13, never
    within 0.03 of 1/2, so torchvision's float32 convolution rounds to the same value as ``(2 S + 13) // 26``.

    Args:
        x: uint8 (n, C, H, W), H, W > 2.

    Returns:
        uint8 (n, C, H - 2, W - 2).
    """
    v = x.to(torch.int16)
    h, w = x.shape[-2:]
    rows = v[..., 0 : h - 2, :] + v[..., 1 : h - 1, :] + v[..., 2:h, :]  # vertical 3-sums, (n, C, H-2, W)
    total = rows[..., 0 : w - 2] + rows[..., 1 : w - 1] + rows[..., 2:w] + 4 * v[..., 1 : h - 1, 1 : w - 1]
    return total.mul_(2).add_(13).div_(26, rounding_mode="floor").to(torch.uint8)


class BatchedOps:
    """Vectorized per-image op variants: one call per op *family* and slot instead of one per variant.

    Every variant's effect is precomputed with torchvision's own kernels or op sequences, so the result is
    identical to :func:`apply_op` image by image (the tests check this for every variant):

    - geometric ops (shear, translate, rotate; nearest): a source-pixel map per variant, obtained by running
      :func:`apply_op` on an image whose pixels hold their own index; applied with one ``gather`` from the image
      extended by one pixel of value ``fill``;
    - pointwise ops (invert, posterize, solarize, brightness): a 256-entry lookup table per variant, obtained by
      running :func:`apply_op` on an image holding all 256 values;
    - colour (saturation) and sharpness: the blend of a pixel with its grey value / 3x3-blurred value is a
      function of two uint8 values, tabulated per variant (256 x 256) with torchvision's op sequence; the grey
      and blurred images are computed batched with torchvision's formulas;
    - contrast, equalize, autocontrast (per-image statistics): torchvision kernels on the sub-batch per variant
      (autocontrast through :func:`autocontrast`, the same ops without torchvision's host synchronisation).

    Lookups run on ``device``, so the output is the same on every device.

    Args:
        table: the op variants.
        channels, height, width: image shape the maps are built for.
        device: where the tables live.
        fill: value (0..255) of the area a rotate, shear or translate uncovers (the extra pixel of the gather).
        geometry: ``torchvision`` or ``official`` (:data:`bce3s.data.gpu.autoaugment.GEOMETRIES`); with
            ``official`` the bicubic shears run :func:`apply_op` on their sub-batch like the kernel family.
    """

    def __init__(
        self,
        table: OpTable,
        channels: int,
        height: int,
        width: int,
        device: torch.device,
        *,
        fill: int = 0,
        geometry: str = "torchvision",
    ) -> None:
        if not 0 <= fill <= 255:
            raise ValueError(f"fill must be in [0, 255] (got {fill})")
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown AutoAugment geometry {geometry!r}; valid: {', '.join(GEOMETRIES)}")
        self.table = table
        self.fill = int(fill)
        self.geometry = geometry
        self.shape = (channels, height, width)
        self.device = torch.device(device)
        nv = len(table.variants)
        family = torch.empty(nv, dtype=torch.int64)
        row = torch.zeros(nv, dtype=torch.int64)  # row of the variant in its family's table
        maps, luts, color, sharp = [], [], [], []
        hw = height * width
        index_image = torch.arange(1, hw + 1, dtype=torch.float32).view(1, 1, height, width)
        values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
        for vid, (name, magnitude) in enumerate(table.variants):
            fam = _FAMILY.get(name, _KERNEL)
            if geometry == "official" and name in ("ShearX", "ShearY"):
                fam = _KERNEL  # bicubic: not a pixel gather
            if fam == _COLOR and channels != 3:
                fam = _KERNEL  # saturation of a 1-channel image is the identity in torchvision
            if fam in (_COLOR, _SHARP) and (height <= 2 or width <= 2):
                fam = _KERNEL
            family[vid] = fam
            if fam == _GEOM:
                src = apply_op(index_image, name, magnitude, geometry=geometry).round().long().view(hw) - 1
                row[vid] = len(maps)
                maps.append(torch.where(src < 0, torch.full_like(src, hw), src))
            elif fam == _LUT:
                row[vid] = len(luts)
                luts.append(apply_op(values, name, magnitude).view(256))
            elif fam == _COLOR:
                row[vid] = len(color)
                color.append(_blend_lut(1.0 + magnitude))
            elif fam == _SHARP:
                row[vid] = len(sharp)
                sharp.append(_sharp_lut(1.0 + magnitude))
        self.family = family
        self.row = row
        dev = self.device
        self._maps = torch.stack(maps).to(dev) if maps else None  # (Vg, HW) int64, HW = the fill pixel
        self._lut = torch.stack(luts).to(dev) if luts else None  # (Vl, 256) uint8
        self._color = torch.stack(color).to(dev) if color else None  # (Vc, 65536) uint8
        self._sharp = torch.stack(sharp).to(dev) if sharp else None  # (Vs, 65536) uint8

    def apply(self, images: Tensor, variants: Tensor) -> Tensor:
        """Apply the variants slot after slot.

        Args:
            images: uint8 (B, C, H, W) on ``device``, C/H/W as built.
            variants: int64 (B, S) CPU variant ids (-1 = none).

        Returns:
            uint8 (B, C, H, W).
        """
        if tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"BatchedOps built for {self.shape}, got images {tuple(images.shape)}")
        if variants.shape[0] != images.shape[0]:
            raise ValueError(f"variants has {variants.shape[0]} rows for {images.shape[0]} images")
        nv = len(self.table.variants)
        out = images
        for s in range(variants.shape[1]):
            v = variants[:, s]
            key = self.family[v.clamp(min=0)] * nv + v.clamp(min=0)
            rows, counts = sorted_rows(v, key, 5 * nv)
            if rows.numel() == 0:
                continue
            # per family: the slice of ``rows`` and the variants of those rows
            fam_counts = torch.tensor(counts).view(5, nv)
            per_family = fam_counts.sum(1).tolist()
            rows_dev = rows.to(self.device, non_blocking=True)
            vs = v[rows]
            sub = take_rows(out, rows_dev)
            if out is images:
                out = images.clone(memory_format=torch.contiguous_format)  # later slots write in place
            start = 0
            for fam, count in enumerate(per_family):
                if count == 0:
                    continue
                part = sub[start : start + count]
                vpart = vs[start : start + count]
                if fam == _KERNEL:
                    result = self._kernels(part, fam_counts[fam].tolist())
                else:
                    result = self._family(fam, part, self.row[vpart].to(self.device, non_blocking=True))
                row_view(out).index_copy_(0, rows_dev[start : start + count], row_view(result.contiguous()))
                start += count
        return out

    def _kernels(self, part: Tensor, counts: list[int]) -> Tensor:
        pieces = []
        start = 0
        for vid, count in enumerate(counts):
            if count:
                name, magnitude = self.table.variants[vid]
                sub = part[start : start + count]
                # the same result as torchvision's kernel, without its device synchronisation
                if name == "AutoContrast":
                    pieces.append(autocontrast(sub))
                else:
                    pieces.append(apply_op(sub, name, magnitude, fill=self.fill, geometry=self.geometry))
                start += count
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def _family(self, fam: int, x: Tensor, rows: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if fam == _GEOM:
            assert self._maps is not None
            ext = torch.cat([x.reshape(n, c, h * w), x.new_full((n, c, 1), self.fill)], dim=2)
            idx = self._maps.index_select(0, rows)  # (n, HW)
            return ext.gather(2, idx[:, None, :].expand(n, c, h * w)).view(n, c, h, w)
        if fam == _LUT:
            assert self._lut is not None
            base = (rows * 256).view(n, 1, 1, 1)
            return self._lut.view(-1).take(x.long().add_(base))
        if fam == _COLOR:
            assert self._color is not None
            gray = F.rgb_to_grayscale(x)  # uint8 floor of torchvision's grey value, (n, 1, H, W)
            index = x.long().mul_(256).add_(gray.long()).add_((rows * 65536).view(n, 1, 1, 1))
            return self._color.view(-1).take(index)
        assert self._sharp is not None
        other = x.clone()
        other[..., 1:-1, 1:-1] = _blur13(x)  # the border keeps the original pixels, as in torchvision
        index = x.long().mul_(256).add_(other.long()).add_((rows * 65536).view(n, 1, 1, 1))
        return self._sharp.view(-1).take(index)
