"""The command line: help texts, train -> eval -> report -> compare on a tiny run, sweep and the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bce3s.cli import build_parser, main

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


@pytest.mark.parametrize("command", ["train", "eval", "report", "compare", "sweep", "demo"])
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
    assert (out / "eval_test_stage1_last.json").is_file()
    assert "geometry: compactness" in capsys.readouterr().out
    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--quiet"]) == 0
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "report.md").is_file()
    assert main(["compare", str(out), "--format", "csv", "--out", str(tmp_path / "cmp.csv"), "--quiet"]) == 0
    assert (tmp_path / "cmp.csv").read_text().count("\n") >= 2


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bce3s: error: unrecognized arguments: --bogus")


@pytest.mark.slow
def test_sweep_two_seeds_writes_compare_table(cfg_file, tmp_path, capsys):
    parent = tmp_path / "sweep"
    assert main(["sweep", str(cfg_file), "--seeds", "0", "1", "--out", str(parent), "--quiet"]) == 0
    table = (parent / "compare.md").read_text()
    assert (parent / "seed0" / "final.json").is_file() and (parent / "seed1" / "final.json").is_file()
    assert "| 2 |" in table.replace("|  2 |", "| 2 |") or " 2 " in table


@pytest.mark.slow
def test_demo_prints_table_and_report_path(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "CE + CB stage 2" in out and "BCE3S + CB-BCE stage 2" in out
    assert f"report: {tmp_path / 'demo' / 'report' / 'report.html'}" in out
    for name in ("ce", "bce3s"):
        final = json.loads((tmp_path / "demo" / name / "final.json").read_text())
        assert f"{final['test']['last']['top1']:.2f}" in out
