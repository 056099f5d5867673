"""``bce3s predict``: classify image files with a trained run.

Inputs are files, folders (searched recursively; hidden files skipped) or glob patterns. Every file gets one
row: on success the predicted class, its probability and the top-k classes; a file that cannot be read as an
image gets a row with its reason instead, and the others are still predicted. Images are decoded with the
library's loader (:func:`bce3s.data.imageset.load_image_file`) in the run's mode (gray or RGB) and go through the
run's evaluation transform (:class:`~bce3s.inference.runmodel.RunModel`), in batches, with the run's autocast
dtype and memory format, exactly as ``bce3s eval`` evaluates a split.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bce3s.errors import ConfigError, DataError
from bce3s.inference.runmodel import RunModel, preprocess

__all__ = ["OUTPUT_FORMATS", "Prediction", "PredictResult", "collect_inputs", "predict_files", "write_predictions"]

OUTPUT_FORMATS = ("csv", "jsonl")
_GLOB_CHARS = frozenset("*?[")


@dataclass
class Prediction:
    """One input file's row.

    Attributes:
        path: the file.
        index: predicted class id (``None`` when the file failed).
        name: predicted class name.
        prob: probability of the predicted class (the run's kind: sigmoid or softmax).
        topk: ``[(class id, class name, probability), ...]``, most probable first.
        error: why the file could not be predicted (``None`` on success).
    """

    path: str
    index: int | None = None
    name: str | None = None
    prob: float | None = None
    topk: list[tuple[int, str, float]] = field(default_factory=list)
    error: str | None = None


@dataclass
class PredictResult:
    """All rows, in input order, plus what the probabilities are."""

    rows: list[Prediction]
    probability: str
    logit_adjusted: bool
    checkpoint: str

    @property
    def failed(self) -> list[Prediction]:
        return [r for r in self.rows if r.error is not None]


def collect_inputs(inputs: Iterable[str]) -> list[str]:
    """The files named by ``inputs`` (files, folders searched recursively, glob patterns), in order, unique.

    A name that matches nothing is kept (its row then says it was not found).
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        if path not in seen:
            seen.add(path)
            out.append(path)

    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = []
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [os.path.join(root, name) for name in files if not name.startswith(".")]
            for f in sorted(found):
                add(f)
        elif not p.exists() and _GLOB_CHARS & set(item):
            matches = sorted(glob.glob(str(p), recursive=True))
            for m in matches:
                for f in collect_inputs([m]) if Path(m).is_dir() else [m]:
                    add(f)
            if not matches:
                add(item)
        else:
            add(str(p))
    return out


def _decode(path: str, rm: RunModel, transform: Any) -> tuple[Tensor | None, str | None]:
    """(preprocessed image (C, S, S), None) or (None, reason)."""
    from bce3s.data.imageset import load_image_file

    if not os.path.exists(path):
        return None, "file not found"
    if os.path.isdir(path):
        return None, "a directory"
    try:
        image = load_image_file(path, rm.mode)
    except DataError as err:
        reason = str(err).split(f"{path}: ", 1)[-1].split(" (re-create", 1)[0]
        return None, f"not a readable image ({reason})"
    return preprocess(image, transform, rm.preset, rm.image_size), None


@torch.no_grad()
def predict_files(
    rm: RunModel,
    files: list[str],
    *,
    top_k: int = 5,
    batch_size: int | None = None,
    progress: Callable[[int], Any] | None = None,
    workers: int | None = None,
) -> PredictResult:
    """Predict every file of ``files`` with the run model ``rm``.

    Args:
        rm: from :func:`bce3s.inference.load_run_model`.
        files: image files (see :func:`collect_inputs`).
        top_k: classes listed per image (capped at K).
        batch_size: images per forward (default: the run's ``eval.batch_size``).
        progress: called with the number of files done after each batch (a progress bar's ``update``).
        workers: decoding threads (default ``min(8, cpu_count)``).

    Returns:
        One :class:`Prediction` per file, in order.
    """
    from bce3s.engine.build import amp_dtype

    if top_k < 1:
        raise ConfigError(f"--top-k: must be >= 1 (got {top_k})")
    batch_size = batch_size or rm.cfg.eval.batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1 (got {batch_size})")
    k = min(top_k, rm.num_classes)
    transform = rm.transform()
    dtype = amp_dtype(rm.cfg, rm.device, train=False)
    ctx = torch.autocast(rm.device.type, dtype=dtype) if dtype is not None else nullcontext()
    rows: list[Prediction] = []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded = list(pool.map(lambda f: _decode(f, rm, transform), chunk))
            good = [x for x, _ in decoded if x is not None]
            probs = None
            if good:
                x = torch.stack(good).to(rm.device)
                if rm.cfg.model.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with ctx:
                    logits = rm.model(x).logits
                probs = rm.probabilities(logits).cpu()
            j = 0
            for path, (x, reason) in zip(chunk, decoded):
                if x is None:
                    rows.append(Prediction(path, error=reason))
                    continue
                assert probs is not None
                p, idx = probs[j].topk(k)
                top = [(int(i), rm.class_names[int(i)], float(v)) for v, i in zip(p, idx)]
                rows.append(Prediction(path, top[0][0], top[0][1], top[0][2], top))
                j += 1
            if progress is not None:
                progress(len(chunk))
    return PredictResult(rows, rm.probability, rm.logit_adjusted, rm.checkpoint)


def output_format(path: str | None) -> str:
    """``csv`` or ``jsonl`` from a file name (``None`` = CSV on stdout)."""
    if path is None:
        return "csv"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in OUTPUT_FORMATS:
        raise ConfigError(f"--out: {path} must end in .csv or .jsonl")
    return suffix


def format_predictions(result: PredictResult, fmt: str, top_k: int) -> str:
    """The rows as CSV or JSON Lines text.

    CSV columns: ``path, pred_index, pred_class, prob, top1_class, top1_prob, ..., probability, error``; the
    ``probability`` column names the kind (``sigmoid`` or ``softmax``, ``+logit_adjusted`` when the run used
    post-hoc logit adjustment). JSONL: one object per file with the same content (``topk`` a list).
    """
    kind = result.probability + ("+logit_adjusted" if result.logit_adjusted else "")
    if fmt == "jsonl":
        lines = []
        for r in result.rows:
            obj: dict[str, Any] = {"path": r.path}
            if r.error is None:
                obj.update(pred_index=r.index, pred_class=r.name, prob=r.prob, probability=kind)
                obj["topk"] = [{"index": i, "class": n, "prob": p} for i, n, p in r.topk]
            else:
                obj["error"] = r.error
            lines.append(json.dumps(obj))
        return "".join(line + "\n" for line in lines)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    k = max((len(r.topk) for r in result.rows), default=min(top_k, 1))
    top_cols = [c for i in range(1, k + 1) for c in (f"top{i}_class", f"top{i}_prob")]
    w.writerow(["path", "pred_index", "pred_class", "prob", *top_cols, "probability", "error"])
    for r in result.rows:
        if r.error is None:
            top = [v for _, n, p in r.topk for v in (n, f"{p:.6g}")]
            w.writerow([r.path, r.index, r.name, f"{r.prob:.6g}", *top, kind, ""])
        else:
            w.writerow([r.path, "", "", "", *[""] * len(top_cols), "", r.error])
    return buf.getvalue()


def write_predictions(result: PredictResult, out: str | None, top_k: int) -> str:
    """Write the rows to ``out`` (format from its suffix), or return CSV text for stdout when ``out`` is None."""
    fmt = output_format(out)
    text = format_predictions(result, fmt, top_k)
    if out is not None:
        from bce3s.rundir import atomic_write_bytes

        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode())
    return text
