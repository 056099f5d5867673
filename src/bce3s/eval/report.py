"""The run report: ``report.html`` (self-contained, works offline) and ``report.md`` from one or more run dirs.

``bce3s report RUN_DIR [RUN_DIR ...] --out DIR`` calls :func:`write_report`. Several run directories give a
side-by-side comparison: every figure overlays the runs (one colour per run throughout) and the tables have
one row or column per run. The report reads only files in the run directories; it never loads a model.

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
  Reliability accuracies and confidences are fractions in [0, 1] (``null`` for empty bins).

Which numbers come from where: the results table and the per-class / shot-group figures use the test split
from ``final.json`` (checkpoints ``last`` and ``best_val``, no TTA; flip-TTA rows are a separate table). The
reliability diagram, geometry and confusion matrix need an ``eval_*.json`` (preferably
``eval_test_last.json``); the report names the file each comes from, and lists what is missing instead of
failing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bce3s.errors import RunDirError
from bce3s.eval import plots

__all__ = ["SECTIONS", "RunData", "load_run", "write_report"]

log = logging.getLogger(__name__)

SECTIONS = (
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
"""Section titles of the report, in order (each is an ``<h2>`` in HTML and a ``##`` heading in Markdown)."""

_CHECKPOINTS = ("last", "best_val")
_EVAL_RE = re.compile(r"^eval_(?P<split>[a-z]+)_(?P<checkpoint>last|best_val)(?P<tta>_tta_flip)?\.json$")
_EVAL_PREFERENCE = (("test", "last"), ("test", "best_val"), ("val", "last"), ("val", "best_val"))
_DASH = "–"


# ------------------------------------------------------------------------------------------------ reading runs
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
        counts = self.final.get("train_counts")
        if not isinstance(counts, list) or not counts:
            return None
        if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c >= 0 for c in counts):
            return None
        return [int(c) for c in counts]

    def test_metrics(self, checkpoint: str, tta: bool = False) -> dict[str, Any] | None:
        """``final.json["test"][checkpoint(+_tta_flip)]`` or ``None``."""
        test = self.final.get("test")
        if not isinstance(test, dict):
            return None
        row = test.get(f"{checkpoint}_tta_flip" if tta else checkpoint)
        return row if isinstance(row, dict) else None

    def best_eval(self) -> tuple[str, dict[str, Any]] | None:
        """The eval file the diagnostics use: test/last without TTA first, then the others; (file name, dict)."""
        for split, ckpt in _EVAL_PREFERENCE:
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


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory for the report.

    Raises:
        RunDirError: the directory does not exist, is not a run (no ``final.json`` / ``config.yaml``), or one of
            those two files cannot be parsed. Missing or damaged optional files only add a note.
    """
    import yaml

    path = Path(run_dir)
    if not path.exists():
        raise RunDirError(f"run directory not found: {path} (give a directory written by 'bce3s train')")
    if not path.is_dir():
        raise RunDirError(f"{path} is a file, not a run directory (give a directory written by 'bce3s train')")
    missing = [name for name in ("final.json", "config.yaml") if not (path / name).is_file()]
    if missing:
        hint = " (the run has not finished)" if missing == ["final.json"] and (path / "run.json").is_file() else ""
        raise RunDirError(
            f"{path} is not a finished bce3s run: missing {' and '.join(missing)}{hint}; "
            "give a directory written by 'bce3s train'"
        )
    final = _read_json(path / "final.json")
    if not isinstance(final, dict):
        raise RunDirError(f"{path / 'final.json'} does not hold a JSON object; the file is damaged, re-create it")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RunDirError(f"{path / 'config.yaml'}:{where} is not valid YAML; the file is damaged") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"cannot read {path / 'config.yaml'} ({err})") from None
    if not isinstance(config, dict):
        raise RunDirError(f"{path / 'config.yaml'} does not hold a mapping; the file is damaged")
    run_name = (final.get("run") or {}).get("name") if isinstance(final.get("run"), dict) else None
    run = RunData(path=path, label=str(run_name or path.name), final=final, config=config)

    info_path = path / "run.json"
    if info_path.is_file():
        try:
            info = _read_json(info_path)
            run.info = info if isinstance(info, dict) else None
        except RunDirError as err:
            run.notes.append(str(err))
    else:
        run.notes.append("run.json is missing (run status unknown)")

    data_path = path / "data.json"
    if data_path.is_file():
        try:
            record = _read_json(data_path)
            run.data_record = record if isinstance(record, dict) else None
        except RunDirError as err:
            run.notes.append(str(err))
    if run.data_record is None and isinstance(final.get("data"), dict):
        run.data_record = final["data"]
    if run.data_record is None:
        run.notes.append("data.json is missing (no data record)")

    metrics_path = path / "metrics.jsonl"
    if metrics_path.is_file():
        bad = 0
        for line in metrics_path.read_text(encoding="utf-8", errors="replace").splitlines():
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
    else:
        run.notes.append("metrics.jsonl is missing (no training curves)")

    for file in sorted(path.glob("eval_*.json")):
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
    if ("test", "last", "none") not in run.evals:
        run.notes.append(
            "eval_test_last.json is missing: the reliability diagram, geometry and confusion matrix need it "
            f"(run 'bce3s eval {path}')" + (f"; using {run.best_eval()[0]} instead" if run.evals else "")
        )
    for ckpt in _CHECKPOINTS:
        if run.test_metrics(ckpt) is None:
            run.notes.append(f"final.json has no test results for the {ckpt} checkpoint")
    if run.train_counts is None:
        run.notes.append("final.json has no train_counts (no head-to-tail figures)")
    return run


def _unique_labels(runs: Sequence[RunData]) -> None:
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


# ------------------------------------------------------------------------------------------- document model
@dataclass
class _Heading:
    level: int
    text: str


@dataclass
class _Para:
    text: str
    note: bool = False


@dataclass
class _List:
    items: list[str]


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    numeric: frozenset[int] = frozenset()
    caption: str | None = None
    marked: frozenset[int] = frozenset()  # rows to highlight (values that differ between runs)


@dataclass
class _Figure:
    name: str
    caption: str
    png: bytes
    half: bool = False  # consecutive half-width figures sit side by side in HTML


@dataclass
class _Code:
    summary: str
    text: str


_Block = _Heading | _Para | _List | _Table | _Figure | _Code


def _alt(fig: _Figure) -> str:
    """Short alternative text of a figure (the caption follows it anyway)."""
    return fig.name.replace("_", " ")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _fmt(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; ``None``/NaN/missing as an en dash."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return _DASH
    if not math.isfinite(float(value)):
        return _DASH
    return f"{float(value):.{digits}f}"


_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #1d1f23; font-size: 16px; line-height: 1.55;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 36px 80px; }
h1 { font-size: 1.9rem; margin: 0.2em 0 0.2em; }
h2 { font-size: 1.4rem; margin: 2.2em 0 0.6em; padding-bottom: 0.25em; border-bottom: 2px solid #e4e6ea; }
h3 { font-size: 1.1rem; margin: 1.4em 0 0.4em; }
p, li { max-width: 80ch; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace; }
.meta { color: #59606b; margin-top: 0; }
nav.toc { background: #f6f7f9; border: 1px solid #e4e6ea; border-radius: 6px; padding: 0.6em 1.1em; margin: 1em 0; }
nav.toc ol { margin: 0.2em 0; padding-left: 1.4em; columns: 3; }
nav.toc a { color: #0b5cad; text-decoration: none; }
.table-wrap { overflow-x: auto; margin: 0.8em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.92rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0 0 0.4em; }
th, td { padding: 0.38em 0.75em; border-bottom: 1px solid #e4e6ea; text-align: left; vertical-align: top; }
thead th { background: #f1f3f5; font-weight: 600; border-bottom: 2px solid #d5d8dd; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td:first-child { white-space: nowrap; }
tr.diff td:first-child { font-weight: 600; color: #8a4b00; }
.figrow { display: flex; flex-wrap: wrap; gap: 0 24px; align-items: flex-start; }
.figrow figure { flex: 1 1 420px; max-width: calc(50% - 12px); }
figure { margin: 1.2em 0 1.8em; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eceef1; border-radius: 4px; }
figcaption { color: #4a505a; font-size: 0.92rem; margin-top: 0.4em; max-width: 95ch; }
.note { background: #fff8e1; border-left: 4px solid #e0a800; padding: 0.5em 0.9em; border-radius: 0 4px 4px 0; }
details { margin: 0.5em 0; }
summary { cursor: pointer; font-weight: 600; }
details pre { background: #f6f8fa; border: 1px solid #e4e6ea; padding: 0.8em; overflow: auto; font-size: 0.82rem;
  max-height: 480px; }
"""


