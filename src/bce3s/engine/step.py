"""One optimisation step: ``train_step(runtime, batch) -> StepResult``.

This is the unit that the training loop, the step benchmark (``bench/train_step.py``) and the tests run. A step
mixes the clean batch with the second batch into [clean, mixup, cutmix] when the stage mixes (GLMC), forwards once,
computes the loss, backpropagates, clips, and, when everything is finite, takes the optimizer step and updates the
loss's class memory with the clean view's embeddings gathered from every rank.

The loss and its terms are returned as device tensors (float64, detached): the loop adds them up on the device and
reads them once per epoch. The one host synchronisation left in a step is the finiteness guard of
``runtime.nan_policy`` (one flag per step, agreed by all ranks), which decides whether the optimizer may step.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bce3s.config import MixingConfig
from bce3s.engine.distributed import DistInfo, all_gather_cat, all_reduce_flag
from bce3s.errors import NonFiniteError
from bce3s.seeding import make_generator
from bce3s.views import CLEAN

__all__ = [
    "StepResult",
    "StepRuntime",
    "TrainBatch",
    "forward_loss",
    "global_order",
    "non_finite_error",
    "train_step",
    "update_memory",
]


@dataclass
class StepRuntime:
    """Everything one optimisation step needs (built once per stage).

    Attributes:
        model: the module called in the forward (possibly DDP-wrapped or compiled).
        raw_model: the underlying :class:`~bce3s.models.Classifier` (head weight for the uniform term).
        loss_fn: a :class:`~bce3s.losses.Loss`.
        optimizer: optimizer over the stage's trainable parameters.
        scaler: ``torch.amp.GradScaler`` (enabled only for fp16).
        dist: the process's :class:`DistInfo`.
        num_classes: K.
        mixing: GLMC mixing settings (``enabled`` false = plain batches).
        amp_dtype: autocast dtype, or None for fp32.
        channels_last: convert inputs to channels_last.
        grad_clip: max global gradient norm, or None.
        nan_policy: ``stop`` or ``skip``.
        seed: run seed (the per-step mixing generators derive from it).
        stage_index: index of the stage (part of every derived seed).
        static_step: a :class:`~bce3s.engine.capture.StaticStep` the loop runs instead of :func:`train_step`
            (set by the stage when ``runtime.step`` is not ``eager``), or None.
    """

    model: nn.Module
    raw_model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    dist: DistInfo
    num_classes: int
    mixing: MixingConfig
    amp_dtype: torch.dtype | None
    channels_last: bool
    grad_clip: float | None
    nan_policy: str
    seed: int
    stage_index: int
    static_step: Any = None
    params: list[Tensor] = field(init=False)
    buffers: list[Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # a skipped step must leave no trace: the forward already updated the BatchNorm statistics (with NaN when
        # the batch or the activations were not finite), so the buffers are restored when a step is skipped
        self.buffers = list(self.raw_model.buffers()) if self.nan_policy == "skip" else []

    @property
    def needs_embeddings(self) -> bool:
        return "embeddings" in getattr(self.loss_fn, "needs", frozenset())

    @property
    def needs_weight(self) -> bool:
        return "weight" in getattr(self.loss_fn, "needs", frozenset())

    def autocast(self, *, cache: bool = True) -> Any:
        """The step's autocast context (``cache=False`` inside a CUDA graph capture: cached casts go stale)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype, cache_enabled=cache)


@dataclass(frozen=True)
class TrainBatch:
    """The input of one step.

    Attributes:
        images: float (B, C, H, W) normalized clean images, on the device.
        labels: int64 (B,).
        mix_images, mix_labels: the second (re-balanced) batch of GLMC mixing, same shapes; None when the stage
            does not mix.
        epoch, step: position in the stage (0-based); they seed the mixing draws and locate errors.
    """

    images: Tensor
    labels: Tensor
    mix_images: Tensor | None = None
    mix_labels: Tensor | None = None
    epoch: int = 0
    step: int = 0


@dataclass(frozen=True)
class StepResult:
    """What one step did.

    Attributes:
        loss: () float64 detached loss (0 when the step was skipped).
        terms: name -> () float64 detached loss terms (empty when skipped).
        skipped: the step was not applied (non-finite loss or gradient under ``nan_policy: skip``); a () bool
            device tensor when the step ran without host synchronisation
            (:class:`~bce3s.engine.capture.StaticStep`).
        images: images that went through the model on this rank (3B when mixing).
    """

    loss: Tensor
    terms: dict[str, Tensor]
    skipped: bool | Tensor
    images: int


