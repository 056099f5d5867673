"""The one training-epoch loop every stage uses, and prediction.

Stages differ only in what they hand to :func:`train_one_epoch` (sources, loss, which parameters the optimizer
holds, mixing on or off); there is no per-stage copy of the loop. Each step is :func:`bce3s.engine.step.train_step`;
the loop sums its loss and terms on the device and reads them once, when the epoch ends (or is interrupted).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bce3s import faults
from bce3s.engine.capture import CHECK_EVERY
from bce3s.engine.distributed import DistInfo, all_gather_cat, all_reduce_flag
from bce3s.engine.step import StepResult, StepRuntime, TrainBatch, train_step

__all__ = ["EpochResult", "predict", "train_one_epoch"]


@dataclass
class EpochResult:
    """Running sums of one epoch (kept in mid-epoch checkpoints so a resumed epoch reports the same means).

    ``loss_sum`` and ``term_sums`` are float64 tensors on the training device while the epoch runs (no host sync
    per step); :meth:`means` and :meth:`state_dict` read them.
    """

    loss_sum: Tensor | float = 0.0
    term_sums: dict[str, Tensor | float] = field(default_factory=dict)
    steps: int = 0
    skipped: int | Tensor = 0
    images: int = 0
    time_s: float = 0.0
    stopped_at: int | None = None  # steps done when a stop request ended the epoch early

    def add(self, result: StepResult, world_size: int) -> None:
        """Count one step (its loss and terms only when it was applied)."""
        if isinstance(result.skipped, Tensor):  # a static step: its loss and terms are 0 when skipped
            self.skipped = result.skipped.long() + self.skipped
        elif result.skipped:
            self.skipped += 1
        if isinstance(result.skipped, Tensor) or not result.skipped:
            self.loss_sum = self.loss_sum + result.loss
            for name, value in result.terms.items():
                self.term_sums[name] = self.term_sums.get(name, 0.0) + value
        self.steps += 1
        self.images += result.images * world_size

    def means(self) -> tuple[float, dict[str, float]]:
        n = max(self.steps - int(self.skipped), 1)
        return float(self.loss_sum) / n, {k: float(v) / n for k, v in self.term_sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_sum": float(self.loss_sum),
            "term_sums": {k: float(v) for k, v in self.term_sums.items()},
            "steps": self.steps,
            "skipped": int(self.skipped),
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


def _iterate(source: Any, start_step: int) -> Iterator[tuple[Tensor, Tensor]]:
    if start_step and hasattr(source, "iter_from"):
        return iter(source.iter_from(start_step))
    it = iter(source)
    for _ in range(start_step):
        next(it)
    return it


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

    Each step takes a clean batch of ``source`` (and, when the stage mixes, one of ``mix_source``) and runs
    :func:`~bce3s.engine.step.train_step`. A stop request (signal) is honoured between steps on all ranks at once.

    Returns:
        The epoch's running sums; ``stopped_at`` is set when the epoch ended early.
    """
    res = partial if partial is not None else EpochResult()
    t_start = time.perf_counter() - res.time_s
    it = _iterate(source, start_step)
    mix_it = _iterate(mix_source, start_step) if (rt.mixing.enabled and mix_source is not None) else None
    step = start_step
    total = len(source)
    static = rt.static_step
    while step < total:
        try:
            x, y = next(it)
        except StopIteration:
            break
        x2, y2 = next(mix_it) if mix_it is not None else (None, None)
        batch = TrainBatch(x, y, x2, y2, epoch=epoch, step=step)
        res.add(train_step(rt, batch) if static is None else static(batch), rt.dist.world_size)
        step += 1
        if static is not None and step % CHECK_EVERY == 0:
            static.check(epoch)  # the device-side non-finite record, read every CHECK_EVERY steps
        if progress is not None:
            progress(1)
        faults.at_step(rt.stage_index, epoch, step, should_stop)  # test-only hook, no-op unless BCE3S_FAULT_INJECT
        if all_reduce_flag(should_stop(), rt.dist) and step < total:
            res.stopped_at = step
            break
    if static is not None:
        static.check(epoch)
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
) -> dict[str, Tensor]:
    """Logits (and optionally features) of every sample of an evaluation source, gathered from all ranks.

    With ``tta_flip`` the logits (and features) are the mean over the image and its horizontal flip
    (:func:`bce3s.data.transforms.flip_tta`).

    Returns:
        ``{"logits": (N, K), "labels": (N,), "features": (N, D)}`` as float32 / int64 CPU tensors.
    """
    from bce3s.data.transforms import flip_tta

    was_training = model.training
    model.eval()

    num_logits: list[int] = []

    def logits_and_features(x: Tensor) -> Tensor:  # (N, K + D): one tensor, so one TTA implementation serves both
        out = model(x)
        num_logits[:] = [out.logits.shape[1]]
        return torch.cat([out.logits.float(), out.features.float()], dim=1)

    logits, labels, feats = [], [], []
    ctx = torch.autocast(dist.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for x, y in source:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            both = flip_tta(logits_and_features, x) if tta_flip else logits_and_features(x)
        k = num_logits[0]
        logits.append(both[:, :k])
        labels.append(y)
        if with_features:
            feats.append(both[:, k:])
    model.train(was_training)
    device = dist.device
    lg_all = torch.cat(logits) if logits else torch.zeros(0, device=device)
    y_all = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    result = {"logits": all_gather_cat(lg_all, dist).cpu(), "labels": all_gather_cat(y_all, dist).cpu()}
    if with_features:
        result["features"] = all_gather_cat(torch.cat(feats), dist).cpu()
    return result
