"""Sections of the report (part 2), the diagnostics: calibration, classifier weight norms, feature geometry and
confusion matrices. The reliability bins, geometry and confusion matrices come from the ``eval_*.json`` files of
``bce3s eval``; the calibration table comes from ``final.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bce3s.errors import program_name
from bce3s.eval.geometry import GEOMETRY_MEANINGS
from bce3s.report import plots
from bce3s.report.document import DASH, Block, Heading, Para, Table, fmt, slug
from bce3s.report.rundata import CHECKPOINTS, EVAL_PREFERENCE, RunData
from bce3s.report.sections import (
    by_counts,
    ece_percent,
    eval_desc,
    group_suffix,
    make_figure,
    shot_group_lists,
)

__all__ = ["section_calibration", "section_confusion", "section_geometry", "section_weight_norms"]


def section_calibration(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[Block]) -> None:
    """The reliability diagram (from eval files) and the ECE / NLL / Brier table (final.json)."""
    blocks.append(Heading(2, "Calibration"))
    notes: list[Block] = []
    rel, ece, sources = {}, {}, []
    for run in runs:
        src = run.best_eval()
        if src is None or not isinstance(src[1].get("reliability"), dict):
            continue
        name, ev = src
        rel[run.label] = ev["reliability"]
        if isinstance(ev.get("metrics"), dict):
            ece[run.label] = ece_percent(ev["metrics"])
        sources.append(f"{run.label}: {eval_desc(ev, name)}")
    if rel:
        fig = make_figure(
            "reliability",
            "Reliability diagram: accuracy against mean confidence (max softmax probability) in 15 equal-width "
            "bins (a point's size is its bin's share of the samples, so sparse bins look light); the dashed diagonal "
            "is perfect calibration, points below it are over-confident. The lower panel shows the share of "
            "samples per bin. Sources: " + "; ".join(sources) + ".",
            lambda: plots.reliability_diagram(rel, ece=ece, colors=colors),
            notes,
        )
        if fig is not None:
            blocks.append(fig)
    header = ["Run", "Checkpoint", "ECE (%)", "ECE Many", "ECE Medium", "ECE Few", "NLL", "Brier"]
    rows = []
    for run in runs:
        for ckpt in CHECKPOINTS:
            m = run.test_metrics(ckpt)
            if m is None:
                continue
            by_shot = m.get("calibration_by_shot") if isinstance(m.get("calibration_by_shot"), dict) else {}
            shots = [fmt(ece_percent(by_shot[g])) if isinstance(by_shot.get(g), dict) else DASH
                     for g in ("many", "medium", "few")]
            rows.append([run.label, ckpt, fmt(ece_percent(m))] + shots + [fmt(m.get("nll"), 3),
                                                                           fmt(m.get("brier"), 3)])
    if rows:
        blocks.append(Table(header, rows, frozenset(range(2, 8)),
                             caption="Calibration on the test split (final.json, no TTA; ECE in percent, NLL in "
                                     "nats, Brier score in [0, 2]; per-group values over the test samples of "
                                     "the group's classes)"))
    without = [r.label for r in runs if r.label not in rel]
    if without:
        notes.append(Para(
            f"No reliability bins for: {', '.join(without)} (they come from eval_test_last.json; "
            f"run '{program_name()} eval RUN_DIR').", note=True))
    blocks += notes


def _geometries(runs: Sequence[RunData]) -> dict[str, tuple[str, dict[str, Any]]]:
    """run label -> (source description, ``geometry_summary`` dict) from the preferred eval file with geometry."""
    out = {}
    for run in runs:
        for split, ckpt in EVAL_PREFERENCE:
            for tta in ("none", "flip"):
                ev = run.evals.get((split, ckpt, tta))
                if ev is not None and isinstance(ev.get("geometry"), dict) and isinstance(
                        ev["geometry"].get("per_class"), dict):
                    out[run.label] = (eval_desc(ev, run.eval_files[(split, ckpt, tta)]), ev["geometry"])
                    break
            if run.label in out:
                break
    return out


def section_weight_norms(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[Block]) -> None:
    """Classifier weight norms per class, head to tail (eval files with geometry)."""
    blocks.append(Heading(2, "Classifier weight norms"))
    notes: list[Block] = []
    geo = _geometries(runs)
    drawn = False
    for group in by_counts(runs):
        data = {r.label: geo[r.label][1]["per_class"]["weight_norm"] for r in group
                if r.label in geo and isinstance(geo[r.label][1]["per_class"].get("weight_norm"), list)}
        if not data:
            continue
        counts = group[0].train_counts
        assert counts is not None
        groups = shot_group_lists(counts)
        fsuf, csuf = group_suffix(group, runs)
        sources = "; ".join(f"{label}: {geo[label][0]}" for label in data)
        fig = make_figure(
            f"weight_norms{fsuf}",
            "Norm of each class's classifier weight vector (the raw head weight), classes sorted head to tail. "
            "A normalized head (BCE3S default) uses unit-norm rows at inference whatever these norms are. "
            f"Sources: {sources}.{csuf}",
            lambda data=data, counts=counts, groups=groups: plots.weight_norms(data, counts, groups=groups,
                                                                                colors=colors),
            notes,
        )
        if fig is not None:
            blocks.append(fig)
            drawn = True
    if not drawn:
        notes.append(Para(f"No geometry in any eval_*.json (run '{program_name()} eval RUN_DIR').", note=True))
    blocks += notes


_GEOMETRY_ROWS = (
    ("compactness", "Compactness"),
    ("feature_separability", "Feature separability"),
    ("classifier_separability", "Classifier separability"),
    ("feature_norm", "Feature norm"),
    ("weight_norm", "Weight norm"),
)


def _mean_std(stats: Any) -> str:
    """'mean ± std' of one ``geometry_summary`` summary cell ``{"mean", "std", "num_classes"}``."""
    if not isinstance(stats, dict) or not isinstance(stats.get("mean"), (int, float)):
        return DASH
    return f"{fmt(stats['mean'], 3)} ± {fmt(stats.get('std'), 3)}"


def section_geometry(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[Block]) -> None:
    """Compactness and separabilities per class (figure) and per shot group (table)."""
    blocks.append(Heading(2, "Feature geometry"))
    blocks.append(Para(
        "Per class k, on penultimate features h of the evaluated split: compactness = mean over the "
        "class's samples of cos(h_i, mu_k); feature separability = 1 - max over j != k of cos(mu_k, mu_j); "
        "classifier separability = 1 - max over j != k of cos(w_k, w_j). Higher is better for all three. Table "
        "cells are the mean ± std (population std) over the classes of a group, in raw cosine units; the paper "
        "quotes compactness x100 (95.47 there is 0.955 here)."
    ))
    notes: list[Block] = []
    geo = _geometries(runs)
    for group in by_counts(runs):
        data = {r.label: geo[r.label][1]["per_class"] for r in group if r.label in geo}
        if not data:
            continue
        counts = group[0].train_counts
        assert counts is not None
        groups = shot_group_lists(counts)
        fsuf, csuf = group_suffix(group, runs)
        sources = "; ".join(f"{label}: {geo[label][0]}" for label in data)
        fig = make_figure(
            f"geometry{fsuf}",
            f"Compactness, feature separability, classifier separability and mean feature norm per class, "
            f"classes sorted head to tail. Sources: {sources}.{csuf}",
            lambda data=data, counts=counts, groups=groups: plots.geometry_per_class(data, counts, groups=groups,
                                                                                      colors=colors),
            notes,
        )
        if fig is not None:
            blocks.append(fig)
        header = ["Quantity", "Run", "All classes", "Many", "Medium", "Few", "What it measures"]
        rows = []
        for key, name in _GEOMETRY_ROWS:  # runs next to each other for each quantity
            first = True
            for label in data:
                summary = geo[label][1].get("summary")
                cell = summary.get(key) if isinstance(summary, dict) else None
                if not isinstance(cell, dict):
                    continue
                rows.append([name, label] + [_mean_std(cell.get(s)) for s in ("all", "many", "medium", "few")]
                            + [GEOMETRY_MEANINGS[key] if first else ""])
                first = False
        if rows:
            blocks.append(Table(header, rows, frozenset({2, 3, 4, 5}),
                                 caption="Geometry per shot group (mean ± std over classes)" + csuf))
    if not geo:
        notes.append(Para(f"No geometry in any eval_*.json (run '{program_name()} eval RUN_DIR').", note=True))
    blocks += notes


def section_confusion(runs: Sequence[RunData], blocks: list[Block]) -> None:
    """One row-normalised confusion matrix per run (up to the plots' class limit)."""
    blocks.append(Heading(2, "Confusion matrices"))
    notes: list[Block] = []
    for i, run in enumerate(runs):
        counts = run.train_counts
        k = len(counts) if counts is not None else None
        if k is not None and k > plots.MAX_CONFUSION_CLASSES:
            notes.append(Para(f"{run.label}: {k} classes; confusion matrices are drawn only up to "
                               f"{plots.MAX_CONFUSION_CLASSES} classes.", note=True))
            continue
        src = run.best_eval()
        if src is None or not isinstance(src[1].get("confusion"), list):
            notes.append(Para(f"{run.label}: no confusion matrix (it comes from eval_test_last.json; run "
                               f"'{program_name()} eval RUN_DIR').", note=True))
            continue
        name, ev = src
        names = run.final.get("class_names") if isinstance(run.final.get("class_names"), list) else None
        fig = make_figure(
            f"confusion_{i + 1}_{slug(run.label)[:40]}",  # numbered: labels may share a slug
            f"{run.label}: confusion matrix in percent of each true class (rows sum to 100), classes sorted head "
            f"to tail; colour on a square-root scale. Source: {eval_desc(ev, name)}.",
            lambda ev=ev, counts=counts, names=names, label=run.label: plots.confusion_matrix(
                ev["confusion"], train_counts=counts, class_names=names, title=f"Confusion matrix: {label}"),
            notes,
        )
        if fig is not None:
            fig.half = True
            blocks.append(fig)
    blocks += notes
