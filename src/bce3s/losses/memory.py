"""The class memory of the contrastive term: the last clean projection seen for each class."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bce3s.losses._inputs import check_labels, is_hard, require_2d, require_float, shape_str
from bce3s.losses.params import check_param

__all__ = ["ClassMemory"]


class ClassMemory(nn.Module):
    """One stored projection per class: the memory bank M of the contrastive term.

    ``memory`` starts at zero and ``seen`` marks the classes written at least once (the official code starts
    from uninitialized memory). :meth:`update` writes, for every class in the batch, the embedding of the
    **last** sample of that class in batch order, exactly like the official per-sample loop (head.py:152-155),
    but vectorized and deterministic. Under DDP, pass the embeddings and labels all-gathered from every rank in
    rank order; every rank then holds the same memory (no communication happens here).

    Args:
        num_classes: K.
        dim: P, the projection size.

    Attributes:
        memory: float32 buffer (K, P), unnormalized projections.
        seen: bool buffer (K,).
        check_inputs: also check the class-id range of accelerator tensors in :meth:`update` (a host sync; the
            range of CPU tensors is always checked). Default False.
    """

    memory: Tensor
    seen: Tensor

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        check_param("num_classes", num_classes)
        check_param("embedding_dim", dim)
        self.num_classes = num_classes
        self.dim = dim
        self.check_inputs = False
        #: Set (a plain Python flag, no tensor read) by the first :meth:`update` call; the loss warns when it is
        #: still False once the contrastive term is on.
        self.written = False
        self.register_buffer("memory", torch.zeros(num_classes, dim, dtype=torch.float32))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, embeddings: Tensor, target: Tensor) -> None:
        """Write the last embedding of each class in the batch into the memory.

        Args:
            embeddings: (N, P) clean-view projections (detached; stored as float32).
            target: (N,) int class ids.
        """
        where = f"{type(self).__name__}.update"
        require_float("embeddings", embeddings, where)
        require_2d("embeddings", embeddings, where)
        if embeddings.shape[1] != self.dim:
            raise ValueError(f"{where}: embeddings have size {embeddings.shape[1]}, the memory holds {self.dim}")
        if not isinstance(target, Tensor) or not is_hard(target) or tuple(target.shape) != (embeddings.shape[0],):
            got = shape_str(target) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(f"{where}: target must be int class ids of shape ({embeddings.shape[0]},), got {got}")
        self.written = True
        n = embeddings.shape[0]
        if n == 0:
            return
        check_labels(where, target, self.num_classes, force=self.check_inputs)
        device = self.memory.device
        target = target.to(device=device, dtype=torch.long)
        # Index of the last occurrence of each class (-1 if absent): max of the positions is order-independent,
        # hence deterministic on every device.
        last = torch.full((self.num_classes,), -1, dtype=torch.long, device=device)
        last.scatter_reduce_(0, target, torch.arange(n, device=device), reduce="amax", include_self=True)
        hit = last >= 0
        rows = embeddings.detach().to(device=device, dtype=torch.float32)[last.clamp(min=0)]
        self.memory.copy_(torch.where(hit[:, None], rows, self.memory))
        self.seen.logical_or_(hit)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A memory restored from a checkpoint counts as written when it holds any class (read once, at load).
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        seen = state_dict.get(prefix + "seen")
        if isinstance(seen, Tensor) and seen.device.type != "meta" and bool(seen.any()):
            self.written = True

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}"
