"""``bce3s predict`` on a folder of image files written from the test split of a trained Digits-LT run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bce3s.cli import main
from bce3s.config import load_config
from bce3s.data import build_data
from bce3s.data.imageset import load_image_file
from bce3s.engine.checkpoint import load_checkpoint, save_checkpoint
from bce3s.engine.distributed import init_distributed
from bce3s.engine.evaluate import evaluate_run, predict_split
from bce3s.inference import collect_inputs, load_run_model, predict_files
from bce3s.inference.runmodel import SIGMOID_LOSSES, preprocess, probability_kind
from bce3s.losses import LOSSES


@pytest.fixture(scope="module")
def image_folder(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's test images as PNG files (``<label>/<i>.png``; every 7th one as RGB), a text file, a corrupt PNG."""
    cfg = load_config(tiny_run / "config.yaml")
    test = build_data(cfg.data).test
    root = tmp_path_factory.mktemp("images")
    for i in range(len(test)):
        folder = root / str(int(test.labels[i]))
        folder.mkdir(exist_ok=True)
        pixels = test.images[i, 0].numpy()
        if i % 7 == 0:  # an RGB file: the gray run converts it back to the same gray values
            Image.fromarray(np.stack([pixels] * 3, axis=-1), mode="RGB").save(folder / f"{i:04d}.png")
        else:
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    (root / "notes.txt").write_text("not an image\n")
    (root / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def _label(path: str) -> int:
    return int(Path(path).parent.name)


def test_predict_rows_match_eval_accuracy_and_report_bad_files(tiny_run, image_folder, tmp_path):
    out = tmp_path / "pred.csv"
    code = main(["predict", str(tiny_run), str(image_folder), "--out", str(out), "--top-k", "3", "--quiet"])
    assert code == 1  # two files failed
    rows = list(csv.DictReader(out.open()))
    good = [r for r in rows if not r["error"]]
    bad = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(bad) == {"notes.txt", "broken.png"}
    assert len(good) == 300 and len(rows) == 302  # every test image got a row
    assert {r["probability"] for r in good} == {"sigmoid"}  # BCE3S head
    acc = 100.0 * np.mean([int(r["pred_index"]) == _label(r["path"]) for r in good])
    ref = evaluate_run(tiny_run, split="test", checkpoint="best_val", geometry=False)["metrics"]["top1"]
    assert acc == pytest.approx(ref, abs=1e-9)
    names = json.loads((tiny_run / "final.json").read_text())["class_names"]
    assert all(r["pred_class"] == names[int(r["pred_index"])] for r in good)
    assert all(float(r["top1_prob"]) >= float(r["top2_prob"]) >= float(r["top3_prob"]) for r in good)


def test_predict_probabilities_are_the_sigmoid_of_the_eval_logits(tiny_run, image_folder):
    rm = load_run_model(tiny_run, "last", "cpu")
    files = sorted(str(p) for p in image_folder.glob("*/0*.png"))[:40]
    res = predict_files(rm, files, top_k=10, batch_size=16)
    data = build_data(rm.cfg.data)
    logits = predict_split(rm.cfg, data, rm.model, data.test, init_distributed("cpu"))["logits"]
    for row in res.rows:
        i = int(Path(row.path).stem)
        probs = dict((idx, p) for idx, _, p in row.topk)
        expected = torch.sigmoid(logits[i])
        assert [probs[k] for k in range(10)] == pytest.approx(expected.tolist(), abs=1e-5)


def test_predict_jsonl_globs_and_missing_files(tiny_run, image_folder, tmp_path):
    out = tmp_path / "p.jsonl"
    pattern = str(image_folder / "1" / "*.png")
    code = main(["predict", str(tiny_run), pattern, str(tmp_path / "nope.png"), "--out", str(out), "--quiet",
                 "--checkpoint", "last", "--top-k", "2"])
    assert code == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 31 and rows[-1]["path"].endswith("nope.png") and "error" in rows[-1]
    assert all(len(r["topk"]) == 2 for r in rows[:-1])
    assert main(["predict", str(tiny_run), pattern, "--out", str(out), "--quiet"]) == 0  # nothing failed


def test_predict_rejects_bad_output_name(tiny_run, image_folder, tmp_path):
    assert main(["predict", str(tiny_run), str(image_folder), "--out", str(tmp_path / "p.txt"), "--quiet"]) == 2


def test_collect_inputs_recurses_and_skips_hidden(tmp_path):
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "a" / ".y.png").write_bytes(b"")
    (tmp_path / "a" / ".hidden" / "z.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    assert collect_inputs([str(tmp_path)]) == [str(tmp_path / "a" / "x.png"), str(tmp_path / "b.png")]
    assert collect_inputs([str(tmp_path / "*.png"), str(tmp_path / "b.png")]) == [str(tmp_path / "b.png")]


def test_every_loss_has_a_probability_kind():
    assert SIGMOID_LOSSES <= set(LOSSES)
    kinds = {name: probability_kind(name) for name in LOSSES}
    assert kinds["bce3s"] == "sigmoid" and kinds["cb_bce"] == "sigmoid"
    assert kinds["ce"] == "softmax" and kinds["balanced_softmax"] == "softmax" and kinds["ldam"] == "softmax"


def test_softmax_run_with_logit_adjustment_from_a_checkpoint_file(tiny_run, image_folder, tmp_path):
    """A CE-trained head gives softmax probabilities of the adjusted logits, and the output says so."""
    run = tmp_path / "ce_run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["stages"][0]["loss"] = {"name": "ce", "params": {}}  # no projector: CE needs no embeddings
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    state = load_checkpoint(tiny_run / "checkpoints" / "best_val.pt")
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("projector.")}
    bias = torch.linspace(-1.0, 1.0, 10)
    state["model"]["logit_bias"] = bias
    save_checkpoint(tmp_path / "adjusted.pt", state)

    rm = load_run_model(run, str(tmp_path / "adjusted.pt"), "cpu")
    assert (rm.probability, rm.logit_adjusted) == ("softmax", True)
    files = sorted(str(p) for p in image_folder.glob("2/*.png"))[:8]
    res = predict_files(rm, files, top_k=10)
    plain = load_run_model(tiny_run, "best_val", "cpu")
    t = plain.transform()
    x = torch.stack([preprocess(load_image_file(f, "L"), t, plain.preset, plain.image_size) for f in files])
    with torch.no_grad():
        expected = torch.softmax(plain.model(x).logits + bias, dim=1)
    for row, probs in zip(res.rows, expected):
        got = dict((i, p) for i, _, p in row.topk)
        assert [got[k] for k in range(10)] == pytest.approx(probs.tolist(), abs=1e-5)
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), *files, "--checkpoint", str(tmp_path / "adjusted.pt"), "--out", str(out),
                 "--quiet"]) == 0
    assert {r["probability"] for r in csv.DictReader(out.open())} == {"softmax+logit_adjusted"}


def test_unknown_checkpoint_is_a_usage_error(tiny_run, image_folder):
    assert main(["predict", str(tiny_run), str(image_folder), "--checkpoint", "best", "--quiet"]) == 2
