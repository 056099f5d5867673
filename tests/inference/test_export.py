"""``bce3s export``: each format reloads in a process that cannot import bce3s and gives the run's logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bce3s.config import load_config
from bce3s.data import build_data
from bce3s.data.transforms import build_transform
from bce3s.engine.distributed import init_distributed
from bce3s.engine.evaluate import predict_split
from bce3s.errors import ConfigError
from bce3s.inference import export_model, load_run_model
from bce3s.inference.export import ExportedClassifier

# Runs in a fresh interpreter with bce3s made unimportable: the file alone must suffice.
LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["bce3s"] = None  # any import of bce3s now fails
    import torch
    fmt, path, images, out = sys.argv[1:5]
    x = torch.load(images)
    if fmt == "torchscript":
        extra = {"bce3s.json": ""}
        model = torch.jit.load(path, _extra_files=extra)
        meta = json.loads(extra["bce3s.json"])
        logits = model(x)
    elif fmt == "exported":
        extra = {"bce3s.json": ""}
        model = torch.export.load(path, extra_files=extra).module()
        meta = json.loads(extra["bce3s.json"])
        logits = model(x)
    else:
        import onnx, onnxruntime
        meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["bce3s"])
        sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(sess.run(["logits"], {"images": x.numpy()})[0])
    torch.save({"logits": logits, "meta": meta}, out)
    """
)


@pytest.fixture(scope="module")
def reference(tiny_run: Path):
    """The test images (uint8) and the logits ``bce3s eval`` computes for them (best_val)."""
    rm = load_run_model(tiny_run, "best_val", "cpu")
    data = build_data(load_config(tiny_run / "config.yaml").data)
    logits = predict_split(rm.cfg, data, rm.model, data.test, init_distributed("cpu"))["logits"]
    return data.test.images, logits


def _reload(fmt: str, path: Path, images: torch.Tensor, tmp: Path) -> dict:
    torch.save(images, tmp / "images.pt")
    (tmp / "loader.py").write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(tmp / "loader.py"), fmt, str(path), str(tmp / "images.pt"), str(tmp / "out.pt")],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return torch.load(tmp / "out.pt", weights_only=False)


SLOW = pytest.mark.slow  # torch.export and the ONNX exporter take 5-10 s on a CPU


@pytest.mark.parametrize(
    "fmt", ["torchscript", pytest.param("exported", marks=SLOW), pytest.param("onnx", marks=SLOW)]
)
def test_export_reloads_without_bce3s_and_reproduces_logits(fmt, tiny_run, reference, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'bce3s[onnx]')")
        pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install 'bce3s[onnx]')")
    images, logits = reference
    path = export_model(load_run_model(tiny_run, "best_val", "cpu"), fmt, tmp_path / f"model.{fmt}")
    got = _reload(fmt, path, images, tmp_path)
    assert got["logits"].shape == logits.shape
    assert (got["logits"] - logits).abs().max().item() < 1e-4
    meta = got["meta"]
    assert meta["class_names"] == json.loads((tiny_run / "final.json").read_text())["class_names"]
    assert meta["probability"] == "sigmoid" and meta["in_channels"] == 1


def test_onnx_without_its_packages_is_a_one_line_error(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r"bce3s\[onnx\]"):
        export_model(load_run_model(tiny_run, "best_val", "cpu"), "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("size", [(300, 200), (224, 231), (256, 256), (20, 30)])
def test_exported_imagenet_preprocessing_matches_the_eval_transform(size):
    """Short-side resize + centre crop + normalisation as the imagenet eval preset: exact with the uint8 kernel
    (TorchScript on CPU), within one grey level in float (torch.export / ONNX)."""
    from bce3s.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
    ref = build_transform("imagenet", train=False, image_size=224, channels=3)(image)
    one_level = 1.0 / 255 / min(IMAGENET_STD)
    for native in (True, False):
        module = ExportedClassifier(torch.nn.Identity(), list(IMAGENET_MEAN), list(IMAGENET_STD), 224,
                                    eval_resize_size(224), native_uint8=native)
        got = torch.jit.script(module)(image[None])[0]
        assert got.shape == ref.shape == (3, 224, 224)
        assert (got - ref).abs().max().item() <= (1e-5 if native else one_level + 1e-5)
