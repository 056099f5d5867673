"""What produced a run: package versions, the git commit of the code, the device."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["device_name", "git_commit", "versions"]


def git_commit() -> str | None:
    """The commit of the bce3s checkout that is running, or None outside a git checkout."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of bce3s, Python, torch, torchvision, NumPy and CUDA."""
    import numpy
    import torchvision

    import bce3s

    return {
        "bce3s": getattr(bce3s, "__version__", "unknown"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": str(torch.version.cuda),
    }


def device_name(device: torch.device) -> str:
    """A human description of the device, e.g. ``NVIDIA H100 80GB HBM3 (cuda:0)`` or ``cpu (x86_64, 2 threads)``."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    n = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {n} thread{'s' if n != 1 else ''})"
