"""Evaluation: a split with the model in memory (validation during training, the final test), and a saved
checkpoint of a run directory (``bce3s eval``: metrics, calibration, geometry, confusion, reliability).

``bce3s eval RUN_DIR`` calls :func:`evaluate_run`; the numbers for the test split equal those in ``final.json``
because both use :func:`evaluate_split`'s data, un-augmented source and metric functions.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bce3s.config import Config
from bce3s.engine.build import amp_dtype, build_run_model, eval_source
from bce3s.engine.distributed import DistInfo
from bce3s.engine.loop import predict
from bce3s.errors import CheckpointError, ConfigError, RunDirError
from bce3s.eval.metrics import reliability_bins

__all__ = ["eval_result", "eval_stem", "evaluate_run", "evaluate_split", "predict_split"]

log = logging.getLogger(__name__)


def predict_split(
    cfg: Config,
    data: Any,
    model: nn.Module,
    split: Any,
    dist: DistInfo,
    *,
    tta: bool = False,
    with_features: bool = False,
) -> dict[str, Any]:
    """Logits, labels (and features) of ``model`` on an evaluation split, as :func:`bce3s.engine.loop.predict`.

    The one prediction pass shared by the end-of-training test (``final.json``, ``eval_test_*.json``) and
    ``bce3s eval``: the run's eval batch size, un-augmented pipeline, autocast dtype and memory format.
    """
    return predict(
        model,
        eval_source(cfg, data, split, dist),
        dist,
        amp_dtype=amp_dtype(cfg, dist.device, train=False),
        channels_last=cfg.model.channels_last,
        tta_flip=tta,
        with_features=with_features,
    )


def evaluate_split(
    cfg: Config, data: Any, model: nn.Module, split: Any, dist: DistInfo, *, tta: bool = False
) -> dict[str, Any]:
    """The metrics (:func:`bce3s.eval.metrics.summarize`) of ``model`` on an evaluation split of ``data``.

    Args:
        cfg: the run's config (eval batch size, pipeline, autocast, channels_last).
        data: the run's :class:`~bce3s.data.DataSplits` (class counts define the shot groups).
        model: the classifier, on ``dist.device``.
        split: an :class:`~bce3s.data.ImageSet` of ``data`` (val or test).
        tta: average the logits of each image and its horizontal flip.
    """
    from bce3s.eval.metrics import summarize

    pred = predict_split(cfg, data, model, split, dist, tta=tta)
    return summarize(pred["logits"], pred["labels"], data.train_counts)


def eval_result(
    pred: dict[str, Any],
    data: Any,
    model: nn.Module,
    *,
    split: str,
    checkpoint: str,
    tta: str = "none",
    geometry: bool = True,
) -> dict[str, Any]:
    """The content of ``eval_<split>_<checkpoint>.json`` from one prediction pass (with features).

    Used by ``bce3s eval`` (:func:`evaluate_run`) and by the end of ``bce3s train``, so both write the same file.

    Args:
        pred: :func:`predict_split`'s output with ``with_features=True``.
        data: the run's :class:`~bce3s.data.DataSplits`.
        model: the classifier that made ``pred`` (its head weights feed the geometry diagnostics).
        split: ``test`` or ``val``.
        checkpoint: the checkpoint's name (``last``, ``best_val``, ...).
        tta: ``none`` or ``flip``.
        geometry: compute the feature/classifier geometry diagnostics.
    """
    from bce3s.eval.metrics import confusion_matrix, summarize

    logits, labels = pred["logits"], pred["labels"]
    result: dict[str, Any] = {
        "split": split,
        "checkpoint": checkpoint,
        "tta": tta,
        "metrics": summarize(logits, labels, data.train_counts),
        "reliability": reliability_bins(logits, labels),
    }
    if data.num_classes <= 100:
        result["confusion"] = confusion_matrix(logits.argmax(1), labels, data.num_classes).tolist()
    if geometry:
        from bce3s.eval.geometry import geometry_summary

        result["geometry"] = geometry_summary(
            pred["features"], labels, model.head.weight.detach().cpu(), data.train_counts
        )
    return result


def eval_stem(split: str, checkpoint: str, tta: str = "none") -> str:
    """The file name (without ``.json``) of an evaluation: ``eval_<split>_<checkpoint>[_tta_flip]``."""
    return f"eval_{split}_{checkpoint}" + ("_tta_flip" if tta == "flip" else "")


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    checkpoint: str = "last",
    tta: str = "none",
    device: str | None = None,
    geometry: bool = True,
    save_features: bool = False,
) -> dict[str, Any]:
    """Evaluate ``checkpoints/<checkpoint>.pt`` of a run on ``split`` and write ``eval_<split>_<checkpoint>.json``.

    Args:
        run_dir: a directory made by ``bce3s train``.
        split: ``test`` or ``val``.
        checkpoint: ``last`` or ``best_val`` (the run's), or ``<stage>_last`` / ``<stage>_best_val`` (a stage's,
            e.g. ``stage1_last`` for the representation before classifier re-training).
        tta: ``none`` or ``flip`` (averaged logits of the image and its flip; labelled in the output).
        device: override of the run's ``runtime.device``.
        geometry: compute the feature/classifier geometry diagnostics.
        save_features: also write ``features_<split>_<checkpoint>.pt`` (features, logits, labels).

    Returns:
        The dict written to the JSON file.
    """
    from bce3s.data.splits import build_data
    from bce3s.engine.checkpoint import load_checkpoint
    from bce3s.engine.distributed import init_distributed
    from bce3s.rundir import RunDir, write_json

    if split not in ("test", "val"):
        raise ConfigError(f"--split: unknown split {split!r}; valid: test, val")
    if tta not in ("none", "flip"):
        raise ConfigError(f"--tta: unknown TTA mode {tta!r}; valid: none, flip")
    rd = RunDir(Path(run_dir))
    rd.require_run()
    cfg = _read_run_config(rd, checkpoint, device)
    state = load_checkpoint(rd.checkpoint(checkpoint))
    dist = init_distributed(cfg.runtime.device)
    data = build_data(cfg.data)
    part = data.test if split == "test" else data.val
    if part is None:
        raise ConfigError(f"--split val: the run {rd.root} has no validation split (data.val_per_class is 0)")
    model = build_run_model(cfg, data).to(dist.device)
    _load_weights(model, state, rd.checkpoint(checkpoint), data.num_classes)
    pred = predict_split(cfg, data, model, part, dist, tta=tta == "flip", with_features=True)
    result = eval_result(pred, data, model, split=split, checkpoint=checkpoint, tta=tta, geometry=geometry)
    logits, labels, feats = pred["logits"], pred["labels"], pred["features"]
    if dist.is_main:
        write_json(rd.root / f"{eval_stem(split, checkpoint, tta)}.json", result)
        if save_features:
            torch.save(
                {"features": feats, "logits": logits, "labels": labels}, rd.root / f"features_{split}_{checkpoint}.pt"
            )
    return result


def _read_run_config(rd: Any, checkpoint: str, device: str | None) -> Config:
    """The config of a run directory (with an optional device override); ``checkpoint`` must be one of its names."""
    import yaml

    from bce3s.config import config_from_dict
    from bce3s.engine.validate import validate_config

    try:
        cfg = config_from_dict(Config, yaml.safe_load(rd.config.read_text()) or {})
        validate_config(cfg, training=False)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunDirError(f"cannot read {rd.config} ({first}); the run directory is damaged") from None
    valid = ["last", "best_val"] + [f"{s.name}_{k}" for s in cfg.stages for k in ("last", "best_val")]
    if checkpoint not in valid:
        raise ConfigError(f"--checkpoint: unknown checkpoint {checkpoint!r}; valid: {', '.join(valid)}")
    if device is not None:
        cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, device=device))
        validate_config(cfg, training=False)
    return cfg


def _load_weights(model: nn.Module, state: dict[str, Any], path: Path, num_classes: int) -> None:
    """Load a checkpoint's weights into the run's model, with a one-line error when they do not fit."""
    ck_classes = int(state.get("num_classes", num_classes))
    if ck_classes != num_classes:
        raise CheckpointError(
            f"{path} has {ck_classes} classes but the run's data has {num_classes}; "
            "evaluate it with the data it was trained on"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        # torch lists the mismatches on the lines after "Error(s) in loading state_dict for ...:"
        lines = [x.strip() for x in str(err).splitlines() if x.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
        raise CheckpointError(
            f"{path} does not match the run's model ({detail[:200]}); evaluate it with the run it was trained in"
        ) from None
