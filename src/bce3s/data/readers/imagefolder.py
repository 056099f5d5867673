"""Any ``root/{train,test}/<class>/<image>`` tree (torchvision ImageFolder layout), made long-tailed.

Classes are the sub-folders of ``train/`` sorted by name (class id = position); images inside a class are in
file-name order ("file order"). ``test/`` must use the same class names (a class may be absent from it). An
optional ``val/`` tree with the same classes is used as the validation split; otherwise a class-balanced one is
carved from the training images the long-tailed subset does not use (default ``min(20, n_min // 5)`` per
class, n_min = the smallest training class). The head count is ``n_max = n_min - val_per_class`` so that every
class can give its validation images and the profile is exact. ``root`` may also be a folder holding a single
sub-folder with that layout (e.g. the folder ``cifar10-jpeg.tar.gz`` was extracted into).

After subsetting, ``build_data`` decodes the images into memory when they all have one size and take less
than 2 GiB (so the GPU-resident pipeline can use them); otherwise they stay files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bce3s.config import DataConfig
from bce3s.data.imageset import ImageSet
from bce3s.data.readers.base import SourceData
from bce3s.errors import DataError

__all__ = ["IMG_EXTENSIONS", "list_image_tree", "read_imagefolder"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DEFAULT_VAL = 20


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def list_image_tree(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[str], list[int]]:
    """List ``folder/<class>/<image>``.

    Args:
        folder: the split folder (e.g. ``root/train``).
        classes: the class names to map to ids; ``None`` = this folder's sub-folders, sorted.

    Returns:
        (class names, file paths, class ids); files sorted by name inside each class, classes in id order.

    Raises:
        DataError: a sub-folder is not one of ``classes``.
    """
    found = _subdirs(folder)
    if classes is None:
        classes = found
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise DataError(
            f"{folder / unknown[0]}: class folder not in {folder.parent / 'train'} "
            f"({len(unknown)} unknown); every split must use the training class names"
        )
    paths: list[str] = []
    labels: list[int] = []
    for name in found:
        files = sorted(
            e.name for e in os.scandir(folder / name) if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)
        )
        paths.extend(str(folder / name / f) for f in files)
        labels.extend([index[name]] * len(files))
    return classes, paths, labels


def _resolve_root(root: Path) -> Path:
    if (root / "train").is_dir():
        return root
    if root.is_dir():
        subs = _subdirs(root)
        if len(subs) == 1 and (root / subs[0] / "train").is_dir():
            return root / subs[0]
    raise DataError(
        f"image folder not found: expected {root}/train/<class>/<image> and {root}/test/<class>/<image>; set data.root"
    )


def read_imagefolder(cfg: DataConfig) -> SourceData:
    """Read an ImageFolder tree as a training pool, a test split and an optional validation split."""
    root = _resolve_root(Path(cfg.root).expanduser())
    if not (root / "test").is_dir():
        raise DataError(f"test split not found: expected {root}/test/<class>/<image> next to {root}/train")
    classes, paths, labels = list_image_tree(root / "train")
    if not classes:
        raise DataError(f"no class folders in {root / 'train'}: expected {root}/train/<class>/<image>")
    counts = torch.bincount(torch.tensor(labels, dtype=torch.int64), minlength=len(classes)).tolist()
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(
            f"class folder {root / 'train' / classes[empty[0]]} holds no image ({len(empty)} empty classes; "
            f"extensions read: {', '.join(IMG_EXTENSIONS)})"
        )
    sets = {"train": ImageSet(None, paths, torch.tensor(labels, dtype=torch.int64))}
    for split in ("test", "val"):
        if (root / split).is_dir():
            _, p, y = list_image_tree(root / split, classes)
            sets[split] = ImageSet(None, p, torch.tensor(y, dtype=torch.int64))
    if len(sets["test"]) == 0:
        raise DataError(f"no test image found in {root / 'test'}")
    n_min = min(counts)
    given_val = "val" in sets
    if given_val:
        val_per_class = 0
    elif cfg.val_per_class is None:
        val_per_class = min(DEFAULT_VAL, n_min // 5)
    else:
        val_per_class = cfg.val_per_class
    n_max = n_min - val_per_class
    if n_max < 1:
        raise DataError(
            f"smallest training class {classes[counts.index(n_min)]!r} has {n_min} images: too few to keep "
            f"{val_per_class} validation images and at least one training image; lower data.val_per_class"
        )
    return SourceData(
        name=cfg.dataset,
        class_names=classes,
        train=sets["train"],
        test=sets["test"],
        val=sets.get("val"),
        in_channels=3,
        image_size=0,  # decided by build_data: the decoded size, or 224 for files
        n_max=n_max,
        val_mode="given" if given_val else "unused",
        default_val_per_class=val_per_class,
        decode=True,
        info={"folder": str(root), "train_min_count": n_min},
    )
