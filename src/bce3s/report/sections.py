"""Sections of the report (part 1) and the helpers every section uses.

A section function appends its blocks (:mod:`bce3s.report.document`) to ``blocks``: a level-2 heading, its
tables and figures, then notes about inputs that are missing. Nothing here raises on incomplete run
directories: a figure that cannot be drawn from the inputs becomes a note.

This module: the runs, the results tables, per-class accuracy, Many / Medium / Few and the training curves.
:mod:`bce3s.report.diagnostics` holds calibration, weight norms, geometry and confusion matrices;
:mod:`bce3s.report.settings` the configuration and data sections.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bce3s.eval.metrics import shot_groups
from bce3s.report import plots
from bce3s.report.document import DASH, Block, Bullets, Figure, Heading, Para, Table, fmt, slug
from bce3s.report.rundata import CHECKPOINTS, RunData

__all__ = [
    "by_counts",
    "ece_percent",
    "eval_desc",
    "get_path",
    "group_suffix",
    "make_figure",
    "metric_cells",
    "section_curves",
    "section_per_class",
    "section_results",
    "section_runs",
    "section_shots",
    "shot_group_lists",
    "short",
    "side_by_side",
]

log = logging.getLogger(__name__)


def shot_group_lists(counts: Sequence[int]) -> dict[str, list[int]]:
    """Many / Medium / Few class ids of ``counts`` (:func:`bce3s.eval.metrics.shot_groups`) as plain lists."""
    return {k: [int(i) for i in v.tolist()] for k, v in shot_groups(list(counts)).items()}


def make_figure(name: str, caption: str, make: Callable[[], Any], notes: list[Block]) -> Figure | None:
    """Draw one figure; inconsistent inputs (e.g. a per-class list of the wrong length) become a note, not a crash."""
    try:
        fig = make()
    except (ValueError, KeyError, TypeError) as err:
        log.warning("figure %s skipped: %s", name, err)
        notes.append(Para(f"Figure '{name}' could not be drawn from these inputs: {err}", note=True))
        return None
    return Figure(name, caption, plots.fig_to_png_bytes(fig))


def by_counts(runs: Sequence[RunData]) -> list[list[RunData]]:
    """Runs grouped by identical training counts (head-to-tail figures overlay only runs on the same classes)."""
    groups: dict[tuple[int, ...], list[RunData]] = {}
    for run in runs:
        if run.train_counts is not None:
            groups.setdefault(tuple(run.train_counts), []).append(run)
    return list(groups.values())


def group_suffix(group: Sequence[RunData], all_runs: Sequence[RunData]) -> tuple[str, str]:
    """(file-name suffix, caption suffix) when the runs are split into several class sets."""
    if len(group) == len(all_runs):
        return "", ""
    names = ", ".join(r.label for r in group)
    return "_" + slug(names)[:40], f" Runs: {names}."


def get_path(d: Any, path: str) -> Any:
    """``d[a][b]...`` for ``path = "a.b..."`` (list indices as digits); ``None`` where the path does not exist."""
    for part in path.split("."):
        if isinstance(d, list) and part.isdigit() and int(part) < len(d):
            d = d[int(part)]
        elif isinstance(d, dict) and part in d:
            d = d[part]
        else:
            return None
    return d


def short(value: Any) -> str:
    """A compact text of a config value: hashes shortened, dicts as ``k=v`` lists, floats in ``%g``."""
    if value is None:
        return DASH
    if isinstance(value, str) and len(value) >= 32 and re.fullmatch(r"[0-9a-fA-F]+", value):
        return value[:12] + "…"  # a hash: the prefix identifies it
    if isinstance(value, dict):
        return ", ".join(f"{k}={short(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def eval_desc(ev: Mapping[str, Any], name: str) -> str:
    """Where the numbers of an eval file come from: file name, split, checkpoint and TTA."""
    tta = "flip TTA" if ev.get("tta") == "flip" else "no TTA"
    return f"{name}: {ev.get('split', '?')} split, {ev.get('checkpoint', '?')} checkpoint, {tta}"


def _run_fields(run: RunData) -> dict[str, str]:
    r = run.final.get("run") if isinstance(run.final.get("run"), dict) else {}
    versions = run.final.get("versions") if isinstance(run.final.get("versions"), dict) else {}
    wall = run.final.get("wall_time_s")
    return {
        "Directory": str(run.path),
        "Config file": str(r.get("config_name") or DASH),
        "Dataset": str(r.get("dataset") or DASH),
        "Model": str(r.get("model") or get_path(run.config, "model.name") or DASH),
        "Stage-1 loss": str(r.get("loss") or DASH),
        "Stages": " → ".join(map(str, r.get("stages") or [])) or DASH,
        "Seed": str(r.get("seed", DASH)),
        "Status": str((run.info or {}).get("status", "unknown")),
        "Device": str(run.final.get("device") or DASH),
        "Wall time": f"{float(wall) / 60:.1f} min" if isinstance(wall, (int, float)) else DASH,
        "Git commit": str(run.final.get("git_commit") or DASH)[:12],
        "PyTorch": str(versions.get("torch", DASH)),
    }


def side_by_side(runs: Sequence[RunData], rows: Sequence[tuple[str, list[str]]], first: str = "") -> Table:
    """A table with one column per run; rows whose values differ between runs are marked."""
    header = [first] + [r.label for r in runs]
    body, marked = [], set()
    for i, (name, values) in enumerate(rows):
        differs = len(runs) > 1 and len(set(values)) > 1
        if differs:
            marked.add(i)
        body.append([name + (" (differs)" if differs else "")] + values)
    return Table(header, body, marked=frozenset(marked))


def section_runs(runs: Sequence[RunData], blocks: list[Block]) -> None:
    """The runs side by side (directory, config, loss, seed, status, ...) and what inputs are missing."""
    blocks.append(Heading(2, "Runs"))
    fields = [_run_fields(r) for r in runs]
    blocks.append(side_by_side(runs, [(k, [f[k] for f in fields]) for k in fields[0]]))
    missing = [f"{r.label}: {n}" for r in runs for n in r.notes]
    if missing:
        blocks.append(Para("Some inputs are missing; the report shows what the runs have:", note=True))
        blocks.append(Bullets(missing))


_RESULT_COLS = (
    ("top1", "All (top-1)"),
    ("mean_per_class", "Mean per class"),
    ("many", "Many"),
    ("medium", "Medium"),
    ("few", "Few"),
    ("ece", "ECE (%)"),
)


def ece_percent(metrics: Mapping[str, Any]) -> float | None:
    """The ECE of a METRICS dict in percent (``summarize`` already stores it in percent)."""
    value = metrics.get("ece")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metric_cells(m: Mapping[str, Any]) -> list[str]:
    """The cells of the result columns (All, class mean, Many, Medium, Few, ECE) of a METRICS dict."""
    return [fmt(ece_percent(m)) if key == "ece" else fmt(m.get(key)) for key, _ in _RESULT_COLS]


def _selection_text(run: RunData) -> str:
    sel = run.final.get("selection") if isinstance(run.final.get("selection"), dict) else {}
    best = sel.get("best_val") if isinstance(sel.get("best_val"), dict) else None
    if best is None:
        return f"{run.label}: best_val selection not recorded"
    epoch = best.get("epoch")
    where = f"{best.get('stage', '?')} epoch {epoch + 1 if isinstance(epoch, int) else '?'} (1-based)"
    if best.get("metric") is None:
        return f"{run.label}: best_val = {where}; no validation split, so best_val is the last epoch"
    return f"{run.label}: best_val = {where}, chosen by validation {best['metric']} = {fmt(best.get('value'))}"


def _empty_group_lines(runs: Sequence[RunData]) -> list[str]:
    """Why each empty Many / Medium / Few group is empty, e.g. "Few: no class has < 20 training images"."""
    from bce3s.eval.metrics import empty_group_reasons

    lines: list[str] = []
    for run in runs:
        counts = run.train_counts
        if counts is None:
            continue
        sizes = {name: len(ids) for name, ids in shot_groups(counts).items()}
        for name, reason in empty_group_reasons(counts).items():
            line = (f"{name.capitalize()}: {reason} (Many / Medium / Few have {sizes['many']} / "
                    f"{sizes['medium']} / {sizes['few']} classes)")
            lines.append(line if len(runs) == 1 else f"{run.label}: {line}")
    return lines


def section_results(runs: Sequence[RunData], blocks: list[Block]) -> None:
    """The test-accuracy tables (no TTA, flip TTA, eval files) and how best_val was chosen."""
    blocks.append(Heading(2, "Results"))
    blocks.append(
        Para(
            "Test-split accuracy in percent, from each run's final.json. 'last' is the model at the end of "
            "training; 'best_val' is the epoch of the final stage with the best validation score (the test split "
            "is never used for selection). These rows use no test-time augmentation; flip-TTA rows are in a "
            "separate table below and should not be compared with these. ECE: expected calibration error, "
            "15 bins, in percent."
        )
    )
    header = ["Run", "Checkpoint", "Split", "TTA"] + [name for _, name in _RESULT_COLS]
    numeric = frozenset(range(4, len(header)))
    rows = []
    for run in runs:
        for ckpt in CHECKPOINTS:
            m = run.test_metrics(ckpt)
            if m is not None:
                rows.append([run.label, ckpt, "test", "none"] + metric_cells(m))
            else:
                rows.append([run.label, ckpt, "test", "none"] + [DASH] * len(_RESULT_COLS))
    blocks.append(Table(header, rows, numeric, caption="Test accuracy (%), no TTA"))
    empty = _empty_group_lines(runs)
    if empty:
        blocks.append(Para("Empty shot groups (shown as " + DASH + "): " + "; ".join(empty) + "."))
    blocks.append(Bullets([_selection_text(r) for r in runs]))
    tta_rows = []
    for run in runs:
        for ckpt in CHECKPOINTS:
            m = run.test_metrics(ckpt, tta=True)
            if m is not None:
                tta_rows.append([run.label, ckpt, "test", "flip"] + metric_cells(m))
    if tta_rows:
        blocks.append(
            Table(header, tta_rows, numeric,
                   caption="Flip-TTA rows (logits of each image and its horizontal flip averaged; separate)")
        )
    else:
        blocks.append(Para("No flip-TTA rows in final.json (eval.tta_flip was off)."))
    extra = []
    for run in runs:
        for (split, ckpt, tta), ev in sorted(run.evals.items()):
            m = ev.get("metrics")
            if isinstance(m, dict):
                extra.append([run.label, ckpt, split, tta] + metric_cells(m) + [run.eval_files[(split, ckpt, tta)]])
    if extra:
        blocks.append(
            Table(header + ["File"], extra, numeric,
                   caption="Evaluations written by 'bce3s eval' (eval_*.json; same metric definitions)")
        )


def section_per_class(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[Block]) -> None:
    """Per-class test accuracy against the training count, one figure per class set."""
    blocks.append(Heading(2, "Per-class accuracy"))
    notes: list[Block] = []
    drawn = False
    for group in by_counts(runs):
        data = {}
        for r in group:
            m = r.test_metrics("last")
            if m is not None and isinstance(m.get("per_class"), list):
                data[r.label] = m["per_class"]
        if not data:
            continue
        counts = group[0].train_counts
        assert counts is not None
        groups = shot_group_lists(counts)
        names = group[0].final.get("class_names")
        names = names if isinstance(names, list) and len(names) == len(counts) else None
        fsuf, csuf = group_suffix(group, runs)
        fig = make_figure(
            f"per_class_accuracy{fsuf}",
            "Test accuracy of each class (last checkpoint, no TTA) against its number of training images. Classes "
            "are sorted head to tail; grey bars are the training counts (log scale, right axis); shaded regions "
            f"are the Many / Medium / Few groups (class counts in brackets).{csuf}",
            lambda data=data, counts=counts, groups=groups, names=names: plots.per_class_accuracy(
                data, counts, groups=groups, colors=colors, class_names=names),
            notes,
        )
        if fig is not None:
            blocks.append(fig)
            drawn = True
    if not drawn and not notes:
        notes.append(Para("No per-class test accuracy in final.json (test.last.per_class).", note=True))
    blocks += notes


def section_shots(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[Block]) -> None:
    """All / class-mean / Many / Medium / Few bars, one panel per checkpoint."""
    blocks.append(Heading(2, "Many / Medium / Few"))
    notes: list[Block] = []
    panels = {}
    for ckpt in CHECKPOINTS:
        rows = {r.label: r.test_metrics(ckpt) for r in runs if r.test_metrics(ckpt) is not None}
        if rows:
            panels[f"test, {ckpt} checkpoint"] = rows
    sizes = None
    counts = {tuple(r.train_counts) for r in runs if r.train_counts is not None}
    if len(counts) == 1:
        sizes = {k: len(v) for k, v in shot_group_lists(list(next(iter(counts)))).items()}
    if panels:
        fig = make_figure(
            "shot_accuracy",
            "Test accuracy (%): All = top-1 over all test images; Class mean = mean of the per-class "
            "accuracies; Many / Medium / Few = mean per-class accuracy of the classes with > 100, 20-100 and "
            "< 20 training images. One panel per checkpoint; no TTA.",
            lambda: plots.shot_accuracy_bars(panels, group_sizes=sizes, colors=colors),
            notes,
        )
        if fig is not None:
            blocks.append(fig)
    else:
        notes.append(Para("No test results in final.json.", note=True))
    blocks += notes


def section_curves(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[Block]) -> None:
    """Loss, loss terms, learning rate and validation accuracy per epoch (metrics.jsonl)."""
    blocks.append(Heading(2, "Training curves"))
    notes: list[Block] = []
    hist = {r.label: r.history for r in runs if r.history}
    if hist:
        fig = make_figure(
            "training_curves",
            "Per-epoch training loss (the weighted total and each logged term), learning rate and validation "
            "accuracy (solid: mean per class; dashed: top-1), from metrics.jsonl. Dotted lines mark the start of "
            "a new stage; stages may use different losses, so loss values are comparable only within a stage.",
            lambda: plots.training_curves(hist, colors=colors),
            notes,
        )
        if fig is not None:
            blocks.append(fig)
    without = [r.label for r in runs if not r.history]
    if without:
        notes.append(Para(f"No training history (metrics.jsonl) for: {', '.join(without)}.", note=True))
    blocks += notes
