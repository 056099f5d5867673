"""Who won, by how much, how sure: mean ± std over seeds per method and a paired verdict between methods.

``bce3s demo`` prints this summary and ``bce3s report`` opens with it whenever it is given more than one run.

The verdict rule (:func:`paired_verdict`): two methods are compared on the seeds both have (a seed fixes the data
split, the initialisation and the sampling order, so the per-seed difference removes what the seeds share). With
per-seed differences ``d_i = other_i - baseline_i`` over ``n`` seeds, mean ``d̄`` and sample standard deviation
``s`` (``ddof = 1``), the 95 % confidence interval of the mean difference is ``d̄ ± t(0.975, n - 1) · s / √n``
(Student's t). A method is called **ahead** only when that interval excludes 0; otherwise the difference is
**within seed noise**. With 3 seeds ``t = 4.30``, so a lead needs ``|d̄| > 2.48 s``. One seed gives no estimate of
the noise and no verdict. The "± s" printed next to a difference is ``s``, the seed-to-seed spread of the
difference (not the standard error).

This module reads run data only (no matplotlib).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bce3s.eval.metrics import shot_groups
from bce3s.report.compare import format_mean_std, is_finite_number, mean_std
from bce3s.report.document import DASH, Block, Heading, Para, Table
from bce3s.report.rundata import CHECKPOINTS, RunData

__all__ = [
    "SUMMARY_METRICS",
    "VERDICT_RULE",
    "MethodSummary",
    "Verdict",
    "group_definition",
    "group_runs_by_config",
    "paired_verdict",
    "section_summary",
    "summarize_methods",
    "summary_table",
    "summary_text",
    "t_975",
    "verdicts",
]

SUMMARY_METRICS = (("top1", "All"), ("many", "Many"), ("medium", "Medium"), ("few", "Few"))
"""(key in a METRICS dict, column name) of the summary, in column order."""

_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
          2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
          2.042)


def t_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df >= 1`` degrees of freedom (table to 30, then 1.96)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return _T_975[df - 1] if df <= len(_T_975) else 1.96


@dataclass(frozen=True)
class Verdict:
    """The paired comparison of two methods on one metric (see the module docstring for the rule).

    Attributes:
        metric: what is compared, e.g. ``"All (last)"``.
        baseline, other: the two method names; differences are ``other - baseline``.
        n: seeds both methods have.
        diff: mean per-seed difference (``None`` when ``n == 0``).
        std: sample std of the per-seed differences (``None`` when ``n < 2``).
        half_width: half-width of the 95 % t-interval of the mean difference (``None`` when ``n < 2``).
        winner: the method ahead, or ``None`` (within seed noise, no difference, or too few seeds).
    """

    metric: str
    baseline: str
    other: str
    n: int
    diff: float | None
    std: float | None
    half_width: float | None
    winner: str | None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % confidence interval of ``other - baseline``, or ``None`` with fewer than 2 seeds."""
        if self.diff is None or self.half_width is None:
            return None
        return self.diff - self.half_width, self.diff + self.half_width

    def diff_text(self) -> str:
        """``"+1.23 ± 0.45"`` (mean difference ± its seed-to-seed std), ``*`` when the interval excludes 0."""
        if self.diff is None:
            return DASH
        std = DASH if self.std is None else f"{self.std:.2f}"
        return f"{self.diff:+.2f} ± {std}" + (" *" if self.winner else "")

    def text(self) -> str:
        """One sentence: who is ahead by how much and how sure, or why there is no verdict."""
        a, b = self.baseline, self.other
        if self.diff is None:
            return f"{self.metric}: no seed in common between {a} and {b}, no comparison"
        if self.std is None or self.interval is None:
            return (f"{self.metric}: {b} − {a} = {self.diff:+.2f} points on one seed; no estimate of seed noise, "
                    "no verdict (run more seeds)")
        lo, hi = self.interval
        if self.std == 0 and self.diff == 0:
            return f"{self.metric}: no difference ({a} and {b} are equal on each of the {self.n} seeds)"
        ci = f"95% CI [{lo:+.2f}, {hi:+.2f}]"
        if self.winner is None:
            return (f"{self.metric}: difference within seed noise: {b} − {a} = {self.diff:+.2f} ± {self.std:.2f} "
                    f"points over {self.n} seeds, {ci} includes 0")
        return (f"{self.metric}: {self.winner} ahead by {abs(self.diff):.2f} ± {self.std:.2f} points over "
                f"{self.n} seeds ({b} − {a}: {ci})")


