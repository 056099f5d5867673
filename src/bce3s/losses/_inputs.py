"""Checks of tensor arguments and target conversion shared by the loss functions and modules (private).

Loss *parameters* (temperature, ratios, weights, ...) are validated in :mod:`bce3s.losses.params`; this module
only looks at tensors. Checks of shapes and dtypes are free and always run. Checks that read tensor values would
need a host-device synchronisation on an accelerator, which stalls the training step. So, as
``torch.nn.functional.one_hot`` does, the range of class ids is checked for CPU tensors always and for
accelerator tensors only when the caller asks (``check_inputs=True``; otherwise a bad id ends in a device-side
assert); the NaN/inf scan runs only on request.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def shape_str(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def require_float(name: str, t: Tensor, where: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{where}: {name} must be a tensor (got {type(t).__name__})")
    if not t.is_floating_point():
        raise ValueError(f"{where}: {name} must be a floating-point tensor (got dtype {t.dtype})")


def require_2d(name: str, t: Tensor, where: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{where}: {name} must be 2-D, got shape {shape_str(t)}")


def _capturing(t: Tensor) -> bool:
    """Whether ``t`` is a CUDA tensor and a CUDA graph is being captured on the current stream (no value reads)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def check_finite(where: str, **tensors: Tensor | None) -> None:
    """Raise ValueError naming the first tensor that holds NaN or inf (one sync per tensor; none while capturing)."""
    for name, t in tensors.items():
        if t is not None and t.is_floating_point() and not _capturing(t) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: {name} contains NaN or inf values")


def is_hard(target: Tensor) -> bool:
    """True for class ids (integer dtype), False for soft targets (floating dtype)."""
    return not target.is_floating_point() and target.dtype != torch.bool


def values_checked(t: Tensor, force: bool) -> bool:
    """Whether value checks run for ``t``: always on the CPU (free), on accelerators only when forced.

    Never while a compiled step is traced or a CUDA graph captured: neither may read values on the host.
    """
    if torch.compiler.is_compiling():
        return False
    return (force or t.device.type == "cpu") and not _capturing(t)


def check_labels(where: str, labels: Tensor, num_classes: int, *, force: bool = False) -> None:
    """Raise ValueError if any class id is outside [0, num_classes) (CPU tensors, or any device with ``force``)."""
    if labels.numel() == 0 or not values_checked(labels, force):
        return
    lo, hi = torch.stack([labels.min(), labels.max()]).tolist()
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{where}: class ids must be in [0, {num_classes}) but range from {lo} to {hi}; "
            "check the labels or num_classes"
        )


def check_target(
    where: str, target: Tensor, num_rows: int, num_classes: int, *, labels: bool = True, force: bool = False
) -> None:
    """Shape/dtype check of a target: (N,) integer class ids or (N, K) float soft targets.

    Args:
        where: prefix for error messages.
        target: the target tensor.
        num_rows: N, the number of rows it must have.
        num_classes: K.
        labels: also check the range of class ids (see :func:`check_labels`).
        force: check the range on accelerators too (one sync).
    """
    if not isinstance(target, Tensor):
        raise ValueError(f"{where}: target must be a tensor (got {type(target).__name__})")
    if is_hard(target):
        if target.dim() != 1 or target.shape[0] != num_rows:
            raise ValueError(f"{where}: class-id target must have shape ({num_rows},), got {shape_str(target)}")
        if labels:
            check_labels(where, target, num_classes, force=force)
    elif target.is_floating_point():
        if target.dim() != 2 or tuple(target.shape) != (num_rows, num_classes):
            raise ValueError(
                f"{where}: soft target must have shape ({num_rows}, {num_classes}), got {shape_str(target)}"
            )
    else:
        raise ValueError(f"{where}: target must hold int64 class ids or float soft targets (got dtype {target.dtype})")


def soft_targets(target: Tensor, num_classes: int, like: Tensor) -> Tensor:
    """(N,) class ids or (N, K) soft targets -> (N, K) in ``like``'s dtype and device (no checks)."""
    if is_hard(target):
        return F.one_hot(target.to(device=like.device, dtype=torch.long), num_classes).to(like.dtype)
    if target.dtype == like.dtype and target.device == like.device:
        return target  # the common case in training: skip the (no-op) conversion call
    return target.to(device=like.device, dtype=like.dtype)


def ceil_ratio(ratio: float, num_classes: int) -> int:
    """ceil(ratio * K), robust to float error (0.4 * 100 -> 40, not 41)."""
    return max(1, math.ceil(round(ratio * num_classes, 9)))


def counts_tensor(class_counts: object, num_classes: int) -> Tensor:
    """Validate per-class training counts and return them as a float32 (K,) tensor.

    Raises:
        ValueError: starting with ``class_counts:`` (not numbers, wrong length, negative, all 0 or not finite).
    """
    try:
        counts = torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"class_counts: must be a sequence of {num_classes} numbers ({err})") from None
    if counts.numel() != num_classes:
        raise ValueError(f"class_counts: has {counts.numel()} entries but num_classes is {num_classes}")
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()) or not bool((counts > 0).any()):
        raise ValueError("class_counts: must be finite, >= 0 and not all 0")
    return counts.to(torch.float32)
