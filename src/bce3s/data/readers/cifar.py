"""CIFAR-10 / CIFAR-100 from the torchvision pickle layout (``cifar-10-batches-py`` / ``cifar-100-python``).

The pickles are read here directly (torchvision's class would re-check md5 sums on every start); only the
download goes through ``torchvision.datasets.CIFAR10/100(download=True)``. ``data.root`` is the folder that
holds ``cifar-10-batches-py`` (torchvision's ``root``), or that folder itself.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bce3s.config import DataConfig
from bce3s.data.imageset import ImageSet
from bce3s.data.readers import base
from bce3s.data.readers.base import SourceData
from bce3s.errors import DataError

__all__ = ["read_cifar10", "read_cifar100"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Layout:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    names_key: str
    labels_key: str
    num_classes: int
    n_max: int
    val_per_class: int
    archive: str  # the file to fetch by hand; it extracts to ``folder``


CIFAR10 = _Layout(
    "CIFAR-10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
    "label_names",
    "labels",
    10,
    5000,
    50,
    "cifar-10-python.tar.gz",
)
CIFAR_HOME = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR100 = _Layout(
    "CIFAR-100",
    "cifar-100-python",
    ("train",),
    "test",
    "meta",
    "fine_label_names",
    "fine_labels",
    100,
    500,
    20,
    "cifar-100-python.tar.gz",
)


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that admits only numpy arrays and plain builtins (dict, list, str, numbers): a CIFAR pickle
    needs nothing else, and refusing every other global means a crafted file cannot run code when read."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes written by Python 2 (numpy array buffers)
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "bytes"),
        ("builtins", "bytearray"),
        ("builtins", "str"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "complex"),
        ("builtins", "bool"),
        ("__builtin__", "set"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a CIFAR pickle holds only numpy arrays and builtins"
            )
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"CIFAR file missing: {path} (re-extract the archive or set data.download=true)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as err:
        raise DataError(f"cannot read CIFAR pickle {path}: {err} (the file is corrupt; re-download it)") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR pickle {path} does not hold a dict (not a torchvision-format CIFAR file)")
    return obj


def _load_batch(path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    if "data" not in d or layout.labels_key not in d:
        raise DataError(f"CIFAR pickle {path} lacks 'data' or {layout.labels_key!r} (is this {layout.title}?)")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d[layout.labels_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(
            f"CIFAR pickle {path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataError(f"CIFAR pickle {path}: labels outside [0, {layout.num_classes})")
    return data.reshape(-1, 3, 32, 32), labels


def _find(root: Path, layout: _Layout) -> Path | None:
    for cand in (root / layout.folder, root):
        if all((cand / f).is_file() for f in (*layout.train_files, layout.test_file, layout.meta_file)):
            return cand
    return None


def _by_hand(root: Path, layout: _Layout) -> str:
    """How to place the data by hand (an offline machine): which archive, and where its folder goes."""
    files = ", ".join((*layout.train_files, layout.test_file, layout.meta_file))
    return (
        f"to place it by hand, get {layout.archive} ({CIFAR_HOME}) and extract it in {root}, so that "
        f"{root / layout.folder}/ holds {files}"
    )


def _download(root: Path, layout: _Layout) -> None:
    log.info("downloading %s into %s through torchvision", layout.title, root)
    reason = base.torchvision_download("CIFAR10" if layout is CIFAR10 else "CIFAR100", root)
    if reason is not None:
        raise DataError(
            f"downloading {layout.title} into {root} failed ({reason}); {_by_hand(root, layout)}, and run again"
        )


def _read(cfg: DataConfig, layout: _Layout) -> SourceData:
    root = Path(cfg.root).expanduser()
    folder = _find(root, layout)
    if folder is None and cfg.download:
        _download(root, layout)
        folder = _find(root, layout)
    if folder is None:
        files = ",".join((*layout.train_files, layout.test_file, layout.meta_file))
        raise DataError(
            f"{layout.title} not found: expected {root / layout.folder}/{{{files}}} (torchvision layout); "
            f"set data.root to the folder holding {layout.folder}, or data.download=true (needs internet); "
            f"{_by_hand(root, layout)}"
        )
    parts = [_load_batch(folder / f, layout) for f in layout.train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _load_batch(folder / layout.test_file, layout)
    meta = _load_pickle(folder / layout.meta_file)
    names = [str(n) for n in meta.get(layout.names_key, [])]
    if len(names) != layout.num_classes:
        raise DataError(
            f"CIFAR meta file {folder / layout.meta_file}: expected {layout.num_classes} names under "
            f"{layout.names_key!r}, got {len(names)}"
        )
    return SourceData(
        name=cfg.dataset,
        class_names=names,
        train=ImageSet(torch.from_numpy(train_x), None, torch.from_numpy(train_y)),
        test=ImageSet(torch.from_numpy(test_x), None, torch.from_numpy(test_y)),
        in_channels=3,
        image_size=32,
        n_max=layout.n_max,
        val_mode="unused",
        default_val_per_class=layout.val_per_class,
        info={"folder": str(folder)},
    )


def read_cifar10(cfg: DataConfig) -> SourceData:
    """CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB); long-tailed from n_max = 5000, val 50 per class."""
    return _read(cfg, CIFAR10)


def read_cifar100(cfg: DataConfig) -> SourceData:
    """CIFAR-100 (fine labels); long-tailed from n_max = 500, val 20 per class."""
    return _read(cfg, CIFAR100)