def paired_verdict(
    baseline: Mapping[Any, float], other: Mapping[Any, float], *, baseline_name: str, other_name: str, metric: str
) -> Verdict:
    """Compare two methods on the seeds both have (``{seed: value}`` each); the rule is the module docstring's."""
    seeds = [s for s in baseline if s in other]
    diffs = [float(other[s]) - float(baseline[s]) for s in seeds]
    diff, std = mean_std(diffs)
    half = None if std is None else t_975(len(diffs) - 1) * std / math.sqrt(len(diffs))
    winner = None
    if diff is not None and half is not None and abs(diff) > half:
        winner = other_name if diff > 0 else baseline_name
    return Verdict(metric, baseline_name, other_name, len(diffs), diff, std, half, winner)


@dataclass
class MethodSummary:
    """One method's runs (one per seed) and its test numbers ``values[checkpoint][metric] = {seed: value}``."""

    label: str
    runs: list[RunData]
    values: dict[str, dict[str, dict[Any, float]]] = field(default_factory=dict)

    @property
    def seeds(self) -> list[Any]:
        """The seeds of the runs, in run order."""
        return [_seed(r, i) for i, r in enumerate(self.runs)]

    def mean_std(self, checkpoint: str, key: str) -> tuple[float | None, float | None]:
        """Mean and sample std over seeds of one metric (``None`` where unavailable / one seed)."""
        return mean_std(list(self.values.get(checkpoint, {}).get(key, {}).values()))

    def cell(self, checkpoint: str, key: str) -> str:
        """``"93.67 ± 0.50"`` (``–`` for the std with one seed; ``–`` alone when no run has the number)."""
        return format_mean_std(*self.mean_std(checkpoint, key))


def _seed(run: RunData, index: int) -> Any:
    meta = run.final.get("run") if isinstance(run.final.get("run"), dict) else {}
    seed = meta.get("seed")
    return seed if seed is not None else f"#{index}"


def summarize_methods(groups: Sequence[tuple[str, Sequence[RunData]]]) -> list[MethodSummary]:
    """Collect each method's test numbers (``final.json``, no TTA) per checkpoint, metric and seed.

    Args:
        groups: ``(method label, its runs, one per seed)`` in the order the summary shows them; the first is the
            baseline of the verdicts.
    """
    out = []
    for label, runs in groups:
        summary = MethodSummary(label, list(runs))
        for ckpt in CHECKPOINTS:
            per_key: dict[str, dict[Any, float]] = {key: {} for key, _ in SUMMARY_METRICS}
            for i, run in enumerate(runs):
                m = run.test_metrics(ckpt) or {}
                for key, _ in SUMMARY_METRICS:
                    v = m.get(key)
                    if is_finite_number(v):
                        per_key[key][_seed(run, i)] = float(v)
            summary.values[ckpt] = per_key
        out.append(summary)
    return out


def verdicts(methods: Sequence[MethodSummary], checkpoint: str, key: str = "top1") -> list[Verdict]:
    """Each method after the first against the first (the baseline), on one checkpoint and metric."""
    if len(methods) < 2:
        return []
    name = dict(SUMMARY_METRICS).get(key, key)
    base = methods[0]
    return [
        paired_verdict(
            base.values.get(checkpoint, {}).get(key, {}),
            m.values.get(checkpoint, {}).get(key, {}),
            baseline_name=base.label,
            other_name=m.label,
            metric=f"{name} ({checkpoint})",
        )
        for m in methods[1:]
    ]


