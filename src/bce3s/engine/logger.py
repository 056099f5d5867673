"""Per-epoch records: ``metrics.jsonl`` (rank 0, rewritten whole), TensorBoard scalars, the console line and the
progress bar."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from bce3s.rundir import RunDir

__all__ = ["EpochLogger"]

log = logging.getLogger("bce3s.engine")

_VAL_KEYS = ("top1", "mean_per_class", "many", "medium", "few")


class EpochLogger:
    """Keeps the epoch history of a run and writes it where it belongs.

    Args:
        rd: the run directory.
        is_main: this process writes files (rank 0).
        tensorboard: also write TensorBoard event files to ``RUN_DIR/tensorboard``.
        quiet: no progress bars.
        history: records of epochs already done (a resumed run).
    """

    def __init__(
        self, rd: RunDir, *, is_main: bool, tensorboard: bool, quiet: bool, history: list[dict[str, Any]] | None = None
    ) -> None:
        self.rd = rd
        self.is_main = is_main
        self.quiet = quiet
        self.history: list[dict[str, Any]] = list(history or [])
        self._tb: Any = None
        if is_main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(rd.root) / "tensorboard"))

    def rewrite(self) -> None:
        """Rewrite ``metrics.jsonl`` from the history (after a resume it must match the checkpoint)."""
        if self.is_main:
            self.rd.write_metrics(self.history)

    def epoch(self, rec: dict[str, Any], epochs: int) -> None:
        """Record one finished epoch: ``metrics.jsonl``, TensorBoard, and a console line."""
        self.history.append(rec)
        if not self.is_main:
            return
        self.rd.write_metrics(self.history)
        if self._tb is not None:
            self._tensorboard(rec)
        val = rec.get("val")
        vtxt = f" val {val['mean_per_class']:.2f}" if val and val.get("mean_per_class") is not None else ""
        log.info(
            "%s epoch %d/%d loss %.4f lr %.3g%s (%.1fs)",
            rec["stage"],
            rec["epoch"] + 1,
            epochs,
            rec["loss"],
            rec["lr"],
            vtxt,
            rec["time_s"],
        )

    def _tensorboard(self, rec: dict[str, Any]) -> None:
        g = rec["global_epoch"]
        self._tb.add_scalar("train/loss", rec["loss"], g)
        self._tb.add_scalar("train/lr", rec["lr"], g)
        for k, v in rec["terms"].items():
            self._tb.add_scalar(f"train/{k}", v, g)
        for k in _VAL_KEYS:
            if rec.get("val") and rec["val"].get(k) is not None:
                self._tb.add_scalar(f"val/{k}", rec["val"][k], g)
        self._tb.flush()

    def progress(self, total: int, initial: int, desc: str) -> Any:
        """A tqdm bar on an interactive stderr of rank 0, else None."""
        if not self.is_main or self.quiet or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
