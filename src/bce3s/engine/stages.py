"""One training stage: set it up, run its epochs (validation, selection, checkpoints), and close it.

A stage starts from the previous stage's ``init_from`` checkpoint (or from ``last.pt`` when resumed), optionally
re-initialises the classifier (cRT), trains the parameters its config leaves trainable, applies MaxNorm after each
epoch, validates and keeps ``<stage>_best_val.pt``, and at its end applies post-hoc logit adjustment and writes
``<stage>_last.pt`` and the ``last.pt`` the next stage resumes from.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bce3s.config import Config, StageConfig
from bce3s.engine import build
from bce3s.engine.capture import StaticStep
from bce3s.engine.checkpoint import load_checkpoint
from bce3s.engine.distributed import DistInfo, all_reduce_flag, share_class_sets
from bce3s.engine.evaluate import evaluate_split
from bce3s.engine.logger import EpochLogger
from bce3s.engine.loop import EpochResult, train_one_epoch
from bce3s.engine.optim import build_optimizer, build_scheduler, make_plain, make_static
from bce3s.engine.signals import StopFlag
from bce3s.engine.state import Checkpointer, between_stages, cpu_copy, model_checkpoint, model_state
from bce3s.engine.step import StepRuntime
from bce3s.errors import Interrupted, NonFiniteError, program_name
from bce3s.seeding import derive_seed

__all__ = ["RunContext", "run_stage"]

log = logging.getLogger("bce3s.engine")


@dataclass
class RunContext:
    """What the stages of one run share (one per process).

    Attributes:
        cfg: the run's config.
        data: the :class:`~bce3s.data.DataSplits`.
        dist: this process's place in the job.
        model: the classifier (unwrapped), on its device.
        ckpt: the checkpoint writer.
        logger: the epoch history and its outputs.
        stop: the signal flag polled between steps.
        best: stage name -> ``{"stage", "epoch", "metric", "value"}`` of its best validation epoch.
        losses: stage name -> the stage's loss module (state as at the stage's end).
    """

    cfg: Config
    data: Any
    dist: DistInfo
    model: nn.Module
    ckpt: Checkpointer
    logger: EpochLogger
    stop: StopFlag
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    losses: dict[str, nn.Module] = field(default_factory=dict)


@dataclass
class _Stage:
    """The built objects of one stage."""

    index: int
    cfg: StageConfig
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    maxnorm: Any
    rt: StepRuntime
    source: Any
    mix_source: Any


def _set_trainable(model: nn.Module, stage: StageConfig, needs_emb: bool, frozen_stages: int = 0) -> None:
    freeze = stage.freeze_backbone
    for p in model.backbone.parameters():
        p.requires_grad_(not freeze)
    if frozen_stages and not freeze:
        from bce3s.models.pretrained import freeze_stages

        freeze_stages(model.backbone, frozen_stages)
    if getattr(model, "projector", None) is not None:
        for p in model.projector.parameters():
            p.requires_grad_(needs_emb and not freeze)
    for p in model.head.parameters():
        p.requires_grad_(True)


def _set_mode(model: nn.Module, stage: StageConfig, frozen_stages: int = 0) -> None:
    model.train()
    if stage.freeze_backbone and stage.bn_mode == "eval":
        model.backbone.eval()
    elif frozen_stages and not stage.freeze_backbone:  # frozen stages keep their BatchNorm statistics
        from bce3s.models.pretrained import backbone_stages

        for module in backbone_stages(model.backbone)[:frozen_stages]:
            module.eval()


def _init_weights(ctx: RunContext, si: int) -> None:
    """A fresh stage (not resumed): the previous stage's ``init_from`` weights, then an optional head reset."""
    stage, model = ctx.cfg.stages[si], ctx.model
    if si > 0:
        src = f"{ctx.cfg.stages[si - 1].name}_{stage.init_from}"
        model.load_state_dict(load_checkpoint(ctx.ckpt.rd.checkpoint(src))["model"])
        log.info("stage %s starts from %s.pt", stage.name, src)
    if stage.reset_head:
        seed = derive_seed(ctx.cfg.runtime.seed, "reset-head", si) % (2**31)
        model.reset_head(generator=torch.Generator(device=model.head.weight.device).manual_seed(seed))


