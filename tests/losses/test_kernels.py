"""The fused kernels behind the BCE3S terms against plain autograd of the textbook formulas, in float64.

Tolerance: float64 kernels agree with autograd of the unfused formulas to rel/abs 1e-10 (only the order of
summation differs); float32 agrees with float64 to rel 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bce3s.losses import _kernels, bce_contrastive, bce_joint, bce_uniform

TOL = {"rtol": 1e-10, "atol": 1e-10}


def plain_uniform(w: torch.Tensor, scale: float) -> torch.Tensor:
    """Autograd reference: full Gram, softplus, diagonal masked."""
    k = w.shape[0]
    wn = F.normalize(w, dim=1, eps=1e-5)
    sp = F.softplus(scale * (wn @ wn.T))
    off = sp.masked_fill(torch.eye(k, dtype=torch.bool), 0.0).sum()
    return off / k + math.log1p(math.exp(-scale))


@pytest.mark.parametrize("block", [4, 5, 2048])
def test_uniform_blocked_gram_matches_full_gram(monkeypatch, block):
    monkeypatch.setattr(_kernels, "GRAM_BLOCK", block)
    w = torch.randn(13, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    w[4] = 0.0  # a zero row: normalized with the eps clamp, as F.normalize does
    w.requires_grad_()
    for scale in (1.0, 2.5):
        ours = bce_uniform(w, scale=scale)
        ref = plain_uniform(w, scale)
        torch.testing.assert_close(ours, ref, **TOL)
        torch.testing.assert_close(torch.autograd.grad(ours, w)[0], torch.autograd.grad(ref, w)[0], **TOL)
    assert torch.autograd.gradcheck(lambda x: bce_uniform(x, scale=1.5), (w,))


def test_uniform_float32_close_to_float64_multi_block(monkeypatch):
    monkeypatch.setattr(_kernels, "GRAM_BLOCK", 64)
    w = torch.randn(300, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert bce_uniform(w.float()).item() == pytest.approx(bce_uniform(w).item(), rel=1e-5)


def test_uniform_no_grad_and_frozen_weight():
    w = torch.randn(7, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    value = bce_uniform(w)  # no input needs a gradient: value only
    assert not value.requires_grad
    torch.testing.assert_close(value, plain_uniform(w, 1.0), **TOL)


@pytest.mark.parametrize("clip", [None, 1.5])
def test_joint_gradient_matches_autograd_of_softplus_form(clip):
    g = torch.Generator().manual_seed(3)
    z = (3 * torch.randn(9, 6, generator=g, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 6, (9,), generator=g)
    view = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2])
    q = F.one_hot(y, 6).double()
    q[view > 0] = 0.25 * q[view > 0] + 0.75 * F.one_hot((y[view > 0] + 1) % 6, 6).double()
    mask = torch.tensor([True, False, True, True, False, False])
    ours = bce_joint(z, q, view=view, classes=mask, neg_weight=0.7, logit_clip=clip)
    # reference: clamp, softplus terms, per-view means, mean over views (plain autograd)
    zc = z if clip is None else z.clamp(-clip, clip)
    neg = ((q == 0) & (mask[None, :] | (view != 0)[:, None])).double()
    rows = (q * F.softplus(-zc) + 0.7 * neg * F.softplus(zc)).sum(1)
    ref = sum(rows[view == v].mean() for v in range(3)) / 3
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ref, z)[0], **TOL)


def test_contrastive_gradient_matches_autograd_with_zero_embedding():
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(6, 4, generator=g, dtype=torch.float64)
    emb[2] = 0.0  # zero projection: gradient through the eps clamp
    emb.requires_grad_()
    mem = torch.randn(5, 4, generator=g, dtype=torch.float64)
    mem[1] = 0.0
    y = torch.randint(0, 5, (6,), generator=g)
    view = torch.tensor([0, 1, 2, 1, 2, 0])
    seen = torch.tensor([True, True, False, True, True])
    ours = bce_contrastive(emb, mem, y, view=view, temperature=0.5, seen=seen, logit_clip=1.9)
    logits = (F.normalize(emb, dim=1, eps=1e-5) @ F.normalize(mem, dim=1, eps=1e-5).T / 0.5).clamp(-1.9, 1.9)
    q = F.one_hot(y, 5).double() * seen
    neg = (F.one_hot(y, 5) == 0).double() * seen
    rows = (q * F.softplus(-logits) + neg * F.softplus(logits)).sum(1)
    ref = rows[view == 1].mean() + rows[view == 2].mean()
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(torch.autograd.grad(ours, emb)[0], torch.autograd.grad(ref, emb)[0], **TOL)
    assert torch.autograd.gradcheck(lambda e: bce_contrastive(e, mem, y, view=view, seen=seen), (emb,))


def test_kernels_run_in_input_dtype_under_autocast():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 4, generator=g, requires_grad=True)
    emb = torch.randn(5, 3, generator=g, requires_grad=True)
    mem = torch.randn(6, 3, generator=g)
    y = torch.randint(0, 6, (5,), generator=g)
    plain = (bce_uniform(w), bce_contrastive(emb, mem, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = (bce_uniform(w), bce_contrastive(emb, mem, y))
    for a, b in zip(plain, mixed):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b)
