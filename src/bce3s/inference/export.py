"""``bce3s export``: a trained run as one self-contained file that needs neither bce3s nor its config.

The exported model takes **uint8 images (N, C, H, W)** (the layout of ``torchvision.io.read_image`` and of
bce3s's own loader; C = the run's channels, 1 or 3, 0..255) and returns **float32 logits (N, K)**. The run's
evaluation preprocessing is inside: for the ``imagenet`` preset a resize of the short side to ``round(S / 0.875)``
and a centre crop of S x S; for ``cifar`` / ``gray`` images of the training size pass as they are (another size
is resized to S x S); then ``/ 255`` and the preset's mean / std. Post-hoc logit adjustment, when the run used
it, is part of the logits.

Formats:

- ``torchscript``: ``torch.jit.load(path)``; any batch size and image size. Metadata in the extra file
  ``bce3s.json`` (``torch.jit.load(path, _extra_files={"bce3s.json": ""})``).
- ``exported``: a ``torch.export`` program (``torch.export.load(path).module()``); any batch size, the image
  size given at export. Metadata in the extra file ``bce3s.json``.
- ``onnx``: ONNX (input ``images``, output ``logits``), any batch size, the image size given at export; needs the
  optional packages of ``pip install 'bce3s[onnx]'``. Metadata as ``metadata_props`` (key ``bce3s``, a JSON text).

The metadata (:meth:`bce3s.inference.RunModel.metadata`) holds the class names, the probability kind
(``sigmoid`` or ``softmax``: apply it to the logits to get the run's probabilities), the channels, sizes and
normalisation.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bce3s.errors import ConfigError
from bce3s.inference.runmodel import RunModel

__all__ = ["EXPORT_FORMATS", "ExportedClassifier", "default_input_size", "export_model"]

EXPORT_FORMATS = ("torchscript", "exported", "onnx")
METADATA_KEY = "bce3s.json"
ONNX_MISSING = "--format onnx needs the optional packages onnx and onnxscript: pip install 'bce3s[onnx]'"


def _half_even(d: int) -> int:
    """``round(d / 2)`` with Python's round-half-to-even, in integers (TorchScript's round differs on .5)."""
    q = d // 2
    if d % 2 == 0 or q % 2 == 0:
        return q
    return q + 1


class _Logits(nn.Module):
    """A :class:`~bce3s.models.Classifier` returning its logits only (N, K)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits.float()


