"""Fixtures that write fake-but-consistent run directories in the documented format (see bce3s.report.rundata).

The numbers are real: small random logits / features go through ``metrics.summarize``,
``metrics.reliability_bins``, ``geometry.geometry_summary`` and ``metrics.confusion_matrix``, exactly as the engine
and ``bce3s eval`` do, so every file of a fake run agrees with the others (same train counts, same class count,
percent units).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bce3s.eval.geometry import geometry_summary
from bce3s.eval.metrics import confusion_matrix, reliability_bins, summarize


def lt_counts(num_classes: int, n_max: int = 500, imbalance: float = 100.0) -> list[int]:
    """Exponential long-tailed profile (LDAM/CIFAR-LT): n_i = int(n_max * imbalance^(-i / (K - 1)))."""
    if num_classes == 1:
        return [n_max]
    return [int(n_max * imbalance ** (-i / (num_classes - 1))) for i in range(num_classes)]


def _logits(gen: torch.Generator, counts: list[int], per_class: int, skill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Test logits whose accuracy falls from head to tail (a long-tailed model), and their labels."""
    k = len(counts)
    labels = torch.arange(k).repeat_interleave(per_class)
    strength = skill * (0.6 + torch.log(torch.tensor(counts, dtype=torch.float64)).clamp_min(0) / math.log(500))
    logits = torch.randn(len(labels), k, generator=gen, dtype=torch.float64) * 1.5
    logits[torch.arange(len(labels)), labels] += strength[labels] * 2.0
    logits += 0.3 * torch.log(torch.tensor(counts, dtype=torch.float64))  # head bias
    return logits.float(), labels


def fake_config(*, loss: str, seed: int, lr: float = 0.01, num_classes: int = 10, two_stages: bool = True
                ) -> dict[str, Any]:
    """A resolved config as ``config.yaml`` holds it (the nesting of ``bce3s.config.Config``)."""

    def stage(name: str, loss_name: str, epochs: int, **kw: Any) -> dict[str, Any]:
        st = {
            "name": name, "epochs": epochs, "batch_size": 64, "sampler": "instance", "rho": 0.0,
            "loss": {"name": loss_name, "params": {}},
            "optim": {"name": "sgd", "lr": lr, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-3,
                      "no_decay_norm_bias": False, "scheduler": "cosine", "warmup_epochs": 0, "min_lr": 0.0,
                      "grad_clip": None},
            "mixing": {"enabled": loss_name == "bce3s", "alpha": 1.0, "sampler": "power", "rho": 0.0},
            "freeze_backbone": False, "bn_mode": "train", "reset_head": False, "max_norm": None,
            "logit_adjust_tau": None, "augment": True, "val_every": 1, "init_from": "last",
        }
        st.update(kw)
        return st

    stages = [stage("stage1", loss, 4)]
    if two_stages:
        stages.append(stage("stage2", "cb_bce" if loss == "bce3s" else "ce", 2, freeze_backbone=True,
                            sampler="class_balanced"))
    return {
        "data": {"dataset": "digits_lt", "root": "data", "download": False, "imbalance_factor": 100.0,
                 "profile": "exp", "order": "file", "subset_seed": 0, "val_per_class": 5},
        "model": {"name": "small_cnn", "head": "normalized", "projector_dim": 128, "sync_bn": False,
                  "channels_last": False, "compile": False},
        "stages": stages,
        "eval": {"batch_size": 256, "tta_flip": True, "select_metric": "mean_per_class"},
        "log": {"tensorboard": False},
        "runtime": {"device": "cpu", "seed": seed, "amp": "none", "deterministic": False, "pipeline": "auto",
                    "num_workers": 0, "nan_policy": "stop", "threads": 0},
    }


