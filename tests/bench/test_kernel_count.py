"""``bench/kernel_count.py``: counts the operators that launch kernels, not views or bare allocations."""

from __future__ import annotations

import torch

from kernel_count import count_kernels, kernels_by_name  # bench/ is on sys.path (tests/bench/conftest.py)


def test_counts_compute_and_skips_views_and_allocations():
    a, b = torch.randn(4, 3), torch.randn(5, 3)

    def fn() -> None:
        c = a @ b.t()  # t is a view: one kernel (mm)
        c = c.reshape(-1)[:7].unsqueeze(0)  # views only
        torch.empty(3)  # an allocation launches nothing
        (c * 2).sum()  # two kernels

    assert kernels_by_name(fn) == {"mm": 1, "mul": 1, "sum": 1}
    assert count_kernels(lambda: a.t().contiguous()) == 1  # a copy of a transposed view is a kernel


def test_counts_the_backward_too():
    x = torch.randn(8, requires_grad=True)
    forward_only = count_kernels(lambda: torch.sigmoid(x).sum())
    both = count_kernels(lambda: torch.sigmoid(x).sum().backward())
    assert forward_only == 2
    assert "sigmoid_backward" in kernels_by_name(lambda: torch.sigmoid(x).sum().backward())
    assert both > forward_only
