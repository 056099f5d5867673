"""End-to-end training on the embedded Digits-LT set: run directory, evaluation, interruption and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from bce3s import faults
from bce3s.config import load_config
from bce3s.data import build_data
from bce3s.engine import train
from bce3s.engine.checkpoint import load_checkpoint
from bce3s.engine.evaluate import evaluate_run
from bce3s.errors import BCE3SError

TINY = {
    "data": {"dataset": "digits_lt", "imbalance_factor": 10},
    "model": {"name": "small_cnn", "projector_dim": 16},
    "stages": [
        {
            "name": "stage1",
            "epochs": 2,
            "batch_size": 32,
            "loss": {"name": "bce3s", "params": {"neg_class_ratio": 1.0, "contrastive_start_epoch": 1}},
            "optim": {"lr": 0.05},
            "mixing": {"enabled": True},
        },
        {
            "name": "stage2",
            "epochs": 1,
            "batch_size": 32,
            "freeze_backbone": True,
            "loss": {"name": "cb_bce", "params": {"beta": 0.999, "neg_class_ratio": 1.0}},
            "optim": {"lr": 0.01, "weight_decay": 0.0},
        },
    ],
    "eval": {"batch_size": 128},
    "runtime": {"device": "cpu", "seed": 3},
}


def write_cfg(tmp_path: Path, data: dict | None = None, name: str = "tiny.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data or TINY, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = load_config(write_cfg(tmp))
    res = train(cfg, tmp / "out", quiet=True, config_path="tiny.yaml")
    # the eval files exactly as train left them (test_eval_reproduces_final_json rewrites them)
    (tmp / "train_eval").mkdir()
    for ck in ("last", "best_val"):
        name = f"eval_test_{ck}.json"
        (tmp / "train_eval" / name).write_bytes((tmp / "out" / name).read_bytes())
    return tmp / "out", res.final


def test_run_directory_layout(finished_run):
    out, final = finished_run
    for name in ("config.yaml", "run.json", "data.json", "metrics.jsonl", "final.json"):
        assert (out / name).is_file(), name
    for ck in ("last", "best_val", "stage1_last", "stage1_best_val", "stage2_last", "stage2_best_val"):
        assert (out / "checkpoints" / f"{ck}.pt").is_file(), ck
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in lines] == [("stage1", 0), ("stage1", 1), ("stage2", 0)]
    assert set(lines[0]["terms"]) == {"joint", "contrastive", "uniform"}
    assert lines[0]["terms"]["contrastive"] == 0.0  # epoch 0 only fills the memory (SPEC 1.3)
    assert lines[1]["terms"]["contrastive"] > 0.0
    assert all(r["val"] is not None and r["images_per_s"] > 0 for r in lines)
    assert set(final["test"]) == {"last", "best_val", "last_tta_flip", "best_val_tta_flip"}
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    on_disk = json.loads((out / "final.json").read_text())
    assert on_disk["test"]["last"]["top1"] == pytest.approx(final["test"]["last"]["top1"])
    assert final["selection"]["best_val"]["stage"] == "stage2"
    # the training counts are those of the training split (class 0 = head), imbalance factor 10
    labels = build_data(load_config(out / "config.yaml").data).train.labels
    assert final["train_counts"] == torch.bincount(labels, minlength=10).tolist()
    assert final["train_counts"] == sorted(final["train_counts"], reverse=True)
    assert round(final["train_counts"][0] / final["train_counts"][-1]) == 10


def test_stage2_trains_only_the_head(finished_run):
    out, _ = finished_run
    s1 = load_checkpoint(out / "checkpoints" / "stage1_last.pt")["model"]
    s2 = load_checkpoint(out / "checkpoints" / "stage2_last.pt")["model"]
    for k in s1:
        if k.startswith("backbone.") and "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(s1[k], s2[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(s1["head.weight"], s2["head.weight"])


def test_eval_reproduces_final_json(finished_run):
    out, final = finished_run
    for ck in ("last", "best_val"):
        res = evaluate_run(out, split="test", checkpoint=ck)
        for key in ("top1", "mean_per_class", "many", "medium", "few", "ece"):
            assert res["metrics"][key] == final["test"][ck][key], (ck, key)
        assert (out / f"eval_test_{ck}.json").is_file()
        assert "compactness" in res["geometry"]["per_class"]


def test_train_leaves_the_eval_files_the_report_needs(finished_run):
    """train writes eval_test_{last,best_val}.json as 'bce3s eval' would; the report then has every figure."""
    from bce3s.report.document import Figure, Para
    from bce3s.report.rundata import load_run
    from bce3s.report.writer import build_blocks

    out, final = finished_run
    run = load_run(out)
    assert run.notes == []
    blocks = build_blocks([run])
    names = {b.name for b in blocks if isinstance(b, Figure)}
    assert {"per_class_accuracy", "shot_accuracy", "training_curves", "reliability", "geometry"} <= names
    assert any(n.startswith("confusion") for n in names)
    assert not [b.text for b in blocks if isinstance(b, Para) and b.note]
    for ck in ("last", "best_val"):
        written = json.loads((out.parent / "train_eval" / f"eval_test_{ck}.json").read_text())
        assert written["metrics"] == final["test"][ck]
        again = evaluate_run(out, split="test", checkpoint=ck)
        assert written["metrics"] == again["metrics"]
        assert written["reliability"] == again["reliability"]
        assert written["confusion"] == again["confusion"]
        assert set(written) == set(again)


def test_interrupt_mid_epoch_then_resume_equals_uninterrupted(tmp_path, finished_run, monkeypatch):
    """SIGTERM after step 5 of stage 1's first epoch (the fault-injection hook signals this very process), then
    ``train(resume=True)``: the final numbers equal the uninterrupted run's bit for bit."""
    _, reference = finished_run
    cfg = load_config(write_cfg(tmp_path))
    monkeypatch.setenv(faults.ENV, "sigterm@step:0.0.5")
    with pytest.raises(BCE3SError) as stopped:
        train(cfg, tmp_path / "out", quiet=True)
    assert stopped.value.exit_code == 130  # "interrupted", what the CLI exits with
    state = load_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")
    assert (state["stage_index"], state["epoch"], state["step"]) == (0, 0, 5)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "out" / "final.json").exists()
    monkeypatch.delenv(faults.ENV)
    res = train(None, tmp_path / "out", resume=True, quiet=True)
    for ck in ("last", "best_val"):
        for key in ("top1", "mean_per_class", "per_class", "nll"):
            assert res.final["test"][ck][key] == reference["test"][ck][key], (ck, key)
    assert res.final["selection"] == reference["selection"]
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["resumed_from"][0]["epoch"] == 0 and info["resumed_from"][0]["step"] == 5


@pytest.mark.parametrize(
    ("argv0", "expected"),
    [("/x/bce3s/__main__.py", "python -m bce3s"), (".venv/bin/bce3s", ".venv/bin/bce3s")],
)
def test_interrupt_message_names_the_program_run_and_counts_epochs_from_1(
    tmp_path, monkeypatch, argv0, expected
):
    """The resume hint uses the command the user ran; the epoch is counted as the progress log counts (1-based)."""
    import sys

    monkeypatch.setattr(sys, "argv", [argv0, "train"])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv(faults.ENV, "sigterm@step:0.1.2")
    cfg = load_config(write_cfg(tmp_path))
    with pytest.raises(BCE3SError) as info:
        train(cfg, tmp_path / "out", quiet=True)
    msg = str(info.value)
    assert "stage stage1 epoch 2 step" in msg  # second epoch of stage1 (0-based index 1)
    assert f"Resume with: {expected} train --resume --out " in msg
