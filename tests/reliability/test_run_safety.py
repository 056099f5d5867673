"""Nothing a user made is replaced or written twice: the demo's output folders, ``--resume`` of a finished run,
two processes writing one run (the run directory's lock) and a full disk.

Every refusal is one line ``bce3s: error: ...`` with exit code 2 and leaves the files of the run byte for byte (and
mtime for mtime) as they were.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import read_json, subprocess_env, tiny, write_cfg

import bce3s.engine.run as run_module
from bce3s import faults
from bce3s.cli import PACKAGE_CONFIGS, check_demo_out, main
from bce3s.config import Config, config_from_dict, dump_config, load_config
from bce3s.engine.checkpoint import load_checkpoint
from bce3s.engine.run import TrainResult, train
from bce3s.errors import DiskFullError, RunDirError
from bce3s.report.rundata import RunData
from bce3s.rundir import LOCK_NAME, RunDir, atomic_write_bytes, run_lock, write_json


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Content and mtime (ns) of every file under ``root``."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("bce3s: error: ") and err.count("\n") == 1, f"not one line: {err!r}"
    return err


def _short(epochs: int = 1) -> dict[str, Any]:
    """The tiny config cut to its first stage (about a second of training)."""
    cfg = tiny(**{"stages.0.epochs": epochs})
    cfg["stages"] = cfg["stages"][:1]
    return cfg


@pytest.fixture
def finished(tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_threads: None) -> tuple[Path, Path]:
    """A finished one-epoch run: (config file, run directory)."""
    cfg = write_cfg(tmp_path / "c.yaml", _short())
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert read_json(out / "run.json")["status"] == "finished"
    return cfg, out


# ---------------------------------------------------------------------------------------------------------- demo


def _fake_run(root: Path, data: dict[str, Any], status: str = "finished") -> None:
    rd = RunDir(root)
    root.mkdir(parents=True)
    rd.write_text(rd.config, dump_config(config_from_dict(Config, data)))
    write_json(rd.run_json, {"status": status, "resumed_from": []})
    write_json(rd.final, {"test": {"last": {"top1": 12.5}}})
    rd.write_text(rd.checkpoint("last"), "the user's weights")


def _demo_cfg(name: str, device: str = "cpu", seed: int = 0) -> Config:
    return load_config(PACKAGE_CONFIGS / "digits_lt" / f"{name}.yaml",
                       [f"runtime.device={device}", f"runtime.seed={seed}"])


def _demo_run(root: Path, name: str, status: str = "finished", seed: int = 0) -> None:
    """What an earlier ``bce3s demo`` left in ``root`` (config and run.json are what the check reads)."""
    rd = RunDir(root)
    root.mkdir(parents=True)
    rd.write_text(rd.config, dump_config(_demo_cfg(name, seed=seed)))
    write_json(rd.run_json, {"status": status, "resumed_from": []})


def test_demo_refuses_to_replace_a_run_that_is_not_its_own(tmp_path, capsys):
    parent = tmp_path / "demo"
    _fake_run(parent / "bce3s" / "seed2", tiny())  # a run the user trained there
    before = _snapshot(parent)
    assert main(["demo", "--out", str(parent), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert str(parent / "bce3s" / "seed2") in err and "--overwrite" in err
    assert _snapshot(parent) == before
    assert not (parent / "ce").exists(), "nothing may be trained before both folders are checked"


def test_demo_refuses_a_folder_of_other_files(tmp_path, capsys):
    parent = tmp_path / "demo"
    (parent / "ce" / "seed0").mkdir(parents=True)
    (parent / "ce" / "seed0" / "config.yaml").write_text("my notes\n")
    before = _snapshot(parent)
    assert main(["demo", "--out", str(parent), "--quiet"]) == 2
    _one_line_error(capsys)
    assert _snapshot(parent) == before


def test_check_demo_out_accepts_only_empty_folders_and_the_demos_own_runs(tmp_path):
    check_demo_out(tmp_path / "missing", _demo_cfg("bce3s"))
    (tmp_path / "empty").mkdir()
    check_demo_out(tmp_path / "empty", _demo_cfg("bce3s"))
    own = tmp_path / "own"  # an earlier demo (on the CPU, interrupted): the demo may replace it
    _demo_run(own, "bce3s", "interrupted")
    check_demo_out(own, _demo_cfg("bce3s", device="cuda"))
    with pytest.raises(RunDirError):
        check_demo_out(own, _demo_cfg("ce"))
    (own / "config.yaml").write_text("[damaged")
    with pytest.raises(RunDirError):
        check_demo_out(own, _demo_cfg("bce3s"))


def test_second_demo_replaces_its_own_runs_and_overwrite_replaces_any(tmp_path, capsys, monkeypatch):
    """``make demo`` twice works; ``--overwrite`` lets the demo replace a user's run (training is faked here)."""
    calls: list[tuple[Path, bool]] = []

    def fake_train(cfg: Config, out: Path, *, overwrite: bool = False, **_: Any) -> TrainResult:
        calls.append((Path(out), overwrite))
        m = {"top1": 1.0, "many": 1.0, "medium": 1.0, "few": 1.0}
        return TrainResult(run_dir=Path(out), final={"test": {"last": m, "best_val": m}})

    def fake_load_run(path: Path) -> RunData:
        m = {"top1": 1.0, "many": 1.0, "medium": 1.0, "few": 1.0}
        return RunData(path=Path(path), label=Path(path).name, config={},
                       final={"test": {"last": m, "best_val": m}, "run": {"seed": int(Path(path).name[4:])}})

    monkeypatch.setattr(run_module, "train", fake_train)
    monkeypatch.setattr("bce3s.report.rundata.load_run", fake_load_run)
    monkeypatch.setattr("bce3s.report.writer.write_report",
                        lambda dirs, out, **kw: (out / "r.html", out / "r.md"))
    parent = tmp_path / "demo"
    runs = [parent / name / f"seed{seed}" for seed in (0, 1, 2) for name in ("ce", "bce3s")]
    for run in runs:
        _demo_run(run, run.parent.name, seed=int(run.name[4:]))
    assert main(["demo", "--out", str(parent), "--quiet"]) == 0, capsys.readouterr().err
    assert calls == [(run, True) for run in runs]
    calls.clear()
    (parent / "bce3s" / "seed1" / "config.yaml").write_text(dump_config(config_from_dict(Config, tiny())))
    assert main(["demo", "--out", str(parent), "--quiet"]) == 2
    assert calls == []
    assert main(["demo", "--out", str(parent), "--quiet", "--overwrite"]) == 0
    assert calls == [(run, True) for run in runs]


