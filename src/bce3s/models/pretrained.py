"""Pretrained backbone weights (``model.pretrained``) and frozen stages (``model.freeze_stages``).

``model.pretrained`` is either

- a local file: a torchvision or timm state dict (``torch.save(net.state_dict(), f)``; the classifier ``fc.*`` /
  the timm model's classifier is dropped), a bce3s checkpoint (``checkpoints/*.pt`` of another run: its
  ``backbone.*`` weights), or a ``.safetensors`` file (needs the ``safetensors`` package);
- a torchvision weights name of the backbone's architecture (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``;
  for ``resnet50``, ``resnext50_32x4d`` and ``resnet152``), read from torch's hub cache
  (``$TORCH_HOME/hub/checkpoints``, see ``torch.hub.get_dir()``) and downloaded there when missing.

Loading never runs code from a file: ``torch.load(..., weights_only=True)`` admits only tensors and plain
containers, and a file that needs more is refused with a one-line reason. Keys must match the backbone exactly
(after the classifier is dropped and a ``module.`` prefix is stripped); a mismatch names the keys and shapes.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bce3s.errors import CheckpointError, ConfigError

__all__ = [
    "TORCHVISION_ARCHS",
    "backbone_stages",
    "fetch_weights",
    "freeze_stages",
    "is_weights_name",
    "load_pretrained",
    "read_state_dict",
    "torchvision_weights_file",
]

#: bce3s backbone -> torchvision architecture whose ImageNet weights it takes by name.
TORCHVISION_ARCHS = {"resnet50": "resnet50", "resnext50_32x4d": "resnext50_32x4d", "resnet152": "resnet152"}
_CLASSIFIER_PREFIXES = ("fc.",)


def is_weights_name(spec: str) -> bool:
    """Whether ``spec`` reads as a torchvision weights name (``IMAGENET1K_V2``, ``DEFAULT``) rather than a file."""
    return spec.replace("_", "").isalnum() and spec.upper() == spec and not Path(spec).exists()


def _where(path: Path) -> str:
    return f"model.pretrained: {path}"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, loaded without running code from it.

    Accepts a state dict, a dict holding one under ``state_dict`` or ``model``, a bce3s checkpoint (its
    ``backbone.*`` entries, prefix removed) and, with the ``safetensors`` package, ``.safetensors`` files.

    Raises:
        CheckpointError: missing file, a file that would need code to load (refused), or one that holds no
            tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{_where(path)}: file not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"{_where(path)}: .safetensors files need the package: pip install safetensors") from None
        try:
            return dict(load_file(str(path)))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{_where(path)}: not a readable safetensors file ({_first(err)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{_where(path)}: refused: the file holds Python objects besides tensors, and loading it would run code "
            f"from it ({_first(err)[:100]}); save the network's state_dict() with torch.save and use that file"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{_where(path)}: not a readable weights file ({_first(err)[:120]})") from None
    return _extract(obj, path)


def _first(err: BaseException) -> str:
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    return lines[0] if lines else type(err).__name__


def _extract(obj: Any, path: Path) -> dict[str, Tensor]:
    """The state dict inside a loaded object (bce3s checkpoint, ``{"state_dict": ...}``, ``{"model": ...}``)."""
    if isinstance(obj, dict) and obj.get("format") == 1 and isinstance(obj.get("model"), dict):  # bce3s checkpoint
        sd = {k[len("backbone.") :]: v for k, v in obj["model"].items() if k.startswith("backbone.")}
        if not sd:
            raise CheckpointError(f"{_where(path)}: the bce3s checkpoint holds no backbone weights")
        return sd
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{_where(path)}: holds no state dict (a mapping of parameter names to tensors)")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):  # saved from a DDP-wrapped model
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if all(k.startswith("backbone.") for k in sd if not k.startswith(("head.", "projector.", "logit_bias"))):
        inner = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
        if inner:  # a bce3s Classifier's state dict saved by hand
            return inner
    return sd


def torchvision_weights_file(arch: str, name: str) -> tuple[Path, str]:
    """Where torch's hub cache keeps the torchvision weights ``name`` of ``arch``, and their URL.

    Raises:
        ConfigError: ``arch`` has no torchvision weights, or ``name`` is not one of them (the valid ones listed).
    """
    if arch not in TORCHVISION_ARCHS:
        raise ConfigError(
            f"model.pretrained: {name!r} reads as a torchvision weights name, but model.name {arch!r} has no "
            f"torchvision weights (those that do: {', '.join(TORCHVISION_ARCHS)}); give a weights file instead"
        )
    from torchvision.models import get_model_weights

    enum = get_model_weights(TORCHVISION_ARCHS[arch])
    valid = ["DEFAULT", *(w.name for w in enum)]
    if name not in valid:
        raise ConfigError(f"model.pretrained: unknown weights {name!r} for {arch}; valid: {', '.join(valid)}")
    url = enum[name].url if name != "DEFAULT" else enum.DEFAULT.url  # type: ignore[attr-defined]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def fetch_weights(arch: str, name: str) -> Path:
    """The cached torchvision weights file, downloaded when missing (one-line error naming where to put it)."""
    dst, url = torchvision_weights_file(arch, name)
    if dst.is_file():
        return dst
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dst), progress=False)
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        raise CheckpointError(
            f"model.pretrained: cannot download the {arch} {name} weights ({_first(err)[:100]}); offline, download "
            f"{url} elsewhere and place it as {dst}"
        ) from None
    return dst


def _weights_module(backbone: nn.Module) -> nn.Module:
    """The module a plain (torchvision/timm) state dict loads into: the timm network inside a timm backbone."""
    return getattr(backbone, "net", backbone) if hasattr(backbone, "classifier_prefix") else backbone


def load_pretrained(backbone: nn.Module, spec: str, arch: str) -> str:
    """Load ``model.pretrained`` = ``spec`` into ``backbone`` (strict key and shape match).

    Args:
        backbone: the run's backbone (``model.backbone``).
        spec: a weights file or a torchvision weights name (see the module docstring).
        arch: ``model.name`` (selects the torchvision weights of a name).

    Returns:
        The file the weights came from.

    Raises:
        CheckpointError / ConfigError: one line (refused or unreadable file, offline download, mismatch).
    """
    path = fetch_weights(arch, spec) if is_weights_name(spec) else Path(spec).expanduser()
    sd = read_state_dict(path)
    target = backbone
    if not set(sd) <= backbone.state_dict().keys():  # not a bce3s checkpoint: a plain network's
        target = _weights_module(backbone)
        prefixes = (getattr(backbone, "classifier_prefix", ""),) if hasattr(backbone, "classifier_prefix") else ()
        drop = _CLASSIFIER_PREFIXES + prefixes
        own = target.state_dict().keys()
        sd = {k: v for k, v in sd.items() if not (k.startswith(drop) and k not in own)}
    _check_match(target, sd, path)
    target.load_state_dict(sd, strict=True)
    return str(path)


def _check_match(target: nn.Module, sd: dict[str, Tensor], path: Path) -> None:
    """A one-line CheckpointError naming missing / unexpected keys and shape mismatches."""
    own = target.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        k = shapes[0]
        theirs, ours = tuple(sd[k].shape), tuple(own[k].shape)
        parts.append(f"{len(shapes)} of another shape (e.g. {k}: file {theirs}, model {ours})")
    raise CheckpointError(
        f"{_where(path)}: does not fit the backbone: keys {'; '.join(parts)}; use weights of the same architecture "
        "(and input channels)"
    )


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's stages from input to output (the stem first), as its ``stages()`` method lists them.

    Raises:
        ConfigError: the backbone has no stages to freeze (timm backbones).
    """
    stages = getattr(backbone, "stages", None)
    if not callable(stages):
        raise ConfigError(f"model.freeze_stages: the backbone {type(backbone).__name__} does not list its stages")
    return list(stages())


def freeze_stages(backbone: nn.Module, n: int) -> list[nn.Module]:
    """Freeze the first ``n`` stages of ``backbone`` (``requires_grad=False``); returns them.

    Frozen stages also belong in eval mode during training (BatchNorm statistics fixed): the engine calls
    ``.eval()`` on the returned modules after ``model.train()``.

    Raises:
        ConfigError: ``n`` exceeds the number of stages.
    """
    stages = backbone_stages(backbone)
    if n > len(stages):
        raise ConfigError(f"model.freeze_stages: {n} > the {len(stages)} stages of the backbone (stem included)")
    for stage in stages[:n]:
        for p in stage.parameters():
            p.requires_grad_(False)
    return stages[:n]
