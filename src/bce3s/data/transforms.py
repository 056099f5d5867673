"""Train/eval augmentation presets on ``torchvision.transforms.v2``, for uint8 image tensors (C, H, W).

Presets (``DataConfig.preset``):

- ``cifar`` (CIFAR-LT, the official BCE3S recipe), train: ``RandomCrop(size, padding=4)`` →
  ``RandomHorizontalFlip`` → ``AutoAugment(CIFAR10)`` (optional) → ``ToDtype(float32, scale=True)`` →
  :class:`Cutout` (side ``cutout``, 0 = off) → ``Normalize`` with the CIFAR-10 statistics the official code uses.
  Eval: ``ToDtype`` → ``Normalize``. AutoAugment fills the area a rotate, shear or translate uncovers with
  ``autoaugment_fill`` (torchvision: 0; the official code: 128) and does its geometric ops the
  ``autoaugment_geometry`` way (``torchvision``, or ``official``: the official PIL policy's bicubic shear,
  rounded translations and counter-clockwise rotations, see :data:`bce3s.data.gpu.autoaugment.GEOMETRIES`).
- ``imagenet`` (ImageNet-LT, iNat, Places, ImageFolder-LT), train: ``RandomResizedCrop(size)`` → flip →
  ``ColorJitter(0.4, 0.4, 0.4)`` or ``RandAugment()`` → ``ToDtype`` → ``Normalize`` (ImageNet statistics).
  Eval: ``Resize(round(size / 0.875))`` → ``CenterCrop(size)`` → ``ToDtype`` → ``Normalize``.
- ``gray`` (digits 8x8, (Fashion-)MNIST 28x28), train: ``RandomCrop(size, padding=size // 8)`` → optional flip
  (off by default: a flipped digit is another symbol; Fashion-MNIST may flip) → ``ToDtype`` → ``Normalize(0.5, 0.5)``.
  Eval: ``ToDtype`` → ``Normalize``.

``autoaugment`` and ``cutout`` act in the ``cifar`` preset only, ``randaugment`` in the ``imagenet`` preset only.
The GPU-resident pipeline (:mod:`bce3s.data.gpu`) implements the same presets batched.

Example::

    t = build_transform("cifar", train=True, image_size=32)
    x = t(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))   # float (3, 32, 32), normalized
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from bce3s.data.gpu.autoaugment import GEOMETRIES, apply_op, official_magnitude

__all__ = [
    "AugmentOptions",
    "AugmentSpec",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASET_PRESETS",
    "GRAY_MEAN",
    "GRAY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "Cutout",
    "OfficialAutoAugment",
    "build_transform",
    "check_autoaugment_options",
    "crop_padding",
    "cutout_box",
    "default_flip",
    "eval_resize_size",
    "flip_tta",
    "preset_stats",
]

PRESETS = ("cifar", "imagenet", "gray")

# The official code normalizes CIFAR-100 with the CIFAR-10 statistics ; kept for faithfulness.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)

# dataset -> (preset, horizontal flip in training)
DATASET_PRESETS: dict[str, tuple[str, bool]] = {
    "digits_lt": ("gray", False),
    "mnist_lt": ("gray", False),
    "fashion_mnist_lt": ("gray", True),
    "cifar10_lt": ("cifar", True),
    "cifar100_lt": ("cifar", True),
    "imagefolder_lt": ("imagenet", True),
    "imagenet_lt": ("imagenet", True),
    "places_lt": ("imagenet", True),
    "inat2018": ("imagenet", True),
}


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; valid: {', '.join(PRESETS)}")


def preset_stats(preset: str, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization (mean, std) of a preset, one value per channel.

    Args:
        preset: one of ``PRESETS``.
        channels: number of image channels; the gray statistics are repeated, RGB presets need 3 channels
            (a 1-channel image gets the channel mean of the RGB statistics).
    """
    _check_preset(preset)
    if preset == "gray":
        return GRAY_MEAN * channels, GRAY_STD * channels
    mean, std = (CIFAR_MEAN, CIFAR_STD) if preset == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)
    if channels == 3:
        return mean, std
    return (sum(mean) / 3,) * channels, (sum(std) / 3,) * channels


def default_flip(preset: str) -> bool:
    """Whether a preset flips horizontally in training when ``flip`` is not given (``gray``: no, digits)."""
    _check_preset(preset)
    return preset != "gray"


def crop_padding(preset: str, image_size: int) -> int:
    """Zero padding of the training ``RandomCrop`` of the ``cifar`` (4) and ``gray`` (``image_size // 8``) presets."""
    return 4 if preset == "cifar" else image_size // 8


def eval_resize_size(image_size: int) -> int:
    """Resize side of the ``imagenet`` eval preset: 256 for a 224 crop (the usual 0.875 crop ratio)."""
    return int(round(image_size / 0.875))


