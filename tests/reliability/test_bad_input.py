"""Catalogue of user mistakes: each gives exactly one line ``bce3s: error: ...`` on stderr, exit code 2, no traceback.

Every case runs ``bce3s.cli.main`` in-process and checks behaviour, not wording: the one line names the key path
(config mistakes: the message starts with it), the file or value at fault, and a did-you-mean where one applies.
Config mistakes are caught before any data is loaded or any file is written (the output directory must not exist
afterwards); data mistakes found while building the data leave no output directory either. docs/reliability.md
lists every case with its message.
"""

from __future__ import annotations

import dataclasses
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
from bce3s.config import Config, ModelConfig, OptimConfig, config_from_dict, dump_config
from bce3s.data import DATASETS
from bce3s.engine.checkpoint import save_checkpoint
from bce3s.losses import LOSSES, loss_params
from bce3s.models import MODELS, build_model
from bce3s.rundir import RunDir, write_json


@dataclass
class Case:
    argv: list[str]
    key: str | None = None  # the message starts with this key path (``key: ...``)
    mentions: tuple[str, ...] = ()  # ... and contains each of these (file paths, values, a suggestion)
    creates_out: bool = False  # the output directory may exist afterwards (errors found while training)
    prefix: str = "bce3s: error: "  # argparse errors name the subcommand: ``bce3s train: error: ``
    valid: tuple[str, ...] = ()  # names the message must list as the valid choices


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


