"""One tiny trained Digits-LT run shared by the predict and export tests (about 4 s of CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TINY = {
    "data": {"dataset": "digits_lt", "imbalance_factor": 10},
    "model": {"name": "small_cnn", "projector_dim": 16},
    "stages": [
        {
            "name": "stage1",
            "epochs": 2,
            "batch_size": 32,
            "loss": {"name": "bce3s", "params": {"neg_class_ratio": 1.0}},
            "optim": {"lr": 0.05},
        }
    ],
    "eval": {"batch_size": 128, "tta_flip": False},
    "runtime": {"device": "cpu", "seed": 3},
}


def train_tiny(out: Path, changes: dict | None = None) -> Path:
    """Train :data:`TINY` (with top-level sections replaced by ``changes``) into ``out``."""
    from bce3s.config import load_config
    from bce3s.engine import train

    data = {**TINY, **(changes or {})}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    train(load_config(path), out, quiet=True, config_path=str(path))
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("inference") / "run")
