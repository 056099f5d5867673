"""A seeded sampler of the partial class set whose generator state is part of ``state_dict``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bce3s.losses._validation import check_ratio
from bce3s.losses.functional import _partial_class_mask

__all__ = ["PartialClassSampler"]


class PartialClassSampler(nn.Module):
    """Draws the partial class set (SPEC 7.4) from its own CPU ``torch.Generator``.

    The generator state is saved through ``get_extra_state`` / ``set_extra_state``, so a checkpoint restores
    the exact sequence of class sets on resume. Draws happen on the CPU, so a seed gives the same sets on any
    device.

    Args:
        ratio: r in (0, 1]; 1 keeps all classes and draws nothing.
        seed: seed of the generator.
    """

    def __init__(self, ratio: float, seed: int = 0) -> None:
        super().__init__()
        check_ratio(type(self).__name__, ratio)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"{type(self).__name__}: seed must be an int (got {seed!r})")
        self.ratio = float(ratio)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, present: Tensor) -> Tensor:
        """(K,) bool mask of present classes -> (K,) bool mask of the partial class set (no sync)."""
        return _partial_class_mask(present, self.ratio, self.generator)

    def get_extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator_state"].to("cpu", torch.uint8))

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, seed={self.seed}"
