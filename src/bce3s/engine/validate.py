"""Validation of a whole config against the registries that own its names, before any data is loaded.

:mod:`bce3s.config` checks types and ranges; the names (dataset, model, head, sampler, preset, pipeline, loss)
and the loss parameters belong to the packages that implement them. :func:`validate_config` asks those
registries and dry-builds every stage's loss on dummy class counts, so that a bad name or parameter is reported
with its key path, the valid choices and the closest one, without reading any data or writing any file::

    cfg = load_config("configs/digits_lt/bce3s.yaml", ["stages.1.loss.params.temperature=0"])
    validate_config(cfg)
    # ConfigError: stages.1.loss.params.temperature: unknown parameter of loss 'cb_bce'; valid: beta, ...
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from typing import Any

from bce3s.config import Config, LossConfig
from bce3s.errors import BCE3SError, ConfigError

__all__ = ["validate_config"]

# Dummy class statistics of the dry build of a loss: K = 10 classes, 100..10 training images.
_DRY_NUM_CLASSES = 10
_DRY_COUNTS = tuple(range(100, 0, -10))


def validate_config(cfg: Config, *, training: bool = True) -> None:
    """Check ``cfg`` completely: ranges (``cfg.check()``), then every name against its registry.

    Looked up: ``data.dataset`` in ``bce3s.data.DATASETS``, ``data.preset`` in ``bce3s.data.PRESETS``,
    ``model.name`` / ``model.head`` in ``bce3s.models.MODELS`` / ``HEADS``, every sampler in
    ``bce3s.data.SAMPLER_KINDS``, ``runtime.pipeline`` in ``bce3s.data.PIPELINES``, and every stage's loss name in
    ``bce3s.losses.LOSSES``. Each stage's loss is then built once with ``bce3s.losses.build_loss`` on dummy
    class counts, so that its parameters are checked by the loss itself.

    With ``training`` (the default) the settings of the training step are also checked against the device:
    ``runtime.step: graphed`` and ``runtime.amp: fp16`` need CUDA, refused when ``runtime.device`` is ``cpu`` (or
    ``auto`` on a machine without CUDA, for fp16). ``training=False`` (``bce3s eval`` / ``predict`` of a finished
    run, maybe on another device than its training) skips them: such a run is evaluated in fp32 off CUDA.

    Args:
        cfg: the config to check (not modified).
        training: the config is about to train (see above).

    Raises:
        ConfigError: one line that starts with the key path, e.g.
            ``stages.1.loss.params.temperature: unknown parameter of loss 'cb_bce'; valid: beta, ...`` or
            ``stages.0.loss.params.temperature: must be a finite number > 0 (got 0)``; an unknown name lists the
            valid names and suggests the closest one.
    """
    import bce3s.data
    import bce3s.losses
    import bce3s.models

    cfg.check()
    _choice("data.dataset", cfg.data.dataset, bce3s.data.DATASETS, "dataset")
    if cfg.data.preset is not None:
        _choice("data.preset", cfg.data.preset, bce3s.data.PRESETS, "preset")
    if cfg.model.name.startswith("timm/"):
        from bce3s.models.timm_backbone import check_timm_name

        check_timm_name(cfg.model.name)
        if cfg.model.freeze_stages:
            raise ConfigError("model.freeze_stages: not available for timm backbones (they do not list stages)")
    else:
        _choice("model.name", cfg.model.name, bce3s.models.MODELS, "model")
    if cfg.model.pretrained is not None:
        _check_pretrained(cfg.model.pretrained, cfg.model.name)
    _choice("model.head", cfg.model.head, bce3s.models.HEADS, "head")
    _choice("runtime.pipeline", cfg.runtime.pipeline, bce3s.data.PIPELINES, "pipeline")
    if training and cfg.runtime.step == "graphed" and cfg.runtime.device == "cpu":
        raise ConfigError("runtime.step: graphed needs CUDA but runtime.device is cpu; use static, eager or auto")
    if training and cfg.runtime.amp == "fp16" and _off_cuda(cfg.runtime.device):
        from bce3s.engine.build import FP16_OFF_CUDA

        raise ConfigError(FP16_OFF_CUDA.format(device="cpu"))
    if cfg.runtime.step == "graphed" and cfg.model.compile:
        raise ConfigError(
            "runtime.step: graphed captures the whole step as a CUDA graph and does not take a torch.compile'd "
            "model (model.compile: true); use runtime.step: compiled, or model.compile: false"
        )
    if cfg.runtime.step not in ("auto", "eager") and cfg.runtime.amp == "fp16":
        raise ConfigError(
            f"runtime.step: {cfg.runtime.step} cannot run fp16 (its loss scaler decides on the host); use amp bf16"
        )
    for i, stage in enumerate(cfg.stages):
        _choice(f"stages.{i}.sampler", stage.sampler, bce3s.data.SAMPLER_KINDS, "sampler")
        _choice(f"stages.{i}.mixing.sampler", stage.mixing.sampler, bce3s.data.SAMPLER_KINDS, "sampler")
        _choice(f"stages.{i}.loss.name", stage.loss.name, bce3s.losses.LOSSES, "loss")
        _dry_build_loss(f"stages.{i}.loss", stage.loss)


def _off_cuda(device: str) -> bool:
    """``runtime.device`` resolves to the CPU: ``cpu``, or ``auto`` without CUDA."""
    import torch

    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def _check_pretrained(spec: str, arch: str) -> None:
    """A torchvision weights name in ``model.pretrained`` is one of ``arch``'s (files are checked by ``train``:
    a finished run stays usable after its weights file is gone)."""
    from bce3s.models.pretrained import is_weights_name, torchvision_weights_file

    if is_weights_name(spec):
        torchvision_weights_file(arch, spec)


def _choice(path: str, value: str, valid: Collection[str], what: str) -> None:
    """Raise a ConfigError at ``path`` unless ``value`` is one of ``valid`` (with a did-you-mean)."""
    if value not in valid:
        raise ConfigError(f"{path}: unknown {what} {value!r};{_hint(value, valid)} valid: {', '.join(valid)}")


def _hint(value: Any, valid: Collection[str]) -> str:
    """`` did you mean 'x'?`` for the closest valid name (or the only one ``value`` abbreviates), else ``""``."""
    text = str(value)
    close = difflib.get_close_matches(text, list(valid), n=1)
    if not close and text:
        close = [name for name in valid if name.startswith(text)]
    return f" did you mean '{close[0]}'?" if len(close) == 1 else ""


def _dry_build_loss(path: str, loss: LossConfig) -> None:
    """Build ``loss`` on dummy class counts; map the loss's complaint to the key path of the parameter."""
    from bce3s.losses import build_loss, loss_params

    valid = sorted(loss_params(loss.name))
    for key in loss.params:
        if key not in valid:
            raise ConfigError(
                f"{path}.params.{key}: unknown parameter of loss '{loss.name}';{_hint(key, valid)} "
                f"valid: {', '.join(valid) or '(none)'}"
            )
    try:
        build_loss(loss.name, num_classes=_DRY_NUM_CLASSES, class_counts=list(_DRY_COUNTS), **loss.params)
    except (TypeError, ValueError) as err:
        if isinstance(err, BCE3SError):
            raise
        raise _loss_error(path, loss, err) from None


def _loss_error(path: str, loss: LossConfig, err: Exception) -> ConfigError:
    """The loss's own error message, re-addressed to ``<path>.params.<name>`` when it names a parameter."""
    lines = [x for x in str(err).strip().splitlines() if x.strip()]
    text = lines[0].strip() if lines else type(err).__name__
    # a leading "Where: " that is not a parameter (e.g. "Bce3sLoss: ") says nothing the key path does not
    where = re.match(r"([A-Za-z_][\w.]*):\s+", text)
    if where and where.group(1) not in loss.params:
        text = text[where.end() :]
    for key in loss.params:
        head = re.match(rf"{re.escape(key)}\b:?\s*", text)
        if head:
            return ConfigError(f"{path}.params.{key}: {text[head.end() :]}")
    for key in loss.params:
        if re.search(rf"\b{re.escape(key)}\b", text):
            return ConfigError(f"{path}.params.{key}: {text}")
    return ConfigError(f"{path}: {text}")
