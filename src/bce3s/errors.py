"""User-facing error types.

Every error a user can cause (a bad config value, a missing data root, a truncated checkpoint) is raised as a
:class:`BCE3SError` whose message is one line that says what was wrong and what to do. The CLI prints it as
``bce3s: error: <message>`` and exits with code 2; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class BCE3SError(Exception):
    """Base class of user-facing errors; ``str(err)`` is a single line."""


class ConfigError(BCE3SError, ValueError):
    """A config file, a ``--set`` override or a command-line option is invalid."""


class DataError(BCE3SError, ValueError):
    """A dataset root, split file, image or label is missing or malformed."""


class CheckpointError(BCE3SError, ValueError):
    """A checkpoint is missing, truncated or does not match the model or config."""


class RunDirError(BCE3SError, ValueError):
    """A run directory is missing, is not a run, or would be overwritten."""


class DiskFullError(RunDirError):
    """A write failed because the filesystem is full (``ENOSPC``) or the user's quota is spent (``EDQUOT``).

    The file being written was left as it was (writes are atomic). Attributes: ``folder`` (where the write went),
    ``needed`` (the size of the write in bytes) and ``what`` (the message without the advice, for callers that
    know better what to do next).
    """

    def __init__(self, message: str, *, folder: str, needed: int, what: str = "") -> None:
        super().__init__(message)
        self.folder, self.needed, self.what = folder, needed, what or message


class NonFiniteError(BCE3SError):
    """A loss, gradient or weight became NaN/inf (``runtime.nan_policy: stop``), or a checkpoint would hold one.

    The CLI exits with code 3.

    Attributes:
        stage_index, epoch, step: where it happened (``step`` = 0-based index of the step in the epoch).
        term: the first non-finite loss term, ``total``, ``gradient`` or ``weights``.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        stage_index: int | None = None,
        epoch: int | None = None,
        step: int | None = None,
        term: str | None = None,
    ) -> None:
        super().__init__(message)
        self.stage_index, self.epoch, self.step, self.term = stage_index, epoch, step, term


class Interrupted(BCE3SError):
    """Training stopped on SIGTERM/SIGINT after writing a consistent ``last.pt``; the CLI exits with code 130."""

    exit_code = 130


def program_name() -> str:
    """How to call bce3s again in a hint, as the user ran it.

    The console script as it was run (``bce3s`` when that is what ``bce3s`` on ``PATH`` finds, else the path
    typed, e.g. ``.venv/bin/bce3s``); ``python -m bce3s`` when the package was run as a module.
    """
    import os
    import shutil
    import sys

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name = os.path.basename(argv0)
    if name not in ("bce3s", "bce3s.exe"):
        return "python -m bce3s"
    on_path = shutil.which("bce3s")
    if on_path is not None and os.path.realpath(on_path) == os.path.realpath(argv0):
        return "bce3s"
    return argv0