def write_fake_run(
    path: Path,
    *,
    loss: str = "bce3s",
    seed: int = 0,
    num_classes: int = 10,
    config_name: str | None = None,
    lr: float = 0.01,
    skill: float = 1.0,
    per_class_test: int = 12,
    with_tta: bool = True,
    with_eval: bool = True,
    with_history: bool = True,
    with_run_json: bool = True,
    two_stages: bool = True,
) -> Path:
    """Write a complete fake run directory at ``path`` and return it."""
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1000 * seed + int(skill * 100) + num_classes + len(loss))
    counts = lt_counts(num_classes)
    cfg = fake_config(loss=loss, seed=seed, lr=lr, num_classes=num_classes, two_stages=two_stages)
    stage_names = [s["name"] for s in cfg["stages"]]
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    test: dict[str, Any] = {}
    evals: dict[str, Any] = {}
    for ckpt, bonus in (("last", 0.0), ("best_val", 0.1)):
        logits, labels = _logits(gen, counts, per_class_test, skill + bonus)
        test[ckpt] = summarize(logits, labels, counts)
        if with_tta:
            test[f"{ckpt}_tta_flip"] = summarize(logits + 0.2 * torch.randn(logits.shape, generator=gen), labels,
                                                 counts)
        if ckpt == "last" and with_eval:
            dim = 16
            means = torch.randn(num_classes, dim, generator=gen, dtype=torch.float64) * 3
            feats = means[labels] + torch.randn(len(labels), dim, generator=gen, dtype=torch.float64) / skill
            weight = means + 0.5 * torch.randn(num_classes, dim, generator=gen, dtype=torch.float64)
            ev = {"split": "test", "checkpoint": "last", "tta": "none", "metrics": test[ckpt],
                  "geometry": geometry_summary(feats, labels, weight, counts),
                  "reliability": reliability_bins(logits, labels)}
            if num_classes <= 100:
                ev["confusion"] = confusion_matrix(logits.argmax(1), labels, num_classes).tolist()
            evals["eval_test_last.json"] = ev

    history = []
    g = 0
    for si, st in enumerate(cfg["stages"]):
        for e in range(st["epochs"]):
            terms = ({"joint": 2.0 / (g + 1), "contrastive": 0.5 + 0.1 * e, "uniform": 1.0 - 0.05 * g}
                     if st["loss"]["name"] == "bce3s" else {})
            history.append({
                "stage": st["name"], "epoch": e, "global_epoch": g,
                "lr": st["optim"]["lr"] * (0.5 * (1 + math.cos(math.pi * e / st["epochs"]))) * (0.01 if si else 1),
                "loss": 3.0 / (g + 1) + sum(terms.values()), "terms": terms,
                "val": {"top1": 20.0 + 5 * g * skill, "mean_per_class": 15.0 + 5 * g * skill, "many": 40.0 + g,
                        "medium": 20.0, "few": 5.0 + g},
                "time_s": 1.5, "images_per_s": 800.0,
            })
            g += 1
    last_stage = cfg["stages"][-1]
    final = {
        "run": {"name": path.name, "config_name": config_name or f"configs/digits_lt/{loss}.yaml",
                "dataset": "digits_lt", "model": "small_cnn", "loss": loss, "stages": stage_names, "seed": seed},
        "test": test,
        "selection": {"best_val": {"stage": last_stage["name"], "epoch": last_stage["epochs"] - 1,
                                   "metric": "mean_per_class", "value": history[-1]["val"]["mean_per_class"]}},
        "train_counts": counts,
        "class_names": [f"digit{i}" for i in range(num_classes)],
        "versions": {"python": "3.11", "torch": torch.__version__},
        "git_commit": None,
        "device": "cpu",
        "wall_time_s": 12.5,
    }
    (path / "final.json").write_text(json.dumps(final, indent=2))
    (path / "data.json").write_text(json.dumps({
        "name": "digits_lt", "num_classes": num_classes, "train_counts": counts,
        "val_counts": [5] * num_classes, "test_counts": [per_class_test] * num_classes,
        "sha256": {"train": "ab" * 32, "val": "cd" * 32, "test": "ef" * 32},
    }))
    if with_run_json:
        (path / "run.json").write_text(json.dumps({"status": "finished", "resumed_from": [],
                                                   "command": "bce3s train"}))
    if with_history:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    for name, ev in evals.items():
        (path / name).write_text(json.dumps(ev))
    return path


@pytest.fixture(scope="session")
def write_run() -> Callable[..., Path]:
    """``write_run(path, **kw)``: write a fake run directory at ``path`` (see :func:`write_fake_run`)."""
    return write_fake_run


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_run(name, **kw)`` writes a fake run directory under ``tmp_path`` (see write_fake_run)."""

    def factory(name: str, **kwargs: Any) -> Path:
        return write_fake_run(tmp_path / "runs" / name, **kwargs)

    return factory