@dataclass(frozen=True, kw_only=True)
class AugmentOptions:
    """The augmentation keywords of :func:`build_transform` and ``BatchAugment``, with their defaults (their one
    definition; :class:`AugmentSpec` extends it).

    Attributes:
        flip: random horizontal flip in training; ``None`` = :func:`default_flip`.
        autoaugment: AutoAugment CIFAR-10 policy (``cifar`` only).
        cutout: Cutout side in pixels, 0 = off (``cifar`` only).
        randaugment: RandAugment instead of ColorJitter (``imagenet`` only).
        autoaugment_fill: AutoAugment's fill of rotate, shear and translate, 0..255 (0 = torchvision's default,
            128 = official).
        autoaugment_geometry: ``torchvision`` (``v2.AutoAugment``) or ``official`` (:class:`OfficialAutoAugment`).

    Raises:
        ValueError: ``cutout`` < 0, or a bad ``autoaugment_fill`` / ``autoaugment_geometry``.
    """

    flip: bool | None = None
    autoaugment: bool = True
    cutout: int = 16
    randaugment: bool = False
    autoaugment_fill: int = 0
    autoaugment_geometry: str = "torchvision"

    def __post_init__(self) -> None:
        check_autoaugment_options(self.autoaugment_fill, self.autoaugment_geometry)
        if self.cutout < 0:
            raise ValueError(f"cutout must be >= 0 (got {self.cutout})")

    def options(self) -> dict[str, Any]:
        """The augmentation keywords of :func:`build_transform` and ``BatchAugment`` (these fields only)."""
        return {f.name: getattr(self, f.name) for f in fields(AugmentOptions)}

    def for_preset(self, preset: str) -> AugmentOptions:
        """These options as ``preset`` applies them: ``flip`` resolved, ``autoaugment`` and ``cutout`` off outside
        ``cifar``, ``randaugment`` off outside ``imagenet``."""
        _check_preset(preset)
        return AugmentOptions(
            flip=default_flip(preset) if self.flip is None else self.flip,
            autoaugment=self.autoaugment and preset == "cifar",
            cutout=self.cutout if preset == "cifar" else 0,
            randaugment=self.randaugment and preset == "imagenet",
            autoaugment_fill=self.autoaugment_fill,
            autoaugment_geometry=self.autoaugment_geometry,
        )


@dataclass(frozen=True)
class AugmentSpec(AugmentOptions):
    """What a batch source does to each image: a preset, a size and the :class:`AugmentOptions` (keywords).

    Training sources augment with it, evaluation sources apply the preset's deterministic eval transform.

    Attributes:
        preset: ``cifar``, ``imagenet`` or ``gray`` (see the module docstring).
        image_size: output side; ``None`` = the stored image side (in-memory splits) or 224 (file-based).
        train_transform: training sources augment; False = they apply the eval transform to their sampled
            batches (a stage with ``augment: false``).
        flip, autoaugment, cutout, randaugment, autoaugment_fill, autoaugment_geometry: see
            :class:`AugmentOptions` (keyword-only).
    """

    preset: str
    image_size: int | None = None
    train_transform: bool = True

    def __post_init__(self) -> None:
        _check_preset(self.preset)
        super().__post_init__()
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"image_size must be > 0 (got {self.image_size})")


def check_autoaugment_options(fill: int, geometry: str) -> None:
    """Raise ``ValueError`` unless ``fill`` is in 0..255 and ``geometry`` one of ``GEOMETRIES``."""
    if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
        raise ValueError(f"autoaugment_fill must be an integer in [0, 255] (got {fill!r})")
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown autoaugment_geometry {geometry!r}; valid: {', '.join(GEOMETRIES)}")


def _official_magnitudes(name: str, num_bins: int, height: int, width: int) -> Tensor:
    return torch.tensor(
        [official_magnitude(name, b, height, width, num_bins) for b in range(num_bins)], dtype=torch.float64
    )


class OfficialAutoAugment(v2.AutoAugment):
    """``v2.AutoAugment(CIFAR10, fill=fill)`` with the official code's geometric ops (``geometry="official"``).

    torchvision's random draws (sub-policy, application, sign) are kept; each op is done by
    :func:`bce3s.data.gpu.autoaugment.apply_op` with ``geometry="official"``: Pillow's bicubic shear, translations
    rounded to the nearest pixel, counter-clockwise rotations, with the official float64 magnitudes; the other ops
    are torchvision's. Input: uint8 tensors (..., C, H, W).

    Args:
        fill: fill value of rotate, shear and translate, 0..255.
    """

    # the official float64 magnitudes of the geometric ops (torchvision's float32 values differ in the 8th digit);
    # a class attribute, so that the transform pickles (DataLoader workers started with spawn)
    _AUGMENTATION_SPACE = {
        **v2.AutoAugment._AUGMENTATION_SPACE,
        **{
            name: (functools.partial(_official_magnitudes, name), True)
            for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
        },
    }

    def __init__(self, fill: int = 128) -> None:
        check_autoaugment_options(fill, "official")
        super().__init__(v2.AutoAugmentPolicy.CIFAR10, fill=fill)
        self.fill_value = fill

    def _apply_image_or_video_transform(  # torchvision's per-op hook (called once per applied op)
        self, image: Any, transform_id: str, magnitude: float, interpolation: Any, fill: Any
    ) -> Any:
        if not isinstance(image, Tensor) or image.dtype != torch.uint8:
            raise TypeError(f"OfficialAutoAugment expects uint8 tensors, got {type(image).__name__}")
        return apply_op(image, transform_id, magnitude, fill=self.fill_value, geometry="official")


