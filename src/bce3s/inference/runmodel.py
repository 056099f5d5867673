"""A trained run as a ready-to-use classifier: its model, preprocessing, class names and probability kind.

:func:`load_run_model` reads a run directory without its dataset: the config (``config.yaml``), the image size
and channels (``data.json``), the class names (``final.json``) and a checkpoint. The preprocessing is the run's
evaluation transform (:func:`bce3s.data.transforms.build_transform` with ``train=False`` and the run's preset,
size and channels), applied to images decoded with the run's PIL mode (``L`` for 1-channel runs, ``RGB`` else).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bce3s.config import Config
from bce3s.errors import RunDirError

__all__ = ["PROBABILITY_KINDS", "SIGMOID_LOSSES", "RunModel", "load_run_model", "probability_kind"]

log = logging.getLogger(__name__)

#: Losses whose head is trained with per-class sigmoids; every other loss trains a softmax head.
SIGMOID_LOSSES = frozenset({"bce3s", "bce", "cb_sigmoid", "cb_focal", "cb_bce"})
PROBABILITY_KINDS = ("sigmoid", "softmax")


def probability_kind(loss_name: str) -> str:
    """``sigmoid`` for a loss that trains per-class sigmoids (BCE3S, BCE, CB-sigmoid/focal/BCE), else ``softmax``."""
    return "sigmoid" if loss_name in SIGMOID_LOSSES else "softmax"


@dataclass
class RunModel:
    """A run's classifier with everything needed to apply it to new images.

    Attributes:
        model: the :class:`~bce3s.models.Classifier` in eval mode on ``device`` (logit adjustment included).
        cfg: the run's config.
        run_dir: the run directory.
        checkpoint: the checkpoint's name (``last``, ``best_val``, ...) or file path.
        class_names: K names, index = class id.
        in_channels: image channels the model takes (1: images are converted to gray, 3: to RGB).
        image_size: the side of the network input.
        preset: the run's preset (``cifar``, ``imagenet`` or ``gray``): normalisation and resize/crop.
        probability: ``sigmoid`` (per-class, the head was trained with a BCE loss) or ``softmax``.
        logit_adjusted: the checkpoint carries a post-hoc logit adjustment (``stages.N.logit_adjust_tau``).
        device: where ``model`` lives.
    """

    model: nn.Module
    cfg: Config
    run_dir: Path
    checkpoint: str
    class_names: list[str]
    in_channels: int
    image_size: int
    preset: str
    probability: str
    logit_adjusted: bool
    device: torch.device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def mode(self) -> str:
        """The PIL mode images are decoded with (``L`` or ``RGB``)."""
        return "L" if self.in_channels == 1 else "RGB"

    def transform(self) -> Any:
        """The per-image eval transform: uint8 (C, H, W) -> float32 (C, S, S) normalized (see :func:`preprocess`)."""
        from bce3s.data.transforms import build_transform

        return build_transform(self.preset, train=False, image_size=self.image_size, channels=self.in_channels)

    def probabilities(self, logits: Tensor) -> Tensor:
        """(N, K) logits -> (N, K) probabilities of the model's kind (sigmoid per class, or softmax)."""
        return torch.sigmoid(logits.float()) if self.probability == "sigmoid" else torch.softmax(logits.float(), 1)

    def metadata(self) -> dict[str, Any]:
        """JSON-able facts stored with an exported model."""
        from bce3s.data.transforms import preset_stats

        mean, std = preset_stats(self.preset, self.in_channels)
        return {
            "format": "bce3s-model/1",
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "probability": self.probability,
            "logit_adjusted": self.logit_adjusted,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "preset": self.preset,
            "mean": list(mean),
            "std": list(std),
            "run": str(self.run_dir),
            "checkpoint": self.checkpoint,
            "model": self.cfg.model.name,
            "head": self.cfg.model.head,
        }


