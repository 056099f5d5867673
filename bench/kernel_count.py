"""Count the kernels a piece of code launches, on any device: the aten operators it dispatches, views and bare
allocations excluded (they launch nothing).

A device-independent proxy for launch cost. On a GPU every counted operator is at least one kernel, a few
microseconds each when launched eagerly and still about one to three inside a CUDA graph, so a small model's
step time follows the count. Forward and backward are both counted (the autograd engine dispatches the backward
operators through the same dispatcher). Compiled code is counted as the operators it still dispatches (its
fused kernels are not aten operators), so counts compare eager and static steps, not compiled ones.

Usage: ``count_kernels(fn)`` runs ``fn()`` once and returns the count, or ``kernels_by_name(fn)`` the counts per
operator name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

#: Operators that allocate or reinterpret without a kernel (views are recognised by their schema).
NO_KERNEL = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh"})


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL:
            self.names[name] += 1
        return func(*args, **(kwargs or {}))


def kernels_by_name(fn: Callable[[], object]) -> Counter[str]:
    """Run ``fn()`` once; the kernel-launching aten operators it dispatched, counted per operator name."""
    with _Counter() as counter:
        fn()
    return counter.names


def count_kernels(fn: Callable[[], object]) -> int:
    """Run ``fn()`` once; the number of kernel-launching aten operators it dispatched (forward and backward)."""
    return sum(kernels_by_name(fn).values())
