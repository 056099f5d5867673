"""Training and evaluation of a config: ``train(cfg, out)`` runs every stage and writes a run directory."""

from __future__ import annotations

from typing import Any

__all__ = ["train"]


def __getattr__(name: str) -> Any:  # lazy: importing a submodule must not import the whole engine
    if name == "train":
        from bce3s.engine.run import train

        return train
    raise AttributeError(f"module 'bce3s.engine' has no attribute {name!r}")
