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

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "param_groups"]


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig) -> list[dict]:
    """Split trainable parameters into a decayed and (optionally) a no-decay group (norm weights and biases)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if cfg.no_decay_norm_bias and (p.ndim <= 1 or name.endswith(".bias")):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over the trainable parameters."""
    groups = param_groups(named_params, cfg)
    if not groups:
        raise ValueError("no trainable parameters")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


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
