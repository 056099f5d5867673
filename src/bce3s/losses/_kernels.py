"""Fused kernels of the BCE3S terms (private): value and gradient in one forward pass.

Every term of BCE3S is a scalar, so its gradient can be computed together with its value, from the same
intermediates, with no autograd graph over the K-wide elementwise work. Each :class:`torch.autograd.Function`
here computes the gradient in ``forward`` only when an input needs it and returns ``grad_output * saved`` in
``backward`` (first derivatives only). Autocast is off inside the kernels: they run in their inputs' dtype. That
keeps a training step at a few passes over the (N, K) logits and
avoids every K x K temporary except the Gram blocks of the uniform term.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

#: F.normalize epsilon used for classifier rows, projections and memory slots.
NORM_EPS = 1e-5

#: Rows per block of the Gram matrix in the uniform term: below this K the Gram is one block.
GRAM_BLOCK = 2048


def bce_value_and_grad(
    logits: Tensor, pos: Tensor, neg: Tensor, logit_clip: float | None, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """``sum_ik [pos_ik softplus(-z_ik) + neg_ik softplus(z_ik)]`` and its gradient in z (or None).

    Args:
        logits: z, (N, K).
        pos: positive weights, (N, K), row weights and all folded in.
        neg: negative weights, (N, K), likewise.
        logit_clip: clamp z to [-c, c] first (zero gradient outside), or None.
        need_grad: whether to compute the gradient.

    Returns:
        Scalar value and the (N, K) gradient ``(pos + neg) sigmoid(z) - pos`` (None without ``need_grad``).
    """
    inside = None
    if logit_clip is not None:
        inside = logits.abs() <= logit_clip
        logits = logits.clamp(-logit_clip, logit_clip)
    sp = F.softplus(logits)  # softplus(-z) = softplus(z) - z: every summand stays >= 0, no cancellation
    value = (sp - logits).mul_(pos).addcmul_(neg, sp).sum()
    if not need_grad:
        return value, None
    grad = torch.addcmul(pos.neg(), pos + neg, torch.sigmoid(logits))
    if inside is not None:
        grad = grad * inside
    return value, grad


class LogitBce(torch.autograd.Function):
    """Weighted BCE of logits (the joint term): see :func:`bce_value_and_grad`."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, pos: Tensor, neg: Tensor, logit_clip: float | None) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            value, grad = bce_value_and_grad(logits, pos, neg, logit_clip, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (None if grad is None else grad * grad_out), None, None, None


