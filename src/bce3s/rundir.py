"""The run directory: what a training run writes, and the checks that keep it from clobbering another run.

Layout (see docs/design.md)::

    RUN_DIR/config.yaml  run.json  data.json  metrics.jsonl  final.json  checkpoints/*.pt  eval_*.json

Every file is written atomically (temp file + rename); ``metrics.jsonl`` is rewritten whole from the history
kept in the checkpoint, so a crash never leaves it with lines for epochs that the checkpoint does not hold.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from bce3s import faults
from bce3s.errors import RunDirError

__all__ = [
    "RunDir",
    "atomic_write_bytes",
    "check_writable",
    "json_clean",
    "write_json",
]


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


def json_clean(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(json_clean(obj), indent=2) + "\n").encode())


def check_writable(path: Path) -> None:
    """Raise :class:`RunDirError` unless a file can be created in ``path``.

    Directories created for the test are removed again, so a run that fails later checks (data, batch size)
    leaves nothing behind; the trainer creates the directory when it writes the run's first file.
    """
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise RunDirError(f"output directory {path} is not writable ({err.strerror}); choose another --out") from None
    finally:
        for p in created:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def data_json(self) -> Path:
        return self.root / "data.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def final(self) -> Path:
        return self.root / "final.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / f"{name}.pt"

    def is_run(self) -> bool:
        return self.config.is_file() and self.run_json.is_file()

    def require_run(self) -> None:
        """Raise :class:`RunDirError` unless this directory holds a bce3s run."""
        if not self.root.is_dir():
            raise RunDirError(f"run directory not found: {self.root}")
        if not self.is_run():
            raise RunDirError(
                f"{self.root} is not a bce3s run directory (no config.yaml/run.json); "
                "give a directory made by 'bce3s train'"
            )

    def read_run_info(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_json.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(f"cannot read {self.run_json} ({err}); the run directory is damaged") from None

    def write_run_info(self, info: dict[str, Any]) -> None:
        write_json(self.run_json, info)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(json_clean(rec)) + "\n" for rec in history)
        atomic_write_bytes(self.metrics, text.encode())

    def write_text(self, path: Path, text: str) -> None:
        atomic_write_bytes(path, text.encode())
