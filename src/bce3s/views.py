"""View ids of a training batch (0 clean, 1 mixup, 2 cutmix) and row selection by view id without host syncs.

Per-view means are computed with a (N, 3) one-hot of the view ids, so no boolean indexing (which would sync
with the device) is needed and empty views simply get weight 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CLEAN, MIXUP, CUTMIX = 0, 1, 2
NUM_VIEWS = 3


def view_onehot(view: Tensor | None, num_rows: int, like: Tensor) -> Tensor:
    """(N, 3) float one-hot of the view ids (all clean when ``view`` is None)."""
    if view is None:
        out = torch.zeros(num_rows, NUM_VIEWS, dtype=like.dtype, device=like.device)
        out[:, CLEAN] = 1
        return out
    return F.one_hot(view.to(device=like.device, dtype=torch.long), NUM_VIEWS).to(like.dtype)


def mean_of_view_means(rows: Tensor, views: Tensor) -> Tensor:
    """Mean over the views present of the per-view mean of ``rows``.

    Args:
        rows: per-sample losses, (N,).
        views: (N, 3) one-hot view ids.

    Returns:
        Scalar (0 for an empty batch).
    """
    counts = views.sum(dim=0)
    per_view = (views * rows[:, None]).sum(dim=0) / counts.clamp(min=1)
    present = (counts > 0).to(rows.dtype)
    return (per_view * present).sum() / present.sum().clamp(min=1)


def is_clean(views: Tensor) -> Tensor:
    """(N,) bool: rows of the clean view."""
    return views[:, CLEAN] > 0
