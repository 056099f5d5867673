"""MNIST and Fashion-MNIST from IDX files (gzip or not).

``data.root`` may be torchvision's root (files under ``<root>/MNIST/raw/`` or ``<root>/FashionMNIST/raw/``),
a ``raw`` folder, or a folder that directly holds the four files (``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``).
``data.download=true`` downloads through ``torchvision.datasets.MNIST/FashionMNIST``.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np
import torch

from bce3s.config import DataConfig
from bce3s.data.imageset import ImageSet
from bce3s.data.readers import base
from bce3s.data.readers.base import SourceData
from bce3s.errors import DataError

__all__ = ["read_fashion_mnist", "read_idx", "read_mnist"]

log = logging.getLogger(__name__)

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# where the files can be fetched by hand (the sources torchvision downloads from)
HOMES = {
    "FashionMNIST": "https://github.com/zalandoresearch/fashion-mnist",
    "MNIST": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
                 "8 - eight", "9 - nine"]  # fmt: skip


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (``.gz`` or plain).

    Returns:
        uint8 array of the file's shape, e.g. (N, 28, 28) for images, (N,) for labels.

    Raises:
        DataError: the file is missing, truncated, or not a ubyte IDX file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read IDX file {path}: {err} (re-download it)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated (header)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape)) if shape else 0
    if len(raw) != header + size:
        raise DataError(f"IDX file {path}: header says shape {shape} ({size} bytes), found {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, folder: str) -> dict[str, Path] | None:
    for cand in (root / folder / "raw", root / "raw", root):
        found = {}
        for name in FILES:
            # the plain file reads faster; torchvision keeps both after a download
            for p in (cand / name, cand / f"{name}.gz"):
                if p.is_file():
                    found[name] = p
                    break
        if len(found) == len(FILES):
            return found
    return None


def _read(cfg: DataConfig, title: str, folder: str, names: list[str]) -> SourceData:
    root = Path(cfg.root).expanduser()
    files = _find(root, folder)
    by_hand = (
        f"to place it by hand, put the four files {', '.join(f'{n}.gz' for n in FILES)} ({HOMES[folder]}) "
        f"in {root / folder / 'raw'}/"
    )
    if files is None and cfg.download:
        log.info("downloading %s into %s through torchvision", title, root)
        reason = base.torchvision_download(folder, root, (f"{folder}/raw",))
        if reason is not None:
            raise DataError(f"downloading {title} into {root} failed ({reason}); {by_hand}, and run again")
        files = _find(root, folder)
    if files is None:
        raise DataError(
            f"{title} not found: expected {root / folder / 'raw'}/{{{','.join(FILES)}}}[.gz] (torchvision layout) "
            f"or the four files directly in {root}; set data.root, or data.download=true (needs internet); "
            f"{by_hand}"
        )
    arrays = {name: read_idx(p) for name, p in files.items()}
    splits = []
    for part in ("train", "t10k"):
        x, y = arrays[f"{part}-images-idx3-ubyte"], arrays[f"{part}-labels-idx1-ubyte"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(
                f"{title}: {files[f'{part}-images-idx3-ubyte']} has shape {x.shape} but "
                f"{files[f'{part}-labels-idx1-ubyte']} has shape {y.shape}; expected (N, H, W) images and N labels"
            )
        if y.size and y.max() >= len(names):
            raise DataError(f"{title}: {files[f'{part}-labels-idx1-ubyte']} has labels >= {len(names)}")
        images = torch.from_numpy(x.copy()).unsqueeze(1)
        splits.append(ImageSet(images, None, torch.from_numpy(y.astype(np.int64)), mode="L"))
    return SourceData(
        name=cfg.dataset,
        class_names=list(names),
        train=splits[0],
        test=splits[1],
        in_channels=1,
        image_size=int(splits[0].images.shape[-1]),  # type: ignore[union-attr]
        n_max=6000,
        val_mode="unused",
        default_val_per_class=50,
        info={"files": {name: str(p) for name, p in files.items()}},
    )


def read_fashion_mnist(cfg: DataConfig) -> SourceData:
    """Fashion-MNIST (60,000 / 10,000, 28x28 gray); long-tailed from n_max = 6000, val 50 per class."""
    return _read(cfg, "Fashion-MNIST", "FashionMNIST", FASHION_CLASSES)


def read_mnist(cfg: DataConfig) -> SourceData:
    """MNIST (60,000 / 10,000, 28x28 gray); long-tailed from n_max = 6000, val 50 per class.

    MNIST classes hold 5,421 to 6,742 training images, so at small imbalance factors a class may hold fewer
    images than its target; ``build_data`` then keeps what there is and says so.
    """
    return _read(cfg, "MNIST", "MNIST", MNIST_CLASSES)
