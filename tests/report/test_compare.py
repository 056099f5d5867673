"""Tests of bce3s.report.compare: grouping by config, mean ± sample std over seeds, Markdown and CSV output."""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import bce3s
from bce3s.errors import RunDirError
from bce3s.report.compare import (
    COMPARE_METRICS,
    aggregate_groups,
    compare_runs,
    config_hash,
    format_csv,
    format_groups_markdown,
    format_markdown,
)

METRICS = [key for key, _ in COMPARE_METRICS]


@pytest.fixture(scope="module")
def seeds_x_configs(tmp_path_factory: pytest.TempPathFactory, write_run: Callable[..., Path]) -> list[Path]:
    """3 seeds x 2 configs (CE and BCE3S), interleaved so grouping cannot rely on order."""
    root = tmp_path_factory.mktemp("compare")
    runs = []
    for seed in range(3):
        for loss in ("ce", "bce3s"):
            runs.append(write_run(root / f"{loss}_s{seed}", loss=loss, seed=seed, with_eval=False,
                                  with_history=False))
    return runs


def _finals(runs: list[Path], loss: str) -> list[dict[str, Any]]:
    finals = [json.loads((r / "final.json").read_text()) for r in runs]
    return [f for f in finals if f["run"]["loss"] == loss]


def test_mean_and_sample_std_over_seeds(seeds_x_configs: list[Path]) -> None:
    rows = compare_runs(seeds_x_configs)
    assert [(r["loss"], r["checkpoint"]) for r in rows] == [("ce", "last"), ("ce", "best_val"),
                                                            ("bce3s", "last"), ("bce3s", "best_val")]
    for row in rows:
        finals = _finals(seeds_x_configs, row["loss"])
        assert row["n"] == 3 and sorted(row["seeds"]) == [0, 1, 2]
        assert row["config_name"] == f"configs/digits_lt/{row['loss']}.yaml"
        for key in METRICS:
            vals = np.array([f["test"][row["checkpoint"]][key] for f in finals], dtype=float)
            assert row[f"{key}_mean"] == pytest.approx(vals.mean(), abs=1e-12)
            assert row[f"{key}_std"] == pytest.approx(vals.std(ddof=1), abs=1e-12)
            assert row[f"{key}_n"] == 3


def test_config_hash_ignores_only_the_seed(seeds_x_configs: list[Path]) -> None:
    cfgs = [yaml.safe_load((r / "config.yaml").read_text()) for r in seeds_x_configs]
    ce = [c for c in cfgs if c["stages"][0]["loss"]["name"] == "ce"]
    assert ce[0]["runtime"]["seed"] != ce[1]["runtime"]["seed"]
    assert config_hash(ce[0]) == config_hash(ce[1])
    changed = json.loads(json.dumps(ce[0]))
    changed["stages"][0]["optim"]["lr"] = 0.1
    assert config_hash(changed) != config_hash(ce[0])
    assert ce[0]["runtime"]["seed"] is not None  # the input dict is not modified


def test_same_config_file_with_changed_setting_is_its_own_group(tmp_path: Path,
                                                                 write_run: Callable[..., Path]) -> None:
    runs = [write_run(tmp_path / "a0", seed=0, lr=0.01), write_run(tmp_path / "a1", seed=1, lr=0.01),
            write_run(tmp_path / "b0", seed=0, lr=0.1)]
    rows = [r for r in compare_runs(runs) if r["checkpoint"] == "last"]
    assert [r["n"] for r in rows] == [2, 1]
    assert rows[0]["config_name"] == rows[1]["config_name"]
    assert rows[0]["config_hash"] != rows[1]["config_hash"]
    assert rows[1]["top1_std"] is None
    top1 = json.loads((runs[2] / "final.json").read_text())["test"]["last"]["top1"]
    assert rows[1]["top1_mean"] == pytest.approx(top1)
    md = format_markdown(rows)
    assert f"| {top1:.2f} ± – |" in md