class StepCap:
    """A training batch source cut to its first ``max_steps`` batches per epoch (``runtime.max_steps``).

    The epoch loop runs ``len(source)`` steps and resumes mid-epoch with ``iter_from(step)``, so capping the length
    and the iterators is all a smoke run needs; the mixing source runs in lockstep and needs no cap. Everything
    else (``set_epoch``, ...) is the wrapped source's.
    """

    def __init__(self, source: Any, max_steps: int) -> None:
        self.source = source
        self.max_steps = max_steps

    def __len__(self) -> int:
        return min(len(self.source), self.max_steps)

    def __iter__(self) -> Any:
        return itertools.islice(iter(self.source), len(self))

    def iter_from(self, step: int) -> Any:
        """The batches from ``step`` to the cap (resume in the middle of an epoch)."""
        if hasattr(self.source, "iter_from"):
            return itertools.islice(iter(self.source.iter_from(step)), max(len(self) - step, 0))
        return itertools.islice(iter(self.source), step, len(self))

    def __getattr__(self, name: str) -> Any:
        if name == "source":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)


def _wrap(ctx: RunContext, needs_emb: bool) -> nn.Module:
    """The module the steps call: DDP-wrapped under torchrun, compiled when asked."""
    run_model: nn.Module = ctx.model
    d = ctx.dist
    if d.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # the projector is unused while a loss's embedding term is off (BCE3S before contrastive_start_epoch);
        # DDP must then be told, or it fails at the second step. Globally unused parameters keep grad None,
        # as in a single process, so nothing (not even weight decay) updates them.
        run_model = DDP(
            ctx.model,
            device_ids=[d.device.index] if d.device.type == "cuda" else None,
            find_unused_parameters=needs_emb,
        )
    if ctx.cfg.model.compile:
        run_model = torch.compile(run_model)
    return run_model


def _setup(ctx: RunContext, si: int, resume: dict[str, Any] | None) -> _Stage:
    cfg, d, model = ctx.cfg, ctx.dist, ctx.model
    stage = cfg.stages[si]
    if resume is None:
        _init_weights(ctx, si)
    loss_fn = build.build_stage_loss(cfg, si, ctx.data.num_classes, ctx.data.train_counts).to(d.device)
    share_class_sets(loss_fn, d)  # under DDP: partial class sets from the global batch, the same on every rank
    ctx.losses[stage.name] = loss_fn
    needs_emb = "embeddings" in getattr(loss_fn, "needs", frozenset())
    _set_trainable(model, stage, needs_emb, cfg.model.freeze_stages)
    if stage.freeze_backbone:
        named = [(f"head.{n}", p) for n, p in model.head.named_parameters()]
    else:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    mode = build.step_mode(cfg, d)
    static = mode != "eager"
    optimizer = build_optimizer(named, stage.optim, static=static, capturable=mode == "graphed")
    scheduler = build_scheduler(optimizer, stage.optim, stage.epochs)
    amp = build.amp_dtype(cfg, d.device)
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp == torch.float16)
    maxnorm = None
    if resume is not None:
        model.load_state_dict(resume["model"])
        loss_fn.load_state_dict(resume["loss"])
        optimizer.load_state_dict(resume["optimizer"])
        (make_static if static else make_plain)(optimizer)  # the checkpoint may come from the other kind of step
        scheduler.load_state_dict(resume["scheduler"])
        scheduler.base_lrs = [float(b) for b in scheduler.base_lrs]
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        maxnorm = resume.get("maxnorm")
    if stage.max_norm is not None and maxnorm is None:
        from bce3s.models import max_norm_threshold

        maxnorm = max_norm_threshold(model.head.weight.detach(), stage.max_norm)
    rt = StepRuntime(
        model=_wrap(ctx, needs_emb),
        raw_model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scaler=scaler,
        dist=d,
        num_classes=ctx.data.num_classes,
        mixing=stage.mixing,
        amp_dtype=amp,
        channels_last=cfg.model.channels_last,
        grad_clip=stage.optim.grad_clip,
        nan_policy=cfg.runtime.nan_policy,
        seed=cfg.runtime.seed,
        stage_index=si,
    )
    if static:
        rt.static_step = StaticStep(rt, mode)
    source, mix_source = build.train_sources(cfg, ctx.data, si, d)
    if cfg.runtime.max_steps is not None and cfg.runtime.max_steps < len(source):
        source = StepCap(source, cfg.runtime.max_steps)
    return _Stage(si, stage, loss_fn, optimizer, scheduler, scaler, maxnorm, rt, source, mix_source)


