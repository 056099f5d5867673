"""Atomic checkpoint files.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed over the old
one (``os.replace`` is atomic on POSIX), so a crash or ``SIGKILL`` during a write leaves the previous checkpoint
intact. Loading a missing or truncated file raises :class:`~bce3s.errors.CheckpointError`.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from bce3s.errors import CheckpointError
from bce3s.rundir import atomic_write_bytes

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialize ``state`` (tensors, numbers, strings, lists, dicts) with ``torch.save`` and write it atomically."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or not a bce3s checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (was the run started? train first, or pick another run)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = first.split(". ")[0].rstrip(".")  # torch appends advice about miniz internals
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({first[:120]}); it was damaged after it was written "
            "(bce3s writes checkpoints atomically): restore it from a copy or re-create it"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a bce3s checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state
