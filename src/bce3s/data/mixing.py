"""GLMC-style batch mixing: one clean, one MixUp and one CutMix view with soft targets.

A second batch ``(x2, y2)`` (from a second, possibly re-balanced sampler) is mixed into the clean batch with one
``lambda ~ Beta(alpha, alpha)`` per batch:

- MixUp: ``lambda * x + (1 - lambda) * x2``;
- CutMix: ``x`` with one box (the same for the whole batch) pasted from ``x2``; the nominal side is
  ``c = ceil(H * sqrt(1 - lambda))`` (and ``ceil(W * sqrt(1 - lambda))``), the box spans ``centre ± floor(c / 2)``
  around a uniformly random centre and is clipped at the border;
- soft target of both mixed views ``q = lambda e_y + (1 - lambda) e_y2`` (entries add when ``y == y2``). As in
  the official code, the CutMix target is **not** corrected for the clipped box area.

The three views are concatenated along the batch axis (clean, mixup, cutmix), so a single forward pass sees
3B images; losses pick rows by ``view`` id, never by position.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "VIEW_CLEAN",
    "VIEW_CUTMIX",
    "VIEW_MIXUP",
    "MixedBatch",
    "cutmix_box",
    "cutmix_box_at",
    "draw_mix",
    "glmc_mix",
    "glmc_mix_at",
    "sample_lambda",
]

VIEW_CLEAN = 0
VIEW_MIXUP = 1
VIEW_CUTMIX = 2


@dataclass
class MixedBatch:
    """The three views of a mixed batch.

    Attributes:
        images: (3B, C, H, W): clean, mixup, cutmix.
        target: (3B, K) float: one-hot for clean rows, soft ``q`` for mixed rows.
        view: (3B,) int64: 0 clean, 1 mixup, 2 cutmix.
        labels: (B,) int64 clean labels.
        lam: the batch's lambda.
    """

    images: Tensor
    target: Tensor
    view: Tensor
    labels: Tensor
    lam: float


def sample_lambda(alpha: float, generator: torch.Generator) -> float:
    """``lambda ~ Beta(alpha, alpha)``, reproducible from ``generator``.

    ``torch.distributions`` cannot take a generator, so one 62-bit integer is drawn from ``generator`` and seeds
    Python's ``random.Random.betavariate`` (a Gamma-ratio sampler).

    Args:
        alpha: Beta concentration (> 0).
        generator: CPU generator (advanced by one draw).
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (got {alpha})")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return random.Random(seed).betavariate(alpha, alpha)


