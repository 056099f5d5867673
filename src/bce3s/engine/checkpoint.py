"""Atomic checkpoint files.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed over the old
one (``os.replace`` is atomic on POSIX), so a crash or ``SIGKILL`` during a write leaves the previous checkpoint
intact. Loading a missing or truncated file raises :class:`~bce3s.errors.CheckpointError`.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from bce3s.engine import faults
from bce3s.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "atomic_write_bytes", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(memoryview(data)[:half])
            faults.during_write(path)  # test-only fault injection point (no-op unless BCE3S_FAULT_INJECT is set)
            f.write(memoryview(data)[half:])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes the file owner-only; give it the mode open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


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
