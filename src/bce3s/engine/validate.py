"""Check a config against the registries before anything is built or written."""

from __future__ import annotations

import difflib

from bce3s.config import Config
from bce3s.errors import ConfigError

__all__ = ["validate_config"]


def validate_config(cfg: Config) -> None:
    """Build every stage's loss once on dummy class counts, so unknown or invalid loss parameters are reported
    (with the closest valid name) before any data is loaded or any file is written."""
    from bce3s.engine.build import build_stage_loss
    from bce3s.losses import loss_params

    for i, stage in enumerate(cfg.stages):
        valid = sorted(loss_params(stage.loss.name))
        for key in stage.loss.params:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" did you mean '{close[0]}'?" if close else ""
                raise ConfigError(
                    f"stages.{i}.loss.params.{key}: unknown parameter of loss '{stage.loss.name}';{hint} "
                    f"valid: {', '.join(valid)}"
                )
        build_stage_loss(cfg, i, 10, list(range(100, 0, -10)))
