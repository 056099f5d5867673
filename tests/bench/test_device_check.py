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


SHARED_TGZ = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _smoke(args: list[str], out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["bash", "bench/device_check.sh", "--smoke", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _check(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "done (status 0)" in proc.stdout
    summary = json.loads((out / "recipe" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["parallel"] == 2
    for name in ("bce3s", "ce"):
        test = summary["methods"][name]["test"]
        assert set(test) >= {"last", "best_val", "last_tta_flip", "best_val_tta_flip"}
        assert len(test["last"]["All"]) == 2  # one value per seed, aggregated to mean ± std in the table
        assert len(summary["methods"][name]["wall_s"]) == 2
    assert [r["n"] for r in json.loads((out / "multi_model.json").read_text())["rows"]] == [1, 2]
    rows = json.loads((out / "train_step.json").read_text())["rows"]
    assert {r["variant"] for r in rows} == {"eager", "static"} and all(r["ratio"] > 0 for r in rows)


@pytest.mark.slow
def test_device_check_smoke(tmp_path):
    out = tmp_path / "out"
    _check(_smoke(["--data-root", str(_tree(tmp_path / "tree"))], out), out)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TGZ.is_file(), reason="the CIFAR-10 JPEG archive is not beside the repository")
def test_device_check_smoke_finds_its_data(tmp_path):
    out = tmp_path / "out"
    proc = _smoke([], out)
    assert "unpack" in proc.stdout
    _check(proc, out)


def test_device_check_without_data_is_a_clear_error(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", "bench/device_check.sh", "--smoke", "--data", str(tmp_path / "missing.tar.gz")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
