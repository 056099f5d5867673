"""The run report: ``report.html`` (self-contained, works offline) and ``report.md`` from one or more run dirs.

``bce3s report RUN_DIR [RUN_DIR ...] --out DIR`` calls :func:`write_report`. Several run directories give a
side-by-side comparison that opens with a Summary (:mod:`bce3s.report.summary`: mean ± std per config over
seeds, the paired difference to the first config and a verdict: who won, by how much, how sure); every figure
overlays the runs (one colour per run throughout, fixed by the run's
method, so a method has the same colour in every report) and the tables have
one row or column per run. The report reads only files in the run directories (:mod:`bce3s.report.rundata`
lists them); it never loads a model.

Which numbers come from where: the results table and the per-class / shot-group figures use the test split
from ``final.json`` (checkpoints ``last`` and ``best_val``, no TTA; flip-TTA rows are a separate table). The
reliability diagram, geometry and confusion matrix need an ``eval_*.json`` (preferably
``eval_test_last.json``, which ``bce3s train`` writes at its end); the report names the file each comes from,
and lists what is missing instead of failing.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path

from bce3s.errors import RunDirError
from bce3s.report import plots
from bce3s.report.diagnostics import section_calibration, section_confusion, section_geometry, section_weight_norms
from bce3s.report.document import Block, Figure, Para, render_html, render_md
from bce3s.report.rundata import RunData, load_run, unique_labels
from bce3s.report.sections import section_curves, section_per_class, section_results, section_runs, section_shots
from bce3s.report.settings import section_config, section_data
from bce3s.report.summary import section_summary
from bce3s.rundir import atomic_write_bytes

__all__ = ["SECTIONS", "build_blocks", "write_report"]

log = logging.getLogger(__name__)

SECTIONS = (
    "Summary",
    "Runs",
    "Results",
    "Per-class accuracy",
    "Many / Medium / Few",
    "Training curves",
    "Calibration",
    "Classifier weight norms",
    "Feature geometry",
    "Confusion matrices",
    "Configuration",
    "Data",
)
"""Section titles of the report, in order (each is an ``<h2>`` in HTML and a ``##`` heading in Markdown); the
Summary (who won, by how much, how sure) is there only when the report has more than one run."""


def build_blocks(runs: Sequence[RunData], seed_runs: Sequence[RunData] = ()) -> list[Block]:
    """Every section of the report for ``runs`` (labels already unique), in the order of :data:`SECTIONS`.

    ``seed_runs`` (more seeds of the same configs) enter the Summary only; the other sections show ``runs``.
    """
    colors = plots.run_colors([r.label for r in runs], [r.method for r in runs])
    blocks: list[Block] = []
    seen = {r.path.resolve() for r in runs}
    summary_runs = list(runs) + [r for r in seed_runs if r.path.resolve() not in seen]
    if len(summary_runs) > 1:
        section_summary(summary_runs, blocks)
        if seed_runs:
            shown = ", ".join(r.label for r in runs)
            blocks.append(Para(f"The sections below show one run per method ({shown}); the summary above covers "
                               f"all {len(summary_runs)} runs."))
    section_runs(runs, blocks)
    section_results(runs, blocks)
    section_per_class(runs, colors, blocks)
    section_shots(runs, colors, blocks)
    section_curves(runs, colors, blocks)
    section_calibration(runs, colors, blocks)
    section_weight_norms(runs, colors, blocks)
    section_geometry(runs, colors, blocks)
    section_confusion(runs, blocks)
    section_config(runs, blocks)
    section_data(runs, blocks)
    return blocks


def _write(path: Path, data: bytes) -> None:
    """Write one output file atomically; an unwritable ``--out`` becomes a one-line :class:`RunDirError`."""
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise RunDirError(f"cannot write {path} ({err.strerror or err}); choose another --out") from None


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, title: str | None = None,
                 seed_runs: Sequence[str | Path] = ()) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (with ``figures/*.png``) for one or more runs.

    Args:
        run_dirs: run directories written by ``bce3s train`` (a comparison when there are several).
        out_dir: output directory (created if missing).
        title: report title; default names the runs.
        seed_runs: further runs (other seeds of the same configs) counted in the Summary's mean ± std and verdict
            but not drawn in the other sections (``bce3s demo`` passes its seeds 1, 2, ... here).

    Returns:
        ``(html_path, md_path)``.

    Raises:
        RunDirError: no run given, a path that is not a finished run directory, or an unwritable ``out_dir``.
    """
    if not run_dirs:
        raise RunDirError("no run directory given; pass one or more directories written by 'bce3s train'")
    runs = [load_run(p) for p in run_dirs]
    unique_labels(runs)
    out = Path(out_dir)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create report directory {out} ({err.strerror}); choose another --out") from None

    blocks = build_blocks(runs, [load_run(p) for p in seed_runs])
    title = title or ("BCE3S report: " + " vs ".join(r.label for r in runs))
    extra = f", {len(runs) + len(seed_runs)} in the summary" if seed_runs else ""
    when = _dt.datetime.now().isoformat(timespec="seconds")
    subtitle = f"{len(runs)} run(s){extra}; generated {when} by bce3s report. Accuracies are in percent."
    for b in blocks:
        if isinstance(b, Figure):
            _write(out / "figures" / f"{b.name}.png", b.png)
    html_path, md_path = out / "report.html", out / "report.md"
    _write(md_path, render_md(title, subtitle, blocks).encode("utf-8"))
    _write(html_path, render_html(title, subtitle, blocks).encode("utf-8"))
    log.debug("report written to %s", html_path)
    return html_path, md_path
