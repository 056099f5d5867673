"""Checkpoint contents, the NaN guard on every write, and the resume policy.

Two kinds of checkpoint exist: ``kind: model`` (a stage's ``last``/``best_val`` weights and loss state, what
``bce3s eval`` reads) and ``kind: resume`` (``last.pt``: everything needed to continue bit for bit, mid-epoch
included). A checkpoint whose weights hold NaN/inf is never written: the previous one stays.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from bce3s.config import Config, config_to_dict
from bce3s.engine.checkpoint import load_checkpoint, save_checkpoint
from bce3s.engine.distributed import DistInfo, all_reduce_flag, barrier
from bce3s.errors import CheckpointError, NonFiniteError, program_name
from bce3s.rundir import RunDir

__all__ = [
    "RESUME_FREE",
    "checkpoint_position",
    "Checkpointer",
    "between_stages",
    "config_diff",
    "cpu_copy",
    "load_resume_state",
    "model_checkpoint",
    "model_state",
    "nonfinite_key",
]

# Keys that may differ between the config a run was started with and the one it is resumed with.
RESUME_FREE = (
    "runtime.device",
    "runtime.num_workers",
    "runtime.threads",
    "log.tensorboard",
    "runtime.pipeline",
    "runtime.nan_policy",  # changes nothing for finite steps; lets a run that hit a NaN continue with "skip"
)


def cpu_copy(obj: Any) -> Any:
    """A CPU copy of a (nested) state: tensors detached and cloned, containers copied."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model.state_dict()``."""
    return cpu_copy(dict(model.state_dict()))


def nonfinite_key(state: dict[str, Any] | None) -> str | None:
    """The first floating-point tensor of a model state that holds NaN/inf, or None."""
    for key, value in (state or {}).items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def model_checkpoint(
    model: nn.Module, loss_fn: nn.Module, *, stage_index: int, stage_name: str, epoch: int, num_classes: int
) -> dict[str, Any]:
    """A ``kind: model`` checkpoint: the weights and the loss state of a stage at the end of ``epoch``."""
    return {
        "kind": "model",
        "stage_index": stage_index,
        "stage_name": stage_name,
        "epoch": epoch,
        "model": model_state(model),
        "loss": cpu_copy(dict(loss_fn.state_dict())),
        "num_classes": num_classes,
    }


class Checkpointer:
    """Writes ``checkpoints/<name>.pt`` of a run (rank 0), refusing weights that hold NaN/inf on any rank."""

    def __init__(self, rd: RunDir, cfg: Config, dist: DistInfo) -> None:
        self.rd = rd
        self.dist = dist
        self._config = config_to_dict(cfg)
        self.last_saved: str | None = None  # where checkpoints/last.pt was last written by this process

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write ``checkpoints/<name>.pt`` with the run's config; every rank agrees on the NaN guard first."""
        bad = nonfinite_key(state.get("model"))
        if all_reduce_flag(bad is not None, self.dist):
            raise NonFiniteError(
                f"the model holds NaN/inf values ({bad or 'on another rank'}) at {checkpoint_position(state)}; "
                f"{name}.pt was not written. {self.last_good()}",
                term="weights",
            )
        if self.dist.is_main:
            save_checkpoint(self.rd.checkpoint(name), {"config": self._config, **state})
        barrier(self.dist)
        if name == "last":
            self.last_saved = checkpoint_position(state)

    def last_good(self) -> str:
        """Where the last good checkpoint is, and how to go on from it (for error messages)."""
        path = self.rd.checkpoint("last")
        if self.last_saved is None:
            return f"No checkpoint was written by this process ({path} is as it was)."
        return (
            f"Last good checkpoint: {path} ({self.last_saved}), not overwritten; lower the learning rate and train "
            f"again, or resume skipping such steps: {program_name()} train --resume --out {self.rd.root} "
            "--set runtime.nan_policy=skip"
        )


def checkpoint_position(state: dict[str, Any]) -> str:
    """Where a checkpoint state stands, with epochs counted from 1 as the training log counts them.

    A resume state (``last.pt``: ``epoch`` and ``step`` of the next step to run) reads "stage1 epoch 3 step 5"
    (5 steps of epoch 3 done), "stage1, end of epoch 2" (``step`` 0) or "start of stage1"; a model state (the
    weights at the end of epoch index ``epoch``) reads "stage1, end of epoch 3".
    """
    where = state.get("stage_name") or f"stage index {state.get('stage_index')}"
    epoch = state.get("epoch")
    if not isinstance(epoch, int):
        return str(where)
    if state.get("kind") == "model":  # the weights at the end of epoch index `epoch`
        return f"{where}, end of epoch {epoch + 1}"
    if not state.get("stage_name"):
        return f"start of stage index {state.get('stage_index')}"
    step = int(state.get("step") or 0)
    if step:
        return f"{where} epoch {epoch + 1} step {step}"
    return f"{where}, end of epoch {epoch}" if epoch else f"start of {where}"


def between_stages(
    next_index: int, model: nn.Module, best: dict[str, Any], history: list[dict[str, Any]], num_classes: int
) -> dict[str, Any]:
    """The ``last.pt`` written when a stage ends: the next stage (or the end) resumes from here."""
    return {
        "kind": "resume",
        "stage_index": next_index,
        "stage_name": None,
        "epoch": 0,
        "step": 0,
        "model": model_state(model),
        "best": copy.deepcopy(best),
        "history": copy.deepcopy(history),
        "num_classes": num_classes,
    }


def load_resume_state(rd: RunDir) -> dict[str, Any]:
    """``checkpoints/last.pt`` of a run to resume, with messages that say what to do when it is unusable."""
    path = rd.checkpoint("last")
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume {rd.root}: {path} not found (the run stopped before its first checkpoint); "
            "start it again with --overwrite"
        )
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume {rd.root}: {err}, or start the run again with --overwrite") from None


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: d}


def config_diff(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable differences ``key: a != b`` between two configs (keys in ``ignore`` skipped)."""
    fa, fb = _flatten(config_to_dict(a)), _flatten(config_to_dict(b))
    diffs = []
    for key in sorted(set(fa) | set(fb)):
        if key in ignore:
            continue
        va, vb = fa.get(key, "<unset>"), fb.get(key, "<unset>")
        if va != vb:
            diffs.append(f"{key}: {va!r} != {vb!r}")
    return diffs
