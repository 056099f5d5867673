"""Re-running into an existing run directory: ``--auto-resume`` (a scheduler or torchrun re-running the same
command) and ``--overwrite``.

(Resuming from a checkpoint is covered by test_preemption.py; the refusals are in test_bad_input.py.)
"""

from __future__ import annotations

import yaml
from reliability_helpers import read_json, tiny, write_cfg

from bce3s.cli import main
from bce3s.config import Config, config_from_dict, dump_config
from bce3s.rundir import RunDir, write_json


def _one_epoch() -> dict:
    cfg = tiny(**{"stages.0.epochs": 1})
    cfg["stages"] = cfg["stages"][:1]
    return cfg


def test_run_that_died_before_its_first_checkpoint_starts_again(tmp_path, capsys, keep_threads):
    data = _one_epoch()
    cfg = write_cfg(tmp_path / "c.yaml", data)
    out = tmp_path / "out"
    rd = RunDir(out)  # what a process killed after writing run.json but before last.pt leaves
    out.mkdir()
    rd.write_text(rd.config, dump_config(config_from_dict(Config, data)))
    write_json(rd.run_json, {"status": "running", "resumed_from": []})
    write_json(rd.data_json, {"stale": True})
    rc = main(["train", str(cfg), "--out", str(out), "--auto-resume", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    info = read_json(out / "run.json")
    assert info["status"] == "finished" and info["resumed_from"] == []
    assert "stale" not in read_json(out / "data.json")
    assert (out / "final.json").is_file()


def test_auto_resume_into_an_empty_directory_starts_the_run(tmp_path, capsys, keep_threads):
    cfg = write_cfg(tmp_path / "c.yaml", _one_epoch())
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["train", str(cfg), "--out", str(out), "--auto-resume", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert read_json(out / "run.json")["status"] == "finished"


def test_overwrite_replaces_a_different_run(tmp_path, capsys, keep_threads):
    data = _one_epoch()
    cfg = write_cfg(tmp_path / "c.yaml", data)
    out = tmp_path / "out"
    rd = RunDir(out)
    out.mkdir()
    old = dict(data, runtime={**data["runtime"], "seed": 5})
    rd.write_text(rd.config, dump_config(config_from_dict(Config, old)))
    write_json(rd.run_json, {"status": "finished", "resumed_from": []})
    write_json(out / "eval_test_last.json", {"stale": True})
    write_json(rd.final, {"stale": True})
    rd.write_text(rd.checkpoint("stage9_last"), "stale")
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 2  # refused without --overwrite
    assert "already holds a different run (runtime.seed: 5 != 3)" in capsys.readouterr().err
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert config_from_dict(Config, yaml.safe_load(rd.config.read_text())).runtime.seed == 3
    # the stale eval file is gone: the one there now is the new run's (train writes it at the end)
    assert read_json(out / "eval_test_last.json")["metrics"] == read_json(rd.final)["test"]["last"]
    assert not rd.checkpoint("stage9_last").exists()
    assert "stale" not in read_json(rd.final)