def normalize_rows(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``x / max(|x_i|, eps)`` row-wise: (N, D) -> the normalized rows, the norms (N, 1) and the divisors (N, 1)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    denom = norm.clamp(min=NORM_EPS)
    return x / denom, norm, denom


def normalize_backward(grad_hat: Tensor, x_hat: Tensor, norm: Tensor, denom: Tensor) -> Tensor:
    """Gradient in x of ``x_hat = x / max(|x|, eps)`` given the gradient in x_hat (all (N, D); norms (N, 1))."""
    # (I - x_hat x_hat^T) g / |x| where |x| > eps; g / eps where the norm is clamped
    along = (grad_hat * x_hat).sum(dim=1, keepdim=True).masked_fill_(norm <= NORM_EPS, 0.0)
    return torch.addcmul(grad_hat, x_hat, along, value=-1).div_(denom)


class CosineBce(torch.autograd.Function):
    """Weighted BCE of ``cos(u_i, m_k) / tau`` (the contrastive term), gradient in the embeddings u.

    ``memory_hat`` holds the memory rows already normalized and divided by tau, (K, P); it gets no gradient.
    """

    @staticmethod
    def forward(
        ctx: Any, embeddings: Tensor, memory_hat: Tensor, pos: Tensor, neg: Tensor, logit_clip: float | None
    ) -> Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            u_hat, norm, denom = normalize_rows(embeddings)
            value, grad = bce_value_and_grad(u_hat @ memory_hat.T, pos, neg, logit_clip, ctx.needs_input_grad[0])
            if grad is not None:
                grad = normalize_backward(grad @ memory_hat, u_hat, norm, denom)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (None if grad is None else grad * grad_out), None, None, None, None


def _gram_blocks(num_classes: int) -> list[tuple[int, int]]:
    return [(start, min(start + GRAM_BLOCK, num_classes)) for start in range(0, num_classes, GRAM_BLOCK)]


class Uniform(torch.autograd.Function):
    """``(1/K) sum_k [softplus(-s) + sum_{j != k} softplus(s cos(w_k, w_j))]`` of a (K, D) weight.

    The Gram matrix of the normalized rows is symmetric, so only its blocks on and above the diagonal are
    formed (GRAM_BLOCK rows at a time): about half the multiply-adds of a full Gram for large K, and no K x K
    temporary. The gradient in the normalized rows, ``(2 s / K) C w_hat`` with ``C = sigmoid(s G)`` off the
    diagonal, is accumulated block by block in the same pass.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, weight: Tensor, scale: float) -> Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            value, grad = Uniform.value_and_grad(weight, scale, ctx.needs_input_grad[0])  # type: ignore[attr-defined]
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def value_and_grad(weight: Tensor, scale: float, need: bool) -> tuple[Tensor, Tensor | None]:
        """The term and, with ``need``, its gradient in ``weight`` (K, D)."""
        num_classes = weight.shape[0]
        w_hat, norm, denom = normalize_rows(weight)
        if num_classes <= GRAM_BLOCK:
            return Uniform._one_block(w_hat, norm, denom, scale, need)
        grad_hat = torch.zeros_like(w_hat) if need else None
        # sum of softplus(s G_jk) / s over the pairs j != k
        pair_sum = w_hat.new_zeros(())
        blocks = _gram_blocks(num_classes)
        for bi, (i0, i1) in enumerate(blocks):
            for j0, j1 in blocks[bi:]:
                gram = w_hat[i0:i1] @ w_hat[j0:j1].T
                sp = F.softplus(gram, beta=scale)
                if i0 == j0:
                    pair_sum = pair_sum + (sp.sum() - sp.diagonal().sum())
                else:
                    pair_sum = pair_sum + 2.0 * sp.sum()
                if grad_hat is None:
                    continue
                coef = torch.sigmoid(gram.mul_(scale))
                if i0 == j0:
                    coef.fill_diagonal_(0.0)
                grad_hat[i0:i1].addmm_(coef, w_hat[j0:j1], alpha=2.0)
                if i0 != j0:
                    grad_hat[j0:j1].addmm_(coef.T, w_hat[i0:i1], alpha=2.0)
        value = pair_sum * (scale / num_classes) + math.log1p(math.exp(-scale))
        if grad_hat is None:
            return value, None
        return value, normalize_backward(grad_hat.mul_(scale / num_classes), w_hat, norm, denom)

    @staticmethod
    def _one_block(
        w_hat: Tensor, norm: Tensor, denom: Tensor, scale: float, need: bool
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`value_and_grad` when the whole Gram is one block: the same sums, in fewer kernels."""
        num_classes = w_hat.shape[0]
        gram = w_hat @ w_hat.T
        pair_sum = F.softplus(gram, beta=scale).fill_diagonal_(0.0).sum()  # / s, over the pairs j != k
        value = pair_sum * (scale / num_classes) + math.log1p(math.exp(-scale))
        if not need:
            return value, None
        coef = torch.sigmoid(gram if scale == 1.0 else gram.mul_(scale)).fill_diagonal_(0.0)
        # beta = 0: the first argument is only a shape, never read
        grad_hat = torch.addmm(w_hat, coef, w_hat, beta=0.0, alpha=2.0 * scale / num_classes)
        return value, normalize_backward(grad_hat, w_hat, norm, denom)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None]:
        (grad,) = ctx.saved_tensors
        return (None if grad is None else grad * grad_out), None
