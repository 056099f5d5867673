"""Distributed setup for ``torchrun``: a frozen :class:`DistInfo` and a few collective helpers.

The same command runs single-process or under ``torchrun --nproc_per_node=N``; ranks are read from the
``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` environment variables that torchrun sets. NCCL is used on CUDA,
gloo on CPU.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from bce3s.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "all_gather_cat",
    "all_reduce_flag",
    "barrier",
    "init_distributed",
    "resolve_device",
    "share_class_sets",
    "shutdown",
    "union_across_ranks",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a single process).
        local_rank: rank on this node.
        world_size: number of processes.
        device: the device this process computes on.
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """Turn ``auto | cpu | cuda | cuda:N`` into a device, refusing CUDA when there is none."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available here; use --device cpu (or auto)")
        if spec == "cuda":
            return torch.device(f"cuda:{local_rank}")
        index = int(spec.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        return torch.device(spec)
    raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


def init_distributed(device_spec: str) -> DistInfo:
    """Read torchrun's environment, pick the device and, when ``WORLD_SIZE > 1``, join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if (
            rank == 0
            and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0
            and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        ):
            log.warning(
                "torchrun --max-restarts with the rendezvous store shared with the workers: a restarted job can "
                "read the previous attempt's addresses and fail to connect (PyTorch issue 135712); launch torchrun "
                "with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment"
            )
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_cat(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``tensor`` (N_r, ...) from every rank in rank order; sizes may differ between ranks.

    Returns:
        (sum_r N_r, ...) on every rank.
    """
    if not info.distributed:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    max_n = int(max(int(s) for s in sizes))
    padded = tensor.new_zeros((max_n, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    out = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s)] for o, s in zip(out, sizes)], dim=0)


def all_reduce_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank (used to stop all ranks at the same step)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def union_across_ranks(mask: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """True where the bool tensor ``mask`` (e.g. (K,)) is True on any rank (all-reduce MAX; no host sync). A collective.

    For the mask of the classes present in each rank's rows, this is the mask of the classes of the global batch,
    the same as gathering every rank's labels and marking them.
    """
    if not info.distributed:
        return mask
    flags = mask.to(torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.bool()


def share_class_sets(loss_fn: torch.nn.Module, info: DistInfo) -> None:
    """Under DDP, make ``loss_fn``'s partial class sets come from the global batch (every rank the same set).

    Sets ``reduce_present`` of the loss's :class:`~bce3s.losses.partial.PartialClassSampler` (attribute
    ``sampler``; losses without one are left alone) to :func:`union_across_ranks`. Every rank holds the same
    sampler seed (derived from ``runtime.seed``), so all ranks draw the same set: the one a single process would
    draw from the whole batch.
    """
    sampler = getattr(loss_fn, "sampler", None)
    if info.distributed and sampler is not None and hasattr(sampler, "reduce_present"):
        sampler.reduce_present = functools.partial(union_across_ranks, info=info)
