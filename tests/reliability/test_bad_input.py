"""Catalogue of user mistakes: each gives exactly one line ``bce3s: error: ...`` on stderr, exit code 2, no traceback.

Every case runs ``bce3s.cli.main`` in-process. Config mistakes are caught before any data is loaded or any file is
written (the output directory must not exist afterwards); data mistakes found while building the data leave no
output directory either. docs/reliability.md lists every case with its message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import read_json, tiny, write_cfg

from bce3s.cli import main
from bce3s.config import Config, config_from_dict, dump_config
from bce3s.engine.checkpoint import save_checkpoint
from bce3s.models import build_model
from bce3s.rundir import RunDir, write_json

OPTIM_KEYS = (
    "name, lr, momentum, nesterov, weight_decay, no_decay_norm_bias, scheduler, warmup_epochs, min_lr, grad_clip"
)
MODEL_KEYS = "name, head, projector_dim, sync_bn, channels_last, compile"
LOSSES = "bce3s, bce, ce, focal, cb_softmax, cb_sigmoid, cb_focal, balanced_softmax, logit_adjusted, ldam, cb_bce"
MODELS = "small_cnn, resnet32, resnet34_cifar, resnet50, resnext50_32x4d, resnet152"
DATASETS = (
    "digits_lt, fashion_mnist_lt, mnist_lt, cifar10_lt, cifar100_lt, imagefolder_lt, imagenet_lt, places_lt, inat2018"
)
BCE3S_PARAMS = (
    "contrastive_start_epoch, contrastive_weight, embedding_dim, logit_clip, neg_class_ratio, neg_weight, seed, "
    "temperature, uniform_scale, uniform_weight"
)


@dataclass
class Case:
    argv: list[str]
    message: str  # the whole stderr, without the trailing newline
    creates_out: bool = False  # the output directory may exist afterwards (errors found while training)


class Env:
    """A temporary directory with the tiny config, an output path and builders of broken inputs."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.mp = monkeypatch
        self.cfg = str(write_cfg(tmp / "tiny.yaml"))
        self.out = tmp / "out"

    def train(self, *extra: str, cfg: str | None = None) -> list[str]:
        return ["train", cfg or self.cfg, "--out", str(self.out), "--quiet", *extra]

    def yaml(self, name: str, text: str) -> str:
        p = self.tmp / name
        p.write_text(text)
        return str(p)

    def config(self, name: str, **changes) -> str:
        return str(write_cfg(self.tmp / name, tiny(**changes)))

    def fake_run(self, root: Path, *, status: str = "interrupted", **changes) -> RunDir:
        """A run directory as ``bce3s train`` leaves it (config.yaml, run.json), without checkpoints."""
        rd = RunDir(root)
        root.mkdir(parents=True, exist_ok=True)
        rd.write_text(rd.config, dump_config(config_from_dict(Config, tiny(**changes))))
        write_json(rd.run_json, {"status": status, "resumed_from": []})
        return rd

    def inet_root(self, *, lines: dict[str, list[str]] | None = None, corrupt: str | None = None) -> Path:
        """A tiny ImageNet-LT-style root: 3 classes of 12x12 JPEGs and the three list files."""
        root = self.tmp / "inet"
        rng = np.random.default_rng(0)
        default: dict[str, list[str]] = {}
        for split, counts in (("train", (6, 4, 3)), ("val", (2, 2, 2)), ("test", (2, 2, 2))):
            default[split] = []
            for c, n in enumerate(counts):
                folder = root / split / f"n{c:08d}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    img = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
                    Image.fromarray(img).save(folder / f"{i}.JPEG")
                    default[split].append(f"{split}/n{c:08d}/{i}.JPEG {c}")
        for split, text in {**default, **(lines or {})}.items():
            if text is not None:
                (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(text) + "\n")
        if corrupt:
            (root / corrupt).write_bytes(b"this is not a JPEG")
        return root

    def inet_cfg(self, root: Path, **changes) -> str:
        data = {
            "data": {"dataset": "imagenet_lt", "root": str(root), "image_size": 8},
            "model": {"name": "small_cnn", "projector_dim": 8},
            "stages": [{"name": "s1", "epochs": 1, "batch_size": 4, "loss": {"name": "ce"}}],
            "eval": {"batch_size": 8, "tta_flip": False},
            "runtime": {"device": "cpu", "threads": 1},
        }
        for key, value in changes.items():
            section, field = key.split(".")
            data[section][field] = value
        return str(write_cfg(self.tmp / "inet.yaml", data))


