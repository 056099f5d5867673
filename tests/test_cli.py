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
from bce3s.errors import ConfigError
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


def _table_rows(md: str) -> list[list[str]]:
    """Cells of the first Markdown table of ``md`` (header first, the separator line dropped)."""
    lines = md.split("\n\n")
    table = next(block for block in lines if block.startswith("|"))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]
    return [rows[0], *rows[2:]]


def test_sweep_labels_are_stems_with_folders_only_on_clashes():
    from bce3s.cli import _sweep_labels

    assert _sweep_labels(["a/x/full.yaml", "a/x/ce.yaml"]) == ["full", "ce"]
    assert _sweep_labels(["c10/ablation/full.yaml", "c100/ablation/full.yaml"]) == ["c10_ablation_full",
                                                                                   "c100_ablation_full"]
    assert _sweep_labels(["a/full.yaml", "b/full.yaml", "b/ce.yaml"]) == ["a_full", "b_full", "b_ce"]


def test_sweep_expands_a_wildcard_inside_the_package(tmp_path, monkeypatch):
    from bce3s.cli import PACKAGE_CONFIGS, _expand_configs

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the shell would pass the pattern on unexpanded
    rows = _expand_configs(["configs/fashion_mnist_lt/ablation/*.yaml"])
    assert rows == sorted(f"configs/fashion_mnist_lt/ablation/{p.name}"
                          for p in (PACKAGE_CONFIGS / "fashion_mnist_lt" / "ablation").glob("*.yaml"))
    assert len(rows) == 6 and rows[0].endswith("1_ce_joint.yaml")
    with pytest.raises(ConfigError):
        _expand_configs(["configs/nothing/*.yaml"])


def test_sweep_checks_every_config_before_training(cfg_file, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "stages": [{**TINY["stages"][0], "epochs": 0}]}))
    out = tmp_path / "sweep"
    assert main(["sweep", str(cfg_file), str(bad), "--seeds", "0", "1", "--out", str(out)]) == 2
    assert "stages.0.epochs" in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written
    assert main(["sweep", str(cfg_file), str(cfg_file), "--out", str(out)]) == 2
    assert main(["sweep", str(cfg_file), "--seeds", "0", "0", "--out", str(out)]) == 2
    assert not out.exists()


def _fake_finished_run(out: Path, cfg_file: Path, seed: int, top1: float) -> None:
    """A finished run directory of ``cfg_file`` at ``seed`` (config.yaml, run.json, final.json), trained by nobody."""
    from bce3s.config import dump_config

    out.mkdir(parents=True)
    (out / "config.yaml").write_text(dump_config(load_config(cfg_file, [f"runtime.seed={seed}"])))
    (out / "run.json").write_text(json.dumps({"status": "finished"}))
    metrics = {"top1": top1, "many": top1 + 10, "medium": top1 - 10, "few": None, "ece": 5.0}
    (out / "final.json").write_text(json.dumps({"test": {"last": metrics, "best_val": metrics}, "run": {"seed": seed}}))


def test_sweep_skips_finished_runs_and_refuses_another_configs_run(cfg_file, tmp_path, capsys):
    parent = tmp_path / "sweep"
    for seed, top1 in ((0, 50.0), (1, 54.0)):
        _fake_finished_run(parent / "tiny" / f"seed{seed}", cfg_file, seed, top1)
    assert main(["sweep", str(cfg_file), "--seeds", "0", "1", "--out", str(parent), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 finished already (skipped)" in out and "[1/" not in out  # nothing trained
    assert "| tiny | last | 2 | 52.00 ± 2.83 | 62.00 ± 2.83 | 42.00 ± 2.83 | – | 5.00 ± 0.00 |" in out
    assert (parent / "compare.md").read_text().count("| tiny |") == 2
    # the same sweep with another --set: its run directories hold another config, refused before any training
    assert main(["sweep", str(cfg_file), "--seeds", "0", "1", "--set", "stages.0.optim.lr=0.2", "--out",
                 str(parent)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not (parent / "logs").exists()


@pytest.mark.slow
def test_sweep_two_configs_one_table_failed_run_reported_rerun_skips(cfg_file, tmp_path, capsys):
    """Two configs x two seeds, one config failing at run time: its failure is reported, the other config is still
    tabulated (mean ± sample std of its runs' final.json), the exit code is 1; the same sweep again skips the
    finished runs."""
    other = tmp_path / "other.yaml"  # trains, but on another lr: its own row
    other.write_text(yaml.safe_dump({**TINY, "stages": [{**TINY["stages"][0], "optim": {"lr": 0.02}},
                                                        TINY["stages"][1]]}))
    broken = tmp_path / "broken.yaml"  # passes every check, then finds no data
    broken.write_text(yaml.safe_dump({**TINY, "data": {"dataset": "fashion_mnist_lt", "root": str(tmp_path / "no"),
                                                       "download": False}}))
    parent = tmp_path / "sweep"
    argv = ["sweep", str(cfg_file), str(other), str(broken), "--seeds", "0", "1", "--out", str(parent), "--quiet"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "2 of 6 runs failed" in captured.err
    md = (parent / "compare.md").read_text()
    assert md.split("\n\n", 1)[1] in captured.out  # the table is printed too
    header, *rows = _table_rows(md)
    col = {name: header.index(name) for name in ("Config", "Checkpoint", "n", "All", "Many", "Few")}
    assert [(r[col["Config"]], r[col["Checkpoint"]]) for r in rows] == [
        ("tiny", "last"), ("tiny", "best_val"), ("other", "last"), ("other", "best_val"),
        ("broken", "last"), ("broken", "best_val"),
    ]
    for row in rows:
        label, ckpt = row[col["Config"]], row[col["Checkpoint"]]
        if label == "broken":
            assert row[col["n"]] == "0" and row[col["All"]] == "–"
            continue
        finals = [json.loads((parent / label / f"seed{s}" / "final.json").read_text()) for s in (0, 1)]
        assert [f["run"]["seed"] for f in finals] == [0, 1]
        assert row[col["n"]] == "2"
        for name, key in (("All", "top1"), ("Many", "many"), ("Few", "few")):
            vals = [f["test"][ckpt][key] for f in finals]
            assert row[col[name]] == f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"
    assert "broken seed 0" in md and "broken seed 1" in md  # the failed runs are named under the table
    assert (parent / "logs" / "broken" / "seed0.log").read_text().strip()
    mtimes = [(parent / "tiny" / f"seed{s}" / "final.json").stat().st_mtime_ns for s in (0, 1)]
    assert main(["sweep", str(cfg_file), str(other), "--seeds", "0", "1", "--out", str(parent), "--quiet"]) == 0
    assert "4 finished already (skipped)" in capsys.readouterr().out
    assert [(parent / "tiny" / f"seed{s}" / "final.json").stat().st_mtime_ns for s in (0, 1)] == mtimes


@pytest.mark.slow
def test_interrupted_sweep_resumes_where_it_stopped(cfg_file, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "sweep"
    argv = ["sweep", str(cfg_file), "--seeds", "3", "--out", str(parent), "--quiet"]
    monkeypatch.setenv("BCE3S_FAULT_INJECT", "exit@step:0.1.2")  # the run dies in epoch 2 of stage 1
    assert main(argv) == 1
    run = parent / "tiny" / "seed3"
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "final.json").exists()
    monkeypatch.delenv("BCE3S_FAULT_INJECT")
    assert main(argv) == 0
    assert "1 to resume" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and len(info["resumed_from"]) == 1
    final = json.loads((run / "final.json").read_text())
    assert final["run"]["seed"] == 3


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
