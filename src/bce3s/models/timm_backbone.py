"""timm backbones by name (``model.name: timm/<name>``), an optional extra (``pip install 'bce3s[timm]'``).

The timm model is built with ``num_classes=0`` (its classifier replaced by an identity), so it maps images to
its pooled features ``(N, num_features)``; the BCE3S head and projector attach to those like to any backbone.
Nothing is downloaded: weights come from ``model.pretrained`` (a timm state dict file), see
:mod:`bce3s.models.pretrained`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bce3s.errors import ConfigError

__all__ = ["TIMM_PREFIX", "TimmFeatures", "check_timm_name"]

TIMM_PREFIX = "timm/"


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("model.name: timm backbones need the timm package: pip install 'bce3s[timm]'") from None
    return timm


def check_timm_name(name: str) -> None:
    """Raise a ConfigError unless ``timm/<arch>`` names a model of the installed timm."""
    timm = _timm()
    arch = name[len(TIMM_PREFIX) :]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ConfigError(f"model.name: {arch!r} is not a timm model{hint}")


class TimmFeatures(nn.Module):
    """A timm model without its classifier: images ``(N, C, H, W)`` -> pooled features ``(N, out_features)``.

    Args:
        name: ``timm/<arch>`` or ``<arch>``.
        in_channels: image channels (timm's ``in_chans``).

    Attributes:
        net: the timm model (a timm state dict loads into it).
        classifier_prefix: key prefix of the timm classifier in its state dicts (dropped when loading weights).
    """

    def __init__(self, name: str, in_channels: int = 3) -> None:
        super().__init__()
        arch = name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name
        self.net = _timm().create_model(arch, pretrained=False, num_classes=0, in_chans=in_channels)
        self.out_features: int = int(self.net.num_features)
        classifier = getattr(self.net, "pretrained_cfg", {}).get("classifier") or "fc"
        self.classifier_prefix = f"{classifier if isinstance(classifier, str) else classifier[0]}."

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, out_features)``."""
        return self.net(x)
