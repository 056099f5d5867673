"""The scikit-learn digits (1,797 images, 8x8 gray, 10 classes): the embedded demo dataset, no files needed.

Splits (fixed, independent of the run seed): a balanced test split of 30 images per class is carved first
(seed 0), then a validation split of ``val_per_class`` images per class (default 10, seed 0) from the rest; the
long-tailed training subset is taken from what remains, with n_max = the smallest remaining class (134 with
the default validation size). Pixel values 0..16 are scaled to uint8 0..255 (``round(v * 255 / 16)``).

The data are read from the CSV that ships inside scikit-learn (``sklearn/datasets/data/digits.csv.gz``) without
importing scikit-learn (whose import alone takes over a second); ``sklearn.datasets.load_digits`` is the
fallback when that file is not where expected.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from bce3s.config import DataConfig
from bce3s.data.imageset import ImageSet
from bce3s.data.imbalance import per_class_carve
from bce3s.data.readers.base import SourceData
from bce3s.errors import DataError

__all__ = ["TEST_PER_CLASS", "VAL_PER_CLASS", "load_digits_arrays", "read_digits"]

TEST_PER_CLASS = 30
VAL_PER_CLASS = 10
SPLIT_SEED = 0


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 (1797, 8, 8) images scaled to 0..255 and int64 (1797,) labels."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("digits_lt needs scikit-learn (pip install scikit-learn)")
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        raw = np.fromstring(gzip.decompress(csv.read_bytes()).replace(b"\n", b","), dtype=np.float64, sep=",")
        table = raw.reshape(-1, 65)
        pixels, target = table[:, :64], table[:, 64]
    else:  # pragma: no cover - depends on the scikit-learn build
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, target = bunch.data, bunch.target
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8)
    return images, target.astype(np.int64)


def read_digits(cfg: DataConfig) -> SourceData:
    """Digits with fixed test / validation splits and a long-tailed training pool (see the module docstring)."""
    images, labels = load_digits_arrays()
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    full = ImageSet(x, None, y, mode="L")
    rest, test_idx = per_class_carve(y, TEST_PER_CLASS, seed=SPLIT_SEED)
    val_per_class = VAL_PER_CLASS if cfg.val_per_class is None else cfg.val_per_class
    val = None
    if val_per_class > 0:
        keep, val_pos = per_class_carve(y[rest], val_per_class, seed=SPLIT_SEED)
        val = full.subset(rest[val_pos])
        rest = rest[keep]
    pool = full.subset(rest)
    n_max = min(pool.counts(10))
    return SourceData(
        name=cfg.dataset,
        class_names=[str(d) for d in range(10)],
        train=pool,
        test=full.subset(test_idx),
        val=val,
        in_channels=1,
        image_size=8,
        n_max=n_max,
        val_mode="given",
        default_val_per_class=VAL_PER_CLASS,
        info={"test_per_class": TEST_PER_CLASS, "split_seed": SPLIT_SEED},
    )
