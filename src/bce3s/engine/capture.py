"""The training step without host synchronisation, run eagerly, captured as a CUDA graph, or compiled.

:func:`bce3s.engine.step.train_step` is the reference step: readable, and it checks finiteness on the host before
the optimizer may step (one synchronisation per step). On a GPU a small model's step is then bound by kernel
launches and that wait, not by arithmetic. :class:`StaticStep` runs the same step as a fixed sequence of device
work:

- the mixing draws (lambda, CutMix box) are made on the host from the same per-step generator as the reference
  and passed in small device tensors (:func:`bce3s.data.mixing.glmc_mix_at` builds the views from them, bit for
  bit the reference's views);
- the loss draws its partial class sets from a device buffer refilled before each step
  (:meth:`bce3s.losses.Loss.make_static`), and its epoch switch is a device flag;
- the learning rate is a device tensor that the schedule updates in place, and the optimizer is the fused one,
  which skips its update on the device when ``found_inf`` is set (a non-finite loss or gradient);
- the class memory update and, under ``nan_policy: skip``, the BatchNorm statistics are kept or rolled back on
  the device by the same flag;
- loss, terms and the skip flag stay on the device; the loop adds them up and reads them once per epoch.

Modes (``runtime.step``):

- ``static``: that sequence, executed eagerly (any device; it is what the other two run).
- ``graphed``: after ``WARMUP_STEPS`` eager steps of one batch shape (on the side stream the capture then uses),
  the whole step (forward, loss, backward, clipping, optimizer, memory update) is captured once as a CUDA graph and
  replayed for every later step of that shape in the stage (single-process CUDA). While the contrastive term is
  off (BCE3S's first epoch) the step also rolls back the projector's update; when the term starts, the step is
  captured once more without that work. A batch of another shape (the
  last, smaller batch of an epoch) runs eagerly. If the capture fails (an operation CUDA cannot capture), the step
  it was capturing and all later ones run eagerly, with a warning and the reason in ``capture_error``.
- ``compiled``: the forward and the loss go through ``torch.compile`` (``reduce-overhead`` on CUDA, which
  graphs the compiled forward and backward); the optimizer is the fused one.

Non-finite steps are recorded on the device (first step and the term that failed) and checked every
``CHECK_EVERY`` steps and at the end of the epoch: under ``nan_policy: stop`` the run then stops with the same
:class:`~bce3s.errors.NonFiniteError` as the reference (no update of that step was applied; later steps of the
window were, and the run resumes from the last epoch checkpoint). Under ``skip`` such steps are dropped as in the
reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bce3s.data.mixing import draw_mix, glmc_mix_at, mix_params
from bce3s.engine.distributed import union_across_ranks
from bce3s.engine.step import StepResult, StepRuntime, TrainBatch, forward_loss, non_finite_error, update_memory
from bce3s.seeding import make_generator

__all__ = ["CHECK_EVERY", "STATIC_MODES", "WARMUP_STEPS", "StaticStep"]

log = logging.getLogger("bce3s.engine")

#: The modes :class:`StaticStep` runs (``runtime.step`` also has ``eager``, the reference, and ``auto``).
STATIC_MODES = ("static", "graphed", "compiled")
#: Eager steps of a batch shape before the CUDA graph is captured at that shape (lazy initialisation: cuDNN
#: benchmarking, cuBLAS workspaces, autograd buffers must all happen outside the capture).
WARMUP_STEPS = 3
#: Steps between two reads of the non-finite record (one host synchronisation each).
CHECK_EVERY = 50


@dataclass
class _Inputs:
    """The device tensors one step reads (the graph's static buffers in ``graphed`` mode)."""

    images: Tensor  # (B, C, H, W)
    labels: Tensor  # (B,)
    mix_images: Tensor | None  # (B, C, H, W) or None
    mix_labels: Tensor | None  # (B,) or None
    lam: Tensor | None  # (2,) float32 [lam, 1 - lam]
    box: Tensor | None  # (4,) int64 CutMix box
    step: Tensor  # () int64 position in the epoch

    def tensors(self) -> list[Tensor]:
        return [t for t in vars(self).values() if t is not None]

    def signature(self) -> tuple:
        """The shapes (and which inputs are present): steps of one signature can replay one graph."""
        return tuple(None if t is None else tuple(t.shape) for t in vars(self).values())

    def copy_(self, other: _Inputs) -> None:
        for a, b in zip(self.tensors(), other.tensors()):
            a.copy_(b, non_blocking=True)


@dataclass
class _Outputs:
    loss: Tensor  # () float64, 0 when skipped
    terms: dict[str, Tensor]  # () float64 each, 0 when skipped
    skipped: Tensor  # () bool


class StaticStep:
    """A training step with no host synchronisation (see the module docstring).

    Args:
        rt: the stage's runtime; its optimizer must be static (``build_optimizer(..., static=True)``: fused, lr
            in a device tensor) and its loss is made static here.
        mode: ``static``, ``graphed`` or ``compiled``.
        backend: the ``torch.compile`` backend of ``compiled`` (``inductor``; tests use ``aot_eager``).

    Raises:
        ValueError: a mode this runtime cannot run (``graphed`` off CUDA or with several processes, fp16 with
            its loss scaler, a non-fused optimizer or one whose learning rates are not tensors).
    """

    def __init__(self, rt: StepRuntime, mode: str, *, backend: str = "inductor") -> None:
        if mode not in STATIC_MODES:
            raise ValueError(f"mode must be one of {STATIC_MODES}, got {mode!r}")
        device = rt.dist.device
        if mode == "graphed" and (device.type != "cuda" or rt.dist.world_size > 1):
            raise ValueError("graphed steps need one CUDA process (use static or compiled)")
        if rt.scaler.is_enabled():
            raise ValueError("fp16 with a loss scaler needs the eager step (use bf16, or runtime.step: eager)")
        if not all(g.get("fused") for g in rt.optimizer.param_groups):
            raise ValueError("a static step needs the fused optimizer (build_optimizer(..., static=True))")
        if not all(isinstance(g["lr"], Tensor) for g in rt.optimizer.param_groups):
            raise ValueError("a static step needs tensor learning rates (bce3s.engine.optim.make_static)")
        self.rt, self.mode, self.device = rt, mode, device
        # The learning-rate tensors the step (and a captured graph) reads; a schedule must write into them.
        self._lrs: list[Tensor] = [g["lr"] for g in rt.optimizer.param_groups]
        rt.loss_fn.make_static(device)
        # Parameters that get a gradient only from a term switched by a device flag (the projector, before the
        # contrastive term starts): the reference leaves them untouched while their gradient is None, so their
        # update (weight decay, momentum) is rolled back on the device while the flag is off. The host knows when
        # the flag is off (the loss's epoch), so steps gate only then (see _gating).
        flag = getattr(rt.loss_fn, "_active", None)
        projector = getattr(rt.raw_model, "projector", None)
        trainable = {id(p) for p in rt.params}
        self._gate = flag if isinstance(flag, Tensor) and projector is not None else None
        self._gated = [p for p in projector.parameters() if id(p) in trainable] if self._gate is not None else []
        self._graph_gating = False  # whether the captured graph gates the projector
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_term = torch.zeros((), dtype=torch.long, device=device)
        self._term_names: list[str] = []
        self._calls = 0
        self._graph: Any = None
        self._static_in: _Inputs | None = None
        self._static_out: _Outputs | None = None
        self._warm: dict[tuple, int] = {}  # eager steps run per input signature (graphed)
        #: Why capturing the CUDA graph failed (the step then runs eagerly), or None.
        self.capture_error: str | None = None
        # one side stream for the warm-up, the capture and the eager odd-shaped steps, so that per-stream lazy
        # state (cuBLAS workspaces, handles) is created before the capture, not during it
        self._stream: Any = torch.cuda.Stream(device) if mode == "graphed" else None
        self._forward = self._forward_loss
        if mode == "compiled":
            graphs = device.type == "cuda" and backend == "inductor"
            self._forward = torch.compile(
                self._forward_loss, backend=backend, mode="reduce-overhead" if graphs else None, dynamic=False
            )

    # -- host side -------------------------------------------------------------------------------------------

    def _inputs(self, batch: TrainBatch) -> _Inputs:
        rt = self.rt
        lam = box = None
        mixing = rt.mixing.enabled and batch.mix_images is not None
        if mixing:
            b = batch.images.shape[0]
            gen = make_generator(rt.seed, "mix", rt.stage_index, batch.epoch, batch.step)
            height, width = batch.images.shape[2], batch.images.shape[3]
            lam_t, box_t = mix_params(*draw_mix(rt.mixing.alpha, height, width, gen))
            pin = self.device.type == "cuda"
            lam = (lam_t.pin_memory() if pin else lam_t).to(self.device, non_blocking=True)
            box = (box_t.pin_memory() if pin else box_t).to(self.device, non_blocking=True)
        step = torch.tensor(batch.step, dtype=torch.long)
        step = (step.pin_memory() if self.device.type == "cuda" else step).to(self.device, non_blocking=True)
        return _Inputs(
            images=batch.images,
            labels=batch.labels,
            mix_images=batch.mix_images[:b].to(batch.images.device) if mixing else None,
            mix_labels=batch.mix_labels[:b].to(batch.labels.device) if mixing else None,
            lam=lam,
            box=box,
            step=step,
        )

    def __call__(self, batch: TrainBatch) -> StepResult:
        """Run one step; the result's loss, terms and ``skipped`` are device tensors."""
        inputs = self._inputs(batch)
        self._keep_lr_tensors()
        self.rt.loss_fn.prepare_step()
        if self.mode == "graphed":
            out = self._graphed(inputs)
        else:
            self.rt.optimizer.zero_grad(set_to_none=True)
            out = self._body(inputs)
        self._calls += 1
        views = 3 if inputs.lam is not None else 1
        return StepResult(loss=out.loss, terms=out.terms, skipped=out.skipped, images=views * inputs.images.shape[0])

    def _keep_lr_tensors(self) -> None:
        """Keep the learning rates in the tensors the step reads (a captured graph holds their addresses).

        A schedule that fills tensor rates in place (``LRScheduler`` does) leaves nothing to do here; one that
        rebinds ``group["lr"]`` (a float, or a new tensor) would be ignored by a replayed graph, so its value is
        copied into the original tensor, which is put back.
        """
        for group, lr in zip(self.rt.optimizer.param_groups, self._lrs):
            value = group["lr"]
            if value is lr:
                continue
            with torch.no_grad():
                if isinstance(value, Tensor):
                    lr.copy_(value.detach().reshape(lr.shape))
                else:
                    lr.fill_(float(value))
            group["lr"] = lr

    def _gating(self) -> bool:
        """Whether this step must roll back the projector's update: only while the contrastive term is off.

        Read on the host (the loss's epoch, set by ``set_epoch`` like the device flag), so a step while the term is
        on launches none of the gate's copies.
        """
        return self._gate is not None and not getattr(self.rt.loss_fn, "contrastive_active", False)

    def _graphed(self, inputs: _Inputs) -> _Outputs:
        if self._graph is not None and self._graph_gating != self._gating():
            # the step's work changed (once per stage, when the contrastive term starts): capture it anew at the
            # next full batch (its shapes are warm already)
            self._graph = self._static_in = self._static_out = None
        signature = inputs.signature()
        if self._graph is not None and self._static_in is not None and self._static_in.signature() == signature:
            self._static_in.copy_(inputs)
            self._graph.replay()
            assert self._static_out is not None
            return self._static_out
        if self._graph is None and self.capture_error is None and self._warm.get(signature, 0) >= WARMUP_STEPS:
            out = self._capture(inputs)
            if out is not None:
                return out
        # warm-up, odd-shaped batches, and the eager fallback: on the side stream, as the CUDA-graph recipe asks
        self._warm[signature] = self._warm.get(signature, 0) + 1
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            self.rt.optimizer.zero_grad(set_to_none=True)
            out = self._body(inputs)
        current.wait_stream(self._stream)
        return out

    def _capture(self, inputs: _Inputs) -> _Outputs | None:
        """Capture the step at ``inputs``' shapes and replay it once; None (and ``capture_error``) if it failed.

        A failed capture executed nothing (capturing only records work), so the caller runs the same step eagerly.
        """
        static = _Inputs(**{k: (v.clone() if v is not None else None) for k, v in vars(inputs).items()})
        # backward then allocates the gradients from the graph's pool, and every replay rewrites them
        self.rt.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: CUDA calls of other threads (a DataLoader's pin-memory thread) do not break the capture
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                out = self._body(static)
        except RuntimeError as err:
            lines = str(err).strip().splitlines()
            self.capture_error = f"{type(err).__name__}: {lines[0] if lines else ''}"
            log.warning(
                "capturing the training step as a CUDA graph failed (%s); stage %d continues with the same step "
                "run eagerly (runtime.step: static)",
                self.capture_error,
                self.rt.stage_index,
            )
            del graph
            self.rt.optimizer.zero_grad(set_to_none=True)  # gradients of the aborted capture hold no values
            return None
        self._graph, self._static_in, self._static_out = graph, static, out
        self._graph_gating = self._gating()
        graph.replay()  # capturing records the work; this replay does the step
        return out

    def check(self, epoch: int) -> None:
        """Read the non-finite record (a host sync); under ``nan_policy: stop`` raise for the first bad step.

        Raises:
            NonFiniteError: a step of this epoch had a non-finite loss or gradient and the policy is ``stop``.
        """
        rt = self.rt
        if rt.nan_policy != "stop":
            return
        step = int(self.bad_step)
        if step < 0:
            return
        names = [*self._term_names, "total", "gradient"]
        self.bad_step.fill_(-1)
        raise non_finite_error(rt, epoch, step, names[int(self.bad_term)])

    # -- device side: no host synchronisation below ----------------------------------------------------------

    def _forward_loss(self, inputs: _Inputs) -> tuple[Tensor, dict[str, Tensor], Tensor | None, Tensor | None]:
        """Mixing, forward and loss: (loss, terms, clean-view embeddings (B, P) or None, labels (B,))."""
        rt = self.rt
        x, target, view = inputs.images, inputs.labels, None
        if inputs.lam is not None:
            assert inputs.mix_images is not None and inputs.mix_labels is not None and inputs.box is not None
            x, target, view = glmc_mix_at(
                inputs.images,
                inputs.labels,
                inputs.mix_images,
                inputs.mix_labels,
                num_classes=rt.num_classes,
                lam=inputs.lam,
                box=inputs.box,
            )
        # no autocast weight cache: cached casts made during a CUDA graph capture would be stale on replay
        _, loss_out, embeddings = forward_loss(rt, x, target, view, autocast_cache=False)
        clean = embeddings[: inputs.images.shape[0]].detach() if embeddings is not None else None  # views: clean first
        return loss_out.loss, loss_out.terms, clean, inputs.labels

    def _body(self, inputs: _Inputs) -> _Outputs:
        rt = self.rt
        saved = [b.clone() for b in rt.buffers]
        memory = getattr(rt.loss_fn, "class_memory", None)
        loss, terms, clean, labels = self._forward(inputs)
        if memory is not None and clean is not None:
            old_memory, old_seen = memory.memory.clone(), memory.seen.clone()
        loss.backward()
        max_norm = rt.grad_clip if rt.grad_clip is not None else float("inf")
        grads_of = [p for p in rt.params if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(grads_of, max_norm, foreach=True)
        self._term_names = list(terms)
        # the terms, the loss and the gradient norm in one vector: one finiteness test for all of them
        checked = torch.stack([*(t.detach() for t in terms.values()), loss.detach(), grad_norm])
        # under DDP every rank must skip or apply the step alike (the reference all-reduces its host-side verdict):
        # a flag of one rank's own loss terms would otherwise leave the ranks' weights and memories apart
        bad_any = union_across_ranks(~torch.isfinite(checked), rt.dist)
        bad = bad_any.any()
        opt = rt.optimizer
        gated_params = self._gated if self._gating() else []
        gated = [(t, t.clone()) for p in gated_params for t in (p, *opt.state[p].values()) if isinstance(t, Tensor)]
        opt.grad_scale, opt.found_inf = None, bad.float().reshape(1)
        try:
            opt.step()
        finally:
            opt.found_inf = None
        with torch.no_grad():
            for t, old in gated:
                t.copy_(torch.where(self._gate, t, old))
            for buf, old in zip(rt.buffers, saved):
                buf.copy_(torch.where(bad, old, buf))
            if memory is not None and clean is not None:
                update_memory(rt, clean, None, labels)
                memory.memory.copy_(torch.where(bad, old_memory, memory.memory))
                memory.seen.copy_(torch.where(bad, old_seen, memory.seen))
            first = bad & (self.bad_step < 0)
            self.bad_step.copy_(torch.where(first, inputs.step, self.bad_step))
            self.bad_term.copy_(torch.where(first, bad_any.long().argmax(), self.bad_term))
            # the terms and the loss (float64, 0 when skipped) as views of one tensor
            out = checked[:-1].double().masked_fill(bad, 0.0)
            out_terms = {k: out[i] for i, k in enumerate(terms)}
        return _Outputs(out[len(terms)], out_terms, bad)
