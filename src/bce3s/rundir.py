"""The run directory: what a training run writes, and the checks that keep it from clobbering another run.

Layout (see docs/design.md)::

    RUN_DIR/config.yaml  run.json  data.json  metrics.jsonl  final.json  checkpoints/*.pt  eval_*.json

Every file is written atomically (temp file + rename); ``metrics.jsonl`` is rewritten whole from the history
kept in the checkpoint, so a crash never leaves it with lines for epochs that the checkpoint does not hold. A write
that fails because the disk is full raises :class:`~bce3s.errors.DiskFullError` (one line) and leaves the old file.
One process at a time writes a run: :func:`run_lock` holds an advisory lock on ``RUN_DIR/.lock`` while it trains.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import logging
import math
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bce3s import faults
from bce3s.errors import DiskFullError, RunDirError

__all__ = [
    "LOCK_NAME",
    "RunDir",
    "atomic_write_bytes",
    "check_writable",
    "json_clean",
    "run_lock",
    "write_json",
]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# errors that mean "no room": the filesystem is full, or the user's quota is spent
_DISK_FULL = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename).

    Raises:
        DiskFullError: the filesystem is full (or the quota spent); ``path`` is left as it was and the temporary
            file is removed.
    """
    path = Path(path)
    try:
        _write_replace(path, data)
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        what = (
            f"no space left for {path.parent} ({err.strerror}): writing {path.name} needed {len(data)} bytes; "
            f"{path.name} was left as it was"
        )
        raise DiskFullError(
            f"{what}; free some space (or raise the quota) and run again",
            folder=str(path.parent),
            needed=len(data),
            what=what,
        ) from err


def _write_replace(path: Path, data: bytes) -> None:
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
        raise _not_writable(path, err) from None
    finally:
        _remove_empty(created)


def _not_writable(path: Path, err: OSError) -> RunDirError:
    return RunDirError(f"output directory {path} is not writable ({err.strerror}); choose another --out")


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories of ``created`` (deepest first) while they are empty."""
    for p in created:
        try:
            p.rmdir()
        except OSError:
            break


def _lock_holder(fd: int) -> str:
    """Who holds the lock whose file is open as ``fd``, as written by :func:`run_lock` (best effort)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(info['pid'])} on {info.get('host', '?')}, since {info.get('since', '?')}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "pid unknown: it is starting"


def _acquire(path: Path) -> int | None:
    """Open and lock ``path``; the descriptor, or None where the filesystem cannot lock (then unlocked)."""
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            raise _not_writable(path.parent, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunDirError(
                f"{path.parent} is in use by another bce3s process ({holder}); wait for it to end (or stop it), "
                "then run this command again"
            ) from None
        except OSError as err:  # e.g. ENOLCK on some network filesystems
            os.close(fd)
            log.warning("cannot lock %s (%s); make sure no other process writes this run", path, err.strerror)
            return None
        try:  # the previous holder removes the file when it ends: lock the file that is there now
            st, fst = os.stat(path), os.fstat(fd)
            if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise RunDirError(f"cannot lock {path}: it keeps being replaced by another process; run this command again")


@contextmanager
def run_lock(root: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock on the run directory ``root`` for the duration of the ``with`` block.

    The lock is ``flock`` on ``root/.lock``, which holds the holder's pid, host and start time; the operating
    system releases it when the process ends, even by SIGKILL. A second process gets a :class:`RunDirError`
    naming the holder, before it writes anything. ``root`` is created if needed and removed again (with the
    parents this call created) if nothing but the lock was written to it. ``enabled=False`` (ranks other than 0
    under torchrun) does nothing.

    Raises:
        RunDirError: another process holds the lock, or ``root`` cannot be created.
    """
    if not enabled:
        yield
        return
    root = Path(root)
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_empty(created)
        raise _not_writable(root, err) from None
    path = root / LOCK_NAME
    try:
        fd = _acquire(path)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        if fd is not None:
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": _dt.datetime.now().isoformat(timespec="seconds"),
            }
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            except OSError:
                pass  # who holds it is only informative; the lock itself is held
        yield
    finally:
        if fd is not None:
            try:  # while still locked: a process that opened the old file re-checks which file it locked
                path.unlink(missing_ok=True)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for forked children (data loader workers) sharing the file
            os.close(fd)
        _remove_empty(created)


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
