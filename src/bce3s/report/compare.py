"""Multi-seed comparison table: runs grouped by config, mean ± std over seeds, as Markdown or CSV.

``bce3s compare RUN_DIR ...`` calls :func:`compare_runs` and prints :func:`format_markdown` (or
:func:`format_csv`). Runs belong to one group when they share ``final.json["run"]["config_name"]`` *and* their
resolved ``config.yaml`` is identical once ``runtime.seed`` is removed (compared by a SHA-256 of the canonical
JSON of the config dict), so two runs of one config file with a changed ``--set`` are kept apart.

Every number comes from the test split in ``final.json`` without TTA, for the checkpoints ``last`` and
``best_val`` (one table row per group and checkpoint). Accuracies and ECE are in percent. The std is the sample
standard deviation over seeds (``ddof = 1``); a group with a single run has no std (shown as ``–``).

:func:`aggregate_groups` is the pure core for callers that already know which runs belong together (``bce3s sweep``
groups its runs by the config file it was given): it takes the ``final.json["test"]`` mappings of each group and
returns mean ± std rows, the flip-TTA rows apart; :func:`format_groups_markdown` prints them.

This module reads only JSON/YAML files and does not import matplotlib (``bce3s compare`` stays light).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bce3s.errors import RunDirError
from bce3s.report.document import DASH
from bce3s.report.rundata import CHECKPOINTS, RunData, load_run

__all__ = [
    "COMPARE_METRICS",
    "aggregate_groups",
    "compare_runs",
    "config_hash",
    "format_csv",
    "format_groups_markdown",
    "format_markdown",
    "run_overrides",
]

log = logging.getLogger(__name__)

COMPARE_METRICS = (("top1", "All"), ("many", "Many"), ("medium", "Medium"), ("few", "Few"), ("ece", "ECE"))
"""(key in the METRICS dict, column name) of the compared quantities, in table order."""


def config_hash(config: Mapping[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of the config dict (canonical JSON) without what does not define the
    experiment: the seed, and where or how fast it ran (``runtime.device``, ``num_workers``, ``threads``,
    ``pipeline``, ``data.root``, ``data.download``, ``log``)."""
    cfg = copy.deepcopy(dict(config))
    runtime = cfg.get("runtime")
    if isinstance(runtime, dict):
        for key in ("seed", "device", "num_workers", "threads", "pipeline"):
            runtime.pop(key, None)
    data = cfg.get("data")
    if isinstance(data, dict):
        data.pop("root", None)
        data.pop("download", None)
    cfg.pop("log", None)
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of ``values``: ``(None, None)`` when empty, std ``None`` for one value."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def is_finite_number(v: Any) -> bool:
    """Whether ``v`` is a finite int or float (not a bool, not None, not NaN or inf): a metric value to average."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def format_mean_std(mean: float | None, std: float | None) -> str:
    """``"93.67 ± 0.50"``; ``–`` for a missing std (one value) and ``–`` alone for a missing mean."""
    if mean is None:
        return DASH
    return f"{mean:.2f} ± {DASH if std is None else f'{std:.2f}'}"


def _add_mean_std(row: dict[str, Any], keys: Sequence[str], results: Sequence[Mapping[str, Any]]) -> None:
    """Set ``key_mean``, ``key_std`` and ``key_n`` in ``row`` for each key, over the finite values in ``results``."""
    for key in keys:
        vals = [float(r[key]) for r in results if is_finite_number(r.get(key))]
        row[f"{key}_mean"], row[f"{key}_std"] = mean_std(vals)
        row[f"{key}_n"] = len(vals)


def run_overrides(run: RunData) -> list[str]:
    """The ``--set`` overrides of a run's command line (``run.json`` ``command``), in order; ``[]`` when none."""
    command = run.info.get("command") if isinstance(run.info, dict) else None
    if not isinstance(command, list):
        return []
    out: list[str] = []
    args = [str(a) for a in command]
    for i, arg in enumerate(args):
        if arg == "--set" and i + 1 < len(args):
            out.append(args[i + 1])
        elif arg.startswith("--set="):
            out.append(arg[len("--set="):])
    return out


