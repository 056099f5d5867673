"""`bench/device_check.sh --smoke` runs end to end on the CPU, so the device run can be done blind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path, per_class_train: int = 30, per_class_test: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for c in range(10):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            base = rng.integers(0, 255, size=3)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


@pytest.mark.slow
def test_device_check_smoke(tmp_path):
    root = _tree(tmp_path / "tree")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "bench/device_check.sh", "--smoke", "--data-root", str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "=== 4. recipe (smoke)" in proc.stdout and "done (status 0)" in proc.stdout
    assert "BCE3S + CB-BCE stage 2" in proc.stdout and "CE + CB-softmax stage 2" in proc.stdout
    summary = json.loads((out / "recipe" / "summary.json").read_text())
    for name in ("bce3s", "ce"):
        test = summary["runs"][name]["final_test"]
        assert set(test) >= {"last", "best_val", "last_tta_flip", "best_val_tta_flip"}
    rows = json.loads((out / "train_step.json").read_text())["rows"]
    assert rows and rows[0]["ratio"] > 0
