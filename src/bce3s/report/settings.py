"""Sections of the report (part 3): the configuration of each run and its data, side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bce3s.report.document import DASH, Block, Code, Heading, Para
from bce3s.report.rundata import RunData
from bce3s.report.sections import get_path, short, shot_group_lists, side_by_side

__all__ = ["section_config", "section_data"]


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


def section_config(runs: Sequence[RunData], blocks: list[Block]) -> None:
    """The main settings of each run side by side, then each full config.yaml."""
    import yaml

    blocks.append(Heading(2, "Configuration"))
    blocks.append(Para("Main settings of each resolved config.yaml; rows marked '(differs)' differ between runs. "
                        "The full files follow."))
    rows = [(name, [short(get_path(r.config, path)) for r in runs]) for path, name in _CONFIG_KEYS]
    n_stages = max((len(r.config.get("stages") or []) for r in runs), default=0)
    for i in range(n_stages):
        names = [short(get_path(r.config, f"stages.{i}.name")) for r in runs]
        rows.append((f"stage {i + 1}: name", names))
        for path, name in _STAGE_KEYS:
            rows.append((f"stage {i + 1}: {name}", [short(get_path(r.config, f"stages.{i}.{path}")) for r in runs]))
    blocks.append(side_by_side(runs, rows, first="Setting"))
    for run in runs:
        blocks.append(Code(f"config.yaml of {run.label}", yaml.safe_dump(run.config, sort_keys=False)))


def _count_summary(values: Any) -> str:
    if isinstance(values, list) and values and all(isinstance(v, int) for v in values):
        return f"{sum(values)} in {len(values)} classes (max {max(values)}, min {min(values)})"
    return short(values) if not isinstance(values, list) else f"list of {len(values)}"


def section_data(runs: Sequence[RunData], blocks: list[Block]) -> None:
    """Training counts and the data record of each run side by side."""
    blocks.append(Heading(2, "Data"))
    blocks.append(Para("Training counts from final.json and the data record (data.json) of each run; lists of "
                        "per-class counts are summarized."))
    rows: list[tuple[str, list[str]]] = []

    def counts_row(name: str, fn: Callable[[list[int]], str]) -> None:
        rows.append((name, [fn(r.train_counts) if r.train_counts else DASH for r in runs]))

    counts_row("classes", lambda c: str(len(c)))
    counts_row("training images", lambda c: str(sum(c)))
    counts_row("images per class (max / min)", lambda c: f"{max(c)} / {min(c)}")
    counts_row("imbalance factor (max / min)", lambda c: f"{max(c) / max(min(c), 1):.1f}")
    for grp in ("many", "medium", "few"):
        counts_row(f"{grp} classes", lambda c, grp=grp: str(len(shot_group_lists(c)[grp])))
    keys: list[str] = []
    for run in runs:
        for k, v in (run.data_record or {}).items():
            if isinstance(v, dict):
                keys += [f"{k}.{kk}" for kk in v if f"{k}.{kk}" not in keys]
            elif k not in keys:
                keys.append(k)
    for key in keys:
        rows.append((key, [_count_summary(get_path(r.data_record or {}, key)) for r in runs]))
    blocks.append(side_by_side(runs, rows, first="Item"))