CASES: dict[str, Callable[[Env], Case]] = {}


def case(fn: Callable[[Env], Case]) -> Callable[[Env], Case]:
    CASES[fn.__name__] = fn
    return fn


E = "bce3s: error: "


# --------------------------------------------------------------------------------------------------------------
# config file and --set mistakes (caught before any data is loaded or any file is written)


@case
def unknown_key_with_suggestion(env: Env) -> Case:
    """A misspelt key in the YAML file (stages.0.optim.lrr)."""
    cfg = env.config("c.yaml", **{"stages.0.optim": {"lrr": 0.1}})
    return Case(env.train(cfg=cfg), f"{E}stages.0.optim.lrr: unknown key; did you mean 'lr'? valid keys: {OPTIM_KEYS}")


@case
def unknown_key_in_set(env: Env) -> Case:
    """A misspelt key in --set (model.nmae)."""
    return Case(
        env.train("--set", "model.nmae=x"),
        f"{E}model.nmae: unknown key; did you mean 'name'? valid keys: {MODEL_KEYS}",
    )


@case
def unknown_section(env: Env) -> Case:
    """An unknown top-level section (trainer:)."""
    cfg = env.yaml("c.yaml", "trainer:\n  epochs: 3\n")
    return Case(env.train(cfg=cfg), f"{E}trainer: unknown key; valid keys: data, model, stages, eval, log, runtime")


@case
def wrong_type_string_for_int(env: Env) -> Case:
    """A string where an integer is expected (epochs: ten)."""
    cfg = env.config("c.yaml", **{"stages.0.epochs": "ten"})
    return Case(env.train(cfg=cfg), f"{E}stages.0.epochs: expected int (got 'ten' of type str)")


@case
def wrong_type_float_for_int(env: Env) -> Case:
    """A float where an integer is expected (--set stages.0.batch_size=3.5)."""
    return Case(
        env.train("--set", "stages.0.batch_size=3.5"), f"{E}stages.0.batch_size: expected int (got 3.5 of type float)"
    )


@case
def wrong_type_mapping_for_list(env: Env) -> Case:
    """A mapping where the list of stages is expected."""
    cfg = env.yaml("c.yaml", "stages: {name: s1}\n")
    return Case(env.train(cfg=cfg), f"{E}stages: expected list of mappings (got {{'name': 's1'}} of type dict)")


@case
def lr_zero(env: Env) -> Case:
    """Learning rate 0."""
    return Case(env.train("--set", "stages.0.optim.lr=0"), f"{E}stages.0.optim.lr: must be > 0 (got 0.0)")


@case
def lr_negative(env: Env) -> Case:
    """Negative learning rate (second stage)."""
    return Case(env.train("--set", "stages.1.optim.lr=-0.1"), f"{E}stages.1.optim.lr: must be > 0 (got -0.1)")


@case
def neg_class_ratio_above_one(env: Env) -> Case:
    """Partial class ratio above 1."""
    return Case(
        env.train("--set", "stages.0.loss.params.neg_class_ratio=1.5"),
        f"{E}stages.0.loss.params.neg_class_ratio: must be in (0, 1] (got 1.5)",
    )