# ------------------------------------------------------------------------------------------- resume of a finished run


def test_resume_of_a_finished_run_is_refused_and_leaves_it_alone(finished, capsys, keep_threads):
    cfg, out = finished
    before = _snapshot(out)
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert str(out) in err and "--overwrite" in err
    assert main(["train", str(cfg), "--resume", "--out", str(out), "--quiet", "--set", "runtime.threads=2"]) == 2
    _one_line_error(capsys)
    with pytest.raises(RunDirError):
        train(None, out, resume=True, quiet=True)
    assert _snapshot(out) == before
    assert not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------------------- the lock


def test_second_writer_is_refused_while_the_run_is_locked(finished, capsys, keep_threads):
    cfg, out = finished
    rd = RunDir(out)
    info = rd.read_run_info()
    info["status"] = "running"  # as a process killed while writing final.json leaves it: --resume finishes it
    rd.write_run_info(info)
    with run_lock(out):  # another process training this run (flock: a second open file conflicts, same process)
        before = _snapshot(out)
        for argv in (
            ["train", "--resume", "--out", str(out), "--quiet"],
            ["train", str(cfg), "--out", str(out), "--quiet", "--auto-resume"],
            ["train", str(cfg), "--out", str(out), "--quiet", "--overwrite"],
        ):
            assert main(argv) == 2
            err = _one_line_error(capsys)
            assert str(out) in err and f"pid {os.getpid()}" in err
            assert _snapshot(out) == before
        with pytest.raises(RunDirError):
            train(None, out, resume=True, quiet=True)
        assert _snapshot(out) == before
    assert not (out / LOCK_NAME).exists()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert read_json(out / "run.json")["status"] == "finished"
    assert not (out / LOCK_NAME).exists()


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    out = tmp_path / "out"
    holder = textwrap.dedent(
        f"""
        import sys
        from bce3s.rundir import run_lock
        with run_lock({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.read()
        """
    )
    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(Path(run_module.__file__).parents[2]), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        with pytest.raises(RunDirError, match=f"pid {proc.pid}"):
            with run_lock(out):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    with run_lock(out):  # the operating system released it with the process
        assert (out / LOCK_NAME).is_file()
    assert not (out / LOCK_NAME).exists()


def test_lock_leaves_no_directory_of_its_own_and_names_an_unwritable_parent(tmp_path):
    with run_lock(tmp_path / "new" / "run"):
        assert (tmp_path / "new" / "run" / LOCK_NAME).is_file()
    assert not (tmp_path / "new").exists(), "a run that wrote nothing leaves no directory behind"
    with run_lock(tmp_path / "rank1", enabled=False):  # ranks other than 0 under torchrun
        pass
    assert not (tmp_path / "rank1").exists()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RunDirError, match="not writable"):
        with run_lock(tmp_path / "a_file" / "run"):
            pass


# ----------------------------------------------------------------------------------------------------- disk full


def test_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_last_pt(
    tmp_path, capsys, monkeypatch, keep_threads
):
    cfg = write_cfg(tmp_path / "c.yaml", _short(epochs=2))
    out = tmp_path / "out"
    ck = RunDir(out).checkpoint("last")
    seen: dict[str, Any] = {"n": 0}

    def full_disk(path: Path) -> None:  # the 3rd write of last.pt (end of epoch 1) finds the disk full
        if Path(path).name == "last.pt":
            seen["n"] += 1
            if seen["n"] == 3:
                seen["before"] = ck.read_bytes()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(faults, "during_write", full_disk)
    exe = tmp_path / "venv" / "bin" / "bce3s"  # run as venv/bin/bce3s, not on PATH: the hint says so
    monkeypatch.setattr("sys.argv", [str(exe), "train"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert str(ck.parent) in err and f"{exe} train --resume --out {out}" in err
    assert ck.read_bytes() == seen["before"]
    assert load_checkpoint(ck)["stage_name"] == "stage1"  # end of epoch 0, loads
    assert not list(ck.parent.glob(".*.tmp")) and not (out / LOCK_NAME).exists()
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert read_json(out / "run.json")["status"] == "finished"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_atomic_write_on_a_full_disk_raises_disk_full_and_keeps_the_file(tmp_path, monkeypatch, code):
    target = tmp_path / "f.json"
    target.write_bytes(b"old")

    def fail(path: Path) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(faults, "during_write", fail)
    with pytest.raises(DiskFullError) as exc:
        atomic_write_bytes(target, b"x" * 1000)
    assert exc.value.needed == 1000 and exc.value.folder == str(tmp_path)
    assert "\n" not in str(exc.value) and str(tmp_path) in str(exc.value) and "1000" in str(exc.value)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