def cutout_box(cy: int, cx: int, size: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The official Cutout box (DeVries & Taylor, uoguelph-mlrg/Cutout) around centre (cy, cx).

    ``y1 = clip(cy - size // 2, 0, H)``, ``y2 = clip(cy + size // 2, 0, H)`` (same for x); the hole is
    ``[y1, y2) x [x1, x2)``: a ``size`` square (``2 * (size // 2)`` for odd sizes) clipped at the border.

    Returns:
        (y1, y2, x1, x2).
    """
    half = size // 2
    return (
        min(max(cy - half, 0), height),
        min(max(cy + half, 0), height),
        min(max(cx - half, 0), width),
        min(max(cx + half, 0), width),
    )


class Cutout(nn.Module):
    """Cutout with one square hole set to 0, as the official implementation (applied before ``Normalize``).

    The centre is uniform over all pixels (``randint(H)``, ``randint(W)``, torch's global RNG like the other v2
    transforms); the box follows :func:`cutout_box`.

    Args:
        size: side of the hole in pixels (0 disables the transform).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"cutout size must be >= 0 (got {size})")
        self.size = size

    def forward(self, image: Tensor) -> Tensor:
        """Args: image (..., C, H, W) float. Returns: a copy with the hole zeroed."""
        if self.size == 0:
            return image
        height, width = image.shape[-2:]
        cy = int(torch.randint(height, ()))
        cx = int(torch.randint(width, ()))
        y1, y2, x1, x2 = cutout_box(cy, cx, self.size, height, width)
        out = image.clone()
        out[..., y1:y2, x1:x2] = 0
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}"


def build_transform(preset: str, *, train: bool, image_size: int, channels: int = 3, **options: Any) -> v2.Compose:
    """A per-image torchvision v2 pipeline: uint8 (C, H, W) -> float32 (C, image_size, image_size) normalized.

    Args:
        preset: ``cifar``, ``imagenet`` or ``gray`` (see the module docstring).
        train: training augmentation (True) or the deterministic eval transform (False).
        image_size: crop side (train) / output side (imagenet eval).
        channels: image channels (selects the per-channel normalization statistics).
        **options: the keywords of :class:`AugmentOptions` (``flip``, ``autoaugment``, ``cutout``,
            ``randaugment``, ``autoaugment_fill``, ``autoaugment_geometry``), with its defaults.
    """
    _check_preset(preset)
    opts = AugmentOptions(**options).for_preset(preset)
    if image_size <= 0:
        raise ValueError(f"image_size must be > 0 (got {image_size})")
    mean, std = preset_stats(preset, channels)
    ops: list[Callable[..., Tensor] | nn.Module] = []
    if train:
        if preset == "imagenet":
            ops.append(v2.RandomResizedCrop(image_size, antialias=True))
        else:
            ops.append(v2.RandomCrop(image_size, padding=crop_padding(preset, image_size)))
        if opts.flip:
            ops.append(v2.RandomHorizontalFlip())
        if opts.autoaugment:
            if opts.autoaugment_geometry == "official":
                ops.append(OfficialAutoAugment(opts.autoaugment_fill))
            else:
                ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=opts.autoaugment_fill or None))
        if preset == "imagenet":
            ops.append(v2.RandAugment() if opts.randaugment else v2.ColorJitter(0.4, 0.4, 0.4))
        ops.append(v2.ToDtype(torch.float32, scale=True))
        if opts.cutout > 0:
            ops.append(Cutout(opts.cutout))
    else:
        if preset == "imagenet":
            ops += [v2.Resize(eval_resize_size(image_size), antialias=True), v2.CenterCrop(image_size)]
        ops.append(v2.ToDtype(torch.float32, scale=True))
    ops.append(v2.Normalize(mean, std))
    return v2.Compose(ops)


def flip_tta(model_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Flip test-time augmentation: the mean of the logits of ``x`` and of its horizontal mirror.

    Args:
        model_fn: maps images (N, C, H, W) to logits (N, K).
        x: float images (N, C, H, W), normalized.

    Returns:
        (N, K) averaged logits (logits, not probabilities, are averaged).
    """
    return 0.5 * (model_fn(x) + model_fn(torch.flip(x, dims=(-1,))))
