"""Helpers of the reliability tests: a tiny two-stage Digits-LT config and subprocess helpers."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

# Two stages (BCE3S with GLMC mixing, then class-balanced BCE on a frozen backbone) so that every kind of state
# is exercised: data order, mixing lambdas, partial class sets, the class memory, stage hand-over. 544 training
# images, batch 32: 17 steps per epoch; about one CPU second of training.
TINY: dict[str, Any] = {
    "data": {"dataset": "digits_lt", "imbalance_factor": 10},
    "model": {"name": "small_cnn", "projector_dim": 16},
    "stages": [
        {
            "name": "stage1",
            "epochs": 2,
            "batch_size": 32,
            "loss": {"name": "bce3s", "params": {"neg_class_ratio": 0.5, "contrastive_start_epoch": 1}},
            "optim": {"lr": 0.05},
            "mixing": {"enabled": True},
        },
        {
            "name": "stage2",
            "epochs": 1,
            "batch_size": 32,
            "freeze_backbone": True,
            "loss": {"name": "cb_bce", "params": {"beta": 0.999}},
            "optim": {"lr": 0.01, "weight_decay": 0.0},
        },
    ],
    "eval": {"batch_size": 256, "tta_flip": False},
    "runtime": {"device": "cpu", "seed": 3, "threads": 1},
}
STEPS_PER_EPOCH = 17


def tiny(**changes: Any) -> dict[str, Any]:
    """A copy of TINY with dotted-key changes, e.g. ``tiny(**{"runtime.seed": 4})``."""
    cfg = copy.deepcopy(TINY)
    for key, value in changes.items():
        node: Any = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return cfg


def write_cfg(path: Path, data: dict[str, Any] | None = None) -> Path:
    path.write_text(yaml.safe_dump(data if data is not None else TINY, sort_keys=False))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment of a child ``python -m bce3s``: one thread, unbuffered, no inherited fault rules."""
    env = {k: v for k, v in os.environ.items() if k not in ("BCE3S_FAULT_INJECT", "WORLD_SIZE", "RANK")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def bce3s_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bce3s", *args]


def run_cli(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        bce3s_cmd(*args), cwd=cwd, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout
    )


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else ""


def assert_all_finite(state: dict[str, Any], where: str = "") -> None:
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            assert bool(torch.isfinite(value).all()), f"{where}{key} holds NaN/inf"