def test_markdown_format(seeds_x_configs: list[Path]) -> None:
    rows = compare_runs(seeds_x_configs)
    lines = format_markdown(rows).splitlines()
    assert lines[0] == "| Config | Loss | Checkpoint | n | All | Many | Medium | Few | ECE |"
    assert lines[1] == "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    table = [line for line in lines if line.startswith("| configs/")]
    assert len(table) == 4
    finals = _finals(seeds_x_configs, "bce3s")
    cells = [c.strip() for c in table[3].strip("|").split("|")]
    assert cells[:4] == [f"configs/digits_lt/bce3s.yaml ({rows[3]['config_hash'][:7]})", "bce3s", "best_val", "3"]
    for key, cell in zip(METRICS, cells[4:]):
        vals = np.array([f["test"]["best_val"][key] for f in finals], dtype=float)
        assert cell == f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}"
    assert "sample std (ddof = 1)" in lines[-1]


def test_csv_format(seeds_x_configs: list[Path]) -> None:
    rows = compare_runs(seeds_x_configs)
    parsed = list(csv.DictReader(io.StringIO(format_csv(rows))))
    assert len(parsed) == 4
    assert list(parsed[0])[:10] == ["config_name", "config_hash", "dataset", "model", "loss", "stages", "checkpoint",
                                    "split", "n", "seeds"]
    for rec in parsed:
        assert rec["n"] == "3" and rec["seeds"] == "0 1 2" and rec["split"] == "test"
        assert rec["stages"] == "stage1+stage2"
        finals = _finals(seeds_x_configs, rec["loss"])
        for key in METRICS:
            vals = np.array([f["test"][rec["checkpoint"]][key] for f in finals], dtype=float)
            assert float(rec[f"{key}_mean"]) == pytest.approx(vals.mean(), abs=5e-5)
            assert float(rec[f"{key}_std"]) == pytest.approx(vals.std(ddof=1), abs=5e-5)


def test_csv_leaves_std_empty_for_one_seed(tmp_path: Path, write_run: Callable[..., Path]) -> None:
    parsed = list(csv.DictReader(io.StringIO(format_csv(compare_runs([write_run(tmp_path / "r")])))))
    assert [p["n"] for p in parsed] == ["1", "1"]
    assert all(p["top1_std"] == "" and p["top1_mean"] != "" for p in parsed)


def test_missing_metric_is_left_out_of_its_mean(tmp_path: Path, write_run: Callable[..., Path]) -> None:
    runs = [write_run(tmp_path / f"s{seed}", seed=seed) for seed in range(3)]
    final = json.loads((runs[0] / "final.json").read_text())
    final["test"]["last"]["ece"] = None  # NaN is stored as null
    del final["test"]["best_val"]
    (runs[0] / "final.json").write_text(json.dumps(final))
    last, best = compare_runs(runs)
    assert last["n"] == 3 and last["ece_n"] == 2 and last["top1_n"] == 3
    eces = [json.loads((r / "final.json").read_text())["test"]["last"]["ece"] for r in runs[1:]]
    assert last["ece_mean"] == pytest.approx(np.mean(eces))
    assert best["n"] == 2 and best["seeds"] == [1, 2]


def test_bad_input_raises(tmp_path: Path, write_run: Callable[..., Path]) -> None:
    with pytest.raises(RunDirError):
        compare_runs([])
    good = write_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError) as err:
        compare_runs([good, tmp_path / "empty"])  # one bad directory fails the whole comparison
    assert str(tmp_path / "empty") in str(err.value) and "\n" not in str(err.value)


