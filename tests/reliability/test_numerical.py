"""Numerical faults: a NaN/inf in the loss, the gradients, the batch or the weights, injected in-process.

Default policy (``runtime.nan_policy: stop``): the run stops with one line naming the stage, epoch, step, the loss
term and the last good checkpoint, which is left as it was. ``skip``: the step leaves no trace (no update, BatchNorm
statistics restored) and is counted in ``metrics.jsonl``. A checkpoint is never written with NaN/inf weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from reliability_helpers import assert_all_finite, read_json, tiny, write_cfg

from bce3s.cli import main
from bce3s.config import Config, config_from_dict
from bce3s.engine import train
from bce3s.engine.checkpoint import load_checkpoint
from bce3s.errors import NonFiniteError, program_name
from bce3s.losses import LossOutput
from bce3s.losses.tripartite import Bce3sLoss
from bce3s.models.classifier import Classifier

NAN = float("nan")


def one_stage(**changes) -> dict:
    cfg = tiny(**changes)
    cfg["stages"] = cfg["stages"][:1]
    return cfg


def config(**changes) -> Config:
    cfg = config_from_dict(Config, one_stage(**changes))
    cfg.check()
    return cfg


def inject(monkeypatch, at: set[tuple[int, int]], fault: str) -> dict[int, int]:
    """Make Bce3sLoss misbehave at the given (epoch, step-in-epoch) pairs.

    fault: ``nan_term`` (the joint term and the loss are NaN), ``inf_total`` (the loss is +inf, the terms finite),
    ``nan_grad`` (finite loss whose gradient is NaN), ``nan_weight`` (the head weight itself becomes NaN).
    """
    orig = Bce3sLoss.forward
    calls: dict[int, int] = {}
    poison: list[torch.Tensor] = []

    def forward(self, logits, target, **kw):
        out = orig(self, logits, target, **kw)
        step = calls[self.epoch] = calls.get(self.epoch, -1) + 1
        if (self.epoch, step) not in at:
            return out
        if fault == "nan_term":
            return LossOutput(out.loss * NAN, {**out.terms, "joint": torch.tensor(NAN)})
        if fault == "inf_total":
            return LossOutput(out.loss + math.inf, out.terms)
        if fault == "nan_grad":  # d/dz sqrt(z) at z = 0 is inf; times 0 gives NaN, while the value stays 0
            z = (logits - logits.detach()).sum()
            return LossOutput(out.loss + 0.0 * torch.sqrt(z), out.terms)
        if fault == "nan_weight":  # poison the head weight after this step's update (see update below)
            poison.append(kw["weight"])
            return out
        raise AssertionError(fault)

    orig_update = Bce3sLoss.update

    def update(self, embeddings, target):
        orig_update(self, embeddings, target)
        while poison:
            with torch.no_grad():
                poison.pop()[0, 0] = NAN

    monkeypatch.setattr(Bce3sLoss, "forward", forward)
    monkeypatch.setattr(Bce3sLoss, "update", update)
    return calls  # epoch -> index of the last step seen


def last_state(out: Path) -> dict:
    return load_checkpoint(out / "checkpoints" / "last.pt")


def where(state: dict) -> tuple:
    return state["stage_index"], state["epoch"], state["step"]


def hint(out: Path) -> str:
    return (
        "lower the learning rate and train again, or resume skipping such steps: "
        f"{program_name()} train --resume --out {out} "
        "--set runtime.nan_policy=skip"
    )


@pytest.mark.parametrize(
    ("fault", "what"),
    [("nan_term", "non-finite loss (term: joint)"), ("inf_total", "non-finite loss (term: total)"),
     ("nan_grad", "non-finite gradient (term: gradient)")],
)  # fmt: skip
def test_stop_policy_names_step_term_and_last_good_checkpoint(fault, what, tmp_path, monkeypatch, keep_threads):
    out = tmp_path / "out"
    inject(monkeypatch, {(1, 3)}, fault)
    with pytest.raises(NonFiniteError) as info:
        train(config(), out, quiet=True)
    assert str(info.value) == (
        f"{what} at stage stage1 epoch 2 step 4 (runtime.nan_policy: stop). Last good checkpoint: "
        f"{out}/checkpoints/last.pt (stage1, end of epoch 1), not overwritten; {hint(out)}"
    )
    state = last_state(out)
    assert where(state) == (0, 1, 0)  # written at the end of epoch 0, before the fault
    assert_all_finite(state["model"])
    assert read_json(out / "run.json")["status"] == "failed"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_stop_then_resume_with_skip_finishes(tmp_path, monkeypatch, keep_threads):
    out = tmp_path / "out"
    inject(monkeypatch, {(1, 3)}, "nan_term")
    with pytest.raises(NonFiniteError):
        train(config(), out, quiet=True)
    # resume from the last good checkpoint, skipping non-finite steps from now on (the fault strikes again)
    monkeypatch.undo()
    calls = inject(monkeypatch, {(1, 3)}, "nan_term")
    res = train(config(**{"runtime.nan_policy": "skip"}), out, resume=True, quiet=True)
    assert calls == {1: 16}  # only epoch 1 ran again, all 17 steps
    recs = [read_json_line(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["skipped_steps"]) for r in recs] == [(0, 0), (1, 1)]
    info = read_json(out / "run.json")
    assert info["status"] == "finished"
    assert info["resumed_from"][-1]["changed"] == ["runtime.nan_policy: 'stop' != 'skip'"]
    assert (info["resumed_from"][-1]["epoch"], info["resumed_from"][-1]["step"]) == (1, 0)
    assert read_json(out / "final.json")["test"]["last"] == res.final["test"]["last"]


def test_skip_policy_skips_and_counts(tmp_path, monkeypatch, keep_threads):
    out = tmp_path / "out"
    inject(monkeypatch, {(0, 2), (0, 9), (1, 0)}, "nan_term")
    res = train(config(**{"runtime.nan_policy": "skip"}), out, quiet=True)
    recs = [read_json_line(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in recs] == [2, 1]
    assert all(math.isfinite(r["loss"]) for r in recs)
    for name in ("last", "stage1_last", "stage1_best_val", "best_val"):
        assert_all_finite(load_checkpoint(out / "checkpoints" / f"{name}.pt")["model"], f"{name}: ")
    assert math.isfinite(res.final["test"]["last"]["top1"])


def test_skipped_step_leaves_no_trace(tmp_path, monkeypatch, keep_threads):
    """A NaN batch under ``skip``: no update, and the BatchNorm statistics its forward pass wrote are restored."""
    orig = Classifier.forward
    calls = {"n": 0}

    def forward(self, x):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:  # the third training batch is all NaN (a corrupt batch)
                x = torch.full_like(x, NAN)
        return orig(self, x)

    monkeypatch.setattr(Classifier, "forward", forward)
    out = tmp_path / "out"
    res = train(config(**{"runtime.nan_policy": "skip", "stages.0.epochs": 3}), out, quiet=True)
    state = last_state(out)
    assert_all_finite(state["model"])  # BatchNorm running statistics were restored after the NaN forward
    assert [read_json_line(x)["skipped_steps"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 0, 0]
    assert res.final["test"]["last"]["top1"] > 20.0  # a poisoned BatchNorm gives chance level (10%)


def test_nan_weights_are_never_written(tmp_path, monkeypatch, keep_threads):
    out = tmp_path / "out"
    inject(monkeypatch, {(0, 5)}, "nan_weight")
    with pytest.raises(NonFiniteError) as info:
        train(config(**{"runtime.nan_policy": "skip"}), out, quiet=True)
    assert str(info.value) == (
        "the model holds NaN/inf values (head.weight) at stage1, end of epoch 1; stage1_best_val.pt was not written. "
        f"Last good checkpoint: {out}/checkpoints/last.pt (start of stage1), not overwritten; {hint(out)}"
    )
    assert where(last_state(out)) == (0, 0, 0)
    assert_all_finite(last_state(out)["model"])
    assert not (out / "checkpoints" / "stage1_best_val.pt").exists()


def test_cli_reports_nan_in_one_line(tmp_path, monkeypatch, capsys, keep_threads):
    inject(monkeypatch, {(0, 4)}, "nan_term")
    cfg = write_cfg(tmp_path / "c.yaml", one_stage())
    out = tmp_path / "out"
    rc = main(["train", str(cfg), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "Traceback" not in err
    assert err == (
        "bce3s: error: non-finite loss (term: joint) at stage stage1 epoch 1 step 5 (runtime.nan_policy: stop). "
        f"Last good checkpoint: {out}/checkpoints/last.pt (start of stage1), not overwritten; {hint(out)}\n"
    )


def read_json_line(line: str) -> dict:
    return json.loads(line)


def test_nan_hint_names_the_program_as_run_and_counts_epochs_from_one(tmp_path, monkeypatch, capsys, keep_threads):
    """Run as ``.venv/bin/bce3s`` (not on PATH), the hint says ``.venv/bin/bce3s train --resume ...``; the epoch of
    the failing step and of the last good checkpoint are those of the log (1-based)."""
    exe = tmp_path / ".venv" / "bin" / "bce3s"
    monkeypatch.setattr("sys.argv", [str(exe), "train"])
    monkeypatch.setenv("PATH", "/nonexistent")
    inject(monkeypatch, {(1, 3)}, "nan_term")
    cfg = write_cfg(tmp_path / "c.yaml", one_stage())
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert f"{exe} train --resume --out {out} --set runtime.nan_policy=skip" in err
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 1  # the log's epoch 1 finished; the fault struck in the log's epoch 2, step 4
    assert "at stage stage1 epoch 2 step 4 " in err and "(stage1, end of epoch 1)" in err
