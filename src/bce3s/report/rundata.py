"""Reading run directories for the report and the comparison: one :class:`RunData` per run, no model loaded.

:func:`load_run` reads the files a run directory holds (their paths come from :class:`bce3s.rundir.RunDir`); the
required ones must parse, a missing or damaged optional one only adds a note to :attr:`RunData.notes`.

Files read (all written by the engine or ``bce3s eval``; JSON numbers that were NaN/inf are stored as ``null``):

``final.json`` (required)::

    {"run": {"name": str, "config_name": str | null (path of the config file used), "dataset": str,
             "loss": str (stage-1 loss name), "stages": [str], "seed": int, ...},
     "test": {"last": METRICS, "best_val": METRICS, "last_tta_flip": METRICS, "best_val_tta_flip": METRICS},
     "selection": {"best_val": {"stage": str, "epoch": int (0-based), "metric": str | null,
                                "value": float | null}, ...},
     "train_counts": [int], "class_names": [str], "versions": {...}, "git_commit": str | null,
     "device": str, "wall_time_s": float, ...}

  METRICS is the dict of :func:`bce3s.eval.metrics.summarize` (``top1``, ``top5``, ``mean_per_class``,
  ``many``, ``medium``, ``few`` and ``per_class`` in percent; ``ece``, ``nll``, ``brier``,
  ``calibration_by_shot``, ``num_samples``). The ``*_tta_flip`` rows may be absent.

``config.yaml`` (required): the resolved config.

``run.json`` (optional): ``{"status": "running|finished|interrupted|failed", "resumed_from": [...], ...}``.

``data.json`` (optional): the data record (counts, hashes of the split indices, ...).

``metrics.jsonl`` (optional): one object per epoch::

    {"stage": str, "epoch": int (0-based within the stage), "global_epoch": int, "lr": float, "loss": float,
     "terms": {name: float}, "val": {"top1", "mean_per_class", "many", "medium", "few"} | null,
     "time_s": float, "images_per_s": float}

``eval_<split>_<checkpoint>[_tta_flip].json`` (optional, from ``bce3s eval``)::

    {"split": "test" | "val", "checkpoint": "last" | "best_val", "tta": "none" | "flip",
     "metrics": METRICS, "geometry": GEOMETRY (optional), "confusion": [[int]] (K <= 100 only),
     "reliability": {"bin_edges": [B+1], "bin_acc": [B], "bin_conf": [B], "bin_count": [B]}}

  GEOMETRY is :func:`bce3s.eval.geometry.geometry_summary`: ``{"per_class": {metric: [K]}, "summary": {metric:
  {"all" | "many" | "medium" | "few": {"mean", "std", "num_classes"}}}, ...}`` with metric in
  ``compactness``, ``feature_separability``, ``classifier_separability``, ``feature_norm``, ``weight_norm``.
  Reliability bins are those of :func:`bce3s.eval.metrics.reliability_bins` (the ECE's bins); accuracies and
  confidences are fractions in [0, 1] (``null`` for empty bins).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bce3s.errors import RunDirError, program_name
from bce3s.rundir import RunDir

__all__ = ["CHECKPOINTS", "EVAL_PREFERENCE", "RunData", "load_run", "unique_labels"]

CHECKPOINTS = ("last", "best_val")
"""The checkpoints whose test results ``final.json`` holds, in table order."""

EVAL_PREFERENCE = (("test", "last"), ("test", "best_val"), ("val", "last"), ("val", "best_val"))
"""(split, checkpoint) of the ``eval_*.json`` files, most preferred first, for the diagnostics of the report."""

_EVAL_RE = re.compile(r"^eval_(?P<split>[a-z]+)_(?P<checkpoint>last|best_val)(?P<tta>_tta_flip)?\.json$")


@dataclass
class RunData:
    """Everything the report reads from one run directory.

    Attributes:
        path: the run directory.
        label: the name shown in tables and legends (unique within one report).
        final: ``final.json``.
        config: ``config.yaml`` as a plain dict.
        info: ``run.json`` or ``None``.
        data_record: ``data.json`` (or ``final.json["data"]``) or ``None``.
        history: records of ``metrics.jsonl`` (unreadable lines skipped).
        evals: ``eval_*.json`` contents keyed by ``(split, checkpoint, tta)``.
        eval_files: the file name of each entry of ``evals``.
        notes: what was missing or unreadable, one sentence each.
    """

    path: Path
    label: str
    final: dict[str, Any]
    config: dict[str, Any]
    info: dict[str, Any] | None = None
    data_record: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    eval_files: dict[tuple[str, str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def train_counts(self) -> list[int] | None:
        """``final.json["train_counts"]`` as ints, or ``None`` when missing or not a list of counts."""
        return _counts(self.final.get("train_counts"))

    @property
    def test_counts(self) -> list[int] | None:
        """Test images per class from ``data.json["counts"]["test"]``, or ``None`` when missing or malformed."""
        counts = (self.data_record or {}).get("counts")
        return _counts(counts.get("test")) if isinstance(counts, dict) else None

    @property
    def method(self) -> str:
        """The run's method for its colour: the first stage's loss (``final.json`` run.loss, else the config)."""
        run = self.final.get("run")
        loss = run.get("loss") if isinstance(run, dict) else None
        if not isinstance(loss, str) or not loss:
            stages = self.config.get("stages")
            first = stages[0] if isinstance(stages, list) and stages and isinstance(stages[0], dict) else {}
            spec = first.get("loss")
            loss = spec.get("name") if isinstance(spec, dict) else None
        return loss if isinstance(loss, str) and loss else self.label

    def test_metrics(self, checkpoint: str, tta: bool = False) -> dict[str, Any] | None:
        """``final.json["test"][checkpoint(+_tta_flip)]`` or ``None``."""
        test = self.final.get("test")
        if not isinstance(test, dict):
            return None
        row = test.get(f"{checkpoint}_tta_flip" if tta else checkpoint)
        return row if isinstance(row, dict) else None

    def best_eval(self) -> tuple[str, dict[str, Any]] | None:
        """The eval file the diagnostics use: test/last without TTA first, then the others; (file name, dict)."""
        for split, ckpt in EVAL_PREFERENCE:
            for tta in ("none", "flip"):
                if (split, ckpt, tta) in self.evals:
                    return self.eval_files[(split, ckpt, tta)], self.evals[(split, ckpt, tta)]
        for key, ev in self.evals.items():
            return self.eval_files[key], ev
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunDirError(
            f"{path} is not valid JSON (line {err.lineno}: {err.msg}); the file is damaged, re-create it"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"cannot read {path} ({err}); check the file's permissions") from None


def _check_run_dir(rd: RunDir) -> None:
    path = rd.root
    if not path.exists():
        raise RunDirError(f"run directory not found: {path} (give a directory written by 'bce3s train')")
    if not path.is_dir():
        raise RunDirError(f"{path} is a file, not a run directory (give a directory written by 'bce3s train')")
    missing = [file.name for file in (rd.final, rd.config) if not file.is_file()]
    if missing:
        hint = " (the run has not finished)" if missing == ["final.json"] and rd.run_json.is_file() else ""
        raise RunDirError(
            f"{path} is not a finished bce3s run: missing {' and '.join(missing)}{hint}; "
            "give a directory written by 'bce3s train'"
        )


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RunDirError(f"{path}:{where} is not valid YAML; the file is damaged") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"cannot read {path} ({err})") from None
    if not isinstance(config, dict):
        raise RunDirError(f"{path} does not hold a mapping; the file is damaged")
    return config


def _optional_object(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` (with a note when the file exists but is damaged) otherwise."""
    if not path.is_file():
        return None
    try:
        obj = _read_json(path)
    except RunDirError as err:
        notes.append(str(err))
        return None
    return obj if isinstance(obj, dict) else None


