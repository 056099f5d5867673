"""The one training-epoch loop every stage uses, and prediction.

Stages differ only in what they hand to :func:`train_one_epoch` (sources, loss, which parameters the optimizer
holds, mixing on or off); there is no per-stage copy of the loop. AMP is a context, never a second branch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bce3s import faults
from bce3s.config import MixingConfig
from bce3s.engine.distributed import DistInfo, all_gather_cat, all_reduce_flag
from bce3s.errors import BCE3SError
from bce3s.seeding import make_generator

__all__ = ["EpochResult", "NonFiniteError", "StepRuntime", "predict", "train_one_epoch"]


class NonFiniteError(BCE3SError):
    """A loss, gradient or weight became NaN/inf (``runtime.nan_policy: stop``), or a checkpoint would hold one.

    Attributes:
        stage_index, epoch, step: where it happened (``step`` = 0-based index of the step in the epoch).
        term: the first non-finite loss term, ``total``, ``gradient`` or ``weights``.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        stage_index: int | None = None,
        epoch: int | None = None,
        step: int | None = None,
        term: str | None = None,
    ) -> None:
        super().__init__(message)
        self.stage_index, self.epoch, self.step, self.term = stage_index, epoch, step, term


@dataclass
class StepRuntime:
    """Everything one optimisation step needs (built per stage by the trainer).

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
        seed: run seed (per-step mixing generators derive from it).
        stage_index: index of the stage (part of every derived seed).
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

    @property
    def needs_embeddings(self) -> bool:
        return "embeddings" in getattr(self.loss_fn, "needs", frozenset())

    @property
    def needs_weight(self) -> bool:
        return "weight" in getattr(self.loss_fn, "needs", frozenset())

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)


@dataclass
class EpochResult:
    """Running sums of one epoch (kept in mid-epoch checkpoints so a resumed epoch reports the same means)."""

    loss_sum: float = 0.0
    term_sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    skipped: int = 0
    images: int = 0
    time_s: float = 0.0
    stopped_at: int | None = None  # steps done when a stop request ended the epoch early

    def means(self) -> tuple[float, dict[str, float]]:
        n = max(self.steps - self.skipped, 1)
        return self.loss_sum / n, {k: v / n for k, v in self.term_sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum,
            "term_sums": dict(self.term_sums),
            "steps": self.steps,
            "skipped": self.skipped,
            "images": self.images,
            "time_s": self.time_s,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> EpochResult:
        if not state:
            return cls()
        return cls(
            loss_sum=float(state["loss_sum"]),
            term_sums={k: float(v) for k, v in state["term_sums"].items()},
            steps=int(state["steps"]),
            skipped=int(state["skipped"]),
            images=int(state["images"]),
            time_s=float(state["time_s"]),
        )


def _iterate(source: Any, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if start_step and hasattr(source, "iter_from"):
        return iter(source.iter_from(start_step))
    it = iter(source)
    for _ in range(start_step):
        next(it)
    return it


def _global_order(t: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """Rank-major gathered rows (r0: s0..sB, r1: s0..sB, ...) back into the global batch order.

    Samplers give rank r the positions r, r + W, r + 2W, ... of the epoch's index list, so the global batch is the
    rank-interleaved sequence. Restoring it makes the memory's "last sample of a class wins" rule pick the same
    sample as a single-process run with the same global batch.
    """
    w = dist.world_size
    if w == 1 or t.shape[0] % w:
        return t
    return t.reshape(w, t.shape[0] // w, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _first_bad_term(loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> str:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            return name
    return "total" if not torch.isfinite(loss).all() else "gradient"


def train_one_epoch(
    rt: StepRuntime,
    source: Any,
    mix_source: Any | None,
    *,
    epoch: int,
    start_step: int = 0,
    partial: EpochResult | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], Any] | None = None,
) -> EpochResult:
    """Run the steps of one epoch from ``start_step``.

    Each step: (optionally) mix the clean batch with a batch of ``mix_source`` into [clean, mixup, cutmix],
    forward once, compute the loss, backward, clip, step, then update the loss's memory with the clean view's
    embeddings gathered from every rank. A stop request (signal) is honoured between steps on all ranks at once.

    Returns:
        The epoch's running sums; ``stopped_at`` is set when the epoch ended early.
    """
    from bce3s.data.mixing import glmc_mix

    res = partial if partial is not None else EpochResult()
    t_start = time.perf_counter() - res.time_s
    it = _iterate(source, start_step)
    mix_it = _iterate(mix_source, start_step) if (rt.mixing.enabled and mix_source is not None) else None
    params = [p for g in rt.optimizer.param_groups for p in g["params"]]
    # a skipped step must leave no trace: the forward pass already updated the BatchNorm statistics (with NaN
    # when the batch or the activations were not finite), so the buffers are restored when a step is skipped
    buffers = list(rt.raw_model.buffers()) if rt.nan_policy == "skip" else []
    step = start_step
    total = len(source)
    while step < total:
        try:
            x, y = next(it)
        except StopIteration:
            break
        view = None
        target: torch.Tensor = y
        if mix_it is not None:
            x2, y2 = next(mix_it)
            gen = make_generator(rt.seed, "mix", rt.stage_index, epoch, step)
            mixed = glmc_mix(x, y, x2, y2, num_classes=rt.num_classes, alpha=rt.mixing.alpha, generator=gen)
            x, target, view = mixed.images, mixed.target, mixed.view
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        saved = [b.detach().clone() for b in buffers]
        with rt.autocast():
            out = rt.model(x)
        logits = out.logits.float()
        embeddings = out.embeddings.float() if (out.embeddings is not None and rt.needs_embeddings) else None
        weight = rt.raw_model.head.weight if rt.needs_weight else None
        loss_out = rt.loss_fn(logits, target, view=view, embeddings=embeddings, weight=weight)
        loss = loss_out.loss
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not bad:
            rt.optimizer.zero_grad(set_to_none=True)
            rt.scaler.scale(loss).backward()
            fp16 = rt.scaler.is_enabled()
            if rt.grad_clip is not None or not fp16:
                rt.scaler.unscale_(rt.optimizer)
                max_norm = rt.grad_clip if rt.grad_clip is not None else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                # under fp16 the scaler itself skips steps with inf gradients; elsewhere they are faults
                bad = (not fp16) and not bool(torch.isfinite(grad_norm))
        bad = all_reduce_flag(bad, rt.dist)
        if bad:
            term = _first_bad_term(loss.detach(), loss_out.terms)
            if rt.nan_policy == "stop":
                raise NonFiniteError(
                    f"non-finite {'loss' if term != 'gradient' else 'gradient'} at stage "
                    f"{rt.stage_index} epoch {epoch} step {step} (term: {term})",
                    stage_index=rt.stage_index,
                    epoch=epoch,
                    step=step,
                    term=term,
                )
            rt.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buf, old in zip(buffers, saved):
                    buf.copy_(old)
            res.skipped += 1
        else:
            rt.scaler.step(rt.optimizer)
            rt.scaler.update()
            if out.embeddings is not None and rt.needs_embeddings:
                emb = out.embeddings if view is None else out.embeddings[view == 0]
                emb = _global_order(all_gather_cat(emb.detach().float(), rt.dist), rt.dist)
                rt.loss_fn.update(emb, _global_order(all_gather_cat(y, rt.dist), rt.dist))
            res.loss_sum += float(loss.detach())
            for name, value in loss_out.terms.items():
                res.term_sums[name] = res.term_sums.get(name, 0.0) + float(value)
        res.steps += 1
        res.images += int(x.shape[0]) * rt.dist.world_size
        step += 1
        if progress is not None:
            progress(1)
        faults.at_step(rt.stage_index, epoch, step, should_stop)  # test-only hook, no-op unless BCE3S_FAULT_INJECT
        if all_reduce_flag(should_stop(), rt.dist) and step < total:
            res.stopped_at = step
            break
    res.time_s = time.perf_counter() - t_start
    return res


@torch.no_grad()
def predict(
    model: nn.Module,
    source: Any,
    dist: DistInfo,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    tta_flip: bool = False,
    with_features: bool = False,
) -> dict[str, torch.Tensor]:
    """Logits (and optionally features) of every sample of an evaluation source, gathered from all ranks.

    With ``tta_flip`` the logits (and features) are the mean over the image and its horizontal flip.

    Returns:
        ``{"logits": (N, K), "labels": (N,), "features": (N, D)}`` as float32 / int64 CPU tensors.
    """
    was_training = model.training
    model.eval()
    logits, labels, feats = [], [], []
    ctx = torch.autocast(dist.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for x, y in source:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            out = model(x)
            lg, ft = out.logits.float(), out.features.float()
            if tta_flip:
                out_f = model(torch.flip(x, dims=[3]))
                lg = (lg + out_f.logits.float()) / 2
                ft = (ft + out_f.features.float()) / 2
        logits.append(lg)
        labels.append(y)
        if with_features:
            feats.append(ft)
    model.train(was_training)
    device = dist.device
    lg_all = torch.cat(logits) if logits else torch.zeros(0, device=device)
    y_all = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    result = {"logits": all_gather_cat(lg_all, dist).cpu(), "labels": all_gather_cat(y_all, dist).cpu()}
    if with_features:
        result["features"] = all_gather_cat(torch.cat(feats), dist).cpu()
    return result
