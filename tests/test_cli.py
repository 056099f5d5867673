"""The command line: help texts, train -> eval -> report -> compare on a tiny run, sweep and the demo."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from bce3s.cli import build_parser, main
from bce3s.config import load_config
from bce3s.data import AugmentSpec, SamplingSpec, build_data, make_batch_source
from bce3s.engine.checkpoint import load_checkpoint
from bce3s.eval.metrics import summarize
from bce3s.models import build_model

TINY = {
    "data": {"dataset": "digits_lt", "imbalance_factor": 10},
    "model": {"name": "small_cnn", "projector_dim": 16},
    "stages": [
        {
            "name": "stage1",
            "epochs": 2,
            "batch_size": 64,
            "loss": {"name": "bce3s", "params": {"neg_class_ratio": 1.0}},
            "optim": {"lr": 0.05},
            "mixing": {"enabled": True},
        },
        {
            "name": "stage2",
            "epochs": 1,
            "batch_size": 64,
            "freeze_backbone": True,
            "loss": {"name": "cb_bce", "params": {"neg_class_ratio": 1.0}},
            "optim": {"lr": 0.01, "weight_decay": 0.0},
        },
    ],
    "eval": {"tta_flip": False},
    "runtime": {"device": "cpu"},
}


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return p


@pytest.mark.parametrize("command", ["train", "eval", "report", "compare", "sweep", "demo", "config"])
def test_help_documents_every_option(command, capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for action in sub._actions:
        for opt in action.option_strings:
            assert opt in text, opt


def test_train_eval_report_compare(cfg_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(cfg_file), "--out", str(out), "--quiet", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    final = json.loads((out / "final.json").read_text())
    assert final["run"]["seed"] == 5
    assert f"{final['test']['last']['top1']:.2f}" in printed
    assert main(["eval", str(out), "--checkpoint", "stage1_last", "--quiet"]) == 0
    printed = capsys.readouterr().out
    evaluated = json.loads((out / "eval_test_stage1_last.json").read_text())
    # the stage-1 checkpoint, recomputed here: the model of stage1_last.pt on the un-augmented test split
    cfg = load_config(cfg_file)
    data = build_data(cfg.data)
    model = build_model("small_cnn", num_classes=10, in_channels=1, head="normalized", projector_dim=16)
    model.load_state_dict(load_checkpoint(out / "checkpoints" / "stage1_last.pt")["model"])
    src = make_batch_source(data.test, AugmentSpec("gray"), SamplingSpec(train=False, batch_size=4096), device="cpu")
    ((x, y),) = list(src)
    with torch.no_grad():
        want = summarize(model.eval()(x).logits, y, data.train_counts)
    for key in ("top1", "mean_per_class", "few", "nll"):
        assert evaluated["metrics"][key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), key
    assert f"{want['top1']:.2f}" in printed and f"{want['few']:.2f}" in printed
    assert evaluated["geometry"]["summary"]["compactness"]["all"]["mean"] is not None
    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--quiet"]) == 0
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "report.md").is_file()
    assert main(["compare", str(out), "--format", "csv", "--out", str(tmp_path / "cmp.csv"), "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cmp.csv").read_text())))
    assert [r["checkpoint"] for r in rows] == ["last", "best_val"]
    for row in rows:  # one seed: the mean is the run's number, there is no std
        assert row["n"] == "1" and row["seeds"] == "5" and row["top1_std"] == ""
        assert float(row["top1_mean"]) == pytest.approx(final["test"][row["checkpoint"]]["top1"], abs=5e-5)


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bogus" in err[0]


def test_config_prints_resolved_yaml_that_loads_back(cfg_file, tmp_path, capsys):
    overrides = ["stages.1.optim.lr=0.2", "data.imbalance_factor=20", "runtime.seed=3"]
    assert main(["config", str(cfg_file), *[x for o in overrides for x in ("--set", o)]]) == 0
    captured = capsys.readouterr()
    printed = tmp_path / "printed.yaml"
    printed.write_text(captured.out)
    again = load_config(printed)
    assert again == load_config(cfg_file, overrides)
    assert again.stages[1].optim.lr == 0.2 and again.runtime.seed == 3


@pytest.mark.parametrize(
    "overrides",
    [["stages.0.lr=0.1"], ["stages.0.epochs=0"], ["model.name=no_such_model"], ["stages.0.loss.name=nope"], ["x"]],
)
def test_config_bad_input_is_one_line_exit_2(cfg_file, overrides, capsys):
    assert main(["config", str(cfg_file), *[x for o in overrides for x in ("--set", o)]]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bce3s: error: ")


@pytest.mark.slow
def test_sweep_two_seeds_writes_compare_table(cfg_file, tmp_path, capsys):
    parent = tmp_path / "sweep"
    assert main(["sweep", str(cfg_file), "--seeds", "0", "1", "--out", str(parent), "--quiet"]) == 0
    finals = [json.loads((parent / f"seed{s}" / "final.json").read_text()) for s in (0, 1)]
    assert [f["run"]["seed"] for f in finals] == [0, 1]
    cells = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in (parent / "compare.md").read_text().splitlines()
        if line.startswith("|")
    ]
    header, rows = cells[0], cells[2:]
    col = {name: header.index(name) for name in ("Checkpoint", "n", "All")}
    assert [r[col["Checkpoint"]] for r in rows] == ["last", "best_val"]
    for row in rows:  # one config, two seeds: mean ± sample std of the two runs' test top-1
        top1 = [f["test"][row[col["Checkpoint"]]]["top1"] for f in finals]
        assert row[col["n"]] == "2"
        assert row[col["All"]] == f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f}"


@pytest.mark.slow
def test_demo_prints_table_and_report_path(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'demo' / 'report' / 'report.html'}" in out
    for name in ("ce", "bce3s"):
        top1 = [json.loads((tmp_path / "demo" / name / f"seed{s}" / "final.json").read_text())["test"]["last"]["top1"]
                for s in (0, 1)]
        assert f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f}" in out
    assert "Verdict, All (last)" in out


def test_final_table_says_why_a_shot_group_is_empty(capsys: pytest.CaptureFixture[str]) -> None:
    """The train result table explains a dash in Few (no class under 20 training images), and only then."""
    from bce3s.cli import _print_final

    row = {"top1": 80.0, "many": 85.0, "medium": 60.0, "few": None, "ece": 3.0}
    _print_final({"test": {"last": row}, "train_counts": [500, 300, 180, 101, 65, 50]}, Path("r"))
    out = capsys.readouterr().out
    assert "Few" in out and "no class has < 20 training images" in out
    _print_final({"test": {"last": row}, "train_counts": [500, 300, 50, 10]}, Path("r"))
    assert "no class has" not in capsys.readouterr().out