def _read_history(run: RunData, path: Path) -> None:
    """Append the epochs of ``metrics.jsonl`` to ``run.history`` (lines cut off mid-write are skipped)."""
    if not path.is_file():
        run.notes.append("metrics.jsonl is missing (no training curves)")
        return
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and "global_epoch" in rec:
            run.history.append(rec)
        else:
            bad += 1
    if bad:
        run.notes.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")
    if not run.history:
        run.notes.append("metrics.jsonl has no epochs (no training curves)")


def _read_evals(run: RunData, root: Path) -> None:
    """Fill ``run.evals`` / ``run.eval_files`` from the ``eval_<split>_<checkpoint>[_tta_flip].json`` files."""
    for file in sorted(root.glob("eval_*.json")):
        m = _EVAL_RE.match(file.name)
        if m is None:
            continue
        try:
            ev = _read_json(file)
        except RunDirError as err:
            run.notes.append(str(err))
            continue
        if not isinstance(ev, dict):
            run.notes.append(f"{file.name} does not hold a JSON object; skipped")
            continue
        tta = str(ev.get("tta", "flip" if m["tta"] else "none"))
        key = (str(ev.get("split", m["split"])), str(ev.get("checkpoint", m["checkpoint"])), tta)
        run.evals[key] = ev
        run.eval_files[key] = file.name


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory for the report or the comparison.

    Args:
        run_dir: a directory written by ``bce3s train`` (``final.json`` and ``config.yaml`` required).

    Returns:
        The run's files; what is missing or unreadable among the optional ones is listed in ``notes``.

    Raises:
        RunDirError: the directory does not exist, is not a run (no ``final.json`` / ``config.yaml``), or one of
            those two files cannot be parsed.
    """
    rd = RunDir(Path(run_dir))
    _check_run_dir(rd)
    final = _read_json(rd.final)
    if not isinstance(final, dict):
        raise RunDirError(f"{rd.final} does not hold a JSON object; the file is damaged, re-create it")
    config = _read_config(rd.config)
    run_name = (final.get("run") or {}).get("name") if isinstance(final.get("run"), dict) else None
    run = RunData(path=rd.root, label=str(run_name or rd.root.name), final=final, config=config)

    if rd.run_json.is_file():
        run.info = _optional_object(rd.run_json, run.notes)
    else:
        run.notes.append("run.json is missing (run status unknown)")
    run.data_record = _optional_object(rd.data_json, run.notes)
    if run.data_record is None and isinstance(final.get("data"), dict):
        run.data_record = final["data"]
    if run.data_record is None:
        run.notes.append("data.json is missing (no data record)")
    _read_history(run, rd.metrics)
    _read_evals(run, rd.root)
    if ("test", "last", "none") not in run.evals:
        best = run.best_eval()
        run.notes.append(
            "eval_test_last.json is missing: the reliability diagram, geometry and confusion matrix need it "
            f"(run '{program_name()} eval {rd.root}')" + (f"; using {best[0]} instead" if best is not None else "")
        )
    for ckpt in CHECKPOINTS:
        if run.test_metrics(ckpt) is None:
            run.notes.append(f"final.json has no test results for the {ckpt} checkpoint")
    if run.train_counts is None:
        run.notes.append("final.json has no train_counts (no head-to-tail figures)")
    return run


def unique_labels(runs: Sequence[RunData]) -> None:
    """Make run labels unique: the run name, else parent/name, else a numbered suffix."""
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.path.parent.name}/{run.path.name}" if run.path.parent.name else run.path.name
    used: set[str] = set()
    for i, run in enumerate(runs):
        if run.label in used:
            run.label = f"{run.label} ({i + 1})"
        used.add(run.label)


def _counts(value: Any) -> list[int] | None:
    """A non-empty list of per-class counts (numbers >= 0) as ints, else ``None``."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c >= 0 for c in value):
        return None
    return [int(c) for c in value]
