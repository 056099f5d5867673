"""Deterministic seeds derived from the run seed.

Every random choice of a run (data order, augmentation, mixing, partial class sets) is drawn from a generator
seeded by a value derived here from ``(run seed, purpose, stage, epoch, step)``. A run can therefore be resumed
at any step and continue exactly as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

__all__ = ["derive_seed", "make_generator", "seed_everything"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on every part (stable across processes and Python versions)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def make_generator(*parts: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global RNGs (model initialisation uses the torch global RNG)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
