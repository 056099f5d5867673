"""``runtime.max_steps``: a cap on the optimizer steps of every epoch for smoke runs, recorded and resume-safe."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

import bce3s.engine.loop as loop
from bce3s import faults
from bce3s.config import Config, config_from_dict, load_config
from bce3s.engine import train
from bce3s.engine.stages import StepCap
from bce3s.errors import BCE3SError, ConfigError

SMALL = {
    "data": {"dataset": "digits_lt", "imbalance_factor": 10},  # 544 training images: 17 steps of 32 per epoch
    "model": {"name": "small_cnn", "projector_dim": 16},
    "stages": [
        {"name": "stage1", "epochs": 2, "batch_size": 32,
         "loss": {"name": "bce3s", "params": {"neg_class_ratio": 1.0, "contrastive_start_epoch": 1}},
         "optim": {"lr": 0.05}, "mixing": {"enabled": True}},
        {"name": "stage2", "epochs": 1, "batch_size": 32, "freeze_backbone": True,
         "loss": {"name": "cb_bce", "params": {"neg_class_ratio": 1.0}}, "optim": {"lr": 0.01}},
    ],
    "eval": {"batch_size": 256, "tta_flip": False},
    "runtime": {"device": "cpu", "seed": 1, "max_steps": 3},
}


def _cfg(**runtime: object) -> Config:
    data = copy.deepcopy(SMALL)
    data["runtime"].update(runtime)
    cfg = config_from_dict(Config, data)
    cfg.check()
    return cfg


def _count_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    seen: list[tuple[int, int, int]] = []
    orig = loop.train_step

    def counting(rt, batch):  # noqa: ANN001, ANN202
        seen.append((rt.stage_index, batch.epoch, batch.step))
        return orig(rt, batch)

    monkeypatch.setattr(loop, "train_step", counting)
    return seen


def test_step_cap_cuts_every_epoch_and_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_steps(monkeypatch)
    train(_cfg(), tmp_path / "out", quiet=True)
    assert seen == [(s, e, i) for s, epochs in ((0, 2), (1, 1)) for e in range(epochs) for i in range(3)]
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["runtime"]["max_steps"] == 3
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3  # every epoch still ends: validation, record, last.pt


def test_without_a_cap_the_epoch_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_steps(monkeypatch)
    data = copy.deepcopy(SMALL)
    data["stages"] = data["stages"][:1]
    data["stages"][0]["epochs"] = 1
    data["runtime"]["max_steps"] = None
    train(config_from_dict(Config, data), tmp_path / "out", quiet=True)
    assert len(seen) == 17  # ceil(544 / 32): no cap


def test_interrupted_capped_run_resumes_to_the_uninterrupted_numbers(tmp_path: Path, monkeypatch) -> None:
    ref = train(_cfg(), tmp_path / "ref", quiet=True)
    monkeypatch.setenv(faults.ENV, "sigterm@step:0.1.2")  # stage 1, second epoch, after 2 of its 3 steps
    with pytest.raises(BCE3SError):
        train(_cfg(), tmp_path / "out", quiet=True)
    monkeypatch.delenv(faults.ENV)
    seen = _count_steps(monkeypatch)
    res = train(None, tmp_path / "out", resume=True, quiet=True)
    assert seen[0] == (0, 1, 2) and len(seen) == 1 + 3  # the last step of that epoch, then stage 2's three
    for ck in ("last", "best_val"):
        assert res.final["test"][ck]["per_class"] == ref.final["test"][ck]["per_class"]
        assert res.final["test"][ck]["nll"] == ref.final["test"][ck]["nll"]


def test_resume_with_another_cap_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(faults.ENV, "sigterm@step:0.0.1")
    with pytest.raises(BCE3SError):
        train(_cfg(), tmp_path / "out", quiet=True)
    monkeypatch.delenv(faults.ENV)
    with pytest.raises(BCE3SError, match="max_steps"):
        train(_cfg(max_steps=5), tmp_path / "out", resume=True, quiet=True)


def test_max_steps_must_be_positive(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(SMALL))
    with pytest.raises(ConfigError, match="runtime.max_steps"):
        load_config(p, ["runtime.max_steps=0"])


def test_step_cap_iterates_the_first_batches_and_resumes_inside_them() -> None:
    class Source:
        def __init__(self) -> None:
            self.items = list(range(10))

        def __len__(self) -> int:
            return len(self.items)

        def __iter__(self):  # noqa: ANN204
            return iter(self.items)

        def iter_from(self, step: int):  # noqa: ANN201
            return iter(self.items[step:])

        def set_epoch(self, epoch: int) -> str:
            return f"epoch {epoch}"

    cap = StepCap(Source(), 4)
    assert len(cap) == 4 and list(cap) == [0, 1, 2, 3]
    assert list(cap.iter_from(2)) == [2, 3] and list(cap.iter_from(4)) == []
    assert cap.set_epoch(3) == "epoch 3"  # everything else is the source's
