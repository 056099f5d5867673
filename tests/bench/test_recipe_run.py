"""`bench/recipe_run.py`: a default step that fails on the machine falls back to the reference step (no GPU needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(name="recipe_run")
def _recipe_run():
    """The script's module (bench/ is on sys.path, tests/bench/conftest.py)."""
    import recipe_run

    return recipe_run


def _fake_runs(fail_unless_eager: bool, commands: list[list[str]]):
    """A stand-in for ``_run_all``: runs "fail" (no metrics) unless eager, when ``fail_unless_eager``."""

    def run_all(jobs, out, parallel):
        ends = {}
        for name, cmd in jobs:
            commands.append(cmd)
            run = Path(cmd[cmd.index("--out") + 1])
            ok = "runtime.step=eager" in cmd or not fail_unless_eager
            (out / f"{name}.log").write_text("ok\n" if ok else "RuntimeError: operation not permitted when capturing\n")
            if ok:
                run.mkdir(parents=True, exist_ok=True)
                epochs = [("stage1", 2.0), ("stage1", 2.0), ("stage2", 1.0)]
                (run / "metrics.jsonl").write_text(
                    "".join(json.dumps({"stage": s, "time_s": t}) + "\n" for s, t in epochs)
                )
                groups = {"top1": 80.0, "many": 90.0, "medium": 80.0, "few": 70.0}
                (run / "final.json").write_text(json.dumps({"test": {"last": groups, "best_val": groups}}))
            ends[name] = (0 if ok else 1, 10.0)
        return ends

    return run_all


@pytest.mark.parametrize("default_fails", [True, False])
def test_a_failing_default_step_is_probed_again_with_the_eager_step(recipe_run, monkeypatch, tmp_path, default_fails):
    commands: list[list[str]] = []
    monkeypatch.setattr(recipe_run, "_run_all", _fake_runs(default_fails, commands))
    argv = ["recipe_run.py", "--data-root", "x", "--out", str(tmp_path), "--seeds", "0", "--budget-s", "10000"]
    monkeypatch.setattr(sys, "argv", argv)
    assert recipe_run.main() == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    main_runs = [c for c in commands if Path(c[c.index("--out") + 1]).parent.name != "probe"]
    assert len(main_runs) == 2  # BCE3S and CE, seed 0
    eager = ["runtime.step=eager" in c for c in main_runs]
    if default_fails:
        assert len(commands) == 2 + 2 + 2  # probe, eager probe, runs
        assert all(eager) and summary["step"] == "eager"
    else:
        assert len(commands) == 2 + 2
        assert not any(eager) and summary["step"] == "auto"
    assert summary["methods"]["bce3s"]["test"]["last"]["All"] == [80.0]