class ExportedClassifier(nn.Module):
    """uint8 images (N, C, H, W) -> logits (N, K) with the run's eval preprocessing inside (scriptable).

    Args:
        net: maps normalized float images (N, C, S, S) to logits (N, K).
        mean, std: per-channel normalisation (C values each).
        image_size: S, the network input side.
        resize: short-side resize before the centre crop (``imagenet`` preset); 0 = no crop: images of another
            size than S x S are resized to S x S.
        native_uint8: resize uint8 CPU images with torch's uint8 kernel, as torchvision does (TorchScript: pixel
            for pixel the eval transform); otherwise in float, rounded (may differ by one grey level).
    """

    def __init__(
        self,
        net: nn.Module,
        mean: list[float],
        std: list[float],
        image_size: int,
        resize: int,
        native_uint8: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.image_size = image_size
        self.resize = resize
        self.channels = len(mean)
        self.native_uint8 = native_uint8

    def _resize(self, images: Tensor, h: int, w: int) -> Tensor:
        """uint8 (N, C, H, W) -> float (N, C, h, w) of integer values, as torchvision resizes uint8 images."""
        if self.native_uint8 and images.device.type == "cpu":  # torchvision's own uint8 kernel on CPU: exact
            return F.interpolate(images, size=[h, w], mode="bilinear", align_corners=False, antialias=True).float()
        x = F.interpolate(images.float(), size=[h, w], mode="bilinear", align_corners=False, antialias=True)
        return x.round().clamp(0.0, 255.0)

    def forward(self, images: Tensor) -> Tensor:
        """Args: images uint8 (N, C, H, W). Returns: float32 logits (N, K)."""
        if images.dim() != 4 or images.shape[1] != self.channels or images.dtype != torch.uint8:
            raise ValueError("expected uint8 images of shape (N, C, H, W) with the model's channel count")
        h, w = images.shape[-2], images.shape[-1]
        s = self.image_size
        if self.resize > 0:
            if h <= w:
                nh, nw = self.resize, int(self.resize * w / h)
            else:
                nh, nw = int(self.resize * h / w), self.resize
            x = self._resize(images, nh, nw) if (nh != h or nw != w) else images.float()
            top, left = _half_even(nh - s), _half_even(nw - s)
            x = x[:, :, top : top + s, left : left + s]
        elif h != s or w != s:
            x = self._resize(images, s, s)
        else:
            x = images.float()
        x = (x / 255.0 - self.mean) / self.std
        return self.net(x)


def default_input_size(rm: RunModel) -> int:
    """The square side the ``exported`` / ``onnx`` formats take by default: S, or ``round(S / 0.875)`` (imagenet)."""
    from bce3s.data.transforms import eval_resize_size

    return eval_resize_size(rm.image_size) if rm.preset == "imagenet" else rm.image_size


def build_exportable(rm: RunModel, *, traced: bool = False) -> ExportedClassifier:
    """The :class:`ExportedClassifier` of a run model, on CPU, in eval mode.

    ``traced``: the network is traced (for TorchScript) and resizes use the uint8 kernel on CPU."""
    from bce3s.data.transforms import eval_resize_size, preset_stats

    model = copy.deepcopy(rm.model).to("cpu").float().eval().requires_grad_(False)
    net: nn.Module = _Logits(model)
    if traced:
        example = torch.zeros(2, rm.in_channels, rm.image_size, rm.image_size)
        net = torch.jit.trace(net, example, check_trace=False)
    mean, std = preset_stats(rm.preset, rm.in_channels)
    resize = eval_resize_size(rm.image_size) if rm.preset == "imagenet" else 0
    return ExportedClassifier(net, list(mean), list(std), rm.image_size, resize, native_uint8=traced).eval()


def export_model(rm: RunModel, fmt: str, out: str | Path, *, input_size: int | None = None) -> Path:
    """Write ``rm`` as a self-contained file (see the module docstring).

    Args:
        rm: from :func:`bce3s.inference.load_run_model` (moved to CPU).
        fmt: ``torchscript``, ``exported`` or ``onnx``.
        out: the file to write.
        input_size: image side of the ``exported`` / ``onnx`` formats (default :func:`default_input_size`).

    Raises:
        ConfigError: unknown format, or ``onnx`` without its optional packages.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    if input_size is not None and input_size < 1:
        raise ConfigError(f"--input-size: must be >= 1 (got {input_size})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    side = input_size or default_input_size(rm)
    meta = rm.metadata()
    meta["input"] = "uint8 (N, C, H, W), values 0..255"
    meta["output"] = f"float32 logits (N, K); probabilities = {meta['probability']}(logits)"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save's deprecation notice
        if fmt == "torchscript":
            scripted = torch.jit.script(build_exportable(rm, traced=True))
            torch.jit.save(scripted, str(out), _extra_files={METADATA_KEY: json.dumps(meta)})
        elif fmt == "exported":
            meta["input"] = f"uint8 (N, C, {side}, {side}), values 0..255"
            ep = _torch_export(build_exportable(rm), rm.in_channels, side)
            torch.export.save(ep, str(out), extra_files={METADATA_KEY: json.dumps(meta)})
        else:
            meta["input"] = f"uint8 (N, C, {side}, {side}), values 0..255"
            _onnx_export(build_exportable(rm), rm.in_channels, side, out, meta)
    return out


def _example(channels: int, side: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, channels, side, side), dtype=torch.uint8, generator=g)


def _torch_export(module: nn.Module, channels: int, side: int) -> Any:
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(module, (_example(channels, side),), dynamic_shapes={"images": {0: batch}})


def _onnx_export(module: nn.Module, channels: int, side: int, out: Path, meta: dict[str, Any]) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise ConfigError(ONNX_MISSING) from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.onnx.export(
        module,
        (_example(channels, side),),
        str(out),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"images": {0: batch}},
        dynamo=True,
        external_data=False,
        verbose=False,
        report=False,
    )
    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "bce3s", json.dumps(meta)
    onnx.save(proto, str(out))
