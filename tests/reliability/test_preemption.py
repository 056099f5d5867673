"""Pre-emption of ``python -m bce3s train`` (subprocesses): SIGTERM, SIGINT and SIGKILL at exact points.

Each scenario starts the tiny two-stage run with a fault rule (``BCE3S_FAULT_INJECT``, see bce3s/faults.py),
checks what the dead or stopped process left on disk (every checkpoint loads; ``last.pt`` is the one written before
the fault), resumes it (``--auto-resume`` with the original command, or ``--resume --out``), possibly through more
faults, and compares the final ``final.json`` test metrics with an uninterrupted run: they must be bit-identical.
``run.json`` must record every resume and where it started from.

All scenarios run in one module fixture, two processes at a time; the tests then check one scenario each.
"""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import bce3s_cmd, last_line, read_json, run_cli, subprocess_env, write_cfg

from bce3s.engine.checkpoint import load_checkpoint
from bce3s.errors import CheckpointError

pytestmark = pytest.mark.slow


@dataclass
class Attempt:
    fault: str | None  # BCE3S_FAULT_INJECT of this process
    send: int | None = None  # signal the test sends when the process reports "paused"
    twice: bool = False  # send it again once the process has logged the first (a user pressing Ctrl-C twice)
    resume: str = "auto"  # how this attempt is started if it is not the first: "auto" or "resume"
    expect_rc: int | None = None  # None: killed by SIGKILL
    expect_last: tuple[str | None, int, int, int] | None = None  # last.pt after it: (stage, stage_index, epoch, step)
    expect_stderr: str | None = None  # the last stderr line ({out} is replaced)


@dataclass
class Scenario:
    attempts: list[Attempt]
    stale_tmp: bool = False  # a half-written temporary file is left after the first attempt
    result: dict[str, Any] = field(default_factory=dict)


RESUME_HINT = "last.pt saved. Resume with: python -m bce3s train --resume --out {out}"  # run as python -m bce3s
SCENARIOS: dict[str, Scenario] = {
    "sigkill_mid_first_epoch": Scenario([Attempt("sigkill@step:0.0.5", expect_last=("stage1", 0, 0, 0))]),
    "sigkill_mid_second_epoch": Scenario([Attempt("sigkill@step:0.1.9", expect_last=("stage1", 0, 1, 0))]),
    "sigkill_while_writing_last_pt": Scenario(  # 3rd write of last.pt = end of epoch 1: the end of epoch 0 survives
        [Attempt("sigkill@write:last.pt#3", expect_last=("stage1", 0, 1, 0))], stale_tmp=True
    ),
    "sigkill_while_writing_metrics": Scenario(
        [Attempt("sigkill@write:metrics.jsonl#2", expect_last=("stage1", 0, 1, 0))], stale_tmp=True
    ),
    "sigkill_while_writing_stage_checkpoint": Scenario(
        [Attempt("sigkill@write:stage1_last.pt#1", expect_last=("stage1", 0, 2, 0))], stale_tmp=True
    ),
    "sigkill_in_stage2_then_while_writing_final_json": Scenario(
        [
            Attempt("sigkill@step:1.0.4", expect_last=("stage2", 1, 0, 0)),
            Attempt("sigkill@write:final.json#1", resume="resume", expect_last=(None, 2, 0, 0)),
        ],
        stale_tmp=False,
    ),
    "sigterm_mid_epoch": Scenario(
        [
            Attempt(
                "pause@step:0.1.4",
                send=signal.SIGTERM,
                expect_rc=130,
                expect_last=("stage1", 0, 1, 4),
                expect_stderr="bce3s: error: interrupted by SIGTERM at stage stage1 epoch 2 step 4; " + RESUME_HINT,
            )
        ]
    ),
    "sigint_in_stage2": Scenario(
        [
            Attempt(
                "pause@step:1.0.3",
                send=signal.SIGINT,
                expect_rc=130,
                expect_last=("stage2", 1, 0, 3),
                expect_stderr="bce3s: error: interrupted by SIGINT at stage stage2 epoch 1 step 3; " + RESUME_HINT,
            )
        ]
    ),
    "double_sigint_while_writing_last_pt": Scenario(  # the 2nd Ctrl-C aborts the write; the previous file stays
        [
            Attempt(
                "pause@write:last.pt#2",
                send=signal.SIGINT,
                twice=True,
                expect_rc=130,
                expect_last=("stage1", 0, 0, 0),
                expect_stderr="bce3s: interrupted; resume with: python -m bce3s train --resume --out {out}",
            )
        ]
    ),
}


