"""Determinism: two CPU runs with the same seed and config are bit-identical, a different seed changes everything.

Three in-process runs of the tiny two-stage config (seeds 3, 3, 4) record every random draw the engine makes:
the labels of each training batch (data order), the mixing lambdas, the partial class sets, and the class memory
left in the checkpoints. The global RNGs are scrambled before the second run, so nothing may depend on them.
(Cross-process equality is shown by the pre-emption tests, whose reference run is a separate process.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reliability_helpers import read_json, tiny

from bce3s.config import Config, config_from_dict
from bce3s.data import mixing
from bce3s.engine import loop, train
from bce3s.engine.checkpoint import load_checkpoint
from bce3s.losses.partial import PartialClassSampler
from bce3s.losses.tripartite import Bce3sLoss

CHECKPOINTS = ("last", "best_val", "stage1_last", "stage1_best_val", "stage2_last", "stage2_best_val")


def _record_run(out: Path, seed: int) -> dict[str, Any]:
    """Train the tiny config with ``seed`` and return what it drew."""
    drawn: dict[str, list] = {"lam": [], "partial": [], "labels": []}
    orig_mix, orig_partial, orig_loss = mixing.glmc_mix, PartialClassSampler.forward, Bce3sLoss.forward

    def glmc_mix(*args, **kwargs):
        res = orig_mix(*args, **kwargs)
        drawn["lam"].append(res.lam)
        return res

    def partial(self, present):
        mask = orig_partial(self, present)
        drawn["partial"].append(mask.clone())
        return mask

    def loss_forward(self, logits, target, **kw):
        view = kw.get("view")
        drawn["labels"].append(target[view == 0].argmax(1) if view is not None else target.clone())
        return orig_loss(self, logits, target, **kw)

    cfg = config_from_dict(Config, tiny(**{"runtime.seed": seed}))
    cfg.check()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mixing, "glmc_mix", glmc_mix)
        mp.setattr(PartialClassSampler, "forward", partial)
        mp.setattr(Bce3sLoss, "forward", loss_forward)
        res = train(cfg, out, quiet=True)
    return {"drawn": drawn, "final": res.final}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    threads = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("determinism")
    try:
        a = _record_run(tmp / "a", seed=3)
        torch.manual_seed(12345)  # scramble every global RNG: the run must not depend on them
        random.seed(99)
        np.random.seed(7)
        torch.rand(17)
        b = _record_run(tmp / "b", seed=3)
        c = _record_run(tmp / "c", seed=4)
    finally:
        torch.set_num_threads(threads)
    return {"a": (tmp / "a", a), "b": (tmp / "b", b), "c": (tmp / "c", c)}


def _metrics_without_times(out: Path) -> list[dict]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("time_s")
        r.pop("images_per_s")
    return recs


def test_glmc_mix_is_looked_up_at_call_time():
    # the recording above patches bce3s.data.mixing.glmc_mix; the loop must import it from there when it runs
    assert "glmc_mix" not in vars(loop)


def test_same_seed_gives_bit_identical_final_json(runs):
    (out_a, a), (out_b, b) = runs["a"], runs["b"]
    fa, fb = read_json(out_a / "final.json"), read_json(out_b / "final.json")
    assert fa["test"] == fb["test"]  # every metric of every checkpoint, per-class lists included, exactly
    assert fa["selection"] == fb["selection"]
    assert fa["data"] == fb["data"]
    assert a["final"]["test"] == b["final"]["test"]
    assert _metrics_without_times(out_a) == _metrics_without_times(out_b)


def test_same_seed_gives_identical_checkpoints_and_memory(runs):
    (out_a, _), (out_b, _) = runs["a"], runs["b"]
    for name in CHECKPOINTS:
        sa = load_checkpoint(out_a / "checkpoints" / f"{name}.pt")
        sb = load_checkpoint(out_b / "checkpoints" / f"{name}.pt")
        for part in ("model", "loss"):
            for key, value in sa.get(part, {}).items():
                if torch.is_tensor(value):
                    assert torch.equal(value, sb[part][key]), (name, part, key)
    memory = load_checkpoint(out_a / "checkpoints" / "stage1_last.pt")["loss"]["class_memory.memory"]
    assert memory.abs().sum() > 0  # the memory was filled, so the comparison above means something


def test_same_seed_draws_the_same_random_numbers(runs):
    da, db = runs["a"][1]["drawn"], runs["b"][1]["drawn"]
    assert len(da["lam"]) == 2 * 17 and da["lam"] == db["lam"]
    assert len(da["partial"]) > 0 and len(da["partial"]) == len(db["partial"])
    assert all(torch.equal(x, y) for x, y in zip(da["partial"], db["partial"]))
    assert len(da["labels"]) == len(db["labels"]) == 2 * 17
    assert all(torch.equal(x, y) for x, y in zip(da["labels"], db["labels"]))
    assert not torch.equal(da["labels"][0], da["labels"][17])  # epochs differ in order


def test_different_seed_changes_every_draw_and_the_result(runs):
    (out_a, a), (out_c, c) = runs["a"], runs["c"]
    da, dc = a["drawn"], c["drawn"]
    assert da["lam"] != dc["lam"]
    assert any(not torch.equal(x, y) for x, y in zip(da["partial"], dc["partial"]))
    assert not torch.equal(da["labels"][0], dc["labels"][0])
    ma = load_checkpoint(out_a / "checkpoints" / "stage1_last.pt")["loss"]["class_memory.memory"]
    mc = load_checkpoint(out_c / "checkpoints" / "stage1_last.pt")["loss"]["class_memory.memory"]
    assert not torch.equal(ma, mc)
    ta, tc = read_json(out_a / "final.json")["test"]["last"], read_json(out_c / "final.json")["test"]["last"]
    assert ta["nll"] != tc["nll"]
    # the data subset is fixed by data.subset_seed, not by the run seed
    assert read_json(out_a / "final.json")["data"]["sha256"] == read_json(out_c / "final.json")["data"]["sha256"]
