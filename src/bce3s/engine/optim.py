"""Optimizers and per-epoch learning-rate schedules.

By default (``schedule_step: after_epoch``) the schedule advances **after** each epoch's steps: epoch 0 runs at
the base learning rate (after any warm-up), and the cosine reaches ``min_lr`` only after the last epoch.
``schedule_step: before_epoch`` reproduces the official code, which steps its scheduler before each epoch: every
epoch runs at the factor of the next one, so epoch 0 is already below the base lr and the last epoch runs at
``min_lr`` (0 in the official run).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from bce3s.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "make_plain", "make_static", "param_groups"]


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig) -> list[dict]:
    """Split trainable parameters into a decayed and (optionally) a no-decay group (norm weights and biases).

    With ``cfg.backbone_lr_mult != 1`` the parameters named ``backbone.*`` form their own groups with
    ``lr = cfg.lr * backbone_lr_mult`` after the other groups (so ``param_groups[0]`` keeps the base lr); the
    per-epoch schedule scales every group's lr by the same factor.
    """
    split = cfg.backbone_lr_mult != 1.0
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        no_decay = cfg.no_decay_norm_bias and (p.ndim <= 1 or name.endswith(".bias"))
        backbone = split and name.startswith("backbone.")
        buckets.setdefault((backbone, no_decay), []).append(p)
    groups = []
    for backbone in (False, True):
        extra = {"lr": cfg.lr * cfg.backbone_lr_mult} if backbone else {}
        for no_decay in (False, True):
            params = buckets.get((backbone, no_decay), [])
            if params:
                groups.append({"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay, **extra})
    return groups


def build_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]],
    cfg: OptimConfig,
    *,
    static: bool = False,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over the trainable parameters.

    ``static=True`` builds the form a captured step needs (see :func:`make_static`): the fused implementation
    (one kernel for all parameters, and a ``found_inf`` flag read on the device) with the learning rate in a
    device tensor. The updates are the same as the default's. ``capturable`` (with ``static``) lets AdamW's step be
    captured in a CUDA graph (SGD needs nothing more).
    """
    groups = param_groups(named_params, cfg)
    if not groups:
        raise ValueError("no trainable parameters")
    fused = {"fused": True} if static else {}
    if cfg.name == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, **fused
        )
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, **fused, **({"capturable": True} if static and capturable else {}))
    if static:
        make_static(opt)
    return opt


def make_static(optimizer: torch.optim.Optimizer) -> None:
    """Learning rates as device tensors and optimizer state allocated up front, for a captured step.

    A schedule then writes the new rate into the tensor in place (``LRScheduler`` fills tensor rates), so a CUDA
    graph replays with it; SGD momentum buffers start as zeros (equal to the first step's ``buf = grad`` with
    dampening 0) and AdamW's state as its own first-step zeros, so no step is a "first step" with a different
    code path and a skipped step (``found_inf``) leaves them defined. Call again after ``load_state_dict``
    (which restores plain-float rates).
    """
    for group in optimizer.param_groups:
        device = group["params"][0].device
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        elif group["lr"].device != device:
            group["lr"] = group["lr"].to(device)
        for p in group["params"]:
            state = optimizer.state[p]
            if isinstance(optimizer, torch.optim.SGD) and group["momentum"] > 0:
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif isinstance(optimizer, torch.optim.AdamW) and not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def make_plain(optimizer: torch.optim.Optimizer) -> None:
    """Tensor learning rates (from a checkpoint of a static optimizer) back to floats, for the eager step."""
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if isinstance(group.get(key), torch.Tensor):
                group[key] = float(group[key])


def lr_factor(epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr used during ``epoch`` (0-based) of a stage of ``epochs`` epochs.

    With ``cfg.schedule_step == "before_epoch"`` epoch ``e`` runs at the ``after_epoch`` factor of ``e + 1``.
    """
    if cfg.schedule_step == "before_epoch":
        epoch += 1
    warm = cfg.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    if cfg.scheduler == "constant":
        return 1.0
    span = max(epochs - warm, 1)
    t = (epoch - warm) / span
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per epoch, after the epoch's optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, epochs, cfg))