def summary_table(methods: Sequence[MethodSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: mean ± std of each method per checkpoint, then each method's paired difference to the
    first (``*`` = 95 % interval excludes 0)."""
    header = ["Method", "Checkpoint", "Seeds"] + [name for _, name in SUMMARY_METRICS]
    rows: list[list[str]] = []
    for ckpt in CHECKPOINTS:
        for m in methods:
            rows.append([m.label, ckpt, str(len(m.runs))] + [m.cell(ckpt, key) for key, _ in SUMMARY_METRICS])
        for m in methods[1:]:
            diffs = []
            for key, _ in SUMMARY_METRICS:
                v = verdicts([methods[0], m], ckpt, key)[0]
                diffs.append(v.diff_text())
            n = verdicts([methods[0], m], ckpt, "top1")[0].n
            rows.append([f"{m.label} − {methods[0].label}", ckpt, f"{n} paired"] + diffs)
    return header, rows


def group_definition(train_counts: Sequence[int], test_counts: Sequence[int] | None = None,
                     many: int = 100, few: int = 20) -> str:
    """Many / Medium / Few as the code defines them (:func:`bce3s.eval.metrics.shot_groups`), with the class
    count of each group on these training counts, and what one test image is worth in the smallest group."""
    groups = {k: v.tolist() for k, v in shot_groups(list(train_counts), many=many, few=few).items()}
    text = (f"Groups by training images per class: Many > {many} ({len(groups['many'])} classes), Medium {few}-{many} "
            f"({len(groups['medium'])} classes), Few < {few} ({len(groups['few'])} classes); a group's accuracy is "
            "the mean of its classes' accuracies.")
    few_ids = [i for i in groups["few"] if test_counts and i < len(test_counts) and int(test_counts[i]) > 0]
    if test_counts and few_ids and len(few_ids) == len(groups["few"]):
        k = len(few_ids)
        steps = {100 / (int(test_counts[i]) * k) for i in few_ids}
        n_few = sum(int(test_counts[i]) for i in few_ids)
        size = f"{max(steps):.2f}" if len(steps) == 1 else f"up to {max(steps):.2f}"
        text += f" Few has {n_few} test images in all: one of them moves Few by {size} points."
    return text


def group_runs_by_config(runs: Sequence[RunData]) -> list[tuple[str, list[RunData]]]:
    """Runs grouped as ``bce3s compare`` groups them (config name and config without the seed), in order of first
    appearance; each group labelled by its config file's stem (``ce``), its path without ``configs/`` where stems
    repeat, and with a hash of the config where paths repeat (the same file with other ``--set`` overrides)."""
    from bce3s.report.compare import config_hash

    groups: dict[tuple[str, str], list[RunData]] = {}
    for run in runs:
        meta = run.final.get("run") if isinstance(run.final.get("run"), dict) else {}
        name = str(meta.get("config_name") or run.label)
        name = name[len("configs/"):] if name.startswith("configs/") else name
        groups.setdefault((name, config_hash(run.config)), []).append(run)
    stems = [Path(name).stem for name, _ in groups]
    names = [name for name, _ in groups]
    out = []
    for (name, h), g in groups.items():
        label = Path(name).stem if stems.count(Path(name).stem) == 1 else name
        out.append((label if names.count(name) == 1 else f"{name} ({h[:7]})", g))
    return out


def section_summary(runs: Sequence[RunData], blocks: list[Block]) -> None:
    """The report's first section when it has several runs: mean ± std per method over seeds and the verdict."""
    groups = group_runs_by_config(runs)
    methods = summarize_methods(groups)
    blocks.append(Heading(2, "Summary"))
    found = [v for ckpt in CHECKPOINTS for v in verdicts(methods, ckpt, "top1")]
    if found:
        n = max(v.n for v in found)
        blocks.append(Para(f"Who won on test top-1 (All), paired over {n} seed{'s' if n != 1 else ''}:"))
        blocks += [Para(v.text(), lead=True) for v in found]
    else:
        blocks.append(Para(f"One config ({methods[0].label}) over {len(methods[0].runs)} runs: nothing to compare.",
                           lead=True))
    header, rows = summary_table(methods)
    numeric = frozenset(range(2, len(header)))
    diff_rows = frozenset(i for i, r in enumerate(rows) if r[2].endswith("paired"))
    blocks.append(Table(header, rows, numeric=numeric, marked=diff_rows,
                        caption="Test accuracy (%), mean ± std over seeds; differences paired by seed"))
    counts = next((r.train_counts for r in runs if r.train_counts), None)
    notes = []
    if counts:
        notes.append(group_definition(counts, runs[0].test_counts))
    notes.append(f"{VERDICT_RULE[0].upper()}{VERDICT_RULE[1:]}. Runs are grouped by config; the first config is the "
                 "baseline of the differences.")
    blocks += [Para(x) for x in notes]


VERDICT_RULE = ("rule: a method is ahead only when the 95% t-interval of its mean per-seed difference excludes 0 "
                "(* in the table); ± is the std over seeds")
"""The verdict rule in one line (the module docstring has it in full)."""


def summary_text(methods: Sequence[MethodSummary], train_counts: Sequence[int] | None = None,
                 test_counts: Sequence[int] | None = None) -> str:
    """The summary as plain text (what ``bce3s demo`` prints): the mean ± std table with the paired differences,
    the group definition and one verdict line per checkpoint on All."""
    header, rows = summary_table(methods)
    widths = [max(len(header[j]), *(len(r[j]) for r in rows)) for j in range(len(header))]
    lines = ["  ".join(h.ljust(w) if j < 3 else h.rjust(w) for j, (h, w) in enumerate(zip(header, widths)))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
    if train_counts:
        lines += ["", group_definition(train_counts, test_counts)]
    lines.append("")
    lines += [f"Verdict, {v.text()}" for ckpt in CHECKPOINTS for v in verdicts(methods, ckpt, "top1")]
    lines.append(f"({VERDICT_RULE}.)")
    return "\n".join(lines)