def _render_html(title: str, subtitle: str, blocks: Sequence[_Block]) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body><main>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{esc(subtitle)}</p>',
    ]
    toc = [b.text for b in blocks if isinstance(b, _Heading) and b.level == 2]
    out.append('<nav class="toc"><strong>Contents</strong><ol>')
    out += [f'<li><a href="#{_slug(t)}">{esc(t)}</a></li>' for t in toc]
    out.append("</ol></nav>")
    in_row = False
    for b in blocks:
        if in_row and not (isinstance(b, _Figure) and b.half):
            out.append("</div>")
            in_row = False
        if isinstance(b, _Heading):
            out.append(f'<h{b.level} id="{_slug(b.text)}">{esc(b.text)}</h{b.level}>')
        elif isinstance(b, _Para):
            out.append(f'<p class="note">{esc(b.text)}</p>' if b.note else f"<p>{esc(b.text)}</p>")
        elif isinstance(b, _List):
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, _Table):
            cls = [' class="num"' if j in b.numeric else "" for j in range(len(b.header))]
            rows = [
                '<div class="table-wrap"><table>',
                f"<caption>{esc(b.caption)}</caption>" if b.caption else "",
                "<thead><tr>" + "".join(f"<th{cls[j]}>{esc(h)}</th>" for j, h in enumerate(b.header)) + "</tr></thead>",
                "<tbody>",
            ]
            rows += [("<tr class=\"diff\">" if i in b.marked else "<tr>")
                     + "".join(f"<td{cls[j]}>{esc(c)}</td>" for j, c in enumerate(r)) + "</tr>"
                     for i, r in enumerate(b.rows)]
            rows.append("</tbody></table></div>")
            out.append("".join(rows))
        elif isinstance(b, _Figure):
            data = base64.b64encode(b.png).decode("ascii")
            fig_html = (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(_alt(b))}">'
                        f"<figcaption>{esc(b.caption)}</figcaption></figure>")
            if b.half:
                if not in_row:
                    out.append('<div class="figrow">')
                    in_row = True
                out.append(fig_html)
                continue
            out.append(fig_html)
        elif isinstance(b, _Code):
            out.append(f"<details><summary>{esc(b.summary)}</summary><pre>{esc(b.text)}</pre></details>")
    if in_row:
        out.append("</div>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_md(title: str, subtitle: str, blocks: Sequence[_Block]) -> str:
    out = [f"# {title}", "", subtitle, ""]
    for b in blocks:
        if isinstance(b, _Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, _Para):
            out += [("> **Note:** " if b.note else "") + b.text, ""]
        elif isinstance(b, _List):
            out += [f"- {i}" for i in b.items] + [""]
        elif isinstance(b, _Table):
            if b.caption:
                out += [f"**{b.caption}**", ""]
            align = ["---:" if j in b.numeric else "---" for j in range(len(b.header))]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("| " + " | ".join(align) + " |")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            out.append("")
        elif isinstance(b, _Figure):
            out += [f"![{_alt(b)}](figures/{b.name}.png)", "", f"*{b.caption}*", ""]
        elif isinstance(b, _Code):
            out += ["<details><summary>" + html.escape(b.summary) + "</summary>", "", "```yaml", b.text.rstrip(),
                    "```", "", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ sections
def _shot_groups(counts: Sequence[int]) -> dict[str, list[int]]:
    from bce3s.eval.metrics import shot_groups

    return {k: [int(i) for i in v.tolist()] for k, v in shot_groups(list(counts)).items()}


def _figure(name: str, caption: str, make: Callable[[], Any], notes: list[_Block]) -> _Figure | None:
    """Draw one figure; inconsistent inputs (e.g. a per-class list of the wrong length) become a note, not a crash."""
    try:
        fig = make()
    except (ValueError, KeyError, TypeError) as err:
        log.warning("figure %s skipped: %s", name, err)
        notes.append(_Para(f"Figure '{name}' could not be drawn from these inputs: {err}", note=True))
        return None
    return _Figure(name, caption, plots.fig_to_png_bytes(fig))


def _by_counts(runs: Sequence[RunData]) -> list[list[RunData]]:
    """Runs grouped by identical training counts (head-to-tail figures overlay only runs on the same classes)."""
    groups: dict[tuple[int, ...], list[RunData]] = {}
    for run in runs:
        if run.train_counts is not None:
            groups.setdefault(tuple(run.train_counts), []).append(run)
    return list(groups.values())


def _suffix(group: Sequence[RunData], all_runs: Sequence[RunData]) -> tuple[str, str]:
    """(file-name suffix, caption suffix) when the runs are split into several class sets."""
    if len(group) == len(all_runs):
        return "", ""
    names = ", ".join(r.label for r in group)
    return "_" + _slug(names)[:40], f" Runs: {names}."


def _run_fields(run: RunData) -> dict[str, str]:
    r = run.final.get("run") if isinstance(run.final.get("run"), dict) else {}
    versions = run.final.get("versions") if isinstance(run.final.get("versions"), dict) else {}
    wall = run.final.get("wall_time_s")
    return {
        "Directory": str(run.path),
        "Config file": str(r.get("config_name") or _DASH),
        "Dataset": str(r.get("dataset") or _DASH),
        "Model": str(r.get("model") or _get(run.config, "model.name") or _DASH),
        "Stage-1 loss": str(r.get("loss") or _DASH),
        "Stages": " → ".join(map(str, r.get("stages") or [])) or _DASH,
        "Seed": str(r.get("seed", _DASH)),
        "Status": str((run.info or {}).get("status", "unknown")),
        "Device": str(run.final.get("device") or _DASH),
        "Wall time": f"{float(wall) / 60:.1f} min" if isinstance(wall, (int, float)) else _DASH,
        "Git commit": str(run.final.get("git_commit") or _DASH)[:12],
        "PyTorch": str(versions.get("torch", _DASH)),
    }


def _side_by_side(runs: Sequence[RunData], rows: Sequence[tuple[str, list[str]]], first: str = "") -> _Table:
    """A table with one column per run; rows whose values differ between runs are marked."""
    header = [first] + [r.label for r in runs]
    body, marked = [], set()
    for i, (name, values) in enumerate(rows):
        differs = len(runs) > 1 and len(set(values)) > 1
        if differs:
            marked.add(i)
        body.append([name + (" (differs)" if differs else "")] + values)
    return _Table(header, body, marked=frozenset(marked))


def _section_runs(runs: Sequence[RunData], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Runs"))
    fields = [_run_fields(r) for r in runs]
    blocks.append(_side_by_side(runs, [(k, [f[k] for f in fields]) for k in fields[0]]))
    missing = [f"{r.label}: {n}" for r in runs for n in r.notes]
    if missing:
        blocks.append(_Para("Some inputs are missing; the report shows what the runs have:", note=True))
        blocks.append(_List(missing))


_RESULT_COLS = (
    ("top1", "All (top-1)"),
    ("mean_per_class", "Mean per class"),
    ("many", "Many"),
    ("medium", "Medium"),
    ("few", "Few"),
    ("ece", "ECE (%)"),
)


def _ece(metrics: Mapping[str, Any]) -> float | None:
    """The ECE of a METRICS dict in percent (``summarize`` already stores it in percent)."""
    value = metrics.get("ece")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _metric_cells(m: Mapping[str, Any]) -> list[str]:
    return [_fmt(_ece(m)) if key == "ece" else _fmt(m.get(key)) for key, _ in _RESULT_COLS]


def _selection_text(run: RunData) -> str:
    sel = run.final.get("selection") if isinstance(run.final.get("selection"), dict) else {}
    best = sel.get("best_val") if isinstance(sel.get("best_val"), dict) else None
    if best is None:
        return f"{run.label}: best_val selection not recorded"
    epoch = best.get("epoch")
    where = f"{best.get('stage', '?')} epoch {epoch + 1 if isinstance(epoch, int) else '?'} (1-based)"
    if best.get("metric") is None:
        return f"{run.label}: best_val = {where}; no validation split, so best_val is the last epoch"
    return f"{run.label}: best_val = {where}, chosen by validation {best['metric']} = {_fmt(best.get('value'))}"


def _section_results(runs: Sequence[RunData], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Results"))
    blocks.append(
        _Para(
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
        for ckpt in _CHECKPOINTS:
            m = run.test_metrics(ckpt)
            if m is not None:
                rows.append([run.label, ckpt, "test", "none"] + _metric_cells(m))
            else:
                rows.append([run.label, ckpt, "test", "none"] + [_DASH] * len(_RESULT_COLS))
    blocks.append(_Table(header, rows, numeric, caption="Test accuracy (%), no TTA"))
    blocks.append(_List([_selection_text(r) for r in runs]))
    tta_rows = []
    for run in runs:
        for ckpt in _CHECKPOINTS:
            m = run.test_metrics(ckpt, tta=True)
            if m is not None:
                tta_rows.append([run.label, ckpt, "test", "flip"] + _metric_cells(m))
    if tta_rows:
        blocks.append(
            _Table(header, tta_rows, numeric,
                   caption="Flip-TTA rows (logits of each image and its horizontal flip averaged; separate)")
        )
    else:
        blocks.append(_Para("No flip-TTA rows in final.json (eval.tta_flip was off)."))
    extra = []
    for run in runs:
        for (split, ckpt, tta), ev in sorted(run.evals.items()):
            m = ev.get("metrics")
            if isinstance(m, dict):
                extra.append([run.label, ckpt, split, tta] + _metric_cells(m) + [run.eval_files[(split, ckpt, tta)]])
    if extra:
        blocks.append(
            _Table(header + ["File"], extra, numeric,
                   caption="Evaluations written by 'bce3s eval' (eval_*.json; same metric definitions)")
        )


def _section_per_class(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Per-class accuracy"))
    notes: list[_Block] = []
    drawn = False
    for group in _by_counts(runs):
        data = {}
        for r in group:
            m = r.test_metrics("last")
            if m is not None and isinstance(m.get("per_class"), list):
                data[r.label] = m["per_class"]
        if not data:
            continue
        counts = group[0].train_counts
        assert counts is not None
        groups = _shot_groups(counts)
        fsuf, csuf = _suffix(group, runs)
        fig = _figure(
            f"per_class_accuracy{fsuf}",
            "Test accuracy of each class (last checkpoint, no TTA) against its number of training images. Classes "
            "are sorted head to tail; grey bars are the training counts (log scale, right axis); shaded regions "
            f"are the Many / Medium / Few groups (class counts in brackets).{csuf}",
            lambda data=data, counts=counts, groups=groups: plots.per_class_accuracy(
                data, counts, groups=groups, colors=colors),
            notes,
        )
        if fig is not None:
            blocks.append(fig)
            drawn = True
    if not drawn and not notes:
        notes.append(_Para("No per-class test accuracy in final.json (test.last.per_class).", note=True))
    blocks += notes


def _section_shots(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Many / Medium / Few"))
    notes: list[_Block] = []
    panels = {}
    for ckpt in _CHECKPOINTS:
        rows = {r.label: r.test_metrics(ckpt) for r in runs if r.test_metrics(ckpt) is not None}
        if rows:
            panels[f"test, {ckpt} checkpoint"] = rows
    sizes = None
    counts = {tuple(r.train_counts) for r in runs if r.train_counts is not None}
    if len(counts) == 1:
        sizes = {k: len(v) for k, v in _shot_groups(list(next(iter(counts)))).items()}
    if panels:
        fig = _figure(
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
        notes.append(_Para("No test results in final.json.", note=True))
    blocks += notes


def _section_curves(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Training curves"))
    notes: list[_Block] = []
    hist = {r.label: r.history for r in runs if r.history}
    if hist:
        fig = _figure(
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
        notes.append(_Para(f"No training history (metrics.jsonl) for: {', '.join(without)}.", note=True))
    blocks += notes


def _eval_desc(ev: Mapping[str, Any], name: str) -> str:
    tta = "flip TTA" if ev.get("tta") == "flip" else "no TTA"
    return f"{name}: {ev.get('split', '?')} split, {ev.get('checkpoint', '?')} checkpoint, {tta}"


def _section_calibration(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Calibration"))
    notes: list[_Block] = []
    rel, ece, sources = {}, {}, []
    for run in runs:
        src = run.best_eval()
        if src is None or not isinstance(src[1].get("reliability"), dict):
            continue
        name, ev = src
        rel[run.label] = ev["reliability"]
        if isinstance(ev.get("metrics"), dict):
            ece[run.label] = _ece(ev["metrics"])
        sources.append(f"{run.label}: {_eval_desc(ev, name)}")
    if rel:
        fig = _figure(
            "reliability",
            "Reliability diagram: accuracy against mean confidence (max softmax probability) in 15 equal-width "
            "bins; the dashed diagonal is perfect calibration, points below it are over-confident. The lower "
            "panel shows the share of samples per bin. Sources: " + "; ".join(sources) + ".",
            lambda: plots.reliability_diagram(rel, ece=ece, colors=colors),
            notes,
        )
        if fig is not None:
            blocks.append(fig)
    header = ["Run", "Checkpoint", "ECE (%)", "ECE Many", "ECE Medium", "ECE Few", "NLL", "Brier"]
    rows = []
    for run in runs:
        for ckpt in _CHECKPOINTS:
            m = run.test_metrics(ckpt)
            if m is None:
                continue
            by_shot = m.get("calibration_by_shot") if isinstance(m.get("calibration_by_shot"), dict) else {}
            shots = [_fmt(_ece(by_shot[g])) if isinstance(by_shot.get(g), dict) else _DASH
                     for g in ("many", "medium", "few")]
            rows.append([run.label, ckpt, _fmt(_ece(m))] + shots + [_fmt(m.get("nll"), 3),
                                                                           _fmt(m.get("brier"), 3)])
    if rows:
        blocks.append(_Table(header, rows, frozenset(range(2, 8)),
                             caption="Calibration on the test split (final.json, no TTA; ECE in percent, NLL in "
                                     "nats, Brier score in [0, 2]; per-group values over the test samples of "
                                     "the group's classes)"))
    without = [r.label for r in runs if r.label not in rel]
    if without:
        notes.append(_Para(
            f"No reliability bins for: {', '.join(without)} (they come from eval_test_last.json; "
            "run 'bce3s eval RUN_DIR').", note=True))
    blocks += notes


def _geometries(runs: Sequence[RunData]) -> dict[str, tuple[str, dict[str, Any]]]:
    """run label -> (source description, ``geometry_summary`` dict) from the preferred eval file with geometry."""
    out = {}
    for run in runs:
        for split, ckpt in _EVAL_PREFERENCE:
            for tta in ("none", "flip"):
                ev = run.evals.get((split, ckpt, tta))
                if ev is not None and isinstance(ev.get("geometry"), dict) and isinstance(
                        ev["geometry"].get("per_class"), dict):
                    out[run.label] = (_eval_desc(ev, run.eval_files[(split, ckpt, tta)]), ev["geometry"])
                    break
            if run.label in out:
                break
    return out


def _section_weight_norms(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Classifier weight norms"))
    notes: list[_Block] = []
    geo = _geometries(runs)
    drawn = False
    for group in _by_counts(runs):
        data = {r.label: geo[r.label][1]["per_class"]["weight_norm"] for r in group
                if r.label in geo and isinstance(geo[r.label][1]["per_class"].get("weight_norm"), list)}
        if not data:
            continue
        counts = group[0].train_counts
        assert counts is not None
        groups = _shot_groups(counts)
        fsuf, csuf = _suffix(group, runs)
        sources = "; ".join(f"{label}: {geo[label][0]}" for label in data)
        fig = _figure(
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
        notes.append(_Para("No geometry in any eval_*.json (run 'bce3s eval RUN_DIR').", note=True))
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
        return _DASH
    return f"{_fmt(stats['mean'], 3)} ± {_fmt(stats.get('std'), 3)}"


def _section_geometry(runs: Sequence[RunData], colors: Mapping[str, str], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Feature geometry"))
    blocks.append(_Para(
        "Per class k, on penultimate features h of the evaluated split (SPEC 7.11): compactness = mean over the "
        "class's samples of cos(h_i, mu_k); feature separability = 1 - max over j != k of cos(mu_k, mu_j); "
        "classifier separability = 1 - max over j != k of cos(w_k, w_j). Higher is better for all three. Table "
        "cells are the mean ± std (population std) over the classes of a group, in raw cosine units; the paper "
        "quotes compactness x100 (95.47 there is 0.955 here)."
    ))
    notes: list[_Block] = []
    geo = _geometries(runs)
    for group in _by_counts(runs):
        data = {r.label: geo[r.label][1]["per_class"] for r in group if r.label in geo}
        if not data:
            continue
        counts = group[0].train_counts
        assert counts is not None
        groups = _shot_groups(counts)
        fsuf, csuf = _suffix(group, runs)
        sources = "; ".join(f"{label}: {geo[label][0]}" for label in data)
        fig = _figure(
            f"geometry{fsuf}",
            f"Compactness, feature separability, classifier separability and mean feature norm per class, "
            f"classes sorted head to tail. Sources: {sources}.{csuf}",
            lambda data=data, counts=counts, groups=groups: plots.geometry_per_class(data, counts, groups=groups,
                                                                                      colors=colors),
            notes,
        )
        if fig is not None:
            blocks.append(fig)
        header = ["Quantity", "Run", "All classes", "Many", "Medium", "Few"]
        rows = []
        for key, name in _GEOMETRY_ROWS:  # runs next to each other for each quantity
            for label in data:
                summary = geo[label][1].get("summary")
                cell = summary.get(key) if isinstance(summary, dict) else None
                if not isinstance(cell, dict):
                    continue
                rows.append([name, label] + [_mean_std(cell.get(s)) for s in ("all", "many", "medium", "few")])
        if rows:
            blocks.append(_Table(header, rows, frozenset({2, 3, 4, 5}),
                                 caption="Geometry per shot group (mean ± std over classes)" + csuf))
    if not geo:
        notes.append(_Para("No geometry in any eval_*.json (run 'bce3s eval RUN_DIR').", note=True))
    blocks += notes


def _section_confusion(runs: Sequence[RunData], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Confusion matrices"))
    notes: list[_Block] = []
    for i, run in enumerate(runs):
        counts = run.train_counts
        k = len(counts) if counts is not None else None
        if k is not None and k > plots.MAX_CONFUSION_CLASSES:
            notes.append(_Para(f"{run.label}: {k} classes; confusion matrices are drawn only up to "
                               f"{plots.MAX_CONFUSION_CLASSES} classes.", note=True))
            continue
        src = run.best_eval()
        if src is None or not isinstance(src[1].get("confusion"), list):
            notes.append(_Para(f"{run.label}: no confusion matrix (it comes from eval_test_last.json; run "
                               "'bce3s eval RUN_DIR').", note=True))
            continue
        name, ev = src
        names = run.final.get("class_names") if isinstance(run.final.get("class_names"), list) else None
        fig = _figure(
            f"confusion_{i + 1}_{_slug(run.label)[:40]}",  # numbered: labels may share a slug
            f"{run.label}: confusion matrix in percent of each true class (rows sum to 100), classes sorted head "
            f"to tail; colour on a square-root scale. Source: {_eval_desc(ev, name)}.",
            lambda ev=ev, counts=counts, names=names, label=run.label: plots.confusion_matrix(
                ev["confusion"], train_counts=counts, class_names=names, title=f"Confusion matrix: {label}"),
            notes,
        )
        if fig is not None:
            fig.half = True
            blocks.append(fig)
    blocks += notes


def _get(d: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(d, list) and part.isdigit() and int(part) < len(d):
            d = d[int(part)]
        elif isinstance(d, dict) and part in d:
            d = d[part]
        else:
            return None
    return d


def _short(value: Any) -> str:
    if value is None:
        return _DASH
    if isinstance(value, str) and len(value) >= 32 and re.fullmatch(r"[0-9a-fA-F]+", value):
        return value[:12] + "…"  # a hash: the prefix identifies it
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_CONFIG_KEYS = (
    ("data.dataset", "dataset"),
    ("data.imbalance_factor", "imbalance factor"),
    ("data.order", "subset order"),
    ("data.val_per_class", "val per class"),
    ("model.name", "model"),
    ("model.head", "head"),
    ("model.projector_dim", "projector dim"),
    ("eval.select_metric", "best_val metric"),
    ("eval.tta_flip", "flip TTA rows"),
    ("runtime.seed", "seed"),
    ("runtime.amp", "AMP"),
    ("runtime.device", "device"),
)
_STAGE_KEYS = (
    ("epochs", "epochs"),
    ("batch_size", "batch size"),
    ("sampler", "sampler"),
    ("loss.name", "loss"),
    ("loss.params", "loss params"),
    ("optim.name", "optimizer"),
    ("optim.lr", "lr"),
    ("optim.weight_decay", "weight decay"),
    ("optim.scheduler", "schedule"),
    ("mixing.enabled", "mixing"),
    ("freeze_backbone", "freeze backbone"),
    ("reset_head", "reset head"),
    ("max_norm", "MaxNorm"),
)


def _section_config(runs: Sequence[RunData], blocks: list[_Block]) -> None:
    import yaml

    blocks.append(_Heading(2, "Configuration"))
    blocks.append(_Para("Main settings of each resolved config.yaml; rows marked '(differs)' differ between runs. "
                        "The full files follow."))
    rows = [(name, [_short(_get(r.config, path)) for r in runs]) for path, name in _CONFIG_KEYS]
    n_stages = max((len(r.config.get("stages") or []) for r in runs), default=0)
    for i in range(n_stages):
        names = [_short(_get(r.config, f"stages.{i}.name")) for r in runs]
        rows.append((f"stage {i + 1}: name", names))
        for path, name in _STAGE_KEYS:
            rows.append((f"stage {i + 1}: {name}", [_short(_get(r.config, f"stages.{i}.{path}")) for r in runs]))
    blocks.append(_side_by_side(runs, rows, first="Setting"))
    for run in runs:
        blocks.append(_Code(f"config.yaml of {run.label}", yaml.safe_dump(run.config, sort_keys=False)))


def _count_summary(values: Any) -> str:
    if isinstance(values, list) and values and all(isinstance(v, int) for v in values):
        return f"{sum(values)} in {len(values)} classes (max {max(values)}, min {min(values)})"
    return _short(values) if not isinstance(values, list) else f"list of {len(values)}"


def _section_data(runs: Sequence[RunData], blocks: list[_Block]) -> None:
    blocks.append(_Heading(2, "Data"))
    blocks.append(_Para("Training counts from final.json and the data record (data.json) of each run; lists of "
                        "per-class counts are summarized."))
    rows: list[tuple[str, list[str]]] = []

    def counts_row(name: str, fn: Callable[[list[int]], str]) -> None:
        rows.append((name, [fn(r.train_counts) if r.train_counts else _DASH for r in runs]))

    counts_row("classes", lambda c: str(len(c)))
    counts_row("training images", lambda c: str(sum(c)))
    counts_row("images per class (max / min)", lambda c: f"{max(c)} / {min(c)}")
    counts_row("imbalance factor (max / min)", lambda c: f"{max(c) / max(min(c), 1):.1f}")
    for grp in ("many", "medium", "few"):
        counts_row(f"{grp} classes", lambda c, grp=grp: str(len(_shot_groups(c)[grp])))
    keys: list[str] = []
    for run in runs:
        for k, v in (run.data_record or {}).items():
            if isinstance(v, dict):
                keys += [f"{k}.{kk}" for kk in v if f"{k}.{kk}" not in keys]
            elif k not in keys:
                keys.append(k)
    for key in keys:
        rows.append((key, [_count_summary(_get(r.data_record or {}, key)) for r in runs]))
    blocks.append(_side_by_side(runs, rows, first="Item"))


# --------------------------------------------------------------------------------------------------- writing
def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + ``os.replace`` (the file gets the umask's permissions)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path} ({err.strerror}); choose another --out") from None


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, title: str | None = None
                 ) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (with ``figures/*.png``) for one or more runs.

    Args:
        run_dirs: run directories written by ``bce3s train`` (a comparison when there are several).
        out_dir: output directory (created if missing).
        title: report title; default names the runs.

    Returns:
        ``(html_path, md_path)``.

    Raises:
        RunDirError: no run given, a path that is not a finished run directory, or an unwritable ``out_dir``.
    """
    if not run_dirs:
        raise RunDirError("no run directory given; pass one or more directories written by 'bce3s train'")
    runs = [load_run(p) for p in run_dirs]
    _unique_labels(runs)
    colors = plots.run_colors([r.label for r in runs])
    out = Path(out_dir)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create report directory {out} ({err.strerror}); choose another --out") from None

    blocks: list[_Block] = []
    _section_runs(runs, blocks)
    _section_results(runs, blocks)
    _section_per_class(runs, colors, blocks)
    _section_shots(runs, colors, blocks)
    _section_curves(runs, colors, blocks)
    _section_calibration(runs, colors, blocks)
    _section_weight_norms(runs, colors, blocks)
    _section_geometry(runs, colors, blocks)
    _section_confusion(runs, blocks)
    _section_config(runs, blocks)
    _section_data(runs, blocks)

    title = title or ("BCE3S report: " + " vs ".join(r.label for r in runs))
    subtitle = (f"{len(runs)} run(s); generated {_dt.datetime.now().isoformat(timespec='seconds')} by bce3s report. "
                "Accuracies are in percent.")
    for b in blocks:
        if isinstance(b, _Figure):
            _atomic_write(out / "figures" / f"{b.name}.png", b.png)
    html_path, md_path = out / "report.html", out / "report.md"
    _atomic_write(md_path, _render_md(title, subtitle, blocks).encode("utf-8"))
    _atomic_write(html_path, _render_html(title, subtitle, blocks).encode("utf-8"))
    log.debug("report written to %s", html_path)
    return html_path, md_path