def keys_of(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


# --------------------------------------------------------------------------------------------------------------
# config file and --set mistakes (caught before any data is loaded or any file is written)


@case
def unknown_key_with_suggestion(env: Env) -> Case:
    """A misspelt key in the YAML file (stages.0.optim.lrr)."""
    cfg = env.config("c.yaml", **{"stages.0.optim": {"lrr": 0.1}})
    return Case(env.train(cfg=cfg), "stages.0.optim.lrr", ("'lr'",), valid=keys_of(OptimConfig))


@case
def unknown_key_in_set(env: Env) -> Case:
    """A misspelt key in --set (model.nmae)."""
    return Case(env.train("--set", "model.nmae=x"), "model.nmae", ("'name'",), valid=keys_of(ModelConfig))


@case
def unknown_section(env: Env) -> Case:
    """An unknown top-level section (trainer:)."""
    cfg = env.yaml("c.yaml", "trainer:\n  epochs: 3\n")
    return Case(env.train(cfg=cfg), "trainer", valid=keys_of(Config))


@case
def wrong_type_string_for_int(env: Env) -> Case:
    """A string where an integer is expected (epochs: ten)."""
    cfg = env.config("c.yaml", **{"stages.0.epochs": "ten"})
    return Case(env.train(cfg=cfg), "stages.0.epochs", ("int", "'ten'"))


@case
def wrong_type_float_for_int(env: Env) -> Case:
    """A float where an integer is expected (--set stages.0.batch_size=3.5)."""
    return Case(env.train("--set", "stages.0.batch_size=3.5"), "stages.0.batch_size", ("int", "3.5"))


@case
def wrong_type_mapping_for_list(env: Env) -> Case:
    """A mapping where the list of stages is expected."""
    cfg = env.yaml("c.yaml", "stages: {name: s1}\n")
    return Case(env.train(cfg=cfg), "stages", ("list",))


@case
def lr_zero(env: Env) -> Case:
    """Learning rate 0."""
    return Case(env.train("--set", "stages.0.optim.lr=0"), "stages.0.optim.lr", ("> 0",))


@case
def lr_negative(env: Env) -> Case:
    """Negative learning rate (second stage)."""
    return Case(env.train("--set", "stages.1.optim.lr=-0.1"), "stages.1.optim.lr", ("> 0", "-0.1"))


@case
def neg_class_ratio_above_one(env: Env) -> Case:
    """Partial class ratio above 1."""
    return Case(
        env.train("--set", "stages.0.loss.params.neg_class_ratio=1.5"), "stages.0.loss.params.neg_class_ratio", ("1.5",)
    )


@case
def neg_class_ratio_zero(env: Env) -> Case:
    """Partial class ratio 0."""
    return Case(
        env.train("--set", "stages.0.loss.params.neg_class_ratio=0"),
        "stages.0.loss.params.neg_class_ratio",
        ("(0, 1]",),
    )


@case
def temperature_zero(env: Env) -> Case:
    """Contrastive temperature 0."""
    return Case(
        env.train("--set", "stages.0.loss.params.temperature=0"), "stages.0.loss.params.temperature", ("> 0", "got 0")
    )


@case
def temperature_of_a_loss_without_one(env: Env) -> Case:
    """A parameter the stage's loss does not have (temperature on the cb_bce stage): unknown, not out of range."""
    return Case(
        env.train("--set", "stages.1.loss.params.temperature=0"),
        "stages.1.loss.params.temperature",
        ("unknown parameter", "'cb_bce'"),
        valid=tuple(loss_params("cb_bce")),
    )


@case
def imbalance_factor_below_one(env: Env) -> Case:
    """Imbalance factor below 1."""
    return Case(env.train("--set", "data.imbalance_factor=0.5"), "data.imbalance_factor", (">= 1", "0.5"))


@case
def epochs_zero(env: Env) -> Case:
    """Zero epochs."""
    return Case(env.train("--set", "stages.0.epochs=0"), "stages.0.epochs", (">= 1",))


@case
def unknown_loss(env: Env) -> Case:
    """Unknown loss name."""
    return Case(
        env.train("--set", "stages.0.loss.name=bce4s"),
        "stages.0.loss.name",
        ("'bce4s'", "'bce3s'"),
        valid=tuple(LOSSES),
    )


@case
def unknown_model(env: Env) -> Case:
    """Unknown model name."""
    return Case(env.train("--set", "model.name=resnet18"), "model.name", ("'resnet18'",), valid=tuple(MODELS))


@case
def unknown_dataset(env: Env) -> Case:
    """Unknown dataset name."""
    return Case(
        env.train("--set", "data.dataset=mnist"), "data.dataset", ("'mnist'", "'mnist_lt'"), valid=tuple(DATASETS)
    )


@case
def unknown_loss_parameter(env: Env) -> Case:
    """A misspelt loss parameter (temprature)."""
    return Case(
        env.train("--set", "stages.0.loss.params.temprature=0.5"),
        "stages.0.loss.params.temprature",
        ("'bce3s'", "'temperature'"),
        valid=tuple(loss_params("bce3s")),
    )


@case
def invalid_loss_parameter_value(env: Env) -> Case:
    """A loss parameter the loss itself rejects (logit_clip=-1)."""
    return Case(env.train("--set", "stages.0.loss.params.logit_clip=-1"), "stages.0.loss.params.logit_clip", ("-1",))


@case
def duplicate_stage_name(env: Env) -> Case:
    """Two stages with the same name."""
    return Case(env.train("--set", "stages.1.name=stage1"), "stages.1.name", ("duplicate", "'stage1'"))


@case
def warmup_not_below_epochs(env: Env) -> Case:
    """Warm-up as long as the stage."""
    return Case(env.train("--set", "stages.0.optim.warmup_epochs=2"), "stages.0.optim.warmup_epochs", ("epochs",))


@case
def unknown_nan_policy(env: Env) -> Case:
    """Unknown runtime.nan_policy."""
    return Case(
        env.train("--set", "runtime.nan_policy=ignore"), "runtime.nan_policy", ("'ignore'",), valid=("stop", "skip")
    )


@case
def unknown_device(env: Env) -> Case:
    """Unknown device name."""
    return Case(env.train("--device", "tpu"), "runtime.device", ("'tpu'", "cuda:N"))


@case
def malformed_set(env: Env) -> Case:
    """--set without '='."""
    return Case(env.train("--set", "stages.0.epochs"), None, ("'stages.0.epochs'", "--set section.key=value"))


@case
def set_index_out_of_range(env: Env) -> Case:
    """--set of a stage that does not exist."""
    return Case(env.train("--set", "stages.5.epochs=1"), "stages.5", ("0..1",))


@case
def missing_config_file(env: Env) -> Case:
    """The config file does not exist."""
    path = env.tmp / "nope.yaml"
    return Case(env.train(cfg=str(path)), None, (str(path), "not found"))


@case
def yaml_syntax_error(env: Env) -> Case:
    """A YAML syntax error (bad indentation on line 3)."""
    cfg = env.yaml("c.yaml", "data:\n  dataset: digits_lt\n   root: x\n")
    return Case(env.train(cfg=cfg), cfg, ("line 3", "YAML"))


@case
def yaml_top_level_not_a_mapping(env: Env) -> Case:
    """A YAML file whose top level is a list."""
    cfg = env.yaml("c.yaml", "- data\n- model\n")
    return Case(env.train(cfg=cfg), cfg, ("mapping",))


@case
def train_without_config(env: Env) -> Case:
    """train with neither CONFIG nor --resume."""
    return Case(["train", "--out", str(env.out)], None, ("CONFIG", "--resume"))


@case
def seed_not_an_integer(env: Env) -> Case:
    """--seed x."""
    return Case(env.train("--seed", "x"), None, ("--seed", "'x'", "--help"), prefix="bce3s train: error: ")


@case
def cuda_without_cuda(env: Env) -> Case:
    """--device cuda on a machine without CUDA."""
    env.mp.setattr(torch.cuda, "is_available", lambda: False)
    return Case(env.train("--device", "cuda"), None, ("'cuda'", "--device cpu"))


@case
def world_size_does_not_divide_batch(env: Env) -> Case:
    """torchrun with 3 processes (WORLD_SIZE=3) and batch size 32."""
    # what torchrun --nproc_per_node=3 sets; the check must come before the process group is joined
    for key, value in (("WORLD_SIZE", "3"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        env.mp.setenv(key, value)
    return Case(env.train(), "stages.0.batch_size", ("32", "world size 3"))


# --------------------------------------------------------------------------------------------------------------
# output directory


@case
def out_under_a_regular_file(env: Env) -> Case:
    """An output directory that cannot be created (its parent is a regular file)."""
    blocker = env.tmp / "a_file"
    blocker.write_text("x")
    env.out = blocker / "run"
    return Case(env.train(), None, (str(env.out), "not writable", "--out"))


@case
def out_holds_a_different_run(env: Env) -> Case:
    """--out holds a run of another config (no --overwrite)."""
    env.fake_run(env.out, **{"stages.0.optim.lr": 0.1})
    return Case(env.train(), str(env.out), ("stages.0.optim.lr", "0.1", "0.05", "--overwrite"), creates_out=True)


@case
def out_holds_this_configs_run(env: Env) -> Case:
    """--out holds an unfinished run of the same config (no --resume/--overwrite)."""
    env.fake_run(env.out)
    return Case(env.train(), str(env.out), ("--resume", "--overwrite"), creates_out=True)


@case
def auto_resume_of_a_finished_run(env: Env) -> Case:
    """--auto-resume (a scheduler re-running the command) into a finished run of the same config."""
    env.fake_run(env.out, status="finished")
    return Case(env.train("--auto-resume"), str(env.out), ("finished", "--overwrite"), creates_out=True)


@case
def auto_resume_of_another_configs_run(env: Env) -> Case:
    """--auto-resume into an unfinished run of another config that has no checkpoint yet."""
    env.fake_run(env.out, status="running", **{"runtime.seed": 5})
    return Case(env.train("--auto-resume"), str(env.out), ("runtime.seed", "5", "3", "--overwrite"), creates_out=True)


# --------------------------------------------------------------------------------------------------------------
# data (found while building the data: still before any file is written)


@case
def missing_data_root(env: Env) -> Case:
    """data.root points nowhere (Fashion-MNIST)."""
    root = env.tmp / "nowhere"
    return Case(
        env.train("--set", "data.dataset=fashion_mnist_lt", "--set", f"data.root={root}"),
        None,
        ("Fashion-MNIST", str(root), "data.root", "data.download"),
    )


@case
def imbalance_factor_empties_a_class(env: Env) -> Case:
    """An imbalance factor that leaves a class with no image (Digits-LT, IF 1000)."""
    return Case(env.train("--set", "data.imbalance_factor=1000"), None, ("1000", "class 7", "<= 134"))


@case
def batch_larger_than_dataset(env: Env) -> Case:
    """A batch larger than the training set."""
    return Case(env.train("--set", "stages.0.batch_size=5000"), "stages.0.batch_size", ("5000", "544"))


@case
def validation_larger_than_class(env: Env) -> Case:
    """A validation size larger than a class."""
    return Case(env.train("--set", "data.val_per_class=500"), None, ("class 0", "148", "500", "data.val_per_class"))


@case
def split_file_malformed_line(env: Env) -> Case:
    """A split file with a non-integer label on line 3."""
    train = ["train/n00000000/0.JPEG 0", "train/n00000001/0.JPEG 1", "train/n00000002/0.JPEG two"]
    root = env.inet_root(lines={"train": train})
    return Case(env.train(cfg=env.inet_cfg(root)), f"{root}/ImageNet_LT_train.txt:3", ("'train/n00000002/0.JPEG two'",))


@case
def split_file_negative_label(env: Env) -> Case:
    """A split file with a negative label."""
    train = ["train/n00000000/0.JPEG 0", "train/n00000001/0.JPEG -1"]
    root = env.inet_root(lines={"train": train})
    return Case(env.train(cfg=env.inet_cfg(root)), f"{root}/ImageNet_LT_train.txt:2", ("-1",))


@case
def split_file_label_out_of_range(env: Env) -> Case:
    """A test list with a label the train list does not define."""
    test = ["test/n00000000/0.JPEG 0", "test/n00000001/0.JPEG 1", "test/n00000002/0.JPEG 7"]
    root = env.inet_root(lines={"test": test})
    return Case(env.train(cfg=env.inet_cfg(root)), f"{root}/ImageNet_LT_test.txt:3", ("label 7", "[0, 3)"))


@case
def split_file_class_without_training_image(env: Env) -> Case:
    """A train list without any image of class 1."""
    train = ["train/n00000000/0.JPEG 0", "train/n00000002/0.JPEG 2"]
    root = env.inet_root(lines={"train": train})
    return Case(env.train(cfg=env.inet_cfg(root)), f"{root}/ImageNet_LT_train.txt", ("class 1",))


@case
def split_file_missing(env: Env) -> Case:
    """The test list is missing."""
    root = env.inet_root()
    (root / "ImageNet_LT_test.txt").unlink()
    return Case(
        env.train(cfg=env.inet_cfg(root)), None, (f"{root}/ImageNet_LT_test.txt", "not found", "data.test_list")
    )


@case
def split_file_image_missing(env: Env) -> Case:
    """A listed image does not exist."""
    train = ["train/n00000000/99.JPEG 0", "train/n00000001/0.JPEG 1", "train/n00000002/0.JPEG 2"]
    root = env.inet_root(lines={"train": train})
    return Case(
        env.train(cfg=env.inet_cfg(root)),
        None,
        (f"{root}/ImageNet_LT_train.txt:1", f"{root}/train/n00000000/99.JPEG", "not found", "data.root"),
    )


@case
def image_fails_to_decode(env: Env) -> Case:
    """A listed image is not an image (found when first read)."""
    root = env.inet_root(corrupt="val/n00000001/1.JPEG")
    bad = root / "val/n00000001/1.JPEG"
    return Case(
        env.train(cfg=env.inet_cfg(root)),
        None,
        ("cannot be decoded", str(bad)),
        creates_out=True,  # found when the image is first read, during training
    )


@case
def image_fails_to_decode_in_a_loader_worker(env: Env) -> Case:
    """The same, read in a DataLoader worker (runtime.num_workers=1)."""
    root = env.inet_root(corrupt="val/n00000001/1.JPEG")
    bad = root / "val/n00000001/1.JPEG"
    return Case(
        env.train(cfg=env.inet_cfg(root, **{"runtime.num_workers": 1})),
        None,
        ("cannot be decoded", str(bad)),
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
        None,
        (str(env.out), "runtime.seed", "stages.0.optim.lr"),
        creates_out=True,
    )


@case
def resume_with_a_different_set(env: Env) -> Case:
    """--resume with a --set that changes the run's config."""
    env.fake_run(env.out)
    return Case(
        ["train", "--resume", "--out", str(env.out), "--set", "stages.1.epochs=5"],
        None,
        (str(env.out), "stages.1.epochs", "5"),
        creates_out=True,
    )


@case
def resume_without_checkpoint(env: Env) -> Case:
    """--resume of a run that stopped before its first checkpoint."""
    env.fake_run(env.out)
    ck = env.out / "checkpoints" / "last.pt"
    return Case(["train", "--resume", "--out", str(env.out)], None, (str(ck), "--overwrite"), creates_out=True)


@case
def resume_truncated_checkpoint(env: Env) -> Case:
    """--resume of a run whose last.pt was truncated."""
    rd = env.fake_run(env.out)
    save_checkpoint(rd.checkpoint("last"), {"model": {"w": torch.zeros(1000)}, "stage_index": 0})
    data = rd.checkpoint("last").read_bytes()
    rd.checkpoint("last").write_bytes(data[: len(data) // 2])
    return Case(
        ["train", "--resume", "--out", str(env.out)],
        None,
        (str(rd.checkpoint("last")), "truncated or corrupt", "--overwrite"),
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
        None,
        (str(rd.checkpoint("last")), "5 classes", "10"),
        creates_out=True,
    )


@case
def resume_not_a_run(env: Env) -> Case:
    """--resume of a directory that is not a run."""
    env.out.mkdir()
    return Case(
        ["train", "--resume", "--out", str(env.out)],
        None,
        (str(env.out), "not a bce3s run directory"),
        creates_out=True,
    )


@case
def resume_missing_directory(env: Env) -> Case:
    """--resume of a directory that does not exist."""
    return Case(["train", "--resume", "--out", str(env.out)], None, (str(env.out), "not found"))


@case
def resume_without_out(env: Env) -> Case:
    """--resume without --out."""
    return Case(["train", env.cfg, "--resume"], "--resume", ("--out",))


# --------------------------------------------------------------------------------------------------------------
# eval


@case
def eval_not_a_run(env: Env) -> Case:
    """eval of a directory that is not a run."""
    return Case(["eval", str(env.tmp)], None, (str(env.tmp), "not a bce3s run directory"))


@case
def eval_missing_directory(env: Env) -> Case:
    """eval of a directory that does not exist."""
    return Case(["eval", str(env.out)], None, (str(env.out), "not found"))


@case
def eval_damaged_config(env: Env) -> Case:
    """eval of a run whose config.yaml is damaged."""
    rd = env.fake_run(env.out)
    rd.config.write_text("data: [unclosed\n")
    return Case(["eval", str(env.out)], None, (str(rd.config), "damaged"), creates_out=True)


@case
def eval_missing_checkpoint(env: Env) -> Case:
    """eval of a checkpoint the run does not have."""
    rd = env.fake_run(env.out)
    return Case(
        ["eval", str(env.out), "--checkpoint", "best_val"],
        None,
        (str(rd.checkpoint("best_val")), "not found"),
        creates_out=True,
    )


@case
def eval_checkpoint_with_other_class_count(env: Env) -> Case:
    """eval of a checkpoint trained with another number of classes."""
    rd = env.fake_run(env.out)
    model = build_model("small_cnn", num_classes=5, in_channels=1, projector_dim=16)
    save_checkpoint(rd.checkpoint("last"), {"model": model.state_dict(), "num_classes": 5})
    return Case(["eval", str(env.out)], str(rd.checkpoint("last")), ("5 classes", "10"), creates_out=True)


@case
def eval_checkpoint_of_another_model(env: Env) -> Case:
    """eval of a checkpoint of another model (no class count recorded)."""
    rd = env.fake_run(env.out)
    model = build_model("small_cnn", num_classes=5, in_channels=1, projector_dim=16)
    save_checkpoint(rd.checkpoint("last"), {"model": model.state_dict()})  # no class count recorded
    return Case(["eval", str(env.out)], None, (str(rd.checkpoint("last")), "does not match"), creates_out=True)


@case
def eval_truncated_checkpoint(env: Env) -> Case:
    """eval of a corrupt checkpoint."""
    rd = env.fake_run(env.out)
    rd.checkpoints.mkdir()
    rd.checkpoint("last").write_bytes(b"PK\x03\x04 half a zip")
    return Case(["eval", str(env.out)], None, (str(rd.checkpoint("last")), "truncated or corrupt"), creates_out=True)


@case
def eval_val_split_of_a_run_without_one(env: Env) -> Case:
    """eval --split val of a run without a validation split."""
    rd = env.fake_run(env.out, **{"data.val_per_class": 0})
    model = build_model("small_cnn", num_classes=10, in_channels=1, projector_dim=16)
    save_checkpoint(rd.checkpoint("last"), {"model": model.state_dict(), "num_classes": 10})
    return Case(["eval", str(env.out), "--split", "val"], "--split val", ("data.val_per_class",), creates_out=True)


@case
def eval_unknown_split(env: Env) -> Case:
    """eval --split train."""
    return Case(["eval", str(env.out), "--split", "train"], None, ("--split", "'train'"), prefix="bce3s eval: error: ")


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
    assert rc == 2
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith(c.prefix), err
    body = err[len(c.prefix) :].rstrip("\n")
    if c.key is not None:  # the message starts with the key path (or the file) at fault
        assert body.startswith(c.key) and body[len(c.key) : len(c.key) + 1] in (":", " "), (c.key, body)
    missing = [m for m in (*c.mentions, *c.valid) if m not in body]
    assert not missing, f"{body!r} does not mention {missing}"
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
        assert err.startswith("bce3s: error: ") and err.count("\n") == 1
        assert str(locked / "run") in err and "not writable" in err
        assert not (locked / "run").exists()
    finally:
        locked.chmod(0o700)