def cutmix_box_at(lam: float, height: int, width: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The CutMix box for ``lam`` around centre (cy, cx).

    Nominal sides ``c_h = ceil(H sqrt(1 - lam))``, ``c_w = ceil(W sqrt(1 - lam))``; the box is
    ``[cy - c_h // 2, cy + c_h // 2)`` x ``[cx - c_w // 2, cx + c_w // 2)`` clipped to the image.

    Returns:
        (y1, y2, x1, x2), half-open.
    """
    cut = math.sqrt(max(0.0, 1.0 - lam))
    ch, cw = math.ceil(height * cut), math.ceil(width * cut)
    y1, y2 = min(max(cy - ch // 2, 0), height), min(max(cy + ch // 2, 0), height)
    x1, x2 = min(max(cx - cw // 2, 0), width), min(max(cx + cw // 2, 0), width)
    return y1, y2, x1, x2


def cutmix_box(lam: float, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """:func:`cutmix_box_at` around a centre drawn uniformly over the pixels (cy first, then cx)."""
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    return cutmix_box_at(lam, height, width, cy, cx)


def glmc_mix(
    x: Tensor,
    y: Tensor,
    x2: Tensor,
    y2: Tensor,
    *,
    num_classes: int,
    alpha: float = 1.0,
    generator: torch.Generator,
) -> MixedBatch:
    """Build the clean / MixUp / CutMix views of a batch.

    Args:
        x: float (B, C, H, W) clean images.
        y: int64 (B,) their labels.
        x2: float (B2, C, H, W) second batch, B2 >= B (sliced to its first B rows when longer, e.g. when the
            main source's last batch is smaller).
        y2: int64 (B2,) its labels.
        num_classes: K.
        alpha: Beta(alpha, alpha) concentration of lambda.
        generator: CPU generator for lambda and the box centre.

    Returns:
        :class:`MixedBatch` on ``x.device``.
    """
    if x.ndim != 4 or x2.ndim != 4 or x.shape[1:] != x2.shape[1:]:
        raise ValueError(f"x and x2 must be (B, C, H, W) of one image shape, got {tuple(x.shape)}, {tuple(x2.shape)}")
    b = x.shape[0]
    if y.shape != (b,) or x2.shape[0] != y2.shape[0]:
        raise ValueError(f"labels must match the images: x {tuple(x.shape)}, y {tuple(y.shape)}, y2 {tuple(y2.shape)}")
    if x2.shape[0] < b:
        raise ValueError(f"the second batch has {x2.shape[0]} images, fewer than the {b} clean ones")
    x2, y2 = x2[:b].to(x.device), y2[:b].to(y.device)
    lam = sample_lambda(alpha, generator)
    mixup = x * lam + x2 * (1.0 - lam)
    y1_, y2_, x1_, x2_ = cutmix_box(lam, x.shape[2], x.shape[3], generator)
    cutmix = x.clone()
    cutmix[:, :, y1_:y2_, x1_:x2_] = x2[:, :, y1_:y2_, x1_:x2_]
    dtype = x.dtype if x.is_floating_point() else torch.float32
    onehot = torch.zeros(b, num_classes, dtype=dtype, device=x.device).scatter_(1, y[:, None], 1.0)
    q = (onehot * lam).scatter_add_(1, y2[:, None], torch.full((b, 1), 1.0 - lam, dtype=dtype, device=x.device))
    view = torch.repeat_interleave(torch.arange(3, device=x.device), b)
    return MixedBatch(
        images=torch.cat([x, mixup, cutmix]),
        target=torch.cat([onehot, q, q]),
        view=view,
        labels=y,
        lam=lam,
    )


def draw_mix(
    alpha: float, height: int, width: int, generator: torch.Generator
) -> tuple[float, tuple[int, int, int, int]]:
    """The host-side draws of one :func:`glmc_mix` call: ``(lam, (y1, y2, x1, x2))``.

    Advances ``generator`` exactly as :func:`glmc_mix` does (lambda, then the box centre), so a step that mixes
    with :func:`glmc_mix_at` from these draws sees the same views as one that calls :func:`glmc_mix`.
    """
    lam = sample_lambda(alpha, generator)
    return lam, cutmix_box(lam, height, width, generator)


def mix_params(lam: float, box: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
    """``lam`` and ``box`` as the tensors :func:`glmc_mix_at` takes: (2,) float32 ``[lam, 1 - lam]`` and (4,) int64."""
    return torch.tensor([lam, 1.0 - lam], dtype=torch.float32), torch.tensor(box, dtype=torch.long)


def glmc_mix_at(
    x: Tensor,
    y: Tensor,
    x2: Tensor,
    y2: Tensor,
    *,
    num_classes: int,
    lam: Tensor,
    box: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`glmc_mix` from draws held in device tensors: no host sync, no shape that depends on the draws.

    This is the form a captured (CUDA graph) or compiled step runs: the CutMix box is a mask built by comparing
    pixel coordinates with ``box``, so the kernels are the same whatever the draws. With the draws of
    :func:`draw_mix` the views and targets equal :func:`glmc_mix`'s bit for bit.

    Args:
        x: float (B, C, H, W) clean images.
        y: int64 (B,) their labels.
        x2: float (B, C, H, W) second batch (same size as x).
        y2: int64 (B,) its labels.
        num_classes: K.
        lam: (2,) float32 ``[lam, 1 - lam]`` on x's device (see :func:`mix_params`).
        box: (4,) int64 ``(y1, y2, x1, x2)`` half-open CutMix box on x's device.

    Returns:
        images (3B, C, H, W) (clean, mixup, cutmix), target (3B, K), view (3B,) int64.
    """
    b, _, height, width = x.shape
    dtype = x.dtype if x.is_floating_point() else torch.float32
    keep, take = lam[0].to(x.dtype), lam[1].to(x.dtype)
    mixup = x * keep + x2 * take
    rows = torch.arange(height, device=x.device)[:, None]
    cols = torch.arange(width, device=x.device)[None, :]
    inside = (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])
    cutmix = torch.where(inside, x2, x)
    onehot = torch.zeros(b, num_classes, dtype=dtype, device=x.device).scatter_(1, y[:, None], 1.0)
    rest = lam[1].to(dtype).expand(b, 1)
    q = (onehot * lam[0].to(dtype)).scatter_add_(1, y2[:, None], rest)
    view = torch.repeat_interleave(torch.arange(3, device=x.device), b)
    return torch.cat([x, mixup, cutmix]), torch.cat([onehot, q, q]), view