@case
def neg_class_ratio_zero(env: Env) -> Case:
    """Partial class ratio 0."""
    return Case(
        env.train("--set", "stages.0.loss.params.neg_class_ratio=0"),
        f"{E}stages.0.loss.params.neg_class_ratio: must be in (0, 1] (got 0)",
    )


@case
def temperature_zero(env: Env) -> Case:
    """Contrastive temperature 0."""
    return Case(
        env.train("--set", "stages.0.loss.params.temperature=0"),
        f"{E}stages.0.loss.params.temperature: must be > 0 (got 0)",
    )


@case
def imbalance_factor_below_one(env: Env) -> Case:
    """Imbalance factor below 1."""
    return Case(env.train("--set", "data.imbalance_factor=0.5"), f"{E}data.imbalance_factor: must be >= 1 (got 0.5)")


@case
def epochs_zero(env: Env) -> Case:
    """Zero epochs."""
    return Case(env.train("--set", "stages.0.epochs=0"), f"{E}stages.0.epochs: must be >= 1 (got 0)")


@case
def unknown_loss(env: Env) -> Case:
    """Unknown loss name."""
    return Case(
        env.train("--set", "stages.0.loss.name=bce4s"), f"{E}stages.0.loss.name: unknown loss 'bce4s'; valid: {LOSSES}"
    )


@case
def unknown_model(env: Env) -> Case:
    """Unknown model name."""
    return Case(env.train("--set", "model.name=resnet18"), f"{E}model.name: unknown model 'resnet18'; valid: {MODELS}")


@case
def unknown_dataset(env: Env) -> Case:
    """Unknown dataset name."""
    return Case(
        env.train("--set", "data.dataset=mnist"), f"{E}data.dataset: unknown dataset 'mnist'; valid: {DATASETS}"
    )


@case
def unknown_loss_parameter(env: Env) -> Case:
    """A misspelt loss parameter (temprature)."""
    return Case(
        env.train("--set", "stages.0.loss.params.temprature=0.5"),
        f"{E}stages.0.loss.params.temprature: unknown parameter of loss 'bce3s'; did you mean 'temperature'? "
        f"valid: {BCE3S_PARAMS}",
    )


@case
def invalid_loss_parameter_value(env: Env) -> Case:
    """A loss parameter the loss itself rejects (logit_clip=-1)."""
    return Case(
        env.train("--set", "stages.0.loss.params.logit_clip=-1"),
        f"{E}stages.0.loss: Bce3sLoss: logit_clip must be a finite number > 0 (got -1)",
    )


@case
def duplicate_stage_name(env: Env) -> Case:
    """Two stages with the same name."""
    return Case(env.train("--set", "stages.1.name=stage1"), f"{E}stages.1.name: duplicate stage name 'stage1'")


@case
def warmup_not_below_epochs(env: Env) -> Case:
    """Warm-up as long as the stage."""
    return Case(
        env.train("--set", "stages.0.optim.warmup_epochs=2"),
        f"{E}stages.0.optim.warmup_epochs: must be < epochs (2) (got 2)",
    )


@case
def unknown_nan_policy(env: Env) -> Case:
    """Unknown runtime.nan_policy."""
    return Case(
        env.train("--set", "runtime.nan_policy=ignore"),
        f"{E}runtime.nan_policy: unknown nan_policy 'ignore'; valid: stop, skip",
    )


@case
def unknown_device(env: Env) -> Case:
    """Unknown device name."""
    return Case(env.train("--device", "tpu"), f"{E}runtime.device: must be auto, cpu, cuda or cuda:N (got 'tpu')")


@case
def malformed_set(env: Env) -> Case:
    """--set without '='."""
    return Case(
        env.train("--set", "stages.0.epochs"),
        f"{E}malformed override 'stages.0.epochs': expected the form --set section.key=value "
        "(e.g. --set stages.0.epochs=3)",
    )


