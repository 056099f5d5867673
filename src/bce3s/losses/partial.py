"""A seeded sampler of the partial class set whose generator state is part of ``state_dict``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bce3s.losses.functional import _partial_class_mask_from_keys, partial_class_set
from bce3s.losses.params import check_param

__all__ = ["PartialClassSampler"]


class PartialClassSampler(nn.Module):
    """Draws the partial class set (:func:`~bce3s.losses.functional.partial_class_set`) from its own generator.

    The CPU ``torch.Generator`` state is saved through ``get_extra_state`` / ``set_extra_state`` (key
    ``_extra_state``), so a checkpoint restores the exact sequence of class sets on resume. Draws happen on the
    CPU, so a seed gives the same sets on any device.

    Data-parallel training: set ``reduce_present`` to a function that turns this process's (K,) bool mask of the
    classes present into the union over all processes (the classes of the *global* batch), e.g.
    :func:`bce3s.engine.distributed.union_across_ranks`. With the same seed on every process, every process then
    draws the same set, the one a single process would draw from the whole batch (the engine does this under
    DDP). Without it each process builds its set from its own rows only.

    Args:
        neg_class_ratio: r in (0, 1]; 1 keeps all classes and draws nothing.
        seed: seed of the generator.

    Attributes:
        ratio: r.
        seed: the seed.
        generator: the CPU generator.
        reduce_present: ``None`` or a function (K,) bool -> (K,) bool applied to the mask of present classes
            before the draw; it must be called on every process at every draw (a collective).
    """

    def __init__(self, neg_class_ratio: float, seed: int = 0) -> None:
        super().__init__()
        self.ratio = check_param("neg_class_ratio", neg_class_ratio)
        self.seed = check_param("seed", seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.reduce_present: Callable[[Tensor], Tensor] | None = None
        self.static_keys: Tensor | None = None

    def forward(self, present: Tensor) -> Tensor:
        """(K,) bool mask of the classes present -> (K,) bool mask of the partial class set (no host sync).

        With ``reduce_present`` set, the set is drawn around ``reduce_present(present)`` (the global batch's classes).
        """
        if self.reduce_present is not None and self.ratio < 1.0:  # r = 1 keeps every class: nothing to share
            present = self.reduce_present(present)
        if self.static_keys is not None:
            return _partial_class_mask_from_keys(present, self.ratio, self.static_keys)
        return partial_class_set(present, present.shape[0], self.ratio, generator=self.generator)

    def use_static_keys(self, num_classes: int, device: torch.device) -> None:
        """Read the draws from a fixed device buffer that :meth:`prepare` refills before each step.

        A captured (CUDA graph) step cannot draw on the host inside the graph; with a static buffer it reads the
        same numbers the eager path would draw, in the same order, so class sets are identical.
        """
        if self.ratio < 1.0:
            self.static_keys = torch.zeros(num_classes, device=device)

    def prepare(self) -> None:
        """Draw the next step's keys from the generator into the static buffer (no-op without one)."""
        if self.static_keys is not None:
            keys = torch.rand(self.static_keys.shape[0], generator=self.generator)
            if self.static_keys.device.type == "cuda":
                keys = keys.pin_memory()
            self.static_keys.copy_(keys, non_blocking=True)

    def get_extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator_state"].to("cpu", torch.uint8))

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, seed={self.seed}"