def _resume_state(ctx: RunContext, st: _Stage, epoch: int, step: int, part: EpochResult | None) -> dict[str, Any]:
    """The ``last.pt`` of a stage in progress: continue at ``(epoch, step)`` with the epoch's running sums."""
    return {
        "kind": "resume",
        "stage_index": st.index,
        "stage_name": st.cfg.name,
        "epoch": epoch,
        "step": step,
        "partial": part.state_dict() if part is not None else None,
        "model": model_state(ctx.model),
        "loss": cpu_copy(dict(st.loss_fn.state_dict())),
        "optimizer": st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(),
        "scaler": st.scaler.state_dict() if st.scaler.is_enabled() else None,
        "maxnorm": st.maxnorm,
        "best": copy.deepcopy(ctx.best),
        "history": copy.deepcopy(ctx.logger.history),
        "num_classes": ctx.data.num_classes,
    }


def _model_ckpt(ctx: RunContext, st: _Stage, epoch: int) -> dict[str, Any]:
    return model_checkpoint(
        ctx.model,
        st.loss_fn,
        stage_index=st.index,
        stage_name=st.cfg.name,
        epoch=epoch,
        num_classes=ctx.data.num_classes,
    )


def _train_epoch(ctx: RunContext, st: _Stage, epoch: int, start_step: int, partial: EpochResult | None) -> EpochResult:
    """The steps of one epoch; a NaN stop names the last good checkpoint, a signal saves ``last.pt`` and raises."""
    stage = st.cfg
    st.loss_fn.set_epoch(epoch)
    st.source.set_epoch(epoch)
    if st.mix_source is not None:
        st.mix_source.set_epoch(epoch)
    _set_mode(ctx.model, stage, ctx.cfg.model.freeze_stages)
    bar = ctx.logger.progress(len(st.source), start_step, f"{stage.name} {epoch + 1}/{stage.epochs}")
    try:
        res = train_one_epoch(
            st.rt,
            st.source,
            st.mix_source,
            epoch=epoch,
            start_step=start_step,
            partial=partial,
            should_stop=ctx.stop,
            progress=bar.update if bar is not None else None,
        )
    except NonFiniteError as err:
        what = "gradient" if err.term == "gradient" else "loss"
        raise NonFiniteError(
            f"non-finite {what} (term: {err.term}) at stage {stage.name} epoch {err.epoch + 1} step {err.step + 1} "
            f"(runtime.nan_policy: stop). {ctx.ckpt.last_good()}",
            stage_index=st.index,
            epoch=err.epoch,
            step=err.step,
            term=err.term,
        ) from None
    finally:
        if bar is not None:
            bar.close()
    if res.stopped_at is not None:
        ctx.ckpt.save("last", _resume_state(ctx, st, epoch, res.stopped_at, res))
        raise Interrupted(
            f"interrupted by {ctx.stop.name} at stage {stage.name} epoch {epoch + 1} step {res.stopped_at}; last.pt "
            f"saved. Resume with: {program_name()} train --resume --out {ctx.ckpt.rd.root}"
        )
    return res


def _validate(ctx: RunContext, st: _Stage, epoch: int) -> dict[str, Any] | None:
    """Validation metrics of an epoch (when due), keeping ``<stage>_best_val.pt`` on a new best."""
    stage, val_split = st.cfg, ctx.data.val
    if val_split is None or not ((epoch + 1) % stage.val_every == 0 or epoch + 1 == stage.epochs):
        return None
    full = evaluate_split(ctx.cfg, ctx.data, ctx.model, val_split, ctx.dist)
    metric = ctx.cfg.eval.select_metric
    value = full.get(metric)
    best = ctx.best.get(stage.name)
    if value is not None and (best is None or value > best["value"]):
        ctx.best[stage.name] = {"stage": stage.name, "epoch": epoch, "metric": metric, "value": value}
        ctx.ckpt.save(f"{stage.name}_best_val", _model_ckpt(ctx, st, epoch))
    return {k: full.get(k) for k in ("top1", "mean_per_class", "many", "medium", "few")}