def global_order(t: Tensor, dist: DistInfo) -> Tensor:
    """Rank-major gathered rows (r0: s0..sB, r1: s0..sB, ...) back into the global batch order.

    Samplers give rank r the positions r, r + W, r + 2W, ... of the epoch's index list, so the global batch is the
    rank-interleaved sequence. Restoring it makes the memory's "last sample of a class wins" rule pick the same
    sample as a single-process run with the same global batch.

    Args:
        t: (W * B, ...) rows gathered rank by rank.
    """
    w = dist.world_size
    if w == 1 or t.shape[0] % w:
        return t
    return t.reshape(w, t.shape[0] // w, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _inputs(rt: StepRuntime, batch: TrainBatch) -> tuple[Tensor, Tensor, Tensor | None]:
    """(images (N, C, H, W), target (N,) or (N, K), view (N,) or None) of the step."""
    if not rt.mixing.enabled or batch.mix_images is None:
        return batch.images, batch.labels, None
    from bce3s.data.mixing import glmc_mix

    gen = make_generator(rt.seed, "mix", rt.stage_index, batch.epoch, batch.step)
    mixed = glmc_mix(
        batch.images,
        batch.labels,
        batch.mix_images,
        batch.mix_labels,
        num_classes=rt.num_classes,
        alpha=rt.mixing.alpha,
        generator=gen,
    )
    return mixed.images, mixed.target, mixed.view


def _backward(rt: StepRuntime, loss: Tensor) -> bool:
    """Backward, unscale and clip; True when the gradients are finite (under fp16 the scaler handles inf)."""
    rt.optimizer.zero_grad(set_to_none=True)
    rt.scaler.scale(loss).backward()
    fp16 = rt.scaler.is_enabled()
    if rt.grad_clip is None and fp16:
        return True
    rt.scaler.unscale_(rt.optimizer)
    max_norm = rt.grad_clip if rt.grad_clip is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(rt.params, max_norm)
    return fp16 or bool(torch.isfinite(grad_norm))


def forward_loss(
    rt: StepRuntime, x: Tensor, target: Tensor, view: Tensor | None, *, autocast_cache: bool = True
) -> tuple[Any, Any, Tensor | None]:
    """Forward the views ``x`` (N, C, H, W) and compute the loss.

    Returns:
        The model output, the :class:`~bce3s.losses.LossOutput`, and the float (N, P) embeddings the loss took
        (None when the loss takes none).
    """
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with rt.autocast(cache=autocast_cache):
        out = rt.model(x)
    embeddings = out.embeddings.float() if out.embeddings is not None and rt.needs_embeddings else None
    weight = rt.raw_model.head.weight if rt.needs_weight else None
    loss_out = rt.loss_fn(out.logits.float(), target, view=view, embeddings=embeddings, weight=weight)
    return out, loss_out, embeddings


def non_finite_error(rt: StepRuntime, epoch: int, step: int, term: str) -> NonFiniteError:
    """The error of a non-finite ``term`` (a loss term, ``total`` or ``gradient``) at ``(epoch, step)``."""
    return NonFiniteError(
        f"non-finite {'loss' if term != 'gradient' else 'gradient'} at stage {rt.stage_index} epoch {epoch} "
        f"step {step} (term: {term})",
        stage_index=rt.stage_index,
        epoch=epoch,
        step=step,
        term=term,
    )


def _first_bad_term(loss: Tensor, terms: dict[str, Tensor]) -> str:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            return name
    return "total" if not torch.isfinite(loss).all() else "gradient"


def _reject(rt: StepRuntime, batch: TrainBatch, loss: Tensor, terms: dict[str, Tensor], saved: list[Tensor]) -> None:
    """A non-finite step: raise under ``stop``; under ``skip`` drop the gradients and restore the buffers."""
    term = _first_bad_term(loss, terms)
    if rt.nan_policy == "stop":
        raise non_finite_error(rt, batch.epoch, batch.step, term)
    rt.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buf, old in zip(rt.buffers, saved):
            buf.copy_(old)


def update_memory(rt: StepRuntime, embeddings: Tensor, view: Tensor | None, labels: Tensor) -> None:
    """Feed the clean view's embeddings (P-dim rows, gathered from every rank, global order) to the loss."""
    emb = embeddings if view is None else embeddings[view == CLEAN]
    emb = global_order(all_gather_cat(emb.detach().float(), rt.dist), rt.dist)
    rt.loss_fn.update(emb, global_order(all_gather_cat(labels, rt.dist), rt.dist))


def train_step(rt: StepRuntime, batch: TrainBatch) -> StepResult:
    """Run one optimisation step (see the module docstring).

    Raises:
        NonFiniteError: a non-finite loss or gradient under ``nan_policy: stop`` (nothing was applied).
    """
    x, target, view = _inputs(rt, batch)
    saved = [b.detach().clone() for b in rt.buffers]
    out, loss_out, embeddings = forward_loss(rt, x, target, view)
    loss = loss_out.loss
    ok = bool(torch.isfinite(loss.detach()).all())
    if ok:
        ok = _backward(rt, loss)
    if all_reduce_flag(not ok, rt.dist):
        _reject(rt, batch, loss.detach(), loss_out.terms, saved)
        zero = torch.zeros((), dtype=torch.float64, device=loss.device)
        return StepResult(loss=zero, terms={}, skipped=True, images=int(x.shape[0]))
    rt.scaler.step(rt.optimizer)
    rt.scaler.update()
    if embeddings is not None:
        update_memory(rt, out.embeddings, view, batch.labels)
    terms = {name: value.detach().double() for name, value in loss_out.terms.items()}
    return StepResult(loss=loss.detach().double(), terms=terms, skipped=False, images=int(x.shape[0]))