def preprocess(image: Tensor, transform: Any, preset: str, image_size: int) -> Tensor:
    """The run's eval transform of one uint8 (C, H, W) image -> float32 (C, S, S).

    The ``imagenet`` preset resizes and centre-crops by itself; the ``cifar`` and ``gray`` presets evaluate images
    of the training size as they are, so an image of another size is first resized to S x S (antialiased).
    """
    if preset != "imagenet" and tuple(image.shape[-2:]) != (image_size, image_size):
        from torchvision.transforms.v2 import functional as TF

        image = TF.resize(image, [image_size, image_size], antialias=True)
    return transform(image)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _load_state(rd: Any, checkpoint: str) -> tuple[dict[str, Any], Path, str]:
    """The checkpoint state, its path and its label: a name of the run's checkpoints or a ``.pt`` file."""
    from bce3s.engine.checkpoint import load_checkpoint

    as_file = Path(checkpoint)
    if checkpoint.endswith(".pt") or as_file.is_file():
        return load_checkpoint(as_file), as_file, str(as_file)
    return load_checkpoint(rd.checkpoint(checkpoint)), rd.checkpoint(checkpoint), checkpoint


def load_run_model(run_dir: str | Path, checkpoint: str = "best_val", device: str | None = None) -> RunModel:
    """Load a trained run's checkpoint as a :class:`RunModel` (no dataset needed).

    Args:
        run_dir: a directory made by ``bce3s train``.
        checkpoint: ``best_val``, ``last``, ``<stage>_last`` / ``<stage>_best_val``, or a ``.pt`` file of a run
            of this config.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (default: the run's ``runtime.device``).

    Raises:
        RunDirError: not a run directory, or its ``data.json`` is missing.
        CheckpointError: missing, corrupt or non-matching checkpoint.
        ConfigError: unknown checkpoint name or device.
    """
    from types import SimpleNamespace

    from bce3s.engine.build import build_run_model, default_preset
    from bce3s.engine.distributed import resolve_device
    from bce3s.engine.evaluate import _load_weights, _read_run_config
    from bce3s.rundir import RunDir

    rd = RunDir(Path(run_dir))
    rd.require_run()
    is_file = checkpoint.endswith(".pt") or Path(checkpoint).is_file()
    cfg = _read_run_config(rd, "last" if is_file else checkpoint, device)
    record = _read_json(rd.data_json)
    if not {"num_classes", "in_channels", "image_size"} <= set(record):
        raise RunDirError(f"{rd.data_json} is missing or damaged: it gives the run's classes and image size")
    num_classes, in_channels = int(record["num_classes"]), int(record["in_channels"])
    names = _read_json(rd.final).get("class_names")
    if not (isinstance(names, list) and len(names) == num_classes):
        log.warning("%s has no class names (the run has not finished): classes are named by their index", rd.root)
        names = [str(i) for i in range(num_classes)]
    data = SimpleNamespace(
        num_classes=num_classes, in_channels=in_channels, image_size=int(record["image_size"])
    )
    state, path, label = _load_state(rd, checkpoint)
    dev = resolve_device(cfg.runtime.device)
    model = build_run_model(cfg, data)
    _load_weights(model, state, path, num_classes)
    model = model.to(dev).eval()
    loss_name = _stage_loss(cfg, state, checkpoint)
    bias = getattr(model, "logit_bias", None)
    return RunModel(
        model=model,
        cfg=cfg,
        run_dir=rd.root,
        checkpoint=label,
        class_names=[str(n) for n in names],
        in_channels=in_channels,
        image_size=int(cfg.data.image_size or record["image_size"]),
        preset=default_preset(cfg, data),
        probability=probability_kind(loss_name),
        logit_adjusted=bool(bias is not None and bool((bias != 0).any())),
        device=dev,
    )


def _stage_loss(cfg: Config, state: dict[str, Any], checkpoint: str) -> str:
    """The loss of the stage that last trained the checkpoint's head (its probability kind)."""
    for stage in cfg.stages:
        if checkpoint in (f"{stage.name}_last", f"{stage.name}_best_val"):
            return stage.loss.name
    by_name = {s.name: s for s in cfg.stages}
    return by_name.get(state.get("stage_name"), cfg.stages[-1]).loss.name
