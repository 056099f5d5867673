"""Pillow's bicubic affine resampling of uint8 images, as a batched tensor op (the official AutoAugment shear).

The official CIFAR-10 AutoAugment policy shears with ``PIL.Image.transform(size, AFFINE, (a0, ..., a5), BICUBIC,
fillcolor=...)``. torchvision's tensor kernels do not offer bicubic affine transforms, and ``grid_sample``'s
bicubic kernel (a = -0.75, zero padding) differs from Pillow's, so this module re-states Pillow's documented
rule in float64 tensor arithmetic:

- output pixel (x, y) samples the input at ``xin = a0 (x + 0.5) + a1 (y + 0.5) + a2``,
  ``yin = a3 (x + 0.5) + a4 (y + 0.5) + a5`` (pixel centres);
- a sample point outside ``[0, W) x [0, H)`` gives the fill colour; inside, the 4 x 4 neighbours around
  ``(xin - 0.5, yin - 0.5)`` are read with coordinates clamped to the image (edge pixels repeat);
- the cubic convolution kernel with a = -1, applied along x, then along y:
  ``v = v2 + d (-v1 + v3 + d (2 (v1 - v2) + v3 - v4 + d (-v1 + v2 - v3 + v4)))``;
- the result is clipped to [0, 255] and truncated (not rounded) to uint8.

Every operation is done in the same order as Pillow's C code on IEEE doubles, so the output equals Pillow's
image for image (the tests compare them bit for bit); it runs on any device with float64 support.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["affine_bicubic", "shear_coefficients"]


def shear_coefficients(name: str, factor: float) -> tuple[float, float, float, float, float, float]:
    """Pillow's affine coefficients of AutoAugment's ``ShearX`` / ``ShearY`` with shear factor ``factor``.

    ``ShearX``: ``(1, factor, 0, 0, 1, 0)``; ``ShearY``: ``(1, 0, 0, factor, 1, 0)``. With nearest
    interpolation these equal torchvision's ``ShearX`` / ``ShearY`` of the same signed magnitude.
    """
    if name == "ShearX":
        return (1.0, float(factor), 0.0, 0.0, 1.0, 0.0)
    if name == "ShearY":
        return (1.0, 0.0, 0.0, float(factor), 1.0, 0.0)
    raise ValueError(f"not a shear op: {name!r}")


def _cubic(v1: Tensor, v2: Tensor, v3: Tensor, v4: Tensor, d: Tensor) -> Tensor:
    """Pillow's ``BICUBIC`` macro (a = -1), operation by operation."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def affine_bicubic(images: Tensor, coefficients: tuple[float, ...], fill: int) -> Tensor:
    """``PIL.Image.transform(size, AFFINE, coefficients, BICUBIC, fillcolor=fill)`` on a uint8 batch.

    Args:
        images: uint8 (..., C, H, W) on any device with float64 support.
        coefficients: the six affine coefficients (a0, a1, a2, a3, a4, a5), output pixel -> input point.
        fill: fill value of every channel, 0..255.

    Returns:
        uint8 (..., C, H, W).
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"affine_bicubic expects uint8 images, got {images.dtype}")
    if len(coefficients) != 6:
        raise ValueError(f"affine_bicubic needs 6 coefficients, got {len(coefficients)}")
    h, w = images.shape[-2:]
    rows, cols, dx, dy, inside = _sampling(h, w, tuple(float(c) for c in coefficients), images.device)
    flat = images.reshape(*images.shape[:-2], h * w).to(torch.float64)
    # A pass whose offset is 0 everywhere returns its second tap exactly (v2 + 0 * (...) = v2), so shears, which
    # move along one axis, read 4 neighbours instead of 16 with the same result.
    if dx is None:
        cols = cols[1:2]
    if dy is None:
        rows = rows[1:2]
    index = (rows[:, None, :] * w + cols[None, :, :]).reshape(-1)
    taps = flat[..., index].unflatten(-1, (rows.shape[0], cols.shape[0], h * w))  # (..., C, row, column, HW)
    along_x = taps[..., 0, :] if dx is None else _cubic(*taps.unbind(-2), dx)  # (..., C, row, HW)
    v = along_x[..., 0, :] if dy is None else _cubic(*along_x.unbind(-2), dy)
    out = torch.where(v <= 0.0, 0.0, torch.where(v >= 255.0, 255.0, v.trunc()))
    out = torch.where(inside, out, float(fill))
    return out.to(torch.uint8).reshape(images.shape)


@functools.lru_cache(maxsize=64)
def _sampling(
    h: int, w: int, coefficients: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
    """Neighbour rows and columns (4, HW) each, offsets dx, dy (HW,; None when 0 everywhere), inside mask (HW,)."""
    a0, a1, a2, a3, a4, a5 = coefficients
    yo = (torch.arange(h, dtype=torch.float64) + 0.5)[:, None].expand(h, w)
    xo = (torch.arange(w, dtype=torch.float64) + 0.5)[None, :].expand(h, w)
    xin = a0 * xo + a1 * yo + a2
    yin = a3 * xo + a4 * yo + a5
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xs, ys = xin - 0.5, yin - 0.5
    x0, y0 = xs.floor(), ys.floor()
    dx, dy = (xs - x0).reshape(-1), (ys - y0).reshape(-1)
    cols = torch.stack([(x0.long() - 1 + k).clamp(0, w - 1).reshape(-1) for k in range(4)])
    rows = torch.stack([(y0.long() - 1 + k).clamp(0, h - 1).reshape(-1) for k in range(4)])

    def put(t: Tensor) -> Tensor:
        return t.to(device)

    return (
        put(rows),
        put(cols),
        None if bool((dx == 0).all()) else put(dx),
        None if bool((dy == 0).all()) else put(dy),
        put(inside.reshape(-1)),
    )
