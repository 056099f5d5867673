"""Worker for the torchrun test: train a config, then every rank saves its own model and loss state.

Usage: ``torchrun --nproc_per_node=2 tests/engine/ddp_worker.py CONFIG OUT`` (or plain ``python`` for one process).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from bce3s.config import load_config
from bce3s.engine import train


def main() -> None:
    cfg_path, out = sys.argv[1], Path(sys.argv[2])
    res = train(load_config(cfg_path), out, quiet=True, overwrite=True)
    rank = int(os.environ.get("RANK", "0"))
    state = {
        "model": {k: v.detach().cpu() for k, v in res.model.state_dict().items()},
        "losses": {
            name: {k: v for k, v in loss.state_dict().items() if torch.is_tensor(v)}
            for name, loss in res.losses.items()
        },
        "final": res.final["test"]["last"],
    }
    torch.save(state, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