def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Group runs by config and aggregate their test results over seeds.

    Args:
        run_dirs: run directories written by ``bce3s train``.

    Returns:
        One row per (config group, checkpoint), groups in order of first appearance, ``last`` before
        ``best_val``. Each row: ``config_name``, ``config_hash``, ``dataset``, ``model``, ``loss`` (stage-1),
        ``stages`` (``"a+b"``), ``checkpoint``, ``split`` (``"test"``), ``n`` (runs with results for this
        checkpoint), ``seeds`` (list), ``run_dirs`` (list of str), ``overrides`` (the ``--set`` overrides
        of the group's runs, from ``run.json``), and for each metric ``m`` in
        :data:`COMPARE_METRICS` ``m_mean`` and ``m_std`` (``None`` when unavailable; ``m_std`` is ``None`` for
        ``n < 2``). A run whose metric is missing is left out of that metric's mean (``m_n`` counts the runs
        used).

    Raises:
        RunDirError: no run given, or a path that is not a finished run directory.
    """
    if not run_dirs:
        raise RunDirError("no run directory given; pass one or more directories written by 'bce3s train'")
    groups: dict[tuple[str, str], list[RunData]] = {}
    for path in run_dirs:
        run = load_run(path)
        meta = run.final.get("run") if isinstance(run.final.get("run"), dict) else {}
        key = (str(meta.get("config_name") or DASH), config_hash(run.config))
        groups.setdefault(key, []).append(run)
    rows: list[dict[str, Any]] = []
    for (config_name, chash), runs in groups.items():
        meta = runs[0].final.get("run") if isinstance(runs[0].final.get("run"), dict) else {}
        seeds = [(r.final.get("run") or {}).get("seed") for r in runs]
        dupes = {s for s in seeds if s is not None and seeds.count(s) > 1}
        if dupes:
            log.warning("config %s has several runs with seed(s) %s; each counts as one sample", config_name,
                        sorted(dupes))
        for ckpt in CHECKPOINTS:
            with_results = [r for r in runs if r.test_metrics(ckpt) is not None]
            row: dict[str, Any] = {
                "config_name": config_name,
                "config_hash": chash,
                "dataset": meta.get("dataset"),
                "model": meta.get("model"),
                "loss": meta.get("loss"),
                "stages": "+".join(map(str, meta.get("stages") or [])),
                "checkpoint": ckpt,
                "split": "test",
                "n": len(with_results),
                "seeds": [(r.final.get("run") or {}).get("seed") for r in with_results],
                "run_dirs": [str(r.path) for r in with_results],
                "overrides": list(dict.fromkeys(o for r in runs for o in run_overrides(r))),
            }
            _add_mean_std(row, [key for key, _ in COMPARE_METRICS], [r.test_metrics(ckpt) or {} for r in with_results])
            rows.append(row)
    return rows


def _cell(row: Mapping[str, Any], key: str) -> str:
    return format_mean_std(row.get(f"{key}_mean"), row.get(f"{key}_std"))


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table (``mean ± std`` over seeds, 2 decimals; ``–`` = no std for n = 1)."""
    header = ["Config", "Loss", "Checkpoint", "n"] + [name for _, name in COMPARE_METRICS]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---", "---", "---", "---:"] + ["---:"] * len(COMPARE_METRICS)) + " |",
    ]
    for row in rows:
        name = f"{row['config_name']} ({row['config_hash'][:7]})"
        cells = [name, str(row.get("loss") or DASH), str(row["checkpoint"]), str(row["n"])]
        cells += [_cell(row, key) for key, _ in COMPARE_METRICS]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    overridden = {}
    for row in rows:
        if row.get("overrides"):
            overridden.setdefault(f"{row['config_name']} ({row['config_hash'][:7]})", row["overrides"])
    if overridden:
        lines += ["", "Command-line overrides of each config (from run.json):"]
        lines += [f"- {name}: --set {' --set '.join(sets)}" for name, sets in overridden.items()]
    lines += [
        "",
        "Test split, no TTA; accuracies and ECE (15 bins) in percent; mean ± sample std (ddof = 1) over seeds; "
        "n = number of seeds; – = not available (no std with one seed).",
    ]
    return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with one column per mean and std (4 decimals; empty when unavailable), seeds space-separated."""
    cols = ["config_name", "config_hash", "dataset", "model", "loss", "stages", "checkpoint", "split", "n", "seeds"]
    for key, _ in COMPARE_METRICS:
        cols += [f"{key}_mean", f"{key}_std"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        out = []
        for col in cols:
            v = row.get(col)
            if col == "seeds":
                out.append(" ".join(str(s) for s in v or []))
            elif v is None:
                out.append("")
            elif isinstance(v, float):
                out.append(f"{v:.4f}")
            else:
                out.append(str(v))
        writer.writerow(out)
    return buf.getvalue()


def aggregate_groups(
    groups: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Sequence[str] = tuple(key for key, _ in COMPARE_METRICS),
) -> list[dict[str, Any]]:
    """Mean ± sample std over the runs of each group, per checkpoint (pure: no files).

    Args:
        groups: group label -> one ``final.json["test"]`` mapping per run (``{"last": METRICS, "best_val":
            METRICS, "last_tta_flip": METRICS, ...}``; a checkpoint or a metric may be missing, ``None`` or NaN).
        metrics: the metric keys to aggregate (default: those of :data:`COMPARE_METRICS`).

    Returns:
        One row per (group, checkpoint), groups in the given order; per group ``last`` and ``best_val`` first,
        then ``last_tta_flip`` and ``best_val_tta_flip`` when at least one run of the group has them. Each row:
        ``group``, ``checkpoint`` (``last`` | ``best_val``), ``tta`` (bool), ``n`` (runs with this checkpoint),
        and per metric ``m``: ``m_mean``, ``m_std`` (sample std, ``ddof = 1``; ``None`` for fewer than 2 values)
        and ``m_n`` (finite values used). A group with no result for a checkpoint still gets its row (``n = 0``,
        means ``None``), so that a failed config stays visible.
    """
    rows: list[dict[str, Any]] = []
    for label, tests in groups.items():
        for tta in (False, True):
            for ckpt in CHECKPOINTS:
                key = f"{ckpt}_tta_flip" if tta else ckpt
                results = [t.get(key) for t in tests if isinstance(t, Mapping)]
                results = [r for r in results if isinstance(r, Mapping)]
                if tta and not results:
                    continue
                row: dict[str, Any] = {"group": label, "checkpoint": ckpt, "tta": tta, "n": len(results)}
                _add_mean_std(row, metrics, results)
                rows.append(row)
    return rows


def format_groups_markdown(rows: Sequence[Mapping[str, Any]], *, title: str = "Config") -> str:
    """Markdown tables of :func:`aggregate_groups` rows: the plain test rows, then the flip-TTA rows apart."""
    names = [name for _, name in COMPARE_METRICS]
    keys = [key for key, _ in COMPARE_METRICS]

    def table(part: Sequence[Mapping[str, Any]]) -> list[str]:
        lines = [
            "| " + " | ".join([title, "Checkpoint", "n", *names]) + " |",
            "| " + " | ".join(["---", "---", "---:"] + ["---:"] * len(names)) + " |",
        ]
        for row in part:
            cells = [str(row["group"]), str(row["checkpoint"]), str(row["n"])] + [_cell(row, k) for k in keys]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return lines

    plain = [r for r in rows if not r.get("tta")]
    flip = [r for r in rows if r.get("tta")]
    lines = table(plain)
    if flip:
        lines += ["", "Flip TTA (reported apart, never used for selection):", "", *table(flip)]
    lines += [
        "",
        "Test split; accuracies and ECE (15 bins) in percent; mean ± sample std (ddof = 1) over seeds; n = number of "
        "seeds with a result; – = not available (no std with one seed). best_val = the checkpoint chosen on the "
        "validation split.",
    ]
    return "\n".join(lines) + "\n"