@case
def set_index_out_of_range(env: Env) -> Case:
    """--set of a stage that does not exist."""
    return Case(env.train("--set", "stages.5.epochs=1"), f"{E}stages.5: index 5 out of range (valid: 0..1)")


@case
def missing_config_file(env: Env) -> Case:
    """The config file does not exist."""
    path = env.tmp / "nope.yaml"
    return Case(
        env.train(cfg=str(path)),
        f"{E}config file not found: {path} (give the path of a YAML file, e.g. configs/digits_lt/bce3s.yaml)",
    )


@case
def yaml_syntax_error(env: Env) -> Case:
    """A YAML syntax error (bad indentation on line 3)."""
    cfg = env.yaml("c.yaml", "data:\n  dataset: digits_lt\n   root: x\n")
    return Case(env.train(cfg=cfg), f"{E}{cfg}: line 3 is not valid YAML (mapping values are not allowed here)")


@case
def yaml_top_level_not_a_mapping(env: Env) -> Case:
    """A YAML file whose top level is a list."""
    cfg = env.yaml("c.yaml", "- data\n- model\n")
    return Case(env.train(cfg=cfg), f"{E}{cfg}: the top level must be a mapping of sections (data, model, stages, ...)")


@case
def train_without_config(env: Env) -> Case:
    """train with neither CONFIG nor --resume."""
    return Case(
        ["train", "--out", str(env.out)],
        f"{E}train needs a CONFIG file (e.g. configs/digits_lt/bce3s.yaml), or --resume --out RUN_DIR",
    )


@case
def seed_not_an_integer(env: Env) -> Case:
    """--seed x."""
    return Case(
        env.train("--seed", "x"), "bce3s train: error: argument --seed: invalid int value: 'x' (see bce3s train --help)"
    )


@case
def cuda_without_cuda(env: Env) -> Case:
    """--device cuda on a machine without CUDA."""
    env.mp.setattr(torch.cuda, "is_available", lambda: False)
    return Case(
        env.train("--device", "cuda"),
        f"{E}device 'cuda' requested but CUDA is not available here; use --device cpu (or auto)",
    )