def _run_attempt(att: Attempt, cmd: list[str], cwd: Path, out: Path) -> dict[str, Any]:
    env = subprocess_env(**({"BCE3S_FAULT_INJECT": att.fault} if att.fault else {}))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines = []
    if att.send is not None:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for the fault point
            err_lines.append(line)
            if "bce3s fault injection: paused" in line:
                break
        proc.send_signal(att.send)
        if att.twice:
            for line in proc.stderr:  # the handler logs "received SIGINT: ..." once it has run
                err_lines.append(line)
                if "received SIG" in line:
                    break
            proc.send_signal(att.send)
    stdout, stderr = proc.communicate(timeout=300)
    stderr = "".join(err_lines) + stderr
    found: dict[str, Any] = {"rc": proc.returncode, "stderr": stderr, "stdout": stdout, "loads": {}}
    for ck in sorted((out / "checkpoints").glob("*.pt")):
        try:
            state = load_checkpoint(ck)
            found["loads"][ck.name] = True
            if ck.name == "last.pt":
                found["last"] = (state.get("stage_name"), state["stage_index"], state["epoch"], state["step"])
        except CheckpointError as exc:
            found["loads"][ck.name] = str(exc)
    found["stale_tmp"] = sorted(p.name for p in out.rglob(".*.tmp"))
    found["status"] = read_json(out / "run.json")["status"] if (out / "run.json").exists() else None
    return found


def _run_scenario(name: str, sc: Scenario, cfg: Path, tmp: Path) -> dict[str, Any]:
    out = tmp / name
    first = ["train", str(cfg), "--out", str(out), "--quiet"]
    res: dict[str, Any] = {"out": out, "attempts": []}
    for i, att in enumerate(sc.attempts):
        if i == 0:
            args = first
        elif att.resume == "auto":
            args = [*first, "--auto-resume"]
        else:
            args = ["train", "--resume", "--out", str(out), "--quiet"]
        res["attempts"].append(_run_attempt(att, bce3s_cmd(*args), tmp, out))
    # the final, undisturbed resume: the original command with --auto-resume (what a job scheduler re-runs)
    done = run_cli([*first, "--auto-resume"], cwd=tmp)
    res["final_rc"], res["final_stderr"] = done.returncode, done.stderr
    res["final"] = read_json(out / "final.json") if (out / "final.json").exists() else None
    res["run"] = read_json(out / "run.json")
    res["stale_after"] = sorted(p.name for p in out.rglob(".*.tmp"))
    res["metrics"] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return res


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("preempt")
    cfg = write_cfg(tmp / "tiny.yaml")
    with ThreadPoolExecutor(max_workers=2) as pool:
        ref = pool.submit(run_cli, ["train", str(cfg), "--out", str(tmp / "reference"), "--quiet"], tmp)
        futures = {name: pool.submit(_run_scenario, name, sc, cfg, tmp) for name, sc in SCENARIOS.items()}
        reference = ref.result()
        assert reference.returncode == 0, reference.stderr[-3000:]
        results = {name: f.result() for name, f in futures.items()}
    ref_metrics = [json.loads(x) for x in (tmp / "reference" / "metrics.jsonl").read_text().splitlines()]
    return {"reference": read_json(tmp / "reference" / "final.json"), "ref_metrics": ref_metrics, **results}


def _strip_times(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in recs]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_leaves_loadable_checkpoints_and_resume_matches_uninterrupted(name, outcomes):
    sc, res = SCENARIOS[name], outcomes[name]
    out = res["out"]
    for i, (att, got) in enumerate(zip(sc.attempts, res["attempts"])):
        where = f"attempt {i}: {got['stderr'][-2000:]}"
        if att.expect_rc is None:
            assert got["rc"] == -signal.SIGKILL, where
            assert got["status"] == "running", where  # a killed process cannot say anything else
        else:
            assert got["rc"] == att.expect_rc, where
            assert got["status"] == "interrupted", where
            assert "Traceback" not in got["stderr"], where
        if att.expect_stderr is not None:
            assert last_line(got["stderr"]) == att.expect_stderr.format(out=out), where
        assert got["loads"] and all(v is True for v in got["loads"].values()), got["loads"]
        assert got["last"] == att.expect_last, where
    assert bool(res["attempts"][0]["stale_tmp"]) == sc.stale_tmp, res["attempts"][0]["stale_tmp"]
    # the resumed run finished, cleaned up, and equals the uninterrupted one bit for bit
    assert res["final_rc"] == 0, res["final_stderr"][-3000:]
    assert res["stale_after"] == []
    assert res["final"]["test"] == outcomes["reference"]["test"]
    assert res["final"]["selection"] == outcomes["reference"]["selection"]
    assert _strip_times(res["metrics"]) == _strip_times(outcomes["ref_metrics"])
    # run.json: finished, and one entry per resume saying where it started from
    assert res["run"]["status"] == "finished"
    starts = [(r["stage"], r["epoch"], r["step"]) for r in res["run"]["resumed_from"]]
    expected = [(att.expect_last[0] or "end", att.expect_last[2], att.expect_last[3]) for att in sc.attempts]
    assert starts == expected
