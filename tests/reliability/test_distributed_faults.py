"""A rank dies mid-epoch under ``torchrun --max-restarts=1`` (gloo, CPU): the job restarts, resumes, and matches.

Rank 1 calls ``os._exit(1)`` after step 5 of epoch 1 of stage 1 on the first attempt only (the fault rule is
disarmed when torchrun sets TORCHELASTIC_RESTART_COUNT > 0). Rank 0 fails in its next collective, torchrun stops
the job and starts both ranks again with the same command; ``--auto-resume`` makes them continue from
``checkpoints/last.pt`` (end of epoch 0). The final metrics must equal those of an uninterrupted torchrun job.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import read_json, subprocess_env, write_cfg

pytestmark = pytest.mark.slow


def _torchrun() -> str:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun not found")
    return exe


def _job(torchrun: str, cfg: Path, out: Path, tmp: Path, fault: str | None, **env: str) -> subprocess.CompletedProcess:
    cmd = [
        torchrun, "--standalone", "--nproc_per_node=2", "--max-restarts=1", "--monitor-interval=0.2",
        "-m", "bce3s", "train", str(cfg), "--out", str(out), "--auto-resume", "--quiet",
    ]  # fmt: skip
    env = subprocess_env(**({"BCE3S_FAULT_INJECT": fault} if fault else {}), **env)
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=420)


def _metrics(out: Path) -> list[dict]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in recs]


def test_rank_killed_mid_epoch_restarts_resumes_and_matches(tmp_path):
    torchrun = _torchrun()
    cfg = write_cfg(tmp_path / "tiny.yaml")
    ref_out, out = tmp_path / "reference", tmp_path / "faulted"
    # One job at a time (two concurrent --standalone jobs on 2 cores can time out connecting their gloo meshes).
    # By default torchrun shares its rendezvous store with the workers, and a restarted rank can then read the
    # previous attempt's gloo address and fail to connect (PyTorch issue 135712; here 3 restarts out of 3 failed
    # under load). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 avoids it; rank 0 warns when it is missing.
    ref = _job(torchrun, cfg, ref_out, tmp_path, None)
    res = _job(torchrun, cfg, out, tmp_path, "exit@step:0.1.5:rank1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    assert ref.returncode == 0, ref.stderr[-4000:]
    assert res.returncode == 0, res.stderr[-4000:]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in ref.stderr
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" not in res.stderr
    assert "bce3s fault injection: exit at stage index 0 epoch 1 step 5" in res.stderr
    assert res.stderr.count("bce3s fault injection") == 1  # the restarted ranks ran clean
    info = read_json(out / "run.json")
    assert info["status"] == "finished" and info["world_size"] == 2
    assert [(r["stage"], r["epoch"], r["step"]) for r in info["resumed_from"]] == [("stage1", 1, 0)]
    assert read_json(ref_out / "run.json")["resumed_from"] == []
    final, reference = read_json(out / "final.json"), read_json(ref_out / "final.json")
    assert final["world_size"] == reference["world_size"] == 2
    assert final["test"] == reference["test"]
    assert _metrics(out) == _metrics(ref_out)