def test_compare_does_not_import_matplotlib() -> None:
    """``bce3s compare`` reads JSON only: importing what it runs must not load matplotlib (nor the figures)."""
    src = Path(bce3s.__file__).resolve().parents[1]  # the bce3s under test, not another installed copy
    code = (
        "import sys\n"
        "import bce3s.report.compare, bce3s.report.rundata\n"
        "print(sorted(m for m in sys.modules if m == 'matplotlib' or m.startswith(('matplotlib.', 'bce3s.'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    loaded = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert "bce3s.report.compare" in loaded
    assert not [m for m in loaded if m.startswith("matplotlib") or m.startswith("bce3s.report.plots")]


def test_markdown_shows_each_configs_set_overrides(tmp_path: Path, write_run: Callable[..., Path]) -> None:
    """Two runs of one config file that differ by a --set: the table says which override made each group."""
    runs = [write_run(tmp_path / "a0", lr=0.01), write_run(tmp_path / "b0", lr=0.1)]
    for run, sets in zip(runs, (["--set", "runtime.device=cpu"], ["--set=stages.0.optim.lr=0.1"]), strict=True):
        info = json.loads((run / "run.json").read_text())
        info["command"] = ["bce3s", "train", "c.yaml", "--out", str(run), *sets]
        (run / "run.json").write_text(json.dumps(info))
    rows = compare_runs(runs)
    assert [r["overrides"] for r in rows if r["checkpoint"] == "last"] == [["runtime.device=cpu"],
                                                                         ["stages.0.optim.lr=0.1"]]
    md = format_markdown(rows)
    assert "--set runtime.device=cpu" in md and "--set stages.0.optim.lr=0.1" in md
    plain = format_markdown(compare_runs([write_run(tmp_path / "c0")]))
    assert "--set" not in plain


def test_aggregate_groups_against_numpy() -> None:
    """Hand-made test results of 2 configs x 3 seeds (one run without best_val, one NaN ECE, TTA on one config)."""
    rng = np.random.default_rng(0)
    vals = {g: rng.uniform(10, 90, size=(3, 2, len(METRICS))) for g in ("a", "b")}  # seed x checkpoint x metric
    groups: dict[str, list[dict[str, Any]]] = {}
    for g, arr in vals.items():
        groups[g] = [{ck: dict(zip(METRICS, arr[s, c])) for c, ck in enumerate(("last", "best_val"))}
                     for s in range(3)]
    del groups["b"][2]["best_val"]
    groups["b"][0]["last"]["ece"] = float("nan")
    for s in range(3):
        groups["a"][s]["last_tta_flip"] = {"top1": 50.0 + s}
    rows = aggregate_groups(groups)
    assert [(r["group"], r["checkpoint"], r["tta"]) for r in rows] == [
        ("a", "last", False), ("a", "best_val", False), ("a", "last", True),
        ("b", "last", False), ("b", "best_val", False),
    ]
    by = {(r["group"], r["checkpoint"], r["tta"]): r for r in rows}
    for g in ("a", "b"):
        for c, ck in enumerate(("last", "best_val")):
            row = by[(g, ck, False)]
            seeds = [0, 1] if (g, ck) == ("b", "best_val") else [0, 1, 2]
            assert row["n"] == len(seeds)
            for m, key in enumerate(METRICS):
                x = vals[g][seeds, c, m]
                if (g, ck, key) == ("b", "last", "ece"):
                    x = x[1:]
                assert row[f"{key}_n"] == len(x)
                assert row[f"{key}_mean"] == pytest.approx(x.mean(), abs=1e-12)
                assert row[f"{key}_std"] == pytest.approx(x.std(ddof=1), abs=1e-12)
    tta = by[("a", "last", True)]
    assert (tta["n"], tta["top1_mean"], tta["top1_std"], tta["many_mean"]) == (3, 51.0, 1.0, None)
    single = aggregate_groups({"c": [{"last": {"top1": 42.0}}], "failed": []})
    assert [(r["group"], r["checkpoint"], r["n"], r["top1_mean"], r["top1_std"]) for r in single] == [
        ("c", "last", 1, 42.0, None), ("c", "best_val", 0, None, None),
        ("failed", "last", 0, None, None), ("failed", "best_val", 0, None, None),
    ]


def test_groups_markdown_puts_tta_apart() -> None:
    rows = aggregate_groups({"full": [{"last": {"top1": 60.0}, "best_val": {"top1": 61.0},
                                       "last_tta_flip": {"top1": 62.5}},
                                      {"last": {"top1": 64.0}, "best_val": {"top1": 61.0}}]})
    md = format_groups_markdown(rows)
    plain, _, flip = md.partition("Flip TTA")
    assert "| full | last | 2 | 62.00 ± 2.83 |" in plain and "| full | best_val | 2 | 61.00 ± 0.00 |" in plain
    assert "| full | last | 1 | 62.50 ± – |" in flip and "62.50" not in plain