def _end_epoch(ctx: RunContext, st: _Stage, epoch: int, lr: float, res: EpochResult) -> None:
    """Schedule, MaxNorm, validation and selection, the epoch record, and ``last.pt``."""
    st.scheduler.step()
    if st.maxnorm is not None:
        from bce3s.models import apply_max_norm

        with torch.no_grad():
            apply_max_norm(ctx.model.head.weight, st.maxnorm)
    val = _validate(ctx, st, epoch)
    loss_mean, terms = res.means()
    offset = sum(s.epochs for s in ctx.cfg.stages[: st.index])
    rec = {
        "stage": st.cfg.name,
        "epoch": epoch,
        "global_epoch": offset + epoch,
        "lr": lr,
        "loss": loss_mean,
        "terms": terms,
        "skipped_steps": int(res.skipped),
        "val": val,
        "time_s": res.time_s,
        "images_per_s": res.images / res.time_s if res.time_s > 0 else None,
    }
    ctx.logger.epoch(rec, st.cfg.epochs)
    ctx.ckpt.save("last", _resume_state(ctx, st, epoch + 1, 0, None))


def _end_stage(ctx: RunContext, st: _Stage) -> None:
    """Post-hoc logit adjustment, the stage's checkpoints, and the ``last.pt`` the next stage starts from."""
    stage, model = st.cfg, ctx.model
    if stage.logit_adjust_tau is not None:
        model.set_logit_adjustment(ctx.data.train_counts, stage.logit_adjust_tau)
        if stage.name in ctx.best:  # best_val was written during the epochs: it gets the same adjustment
            _adjust_saved(ctx, f"{stage.name}_best_val", model.logit_bias)
    ctx.ckpt.save(f"{stage.name}_last", _model_ckpt(ctx, st, stage.epochs - 1))
    if stage.name not in ctx.best:  # no validation split: best_val falls back to last, and says so
        ctx.best[stage.name] = {"stage": stage.name, "epoch": stage.epochs - 1, "metric": None, "value": None}
        ctx.ckpt.save(f"{stage.name}_best_val", _model_ckpt(ctx, st, stage.epochs - 1))
    ctx.ckpt.save("last", between_stages(st.index + 1, model, ctx.best, ctx.logger.history, ctx.data.num_classes))


def _adjust_saved(ctx: RunContext, name: str, logit_bias: torch.Tensor) -> None:
    """Rewrite the saved checkpoint ``name`` with the post-hoc logit adjustment ``logit_bias`` (K,)."""
    state = load_checkpoint(ctx.ckpt.rd.checkpoint(name))
    state["model"]["logit_bias"] = logit_bias.detach().cpu().clone()
    ctx.ckpt.save(name, {k: v for k, v in state.items() if k not in ("format", "config")})


def run_stage(ctx: RunContext, si: int, resume: dict[str, Any] | None) -> None:
    """Run stage ``si`` to its end, from its start or from a mid-stage ``resume`` state (``last.pt``).

    Raises:
        Interrupted: a signal stopped the stage (``last.pt`` holds the exact position).
        NonFiniteError: a non-finite loss or gradient under ``nan_policy: stop``.
    """
    st = _setup(ctx, si, resume)
    start_epoch, start_step, partial = 0, 0, None
    if resume is None:
        ctx.ckpt.save("last", _resume_state(ctx, st, 0, 0, None))
    else:
        start_epoch, start_step = int(resume["epoch"]), int(resume["step"])
        partial = EpochResult.from_state(resume.get("partial"))
    for epoch in range(start_epoch, st.cfg.epochs):
        lr = float(st.optimizer.param_groups[0]["lr"])
        res = _train_epoch(ctx, st, epoch, start_step, partial)
        start_step, partial = 0, None
        _end_epoch(ctx, st, epoch, lr, res)
        if all_reduce_flag(ctx.stop(), ctx.dist):  # a stop requested during the epoch's last step
            raise Interrupted(
                f"interrupted by {ctx.stop.name} at stage {st.cfg.name} after epoch {epoch + 1}; last.pt saved. "
                f"Resume with: {program_name()} train --resume --out {ctx.ckpt.rd.root}"
            )
    _end_stage(ctx, st)