@case
def world_size_does_not_divide_batch(env: Env) -> Case:
    """torchrun with 3 processes (WORLD_SIZE=3) and batch size 32."""
    # what torchrun --nproc_per_node=3 sets; the check must come before the process group is joined
    for key, value in (("WORLD_SIZE", "3"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        env.mp.setenv(key, value)
    return Case(
        env.train(),
        f"{E}stages.0.batch_size: 32 is not divisible by the world size 3; use a multiple of the number of processes",
    )


# --------------------------------------------------------------------------------------------------------------
# output directory


@case
def out_under_a_regular_file(env: Env) -> Case:
    """An output directory that cannot be created (its parent is a regular file)."""
    blocker = env.tmp / "a_file"
    blocker.write_text("x")
    env.out = blocker / "run"
    return Case(env.train(), f"{E}output directory {env.out} is not writable (Not a directory); choose another --out")


@case
def out_holds_a_different_run(env: Env) -> Case:
    """--out holds a run of another config (no --overwrite)."""
    env.fake_run(env.out, **{"stages.0.optim.lr": 0.1})
    return Case(
        env.train(),
        f"{E}{env.out} already holds a different run (stages.0.optim.lr: 0.1 != 0.05); pass --overwrite to "
        "replace it or choose another --out",
        creates_out=True,
    )


@case
def out_holds_this_configs_run(env: Env) -> Case:
    """--out holds an unfinished run of the same config (no --resume/--overwrite)."""
    env.fake_run(env.out)
    return Case(
        env.train(),
        f"{E}{env.out} already holds a run of this config; continue it with --resume (or --auto-resume), pass "
        "--overwrite to replace it, or choose another --out",
        creates_out=True,
    )


@case
def auto_resume_of_a_finished_run(env: Env) -> Case:
    """--auto-resume (a scheduler re-running the command) into a finished run of the same config."""
    env.fake_run(env.out, status="finished")
    return Case(
        env.train("--auto-resume"),
        f"{E}{env.out} already holds a finished run of this config (see its final.json); pass --overwrite to train "
        "it again, or choose another --out",
        creates_out=True,
    )


@case
def auto_resume_of_another_configs_run(env: Env) -> Case:
    """--auto-resume into an unfinished run of another config that has no checkpoint yet."""
    env.fake_run(env.out, status="running", **{"runtime.seed": 5})
    return Case(
        env.train("--auto-resume"),
        f"{E}{env.out} already holds a different run (runtime.seed: 5 != 3); pass --overwrite to replace it or "
        "choose another --out",
        creates_out=True,
    )


# --------------------------------------------------------------------------------------------------------------
# data (found while building the data: still before any file is written)


@case
def missing_data_root(env: Env) -> Case:
    """data.root points nowhere (Fashion-MNIST)."""
    root = env.tmp / "nowhere"
    return Case(
        env.train("--set", "data.dataset=fashion_mnist_lt", "--set", f"data.root={root}"),
        f"{E}Fashion-MNIST not found: expected {root}/FashionMNIST/raw/{{train-images-idx3-ubyte,"
        f"train-labels-idx1-ubyte,t10k-images-idx3-ubyte,t10k-labels-idx1-ubyte}}[.gz] (torchvision layout) or the "
        f"four files directly in {root}; set data.root, or data.download=true",
    )


@case
def imbalance_factor_empties_a_class(env: Env) -> Case:
    """An imbalance factor that leaves a class with no image (Digits-LT, IF 1000)."""
    return Case(
        env.train("--set", "data.imbalance_factor=1000"),
        f"{E}imbalance factor 1000 empties class 7 (n_max 134, profile exp): use an imbalance factor <= 134",
    )


@case
def batch_larger_than_dataset(env: Env) -> Case:
    """A batch larger than the training set."""
    return Case(
        env.train("--set", "stages.0.batch_size=5000"),
        f"{E}stages.0.batch_size: 5000 is larger than the training set (544 images); lower it",
    )


@case
def validation_larger_than_class(env: Env) -> Case:
    """A validation size larger than a class."""
    return Case(
        env.train("--set", "data.val_per_class=500"),
        f"{E}class 0 has 148 training images; carving 500 for validation would leave none: lower data.val_per_class",
    )


@case
def split_file_malformed_line(env: Env) -> Case:
    """A split file with a non-integer label on line 3."""
    train = ["train/n00000000/0.JPEG 0", "train/n00000001/0.JPEG 1", "train/n00000002/0.JPEG two"]
    root = env.inet_root(lines={"train": train})
    return Case(
        env.train(cfg=env.inet_cfg(root)),
        f"{E}{root}/ImageNet_LT_train.txt:3: malformed line 'train/n00000002/0.JPEG two'; expected "
        "'relative/path label' with an integer label",
    )


@case
def split_file_negative_label(env: Env) -> Case:
    """A split file with a negative label."""
    train = ["train/n00000000/0.JPEG 0", "train/n00000001/0.JPEG -1"]
    root = env.inet_root(lines={"train": train})
    return Case(
        env.train(cfg=env.inet_cfg(root)),
        f"{E}{root}/ImageNet_LT_train.txt:2: label -1 is negative; labels are class ids 0..K-1",
    )


@case
def split_file_label_out_of_range(env: Env) -> Case:
    """A test list with a label the train list does not define."""
    test = ["test/n00000000/0.JPEG 0", "test/n00000001/0.JPEG 1", "test/n00000002/0.JPEG 7"]
    root = env.inet_root(lines={"test": test})
    return Case(
        env.train(cfg=env.inet_cfg(root)),
        f"{E}{root}/ImageNet_LT_test.txt:3: label 7 outside [0, 3) (the train list defines 3 classes)",
    )


@case
def split_file_class_without_training_image(env: Env) -> Case:
    """A train list without any image of class 1."""
    train = ["train/n00000000/0.JPEG 0", "train/n00000002/0.JPEG 2"]
    root = env.inet_root(lines={"train": train})
    return Case(
        env.train(cfg=env.inet_cfg(root)),
        f"{E}{root}/ImageNet_LT_train.txt: class 1 has no training image (1 of 3 classes missing); every class id "
        "0..K-1 must appear in the train list",
    )


@case
def split_file_missing(env: Env) -> Case:
    """The test list is missing."""
    root = env.inet_root()
    (root / "ImageNet_LT_test.txt").unlink()
    return Case(
        env.train(cfg=env.inet_cfg(root)),
        f"{E}ImageNet-LT: test list {root}/ImageNet_LT_test.txt not found; expected {root}/ImageNet_LT_train.txt "
        f"with lines like 'train/n01440764/n01440764_10026.JPEG 0' and the images under {root} "
        "(or set data.test_list)",
    )


@case
def split_file_image_missing(env: Env) -> Case:
    """A listed image does not exist."""
    train = ["train/n00000000/99.JPEG 0", "train/n00000001/0.JPEG 1", "train/n00000002/0.JPEG 2"]
    root = env.inet_root(lines={"train": train})
    return Case(
        env.train(cfg=env.inet_cfg(root)),
        f"{E}{root}/ImageNet_LT_train.txt:1: image {root}/train/n00000000/99.JPEG not found; data.root must be the "
        "folder the list's relative paths start from",
    )


@case
def image_fails_to_decode(env: Env) -> Case:
    """A listed image is not an image (found when first read)."""
    root = env.inet_root(corrupt="val/n00000001/1.JPEG")
    bad = root / "val/n00000001/1.JPEG"
    return Case(
        env.train(cfg=env.inet_cfg(root)),
        f"{E}cannot decode image {bad}: cannot identify image file '{bad}' (re-create or remove the file)",
        creates_out=True,  # found when the image is first read, during training
    )


@case
def image_fails_to_decode_in_a_loader_worker(env: Env) -> Case:
    """The same, read in a DataLoader worker (runtime.num_workers=1)."""
    root = env.inet_root(corrupt="val/n00000001/1.JPEG")
    bad = root / "val/n00000001/1.JPEG"
    return Case(
        env.train(cfg=env.inet_cfg(root, **{"runtime.num_workers": 1})),
        f"{E}cannot decode image {bad}: cannot identify image file '{bad}' (re-create or remove the file)",
        creates_out=True,
    )


# --------------------------------------------------------------------------------------------------------------
# resume


@case
def resume_with_a_different_config(env: Env) -> Case:
    """--resume with a config that differs from the run's."""
    env.fake_run(env.out)
    cfg = env.config("other.yaml", **{"stages.0.optim.lr": 0.1, "runtime.seed": 4})
    return Case(
        ["train", cfg, "--resume", "--out", str(env.out)],
        f"{E}cannot resume {env.out} with a different config (runtime.seed: 3 != 4; stages.0.optim.lr: 0.05 != 0.1); "
        "drop the config/--set to resume as is",
        creates_out=True,
    )


@case
def resume_with_a_different_set(env: Env) -> Case:
    """--resume with a --set that changes the run's config."""
    env.fake_run(env.out)
    return Case(
        ["train", "--resume", "--out", str(env.out), "--set", "stages.1.epochs=5"],
        f"{E}cannot resume {env.out} with a different config (stages.1.epochs: 1 != 5); drop the config/--set to "
        "resume as is",
        creates_out=True,
    )


@case
def resume_without_checkpoint(env: Env) -> Case:
    """--resume of a run that stopped before its first checkpoint."""
    env.fake_run(env.out)
    ck = env.out / "checkpoints" / "last.pt"
    return Case(
        ["train", "--resume", "--out", str(env.out)],
        f"{E}cannot resume {env.out}: {ck} not found (the run stopped before its first checkpoint); start it again "
        "with --overwrite",
        creates_out=True,
    )


@case
def resume_truncated_checkpoint(env: Env) -> Case:
    """--resume of a run whose last.pt was truncated."""
    rd = env.fake_run(env.out)
    save_checkpoint(rd.checkpoint("last"), {"model": {"w": torch.zeros(1000)}, "stage_index": 0})
    data = rd.checkpoint("last").read_bytes()
    rd.checkpoint("last").write_bytes(data[: len(data) // 2])
    return Case(
        ["train", "--resume", "--out", str(env.out)],
        f"{E}cannot resume {env.out}: checkpoint {rd.checkpoint('last')} is truncated or corrupt "
        "(PytorchStreamReader failed reading zip archive: failed finding central directory); it was damaged after "
        "it was written (bce3s writes checkpoints atomically): restore it from a copy or re-create it, or start the "
        "run again with --overwrite",
        creates_out=True,
    )


@case
def resume_checkpoint_with_other_class_count(env: Env) -> Case:
    """--resume of a run whose last.pt was trained with another number of classes."""
    rd = env.fake_run(env.out)
    state = {"kind": "resume", "stage_index": 0, "epoch": 1, "step": 0, "num_classes": 5}
    save_checkpoint(rd.checkpoint("last"), state)
    return Case(
        ["train", "--resume", "--out", str(env.out)],
        f"{E}{rd.checkpoint('last')} was trained with 5 classes but the data has 10; resume it with its own data",
        creates_out=True,
    )


@case
def resume_not_a_run(env: Env) -> Case:
    """--resume of a directory that is not a run."""
    env.out.mkdir()
    return Case(
        ["train", "--resume", "--out", str(env.out)],
        f"{E}{env.out} is not a bce3s run directory (no config.yaml/run.json); give a directory made by 'bce3s train'",
        creates_out=True,
    )


@case
def resume_missing_directory(env: Env) -> Case:
    """--resume of a directory that does not exist."""
    return Case(["train", "--resume", "--out", str(env.out)], f"{E}run directory not found: {env.out}")


@case
def resume_without_out(env: Env) -> Case:
    """--resume without --out."""
    return Case(["train", env.cfg, "--resume"], f"{E}--resume needs --out RUN_DIR (the run to continue)")


# --------------------------------------------------------------------------------------------------------------
# eval


@case
def eval_not_a_run(env: Env) -> Case:
    """eval of a directory that is not a run."""
    return Case(
        ["eval", str(env.tmp)],
        f"{E}{env.tmp} is not a bce3s run directory (no config.yaml/run.json); give a directory made by 'bce3s train'",
    )


@case
def eval_missing_directory(env: Env) -> Case:
    """eval of a directory that does not exist."""
    return Case(["eval", str(env.out)], f"{E}run directory not found: {env.out}")


@case
def eval_damaged_config(env: Env) -> Case:
    """eval of a run whose config.yaml is damaged."""
    rd = env.fake_run(env.out)
    rd.config.write_text("data: [unclosed\n")
    return Case(
        ["eval", str(env.out)],
        f"{E}cannot read {rd.config} (while parsing a flow sequence); the run directory is damaged",
        creates_out=True,
    )


@case
def eval_missing_checkpoint(env: Env) -> Case:
    """eval of a checkpoint the run does not have."""
    rd = env.fake_run(env.out)
    return Case(
        ["eval", str(env.out), "--checkpoint", "best_val"],
        f"{E}checkpoint not found: {rd.checkpoint('best_val')} (was the run started? train first, or pick another run)",
        creates_out=True,
    )


@case
def eval_checkpoint_with_other_class_count(env: Env) -> Case:
    """eval of a checkpoint trained with another number of classes."""
    rd = env.fake_run(env.out)
    model = build_model("small_cnn", num_classes=5, in_channels=1, projector_dim=16)
    save_checkpoint(rd.checkpoint("last"), {"model": model.state_dict(), "num_classes": 5})
    return Case(
        ["eval", str(env.out)],
        f"{E}{rd.checkpoint('last')} has 5 classes but the run's data has 10; evaluate it with the data it was "
        "trained on",
        creates_out=True,
    )


@case
def eval_checkpoint_of_another_model(env: Env) -> Case:
    """eval of a checkpoint of another model (no class count recorded)."""
    rd = env.fake_run(env.out)
    model = build_model("small_cnn", num_classes=5, in_channels=1, projector_dim=16)
    save_checkpoint(rd.checkpoint("last"), {"model": model.state_dict()})  # no class count recorded
    return Case(
        ["eval", str(env.out)],
        f"{E}{rd.checkpoint('last')} does not match the run's model (size mismatch for logit_bias: copying a param "
        "with shape torch.Size([5]) from checkpoint, the shape in current model is torch.Size([10]).); "
        "evaluate it with the run it was trained in",
        creates_out=True,
    )


@case
def eval_truncated_checkpoint(env: Env) -> Case:
    """eval of a corrupt checkpoint."""
    rd = env.fake_run(env.out)
    rd.checkpoints.mkdir()
    rd.checkpoint("last").write_bytes(b"PK\x03\x04 half a zip")
    return Case(
        ["eval", str(env.out)],
        f"{E}checkpoint {rd.checkpoint('last')} is truncated or corrupt (PytorchStreamReader failed reading zip "
        "archive: not a ZIP archive); it was damaged after it was written (bce3s writes checkpoints "
        "atomically): restore it from a copy or re-create it",
        creates_out=True,
    )


@case
def eval_val_split_of_a_run_without_one(env: Env) -> Case:
    """eval --split val of a run without a validation split."""
    rd = env.fake_run(env.out, **{"data.val_per_class": 0})
    model = build_model("small_cnn", num_classes=10, in_channels=1, projector_dim=16)
    save_checkpoint(rd.checkpoint("last"), {"model": model.state_dict(), "num_classes": 10})
    return Case(
        ["eval", str(env.out), "--split", "val"],
        f"{E}--split val: the run {env.out} has no validation split (data.val_per_class is 0)",
        creates_out=True,
    )


@case
def eval_unknown_split(env: Env) -> Case:
    """eval --split train."""
    return Case(
        ["eval", str(env.out), "--split", "train"],
        "bce3s eval: error: argument --split: invalid choice: 'train' (choose from 'test', 'val') "
        "(see bce3s eval --help)",
    )


# --------------------------------------------------------------------------------------------------------------


def _run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors
        return int(exc.code)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_and_exit_2(name, tmp_path, capsys, monkeypatch, keep_threads):
    env = Env(tmp_path, monkeypatch)
    c = CASES[name](env)
    out_existed = env.out.exists()
    rc = _run_main(c.argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err == c.message + "\n"
    assert rc == 2
    run_json = env.out / "run.json"
    if run_json.is_file() and out_existed:  # a refused command does not touch the run it was pointed at
        assert read_json(run_json).get("resumed_from") == [], "a refused resume must not be recorded"
    if not c.creates_out:
        assert not env.out.exists(), "a rejected run must not create its output directory"
    elif not out_existed:
        assert env.out.exists()


def test_catalogue_has_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root: chmod does not stop root from writing")
def test_unwritable_output_directory_chmod(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        cfg = write_cfg(tmp_path / "tiny.yaml")
        rc = main(["train", str(cfg), "--out", str(locked / "run"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2
        assert err == (
            f"bce3s: error: output directory {locked / 'run'} is not writable (Permission denied); "
            "choose another --out\n"
        )
    finally:
        locked.chmod(0o700)
